//! The syntax tree and a recursive-descent parser over the lexer's tokens.
//!
//! Follows the grammar of Go's `text/template/parse`: lists of text and actions; actions
//! are pipelines or the control structures `if`/`with`/`range` (with `else`, `else if`,
//! `else with`), `break`/`continue`; pipelines are `|`-separated commands of operands,
//! optionally preceded by variable declarations (`$x :=`, `$i, $v :=` in `range`) or an
//! assignment (`$x =`). Like Go, variables and function names are checked here, so a
//! template that uses an undefined one fails to parse rather than to execute.

use crate::error::ParseErrorKind;
use crate::funcs::is_builtin;
use crate::lexer::{Tok, Token};

/// A list of nodes, executed in order.
pub(crate) type List = Vec<Node>;

/// A node of the tree. `pos` fields are byte offsets into the source.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Text(String),
    Action(Pipe),
    If(Branch),
    With(Branch),
    Range(Branch),
    Break,
    Continue,
}

/// `if`, `with` and `range`: a pipeline, a body and an optional `else` body.
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    pub pipe: Pipe,
    pub body: List,
    pub else_body: Option<List>,
}

/// `[decl :=] cmd | cmd | ...`.
#[derive(Debug, Clone)]
pub(crate) struct Pipe {
    pub pos: usize,
    /// Declared or assigned variables, `$`-prefixed.
    pub decl: Vec<String>,
    /// `=` rather than `:=`.
    pub is_assign: bool,
    pub cmds: Vec<Cmd>,
}

/// One stage of a pipeline: an operand, or a function and its arguments.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    pub pos: usize,
    pub args: Vec<Arg>,
}

/// An operand.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// `.A.B`: fields of dot.
    Field {
        pos: usize,
        chain: Vec<String>,
    },
    /// `$x.A.B`.
    Variable {
        pos: usize,
        name: String,
        chain: Vec<String>,
    },
    /// `.`.
    Dot(usize),
    Nil(usize),
    Bool(usize, bool),
    Number(usize, Number),
    Str(usize, String),
    /// A builtin function name.
    Func(usize, String),
    /// `(pipeline).A.B`; `chain` may be empty.
    Pipe {
        pos: usize,
        pipe: Box<Pipe>,
        chain: Vec<String>,
    },
}

/// A numeric constant. Go gives untyped constants the type `int` when they are written as
/// integers (including character constants) and `float64` when they have a `.`, an
/// exponent, or do not fit in an int.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

/// Parses a whole token stream into a list.
pub(crate) fn parse(tokens: Vec<Token>, src_len: usize) -> Result<List, (usize, ParseErrorKind)> {
    let mut p = Parser {
        toks: tokens,
        i: 0,
        vars: vec!["$".to_owned()],
        range_depth: 0,
        depth: 0,
        src_len,
    };
    let (list, end) = p.list()?;
    match end {
        Stop::Eof => Ok(list),
        Stop::End(pos) => Err((pos, unexpected("{{end}}", "input"))),
        Stop::Else(pos) => Err((pos, unexpected("{{else}}", "input"))),
    }
}

/// Max nesting of control structures and parentheses. Go allows 10000; ours recurse on
/// the thread's stack, and real templates nest two or three deep.
const MAX_DEPTH: usize = 100;

fn unexpected(found: &str, context: &str) -> ParseErrorKind {
    ParseErrorKind::Unexpected {
        found: found.to_owned(),
        context: context.to_owned(),
    }
}

/// What ended a list.
enum Stop {
    Eof,
    /// `{{end}}`, already consumed.
    End(usize),
    /// `{{else`, consumed up to the keyword; the rest of the action is pending.
    Else(usize),
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    /// Variables in scope, innermost last.
    vars: Vec<String>,
    range_depth: usize,
    depth: usize,
    src_len: usize,
}

