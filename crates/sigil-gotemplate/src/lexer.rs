//! Tokens of Go's template syntax.
//!
//! The lexer turns the source into text runs and action tokens, applying trim markers
//! (`{{- ` and ` -}}`) and dropping comments on the way, so the parser never sees either.
//! Whitespace inside actions is not a token: each token records whether whitespace came
//! before it, which is all the parser needs (Go's grammar uses it to tell `.A.B`, a field
//! chain, from `.A .B`, two operands).

use crate::error::ParseErrorKind;

/// One lexical item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// Literal text between actions, trim markers already applied.
    Text(String),
    /// `{{`.
    LeftDelim,
    /// `}}`.
    RightDelim,
    /// `.Name` (one element of a field chain).
    Field(String),
    /// `$` or `$name`.
    Variable(String),
    /// A lone `.`.
    Dot,
    /// A bare word: a function name or a keyword.
    Ident(String),
    /// `true` / `false`.
    Bool(bool),
    /// `nil`.
    Nil,
    /// A number or character constant, as written.
    Number(String),
    /// A quoted or raw string, already unquoted.
    Str(String),
    /// `|`.
    Pipe,
    /// `(`.
    LParen,
    /// `)`.
    RParen,
    /// `:=`.
    Declare,
    /// `=`.
    Assign,
    /// `,`.
    Comma,
}

/// A token and where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    /// Byte offset into the source.
    pub pos: usize,
    /// Whether whitespace separates this token from the previous one in the same action.
    pub space_before: bool,
}

/// Go's trim markers are a `-` next to the delimiter, separated from the action by one of
/// these (Go's `isSpace`).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Lexes the whole source. Errors carry the byte offset where they happened.
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, (usize, ParseErrorKind)> {
    let mut lx = Lexer {
        src,
        pos: 0,
        out: Vec::new(),
    };
    lx.run()?;
    Ok(lx.out)
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    out: Vec<Token>,
}

// === impl Lexer ===

