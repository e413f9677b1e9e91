//! Parse and execution errors.
//!
//! Both carry the template name and the 1-based line and column (in characters) of the
//! token or node at fault, and render roughly like Go's `template: name:line:col: ...`
//! messages. The texts after the position follow Go's wording where Go has one, so an
//! operator who knows spire-controller-manager's logs recognises them; they are not
//! byte-identical (Go names concrete Go types, which JSON data does not have).

use std::fmt;

/// Where in the template source an error happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The name given to [`crate::Template::parse`].
    pub name: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
}

/// A template that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: {pos}: {kind}")]
pub struct ParseError {
    /// Where.
    pub pos: Position,
    /// What.
    pub kind: ParseErrorKind,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// `{{` without a matching `}}`.
    #[error("unclosed action")]
    UnclosedAction,
    /// `{{/*` without `*/`.
    #[error("unclosed comment")]
    UnclosedComment,
    /// `*/` not directly followed by `}}` (or ` -}}`).
    #[error("comment ends before closing delimiter")]
    CommentNotClosedByDelim,
    /// A character that cannot start a token inside an action.
    #[error("unrecognized character in action: {0:?}")]
    BadCharacter(char),
    /// A number Go would not accept (or one this crate does not support: complex and hex
    /// floats).
    #[error("bad number syntax: {0:?}")]
    BadNumber(String),
    /// A string, raw string or character literal that is malformed or unterminated.
    #[error("bad literal: {0}")]
    BadLiteral(String),
    /// A `(` without `)` or the reverse.
    #[error("unbalanced parentheses")]
    UnbalancedParens,
    /// A token where the grammar does not allow it.
    #[error("unexpected {found} in {context}")]
    Unexpected {
        /// The token, as Go would show it.
        found: String,
        /// The construct being parsed.
        context: String,
    },
    /// A pipeline with no command (`{{}}`, `{{ if }}`, `{{ 1 | }}`).
    #[error("missing value for {0}")]
    MissingValue(String),
    /// A literal after `|` (Go: "non executable command in pipeline stage").
    #[error("non executable command in pipeline stage {0}")]
    NonExecutable(usize),
    /// `$x` used but not declared in scope.
    #[error("undefined variable {0:?}")]
    UndefinedVariable(String),
    /// A function that is not one of Go's builtins (no FuncMap is supported).
    #[error("function {0:?} not defined")]
    UndefinedFunction(String),
    /// `.Field` directly after a literal or `.` (Go: "unexpected . after term").
    #[error("unexpected . after term {0:?}")]
    FieldAfterTerm(String),
    /// More variables than the construct allows.
    #[error("too many declarations in {0}")]
    TooManyDeclarations(String),
    /// `{{break}}` / `{{continue}}` outside a `{{range}}` body.
    #[error("{{{{{0}}}}} outside {{{{range}}}}")]
    OutsideRange(String),
    /// The template ended inside an `if`/`with`/`range`.
    #[error("unexpected EOF")]
    UnexpectedEof,
    /// Actions nested deeper than the parser allows (protects the stack).
    #[error("max nesting depth exceeded")]
    TooDeep,
    /// `{{define}}`, `{{template}}` and `{{block}}`: not needed by spire-controller-manager's
    /// single-template fields, so not implemented.
    #[error("{{{{{0}}}}} is not supported")]
    Unsupported(String),
}

/// A template that failed while executing against some data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: {pos}: executing {name:?}: {kind}", name = pos.name)]
pub struct ExecError {
    /// Where (the node being executed).
    pub pos: Position,
    /// What.
    pub kind: ExecErrorKind,
}

/// Why execution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecErrorKind {
    /// `.X` on a value that has no field `X`: a scalar, a list, or a struct object
    /// (see [`crate::DataModel`]) without that key.
    #[error("can't evaluate field {field} in type {ty}")]
    CantEvaluateField {
        /// The field name.
        field: String,
        /// Go-like name of the receiver's type.
        ty: String,
    },
    /// `.X` on a nil pointer / nil interface.
    #[error("nil pointer evaluating {ty}.{field}")]
    NilPointer {
        /// The field name.
        field: String,
        /// Go-like name of the receiver's type.
        ty: String,
    },
    /// Arguments given to something that is not a function (a field, variable, literal or
    /// parenthesised pipeline), e.g. `{{ .A 1 }}` or `{{ 1 | .A }}`.
    #[error("can't give argument to non-function {0}")]
    ArgsToNonFunction(String),
    /// `{{ nil }}` as a command.
    #[error("nil is not a command")]
    NilCommand,
    /// A builtin called with the wrong number of arguments.
    #[error("wrong number of args for {func}: want {want} got {got}")]
    WrongArgCount {
        /// The builtin.
        func: String,
        /// Go's wording: `1` or `at least 1`.
        want: String,
        /// Arguments given.
        got: usize,
    },
    /// A builtin returned an error (Go: "error calling X: ...").
    #[error("error calling {func}: {msg}")]
    Call {
        /// The builtin.
        func: String,
        /// Its message, in Go's words.
        msg: String,
    },
    /// An argument whose type the builtin's Go signature does not accept (e.g. a number as
    /// `printf`'s format).
    #[error("wrong type for value; expected {expected}; got {got}")]
    WrongType {
        /// Go's parameter type.
        expected: String,
        /// What was given.
        got: String,
    },
    /// `range` over a value that is neither a list, a map nor an integer.
    #[error("range can't iterate over {0}")]
    RangeCantIterate(String),
    /// Go's `range $i, $v := N` over an integer.
    #[error("can't use {0} to iterate over more than one variable")]
    RangeIntTwoVars(String),
    /// A variable that is not in scope at run time (declared in a branch not taken).
    #[error("undefined variable: {0}")]
    UndefinedVariable(String),
    /// The output grew beyond [`crate::MAX_OUTPUT`] bytes or execution took more than
    /// [`crate::MAX_STEPS`] steps. Go has no such limit; templates in ClusterSPIFFEIDs are
    /// not trusted to terminate quickly (`{{ range 1000000000 }}`).
    #[error("execution limit exceeded")]
    LimitExceeded,
}

// === impl Position ===

impl Position {
    /// Line and column of byte offset `offset` in `text`.
    pub(crate) fn at(name: &str, text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        // Offsets come from the lexer and are always char boundaries; fall back to the
        // whole prefix search if not, rather than panic.
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Position {
            name: name.to_owned(),
            line,
            col,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.name, self.line, self.col)
    }
}