// === impl Parser ===

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }

    fn peek_at(&self, k: usize) -> Option<&Token> {
        self.toks.get(self.i + k)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.i).cloned();
        if t.is_some() {
            self.i += 1;
        }
        t
    }

    /// The next token, which must exist: the lexer always closes an action with
    /// `RightDelim`, so running out inside one means the stream ended early.
    fn next_in_action(&mut self) -> Result<Token, (usize, ParseErrorKind)> {
        self.next()
            .ok_or((self.src_len, ParseErrorKind::UnexpectedEof))
    }

    fn expect_right_delim(&mut self, context: &str) -> Result<(), (usize, ParseErrorKind)> {
        let t = self.next_in_action()?;
        if t.tok == Tok::RightDelim {
            Ok(())
        } else {
            Err((t.pos, unexpected(&describe(&t.tok), context)))
        }
    }

    fn enter(&mut self, pos: usize) -> Result<(), (usize, ParseErrorKind)> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err((pos, ParseErrorKind::TooDeep))
        } else {
            Ok(())
        }
    }

    /// Nodes up to `{{end}}`, `{{else` or the end of input.
    fn list(&mut self) -> Result<(List, Stop), (usize, ParseErrorKind)> {
        let mut list = Vec::new();
        loop {
            let Some(t) = self.next() else {
                return Ok((list, Stop::Eof));
            };
            match t.tok {
                Tok::Text(s) => list.push(Node::Text(s)),
                Tok::LeftDelim => {
                    let kw = self.peek().and_then(|t| match &t.tok {
                        Tok::Ident(w) => Some((w.clone(), t.pos)),
                        _ => None,
                    });
                    match kw {
                        Some((w, pos)) if w == "end" => {
                            self.i += 1;
                            self.expect_right_delim("end")?;
                            return Ok((list, Stop::End(pos)));
                        }
                        Some((w, pos)) if w == "else" => {
                            self.i += 1;
                            return Ok((list, Stop::Else(pos)));
                        }
                        Some((w, pos)) if w == "if" || w == "with" || w == "range" => {
                            self.i += 1;
                            list.push(self.control(&w, pos)?);
                        }
                        Some((w, pos)) if w == "break" || w == "continue" => {
                            self.i += 1;
                            if self.range_depth == 0 {
                                return Err((pos, ParseErrorKind::OutsideRange(w)));
                            }
                            self.expect_right_delim(&format!("{{{{{w}}}}}"))?;
                            list.push(if w == "break" {
                                Node::Break
                            } else {
                                Node::Continue
                            });
                        }
                        Some((w, pos)) if w == "define" || w == "template" || w == "block" => {
                            return Err((pos, ParseErrorKind::Unsupported(w)));
                        }
                        _ => {
                            let pipe = self.pipeline("command", t.pos)?;
                            list.push(Node::Action(pipe));
                        }
                    }
                }
                other => return Err((t.pos, unexpected(&describe(&other), "input"))),
            }
        }
    }

    /// `if`/`with`/`range` after the keyword.
    fn control(&mut self, kw: &str, pos: usize) -> Result<Node, (usize, ParseErrorKind)> {
        self.enter(pos)?;
        let vars_before = self.vars.len();
        let pipe = self.pipeline(kw, pos)?;
        if kw == "range" {
            self.range_depth += 1;
        }
        let (body, end) = self.list()?;
        if kw == "range" {
            self.range_depth -= 1;
        }
        let else_body = match end {
            Stop::Eof => return Err((self.src_len, ParseErrorKind::UnexpectedEof)),
            Stop::End(_) => None,
            Stop::Else(else_pos) => {
                // `{{else if ...}}` in an `if`, `{{else with ...}}` in a `with` (Go 1.23):
                // the nested control owns the single `{{end}}`, as in Go. Any other
                // keyword after `else` is an error, as in Go.
                let chained = match self.peek() {
                    Some(Token {
                        tok: Tok::Ident(w),
                        pos,
                        ..
                    }) if w == kw && kw != "range" => Some((w.clone(), *pos)),
                    _ => None,
                };
                if let Some((w, p)) = chained {
                    self.i += 1;
                    Some(vec![self.control(&w, p)?])
                } else {
                    self.expect_right_delim("else")?;
                    let (else_body, end) = self.list()?;
                    match end {
                        Stop::End(_) => Some(else_body),
                        Stop::Else(p) => return Err((p, unexpected("{{else}}", kw))),
                        Stop::Eof => {
                            return Err((
                                self.src_len.max(else_pos),
                                ParseErrorKind::UnexpectedEof,
                            ));
                        }
                    }
                }
            }
        };
        self.vars.truncate(vars_before);
        self.depth -= 1;
        let branch = Branch {
            pipe,
            body,
            else_body,
        };
        Ok(match kw {
            "if" => Node::If(branch),
            "with" => Node::With(branch),
            _ => Node::Range(branch),
        })
    }

    /// A pipeline up to (and consuming) `}}`, or up to (not consuming) `)` inside parens.
    fn pipeline(&mut self, context: &str, pos: usize) -> Result<Pipe, (usize, ParseErrorKind)> {
        let mut pipe = Pipe {
            pos,
            decl: Vec::new(),
            is_assign: false,
            cmds: Vec::new(),
        };
        self.declarations(&mut pipe, context)?;
        loop {
            let Some(t) = self.peek() else {
                return Err((self.src_len, ParseErrorKind::UnexpectedEof));
            };
            match t.tok {
                Tok::RightDelim => {
                    self.i += 1;
                    break;
                }
                Tok::RParen if context == "parenthesized pipeline" => break,
                Tok::RParen => {
                    let p = t.pos;
                    return Err((p, unexpected(")", context)));
                }
                _ => {
                    let cmd = self.command()?;
                    pipe.cmds.push(cmd);
                }
            }
        }
        if pipe.cmds.is_empty() {
            return Err((pos, ParseErrorKind::MissingValue(context.to_owned())));
        }
        for (i, c) in pipe.cmds.iter().enumerate().skip(1) {
            if let Some(a) = c.args.first()
                && matches!(
                    a,
                    Arg::Bool(..) | Arg::Dot(_) | Arg::Nil(_) | Arg::Number(..) | Arg::Str(..)
                )
            {
                return Err((c.pos, ParseErrorKind::NonExecutable(i + 1)));
            }
        }
        // Declared variables come into scope after the pipeline, so `$x := $x` refers to
        // an outer `$x`, as in Go.
        if !pipe.is_assign {
            self.vars.extend(pipe.decl.iter().cloned());
        }
        Ok(pipe)
    }

    fn declarations(
        &mut self,
        pipe: &mut Pipe,
        context: &str,
    ) -> Result<(), (usize, ParseErrorKind)> {
        let Some(Token {
            tok: Tok::Variable(v),
            pos,
            ..
        }) = self.peek().cloned()
        else {
            return Ok(());
        };
        match self.peek_at(1).map(|t| &t.tok) {
            Some(Tok::Declare) | Some(Tok::Assign) => {
                let assign = matches!(self.peek_at(1).map(|t| &t.tok), Some(Tok::Assign));
                if assign && !self.vars.contains(&v) {
                    return Err((pos, ParseErrorKind::UndefinedVariable(v)));
                }
                self.i += 2;
                pipe.is_assign = assign;
                pipe.decl.push(v);
            }
            Some(Tok::Comma) => {
                if context != "range" {
                    return Err((pos, ParseErrorKind::TooManyDeclarations(context.to_owned())));
                }
                let second = self.peek_at(2).cloned();
                let third = self.peek_at(3).map(|t| t.tok.clone());
                match (second, third) {
                    (
                        Some(Token {
                            tok: Tok::Variable(v2),
                            ..
                        }),
                        Some(Tok::Declare | Tok::Assign),
                    ) => {
                        let assign = matches!(third_tok(self.peek_at(3)), Some(Tok::Assign));
                        if assign {
                            for name in [&v, &v2] {
                                if !self.vars.contains(name) {
                                    return Err((
                                        pos,
                                        ParseErrorKind::UndefinedVariable(name.clone()),
                                    ));
                                }
                            }
                        }
                        self.i += 4;
                        pipe.is_assign = assign;
                        pipe.decl.push(v);
                        pipe.decl.push(v2);
                        if let Some(Token {
                            tok: Tok::Comma,
                            pos,
                            ..
                        }) = self.peek()
                        {
                            return Err((
                                *pos,
                                ParseErrorKind::TooManyDeclarations(context.to_owned()),
                            ));
                        }
                    }
                    (
                        Some(Token {
                            tok: Tok::Variable(_),
                            pos,
                            ..
                        }),
                        Some(Tok::Comma),
                    ) => {
                        return Err((pos, ParseErrorKind::TooManyDeclarations(context.to_owned())));
                    }
                    (Some(t), _) => {
                        return Err((t.pos, unexpected(&describe(&t.tok), "range declaration")));
                    }
                    (None, _) => return Err((self.src_len, ParseErrorKind::UnexpectedEof)),
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Operands up to `|`, `}}` or `)`; consumes a trailing `|`.
    fn command(&mut self) -> Result<Cmd, (usize, ParseErrorKind)> {
        let pos = self.peek().map_or(self.src_len, |t| t.pos);
        let mut args = Vec::new();
        loop {
            let Some(t) = self.peek().cloned() else {
                return Err((self.src_len, ParseErrorKind::UnexpectedEof));
            };
            match t.tok {
                Tok::RightDelim | Tok::RParen => break,
                Tok::Pipe => {
                    self.i += 1;
                    if args.is_empty() {
                        return Err((t.pos, ParseErrorKind::MissingValue("command".into())));
                    }
                    // `{{ .A | }}`: a pipe must be followed by a command.
                    match self.peek().map(|t| &t.tok) {
                        Some(Tok::RightDelim | Tok::RParen) | None => {
                            return Err((t.pos, ParseErrorKind::MissingValue("command".into())));
                        }
                        _ => {}
                    }
                    return Ok(Cmd { pos, args });
                }
                _ => {
                    if !args.is_empty() && !t.space_before {
                        return Err((t.pos, unexpected(&describe(&t.tok), "operand")));
                    }
                    let a = self.operand()?;
                    args.push(a);
                }
            }
        }
        if args.is_empty() {
            return Err((pos, ParseErrorKind::MissingValue("command".into())));
        }
        Ok(Cmd { pos, args })
    }

    /// A term and an optional field chain directly after it.
    fn operand(&mut self) -> Result<Arg, (usize, ParseErrorKind)> {
        let t = self.next_in_action()?;
        let pos = t.pos;
        let mut arg = match t.tok {
            Tok::Field(f) => Arg::Field {
                pos,
                chain: vec![f],
            },
            Tok::Variable(name) => {
                if !self.vars.contains(&name) {
                    return Err((pos, ParseErrorKind::UndefinedVariable(name)));
                }
                Arg::Variable {
                    pos,
                    name,
                    chain: Vec::new(),
                }
            }
            Tok::Dot => Arg::Dot(pos),
            Tok::Nil => Arg::Nil(pos),
            Tok::Bool(b) => Arg::Bool(pos, b),
            Tok::Number(n) => Arg::Number(
                pos,
                parse_number(&n).ok_or((pos, ParseErrorKind::BadNumber(n)))?,
            ),
            Tok::Str(s) => Arg::Str(pos, s),
            Tok::Ident(name) => {
                if !is_builtin(&name) {
                    return Err((pos, ParseErrorKind::UndefinedFunction(name)));
                }
                Arg::Func(pos, name)
            }
            Tok::LParen => {
                self.enter(pos)?;
                let pipe = self.pipeline("parenthesized pipeline", pos)?;
                self.depth -= 1;
                match self.next_in_action()? {
                    Token {
                        tok: Tok::RParen, ..
                    } => {}
                    other => {
                        return Err((
                            other.pos,
                            unexpected(&describe(&other.tok), "parenthesized pipeline"),
                        ));
                    }
                }
                Arg::Pipe {
                    pos,
                    pipe: Box::new(pipe),
                    chain: Vec::new(),
                }
            }
            other => return Err((pos, unexpected(&describe(&other), "operand"))),
        };
        while let Some(Token {
            tok: Tok::Field(f),
            space_before: false,
            pos: fpos,
        }) = self.peek().cloned()
        {
            self.i += 1;
            match &mut arg {
                Arg::Field { chain, .. }
                | Arg::Variable { chain, .. }
                | Arg::Pipe { chain, .. } => chain.push(f),
                Arg::Func(p, name) => {
                    // Go evaluates `fn.Field` by calling `fn` with no arguments.
                    let call = Pipe {
                        pos: *p,
                        decl: Vec::new(),
                        is_assign: false,
                        cmds: vec![Cmd {
                            pos: *p,
                            args: vec![Arg::Func(*p, name.clone())],
                        }],
                    };
                    arg = Arg::Pipe {
                        pos: *p,
                        pipe: Box::new(call),
                        chain: vec![f],
                    };
                }
                other => return Err((fpos, ParseErrorKind::FieldAfterTerm(term_text(other)))),
            }
        }
        Ok(arg)
    }
}

fn third_tok(t: Option<&Token>) -> Option<&Tok> {
    t.map(|t| &t.tok)
}

fn term_text(a: &Arg) -> String {
    match a {
        Arg::Dot(_) => ".".into(),
        Arg::Nil(_) => "nil".into(),
        Arg::Bool(_, b) => b.to_string(),
        Arg::Number(_, Number::Int(i)) => i.to_string(),
        Arg::Number(_, Number::Float(f)) => f.to_string(),
        Arg::Str(_, s) => format!("{s:?}"),
        _ => "term".into(),
    }
}

/// How Go's parser names a token in "unexpected X" errors.
fn describe(t: &Tok) -> String {
    match t {
        Tok::Text(s) => format!("{s:?}"),
        Tok::LeftDelim => "{{".into(),
        Tok::RightDelim => "}}".into(),
        Tok::Field(f) => format!("<.{f}>"),
        Tok::Variable(v) => format!("<{v}>"),
        Tok::Dot => "<.>".into(),
        Tok::Ident(w) => format!("<{w}>"),
        Tok::Bool(b) => format!("<{b}>"),
        Tok::Nil => "<nil>".into(),
        Tok::Number(n) => format!("<{n}>"),
        Tok::Str(s) => format!("{s:?}"),
        Tok::Pipe => "<|>".into(),
        Tok::LParen => "<(>".into(),
        Tok::RParen => "<)>".into(),
        Tok::Declare => "<:=>".into(),
        Tok::Assign => "<=>".into(),
        Tok::Comma => "<,>".into(),
    }
}

/// Go's number literals: decimal, `0x`, `0o`, `0b`, legacy leading-`0` octal, `_`
/// separators, decimal floats with exponents, character constants. Complex numbers and
/// hexadecimal floats are not supported (Go accepts them; no ClusterSPIFFEID needs them).
pub(crate) fn parse_number(text: &str) -> Option<Number> {
    if let Some(body) = text.strip_prefix('\'') {
        let body = body.strip_suffix('\'')?;
        let s = crate::lexer::unescape(body, '\'').ok()?;
        let mut cs = s.chars();
        let c = cs.next()?;
        return if cs.next().is_none() {
            Some(Number::Int(i64::from(u32::from(c))))
        } else {
            None
        };
    }
    let (neg, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if unsigned.is_empty()
        || unsigned.starts_with('_')
        || unsigned.ends_with('_')
        || unsigned.contains("__")
    {
        return None;
    }
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1
        && lower.starts_with('0')
        && lower.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() {
        return None;
    }
    if radix == 10 && digits.contains(['.', 'e']) {
        // Rust's float grammar is a superset of Go's decimal floats except that it takes
        // "inf"/"nan", which cannot reach here (the lexer starts numbers with a digit,
        // sign or '.').
        if !digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'+' | b'-'))
        {
            return None;
        }
        let f: f64 = digits.parse().ok()?;
        return Some(Number::Float(if neg { -f } else { f }));
    }
    match u64::from_str_radix(&digits, radix) {
        Ok(u) => {
            let i = if neg {
                0i64.checked_sub_unsigned(u)?
            } else {
                i64::try_from(u).ok()?
            };
            Some(Number::Int(i))
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("42"), Some(Number::Int(42)));
        assert_eq!(parse_number("-0x1F"), Some(Number::Int(-31)));
        assert_eq!(parse_number("0o17"), Some(Number::Int(15)));
        assert_eq!(parse_number("017"), Some(Number::Int(15)));
        assert_eq!(parse_number("0b101"), Some(Number::Int(5)));
        assert_eq!(parse_number("1_000"), Some(Number::Int(1000)));
        assert_eq!(parse_number("1.5"), Some(Number::Float(1.5)));
        assert_eq!(parse_number("1e3"), Some(Number::Float(1000.0)));
        assert_eq!(parse_number(".5"), Some(Number::Float(0.5)));
        assert_eq!(parse_number("'a'"), Some(Number::Int(97)));
        assert_eq!(parse_number(r"'\n'"), Some(Number::Int(10)));
        assert_eq!(parse_number("1x"), None);
        assert_eq!(parse_number("08"), None);
        assert_eq!(parse_number("1__0"), None);
        assert_eq!(parse_number("99999999999999999999"), None);
    }
}
