//! Go's `fmt` formatting for template values: `Sprint`, `Sprintln`, `Sprintf` and the
//! default `%v` format used when an action prints a value.
//!
//! Covers the verbs templates use: `%v %+v %s %q %d %x %X %o %O %b %c %U %t %e %E %f %F
//! %g %G %%`, flags `+ - # space 0`, widths and precisions (also `*`), and explicit
//! argument indexes directly before the verb (`%[2]s`). Errors are printed inline the way
//! Go does (`%!d(string=x)`, `%!s(MISSING)`, `%!(EXTRA int=1)`), never returned.

use crate::value::{Ctx, Val, sorted_entries};

/// `fmt.Sprint`: operands formatted with `%v`, a space between two operands when neither
/// is a string.
pub(crate) fn sprint(args: &[Val<'_>]) -> String {
    let mut out = String::new();
    let mut prev_string = false;
    for (i, a) in args.iter().enumerate() {
        let is_string = a.is_string();
        if i > 0 && !is_string && !prev_string {
            out.push(' ');
        }
        format_one(&mut out, a, 'v', &Spec::default());
        prev_string = is_string;
    }
    out
}

/// `fmt.Sprintln`: operands with `%v`, always space-separated, newline-terminated.
pub(crate) fn sprintln(args: &[Val<'_>]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        format_one(&mut out, a, 'v', &Spec::default());
    }
    out.push('\n');
    out
}

/// `%v` of one value (what `{{ pipeline }}` prints, apart from `<no value>`).
pub(crate) fn format_v(v: &Val<'_>) -> String {
    let mut out = String::new();
    format_one(&mut out, v, 'v', &Spec::default());
    out
}

/// Flags, width and precision of one verb.
#[derive(Debug, Clone, Default)]
struct Spec {
    minus: bool,
    plus: bool,
    /// `%+v`: Go moves the `+` flag here, so it names struct fields instead of signing
    /// numbers.
    plus_v: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

/// Widths and precisions above this are treated as bad (Go's limit is 1e6; the output cap
/// in the executor would stop a huge one anyway, but allocation happens first).
const MAX_WIDTH: usize = 10_000;

/// `fmt.Sprintf`.
pub(crate) fn sprintf(format: &str, args: &[Val<'_>]) -> String {
    let mut out = String::new();
    let mut arg_i = 0usize;
    let mut reordered = false;
    let mut chars = format.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        // Flags.
        while let Some(&(_, f)) = chars.peek() {
            match f {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '#' => spec.sharp = true,
                ' ' => spec.space = true,
                '0' => spec.zero = true,
                _ => break,
            }
            chars.next();
        }
        // Width.
        if chars.peek().is_some_and(|&(_, c)| c == '*') {
            chars.next();
            match args.get(arg_i) {
                Some(Val::Int(w)) if w.unsigned_abs() <= MAX_WIDTH as u64 => {
                    if *w < 0 {
                        spec.minus = true;
                    }
                    spec.width = Some(w.unsigned_abs() as usize);
                }
                _ => out.push_str("%!(BADWIDTH)"),
            }
            arg_i += 1;
        } else {
            spec.width = digits(&mut chars);
        }
        // Precision.
        if chars.peek().is_some_and(|&(_, c)| c == '.') {
            chars.next();
            if chars.peek().is_some_and(|&(_, c)| c == '*') {
                chars.next();
                match args.get(arg_i) {
                    Some(Val::Int(p)) if (0..=MAX_WIDTH as i64).contains(p) => {
                        spec.prec = Some(*p as usize)
                    }
                    _ => out.push_str("%!(BADPREC)"),
                }
                arg_i += 1;
            } else {
                spec.prec = Some(digits(&mut chars).unwrap_or(0));
            }
        }
        if spec.width.is_some_and(|w| w > MAX_WIDTH) || spec.prec.is_some_and(|p| p > MAX_WIDTH) {
            out.push_str("%!(BADWIDTH)");
            spec.width = None;
            spec.prec = None;
        }
        if spec.minus {
            // Go: '-' overrides '0'.
            spec.zero = false;
        }
        // Explicit argument index: `%[n]verb`.
        if chars.peek().is_some_and(|&(_, c)| c == '[') {
            chars.next();
            let n = digits(&mut chars);
            let closed = chars.next().is_some_and(|(_, c)| c == ']');
            reordered = true;
            match n {
                Some(n) if closed && n >= 1 && n <= args.len() => arg_i = n - 1,
                _ => {
                    out.push_str("%!");
                    if let Some((_, v)) = chars.next() {
                        out.push(v);
                    }
                    out.push_str("(BADINDEX)");
                    continue;
                }
            }
        }
        let Some((_, verb)) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        if verb == 'v' {
            spec.plus_v = spec.plus;
            spec.plus = false;
        }
        match args.get(arg_i) {
            Some(a) => format_one(&mut out, a, verb, &spec),
            None => {
                out.push_str("%!");
                out.push(verb);
                out.push_str("(MISSING)");
            }
        }
        arg_i += 1;
    }
    if !reordered && arg_i < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args[arg_i..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            if is_nil(a) {
                out.push_str("<nil>");
            } else {
                out.push_str(&a.type_name());
                out.push('=');
                format_one(&mut out, a, 'v', &Spec::default());
            }
        }
        out.push(')');
    }
    out
}

fn digits(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Option<usize> {
    let mut n: Option<usize> = None;
    while let Some(&(_, c)) = chars.peek() {
        let Some(d) = c.to_digit(10) else { break };
        chars.next();
        n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
    }
    n
}

fn is_nil(v: &Val<'_>) -> bool {
    matches!(v, Val::NoValue | Val::Nil)
}

/// `%!verb(type=value)`.
fn bad_verb(out: &mut String, v: &Val<'_>, verb: char) {
    out.push_str("%!");
    out.push(verb);
    out.push('(');
    if is_nil(v) {
        out.push_str("<nil>");
    } else {
        out.push_str(&v.type_name());
        out.push('=');
        format_one(out, v, 'v', &Spec::default());
    }
    out.push(')');
}

fn format_one(out: &mut String, v: &Val<'_>, verb: char, spec: &Spec) {
    match v {
        Val::NoValue | Val::Nil | Val::NilPtr => {
            if verb == 'v' {
                pad(out, "<nil>", spec);
            } else {
                bad_verb(out, v, verb);
            }
        }
        Val::NilMap => out.push_str("map[]"),
        Val::Bool(b) => match verb {
            't' | 'v' => pad(out, if *b { "true" } else { "false" }, spec),
            _ => bad_verb(out, v, verb),
        },
        Val::Int(i) => format_int(out, *i < 0, i.unsigned_abs(), v, verb, spec),
        Val::Uint(u) => format_int(out, false, *u, v, verb, spec),
        Val::Float(f) => format_float(out, *f, v, verb, spec),
        Val::Str(s) => format_str(out, s, v, verb, spec),
        Val::List(items, ctx) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_one(out, &Val::from_json(item, *ctx), verb, spec);
            }
            out.push(']');
        }
        Val::Map(m) => {
            out.push_str("map[");
            for (i, (k, val)) in sorted_entries(m).into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_str(out, k, &Val::Str(k.into()), verb, spec);
                out.push(':');
                format_one(out, &Val::from_json(val, Ctx::Any), verb, spec);
            }
            out.push(']');
        }
        Val::Struct(m) => {
            // Field order is the object's order (Go's is the declaration order).
            out.push('{');
            for (i, (k, val)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                if spec.plus_v {
                    out.push_str(k);
                    out.push(':');
                }
                format_one(out, &Val::from_json(val, Ctx::Struct), verb, spec);
            }
            out.push('}');
        }
    }
}