impl Lexer<'_> {
    fn rest(&self) -> &str {
        // `pos` only ever advances by whole chars.
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn push(&mut self, tok: Tok, pos: usize, space_before: bool) {
        self.out.push(Token {
            tok,
            pos,
            space_before,
        });
    }

    /// `{{- ` at the start of `s`'s action: the `-` and one space.
    fn left_trim_marker(s: &str) -> bool {
        let mut cs = s.chars();
        cs.next() == Some('-') && cs.next().is_some_and(is_space)
    }

    /// ` -}}` at the start of `s`.
    fn right_trim_delim(s: &str) -> bool {
        let mut cs = s.chars();
        cs.next().is_some_and(is_space) && s.get(1..).is_some_and(|r| r.starts_with("-}}"))
    }

    fn run(&mut self) -> Result<(), (usize, ParseErrorKind)> {
        let mut trim_next_text = false;
        loop {
            let start = self.pos;
            let rest = self.rest();
            let (text_end, at_delim) = match rest.find("{{") {
                Some(i) => (start + i, true),
                None => (self.src.len(), false),
            };
            let mut text = &self.src[start..text_end];
            if trim_next_text {
                text = text.trim_start_matches(is_space);
            }
            let after_delim = text_end + 2;
            let left_trim =
                at_delim && Self::left_trim_marker(self.src.get(after_delim..).unwrap_or(""));
            if left_trim {
                text = text.trim_end_matches(is_space);
            }
            if !text.is_empty() {
                self.push(Tok::Text(text.to_owned()), start, false);
            }
            if !at_delim {
                return Ok(());
            }
            self.pos = after_delim + if left_trim { 2 } else { 0 };
            if self.rest().starts_with("/*") {
                trim_next_text = self.comment(text_end)?;
                continue;
            }
            self.push(Tok::LeftDelim, text_end, false);
            trim_next_text = self.action(text_end)?;
        }
    }

    /// A `{{/* ... */}}` comment; `self.pos` is at `/*`. Returns whether it ended with a
    /// right trim marker.
    fn comment(&mut self, delim_pos: usize) -> Result<bool, (usize, ParseErrorKind)> {
        let Some(end) = self.rest().find("*/") else {
            return Err((delim_pos, ParseErrorKind::UnclosedComment));
        };
        self.pos += end + 2;
        if self.rest().starts_with("}}") {
            self.pos += 2;
            Ok(false)
        } else if Self::right_trim_delim(self.rest()) {
            self.pos += 4;
            Ok(true)
        } else {
            Err((delim_pos, ParseErrorKind::CommentNotClosedByDelim))
        }
    }

    /// Tokens of one action up to and including its `}}`. Returns whether the closing
    /// delimiter had a trim marker.
    fn action(&mut self, delim_pos: usize) -> Result<bool, (usize, ParseErrorKind)> {
        let mut space = false;
        let mut depth = 0usize;
        loop {
            let pos = self.pos;
            let rest = self.rest();
            let (closing, trim) = if Self::right_trim_delim(rest) {
                (true, true)
            } else {
                (rest.starts_with("}}"), false)
            };
            if closing {
                if depth > 0 {
                    return Err((pos, ParseErrorKind::UnbalancedParens));
                }
                let tok_pos = if trim { pos + 1 } else { pos };
                self.push(Tok::RightDelim, tok_pos, space || trim);
                self.pos += if trim { 4 } else { 2 };
                return Ok(trim);
            }
            let Some(c) = self.bump() else {
                return Err((delim_pos, ParseErrorKind::UnclosedAction));
            };
            match c {
                c if is_space(c) => {
                    space = true;
                    continue;
                }
                '|' => self.push(Tok::Pipe, pos, space),
                ',' => self.push(Tok::Comma, pos, space),
                '=' => self.push(Tok::Assign, pos, space),
                ':' => {
                    if self.bump() != Some('=') {
                        return Err((pos, ParseErrorKind::BadCharacter(':')));
                    }
                    self.push(Tok::Declare, pos, space);
                }
                '(' => {
                    depth += 1;
                    self.push(Tok::LParen, pos, space);
                }
                ')' => {
                    if depth == 0 {
                        return Err((pos, ParseErrorKind::UnbalancedParens));
                    }
                    depth -= 1;
                    self.push(Tok::RParen, pos, space);
                }
                '"' => {
                    let s = self.quoted(pos)?;
                    self.push(Tok::Str(s), pos, space);
                }
                '`' => {
                    let Some(end) = self.rest().find('`') else {
                        return Err((
                            pos,
                            ParseErrorKind::BadLiteral("unterminated raw quoted string".into()),
                        ));
                    };
                    let s = self.rest()[..end].to_owned();
                    self.pos += end + 1;
                    self.push(Tok::Str(s), pos, space);
                }
                '\'' => {
                    let n = self.char_constant(pos)?;
                    self.push(Tok::Number(n), pos, space);
                }
                '$' => {
                    let name = self.word();
                    self.push(Tok::Variable(format!("${name}")), pos, space);
                    self.check_terminator()?;
                }
                '.' => {
                    if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        // `.5` is a number.
                        self.pos = pos;
                        let n = self.number()?;
                        self.push(Tok::Number(n), pos, space);
                    } else if self.peek().is_some_and(is_alnum) {
                        let name = self.word();
                        self.push(Tok::Field(name), pos, space);
                        self.check_terminator()?;
                    } else {
                        self.push(Tok::Dot, pos, space);
                    }
                }
                '+' | '-' | '0'..='9' => {
                    self.pos = pos;
                    let n = self.number()?;
                    self.push(Tok::Number(n), pos, space);
                }
                c if is_alnum(c) => {
                    self.pos = pos;
                    let w = self.word();
                    let tok = match w.as_str() {
                        "true" => Tok::Bool(true),
                        "false" => Tok::Bool(false),
                        "nil" => Tok::Nil,
                        _ => Tok::Ident(w),
                    };
                    self.push(tok, pos, space);
                    self.check_terminator()?;
                }
                other => return Err((pos, ParseErrorKind::BadCharacter(other))),
            }
            space = false;
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_alnum) {
            self.bump();
        }
        self.src[start..self.pos].to_owned()
    }

    /// Go requires a word to be followed by a space, a delimiter or punctuation
    /// (`{{ .A"x" }}` is an error, not two operands).
    fn check_terminator(&self) -> Result<(), (usize, ParseErrorKind)> {
        let rest = self.rest();
        match rest.chars().next() {
            None => Ok(()),
            Some(c) if is_space(c) || matches!(c, '.' | ',' | '|' | ':' | ')' | '(') => Ok(()),
            Some(_) if rest.starts_with("}}") => Ok(()),
            Some(c) => Err((self.pos, ParseErrorKind::BadCharacter(c))),
        }
    }

    /// Scans a number's characters (validated later by the parser, like Go's lexer, which
    /// accepts a superset and lets the parser reject it).
    fn number(&mut self) -> Result<String, (usize, ParseErrorKind)> {
        let start = self.pos;
        if matches!(self.peek(), Some('+' | '-')) {
            self.bump();
        }
        let mut prev = ' ';
        while let Some(c) = self.peek() {
            let exp_sign = matches!(c, '+' | '-') && matches!(prev, 'e' | 'E' | 'p' | 'P');
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || exp_sign {
                prev = c;
                self.bump();
            } else {
                break;
            }
        }
        let text = &self.src[start..self.pos];
        if text == "+" || text == "-" {
            return Err((start, ParseErrorKind::BadNumber(text.to_owned())));
        }
        if self.peek().is_some_and(is_alnum) {
            return Err((start, ParseErrorKind::BadNumber(text.to_owned())));
        }
        Ok(text.to_owned())
    }

    fn quoted(&mut self, start: usize) -> Result<String, (usize, ParseErrorKind)> {
        let body_start = self.pos;
        loop {
            match self.bump() {
                None | Some('\n') => {
                    return Err((
                        start,
                        ParseErrorKind::BadLiteral("unterminated quoted string".into()),
                    ));
                }
                Some('\\') => {
                    if self.bump().is_none() {
                        return Err((
                            start,
                            ParseErrorKind::BadLiteral("unterminated quoted string".into()),
                        ));
                    }
                }
                Some('"') => break,
                Some(_) => {}
            }
        }
        let body = &self.src[body_start..self.pos - 1];
        unescape(body, '"').map_err(|m| (start, ParseErrorKind::BadLiteral(m)))
    }

    /// `'a'`, `'\n'`: returned as the original text so the parser can tell it from an int
    /// literal (Go keeps the text too).
    fn char_constant(&mut self, start: usize) -> Result<String, (usize, ParseErrorKind)> {
        loop {
            match self.bump() {
                None | Some('\n') => {
                    return Err((
                        start,
                        ParseErrorKind::BadLiteral("unterminated character constant".into()),
                    ));
                }
                Some('\\') => {
                    self.bump();
                }
                Some('\'') => break,
                Some(_) => {}
            }
        }
        Ok(self.src[start..self.pos].to_owned())
    }
}