/// Pads `s` to the width, counting characters, as Go does.
fn pad(out: &mut String, s: &str, spec: &Spec) {
    let n = s.chars().count();
    let fill = spec.width.unwrap_or(0).saturating_sub(n);
    if spec.minus {
        out.push_str(s);
        out.extend(std::iter::repeat_n(' ', fill));
    } else {
        out.extend(std::iter::repeat_n(if spec.zero { '0' } else { ' ' }, fill));
        out.push_str(s);
    }
}

fn format_str(out: &mut String, s: &str, v: &Val<'_>, verb: char, spec: &Spec) {
    match verb {
        'v' | 's' => {
            let s = match spec.prec {
                Some(p) => s.chars().take(p).collect::<String>(),
                None => s.to_owned(),
            };
            pad(out, &s, spec);
        }
        'q' => {
            if spec.sharp && !s.contains('`') && s.chars().all(|c| c == '\t' || !c.is_control()) {
                pad(out, &format!("`{s}`"), spec);
            } else {
                pad(out, &quote(s, '"', spec.plus), spec);
            }
        }
        'x' | 'X' => {
            let bytes = match spec.prec {
                Some(p) => &s.as_bytes()[..p.min(s.len())],
                None => s.as_bytes(),
            };
            let mut h = String::new();
            for (i, b) in bytes.iter().enumerate() {
                if spec.space && i > 0 {
                    h.push(' ');
                }
                if spec.sharp && (spec.space || i == 0) {
                    h.push_str(if verb == 'x' { "0x" } else { "0X" });
                }
                if verb == 'x' {
                    h.push_str(&format!("{b:02x}"));
                } else {
                    h.push_str(&format!("{b:02X}"));
                }
            }
            pad(out, &h, spec);
        }
        _ => bad_verb(out, v, verb),
    }
}