/// Go's escape sequences in interpreted string and character literals.
pub(crate) fn unescape(body: &str, quote: char) -> Result<String, String> {
    let mut out = String::with_capacity(body.len());
    let mut cs = body.chars().peekable();
    while let Some(c) = cs.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = cs.next() else {
            return Err("invalid escape at end of literal".into());
        };
        let simple = match e {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            q if q == quote => Some(q),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            continue;
        }
        let (digits, radix) = match e {
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            '0'..='7' => (3, 8),
            other => return Err(format!("unknown escape sequence \\{other}")),
        };
        let mut s = String::new();
        if radix == 8 {
            s.push(e);
        }
        while s.len() < digits {
            match cs.next() {
                Some(d) if d.is_digit(radix) => s.push(d),
                _ => return Err(format!("invalid escape \\{e}{s}")),
            }
        }
        let v = u32::from_str_radix(&s, radix).map_err(|_| format!("invalid escape \\{e}{s}"))?;
        if e == 'x' || radix == 8 {
            // Go's \x and octal escapes are bytes; a byte >= 0x80 alone is not valid
            // UTF-8, which a Rust string cannot hold.
            if v >= 0x80 {
                return Err(format!("escape \\{e}{s} is not valid UTF-8 on its own"));
            }
        }
        let ch = char::from_u32(v)
            .ok_or_else(|| format!("escape \\{e}{s} is an invalid Unicode code point"))?;
        out.push(ch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn trims_and_comments() {
        assert_eq!(
            toks("a  {{- .X -}}  b{{/* c */}}d {{- /* e */ -}} f"),
            vec![
                Tok::Text("a".into()),
                Tok::LeftDelim,
                Tok::Field("X".into()),
                Tok::RightDelim,
                Tok::Text("b".into()),
                Tok::Text("d".into()),
                Tok::Text("f".into()),
            ]
        );
    }

    #[test]
    fn negative_number_is_not_a_trim_marker() {
        assert_eq!(
            toks("{{-3}}"),
            vec![Tok::LeftDelim, Tok::Number("-3".into()), Tok::RightDelim]
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            lex("{{ .A"),
            Err((_, ParseErrorKind::UnclosedAction))
        ));
        assert!(matches!(
            lex("{{/* x"),
            Err((_, ParseErrorKind::UnclosedComment))
        ));
        assert!(matches!(
            lex("{{/* x */ }}"),
            Err((_, ParseErrorKind::CommentNotClosedByDelim))
        ));
        assert!(matches!(
            lex("{{ .A\"x\" }}"),
            Err((_, ParseErrorKind::BadCharacter('"')))
        ));
        assert!(matches!(
            lex("{{ ( }}"),
            Err((_, ParseErrorKind::UnbalancedParens))
        ));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            unescape(r#"a\n\t\x41\u00e9\101\""#, '"').unwrap(),
            "a\n\tAéA\""
        );
        assert!(unescape(r"\q", '"').is_err());
        assert!(unescape(r"\xff", '"').is_err());
    }
}