fn format_int(out: &mut String, neg: bool, mag: u64, v: &Val<'_>, verb: char, spec: &Spec) {
    let (base, upper) = match verb {
        'd' | 'v' => (10, false),
        'b' => (2, false),
        'o' | 'O' => (8, false),
        'x' => (16, false),
        'X' => (16, true),
        'c' => {
            let c = if neg {
                None
            } else {
                u32::try_from(mag).ok().and_then(char::from_u32)
            };
            pad(out, &c.unwrap_or('\u{FFFD}').to_string(), spec);
            return;
        }
        'q' => {
            let c = if neg {
                None
            } else {
                u32::try_from(mag).ok().and_then(char::from_u32)
            };
            pad(
                out,
                &quote(&c.unwrap_or('\u{FFFD}').to_string(), '\'', spec.plus),
                spec,
            );
            return;
        }
        'U' => {
            let mut s = if neg {
                format!("U+-{mag:04X}")
            } else {
                format!("U+{mag:04X}")
            };
            if spec.sharp
                && let Some(c) = u32::try_from(mag)
                    .ok()
                    .and_then(char::from_u32)
                    .filter(|c| is_print(*c))
                && !neg
            {
                s.push_str(&format!(" '{c}'"));
            }
            pad(out, &s, spec);
            return;
        }
        _ => return bad_verb(out, v, verb),
    };
    let mut digits = match base {
        2 => format!("{mag:b}"),
        8 => format!("{mag:o}"),
        16 if upper => format!("{mag:X}"),
        16 => format!("{mag:x}"),
        _ => mag.to_string(),
    };
    let sign = if neg {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    };
    // Go: an explicit precision is the minimum number of digits (and `%.0d` of 0 prints
    // nothing); without one, the 0 flag zero-fills the width minus the sign.
    let min_digits = match spec.prec {
        Some(0) if mag == 0 => {
            digits.clear();
            0
        }
        Some(p) => p,
        None if spec.zero && spec.width.is_some() => {
            spec.width.unwrap_or(0).saturating_sub(sign.len())
        }
        None => 0,
    };
    if digits.len() < min_digits {
        digits = "0".repeat(min_digits - digits.len()) + &digits;
    }
    let prefix = match (verb, spec.sharp) {
        ('O', _) => "0o",
        ('o', true) if !digits.starts_with('0') => "0",
        ('b', true) => "0b",
        ('x', true) => "0x",
        ('X', true) => "0X",
        _ => "",
    };
    let s = format!("{sign}{prefix}{digits}");
    let unzero = Spec {
        zero: false,
        ..spec.clone()
    };
    pad(out, &s, &unzero);
}

fn format_float(out: &mut String, f: f64, v: &Val<'_>, verb: char, spec: &Spec) {
    let body = if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        "Inf".to_owned()
    } else {
        let a = f.abs();
        match verb {
            'v' | 'g' | 'G' => {
                let s = format_g(a, spec.prec);
                if verb == 'G' { s.to_uppercase() } else { s }
            }
            'e' | 'E' => {
                let s = format_e(a, spec.prec.unwrap_or(6));
                if verb == 'E' { s.to_uppercase() } else { s }
            }
            'f' | 'F' => format!("{a:.prec$}", prec = spec.prec.unwrap_or(6)),
            _ => return bad_verb(out, v, verb),
        }
    };
    let sign = if f.is_sign_negative() && !f.is_nan() {
        "-"
    } else if spec.plus {
        "+"
    } else if f.is_infinite() && verb == 'v' {
        // Go prints +Inf for %v.
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    };
    let width = spec.width.unwrap_or(0);
    let len = sign.len() + body.len();
    if spec.zero && f.is_finite() && width > len {
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', width - len));
        out.push_str(&body);
    } else {
        let unzero = Spec {
            zero: false,
            ..spec.clone()
        };
        pad(out, &format!("{sign}{body}"), &unzero);
    }
}

/// Decimal digits (no trailing zeros beyond the first) and the decimal exponent of the
/// first digit, rounded to `sig` significant digits, or shortest round-trip if `None`.
fn decimal_digits(a: f64, sig: Option<usize>) -> (String, i32) {
    let s = match sig {
        Some(p) => format!("{a:.prec$e}", prec = p.saturating_sub(1)),
        None => format!("{a:e}"),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    (digits, exp)
}

/// Go's `%e` mantissa and exponent (at least two exponent digits).
fn format_e(a: f64, prec: usize) -> String {
    let s = format!("{a:.prec$e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mant}e{sign}{:02}", exp.unsigned_abs())
}

/// Go's `%g` (strconv 'g'): shortest digits or `prec` significant digits, `%e` form when
/// the exponent is < -4 or >= the precision (6 when shortest), trailing zeros dropped.
fn format_g(a: f64, prec: Option<usize>) -> String {
    let prec = prec.map(|p| p.max(1));
    let (mut digits, exp) = decimal_digits(a, prec);
    if a == 0.0 {
        digits = "0".into();
    }
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let nd = digits.len() as i32;
    let dp = exp + 1;
    let eprec = match prec {
        None => 6,
        Some(p) => {
            let p = p as i32;
            if p > nd && nd >= dp { nd } else { p }
        }
    };
    if exp < -4 || exp >= eprec {
        let mut m = String::new();
        m.push_str(&digits[..1]);
        if digits.len() > 1 {
            m.push('.');
            m.push_str(&digits[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.unsigned_abs())
    } else if dp <= 0 {
        format!("0.{}{}", "0".repeat(dp.unsigned_abs() as usize), digits)
    } else if dp >= nd {
        format!("{digits}{}", "0".repeat((dp - nd) as usize))
    } else {
        let (i, f) = digits.split_at(dp as usize);
        format!("{i}.{f}")
    }
}

/// Approximates Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and
/// the ASCII space. Rust has no category tables in std, so format and separator characters
/// beyond the common ones are treated as printable.
fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}'))
}

/// Go's `strconv.Quote` (`quote` = `"`) / `QuoteRune` (`'`); ASCII-only when `ascii`.
pub(crate) fn quote(s: &str, q: char, ascii: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            c if c == q || c == '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (c.is_ascii() || !ascii) && is_print(c) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push(q);
    out
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use serde_json::Value;

    use super::*;

    fn s(x: &str) -> Val<'_> {
        Val::Str(Cow::Borrowed(x))
    }

    #[test]
    fn floats_like_go() {
        let cases = [
            (1.0, "1"),
            (1.5, "1.5"),
            (100000.0, "100000"),
            (1_000_000.0, "1e+06"),
            (1_234_567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (f, want) in cases {
            assert_eq!(format_v(&Val::Float(f)), want, "{f}");
        }
        assert_eq!(
            sprintf(
                "%.2f|%e|%g|%.3g|%8.3f|%-8.2f|%08.3f",
                &[
                    Val::Float(3.24159),
                    Val::Float(1234.5678),
                    Val::Float(1e21),
                    Val::Float(1234.5678),
                    Val::Float(-3.24159),
                    Val::Float(2.5),
                    Val::Float(-3.24159),
                ]
            ),
            "3.24|1.234568e+03|1e+21|1.23e+03|  -3.242|2.50    |-003.242"
        );
    }

    #[test]
    fn ints_and_strings_like_go() {
        assert_eq!(
            sprintf(
                "%d|%5d|%-5d|%05d|%x|%X|%#x|%o|%#o|%b|%c|%q|%U|%+d|%.3d",
                &[
                    Val::Int(42),
                    Val::Int(42),
                    Val::Int(42),
                    Val::Int(-42),
                    Val::Int(255),
                    Val::Int(255),
                    Val::Int(255),
                    Val::Int(8),
                    Val::Int(8),
                    Val::Int(5),
                    Val::Int(65),
                    Val::Int(65),
                    Val::Int(0x1F600),
                    Val::Int(3),
                    Val::Int(7),
                ]
            ),
            "42|   42|42   |-0042|ff|FF|0xff|10|010|101|A|'A'|U+1F600|+3|007"
        );
        assert_eq!(
            sprintf(
                "%s|%10s|%-10s|%.2s|%q|%x|% x|%v|%t|%5t",
                &[
                    s("abc"),
                    s("abc"),
                    s("abc"),
                    s("abc"),
                    s("a\"b\n"),
                    s("hi"),
                    s("hi"),
                    s("v"),
                    Val::Bool(true),
                    Val::Bool(false),
                ]
            ),
            "abc|       abc|abc       |ab|\"a\\\"b\\n\"|6869|68 69|v|true|false"
        );
    }

    #[test]
    fn errors_inline_like_go() {
        assert_eq!(sprintf("%d", &[s("x")]), "%!d(string=x)");
        assert_eq!(sprintf("%s", &[Val::Int(1)]), "%!s(int=1)");
        assert_eq!(sprintf("%s %s", &[s("a")]), "a %!s(MISSING)");
        assert_eq!(
            sprintf("%s", &[s("a"), Val::Int(1), s("b")]),
            "a%!(EXTRA int=1, string=b)"
        );
        assert_eq!(sprintf("%", &[]), "%!(NOVERB)");
        assert_eq!(sprintf("%z", &[Val::Int(1)]), "%!z(int=1)");
        assert_eq!(sprintf("%s", &[Val::Nil]), "%!s(<nil>)");
        assert_eq!(sprintf("%v", &[Val::Nil]), "<nil>");
        assert_eq!(sprintf("%[2]s-%[1]s", &[s("a"), s("b")]), "b-a");
        assert_eq!(sprintf("%*d", &[Val::Int(4), Val::Int(7)]), "   7");
        assert_eq!(sprintf("100%%", &[]), "100%");
    }

    #[test]
    fn sprint_spacing() {
        assert_eq!(sprint(&[Val::Int(1), Val::Int(2)]), "1 2");
        assert_eq!(sprint(&[s("a"), s("b")]), "ab");
        assert_eq!(sprint(&[s("a"), Val::Int(1), Val::Int(2), s("b")]), "a1 2b");
        assert_eq!(sprintln(&[s("a"), s("b")]), "a b\n");
    }

    #[test]
    fn composites() {
        let v: Value = serde_json::json!({"b": 2, "a": [1, "x", null, 1.5]});
        let Value::Object(m) = &v else { unreachable!() };
        assert_eq!(format_v(&Val::Map(m)), "map[a:[1 x <nil> 1.5] b:2]");
        assert_eq!(format_v(&Val::Struct(m)), "{[1 x <nil> 1.5] 2}");
        assert_eq!(sprintf("%+v", &[Val::Struct(m)]), "{a:[1 x <nil> 1.5] b:2}");
        assert_eq!(format_v(&Val::NilMap), "map[]");
    }
}
