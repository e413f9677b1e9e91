//! Walks the tree against JSON data, Go's `text/template` execution rules.

use serde_json::Value;

use crate::error::{ExecError, ExecErrorKind, Position};
use crate::fmt::format_v;
use crate::funcs;
use crate::parse::{Arg, Branch, Cmd, List, Node, Number, Pipe};
use crate::value::{Ctx, DataModel, Val};
use crate::{MAX_OUTPUT, MAX_STEPS};

/// What a list asks of the enclosing `range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Normal,
    Break,
    Continue,
}

/// One execution.
pub(crate) struct State<'t, 'd> {
    name: &'t str,
    src: &'t str,
    model: &'t DataModel,
    /// Variables in scope, innermost last; `$` first.
    vars: Vec<(String, Val<'d>)>,
    out: String,
    steps: usize,
}

type Res<T> = Result<T, ExecError>;

// === impl State ===

impl<'t, 'd> State<'t, 'd> {
    pub(crate) fn new(name: &'t str, src: &'t str, model: &'t DataModel) -> Self {
        State {
            name,
            src,
            model,
            vars: Vec::new(),
            out: String::new(),
            steps: 0,
        }
    }

    pub(crate) fn run(mut self, root: &'t List, data: &'d Value) -> Res<String> {
        let dot = Val::from_json(data, self.model.root_ctx());
        self.vars.push(("$".to_owned(), dot.clone()));
        // The parser rejects break/continue outside range, so the flow here is Normal.
        self.walk_list(&dot, root)?;
        Ok(self.out)
    }

    fn err(&self, pos: usize, kind: ExecErrorKind) -> ExecError {
        ExecError {
            pos: Position::at(self.name, self.src, pos),
            kind,
        }
    }

    fn step(&mut self, pos: usize) -> Res<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS || self.out.len() > MAX_OUTPUT {
            return Err(self.err(pos, ExecErrorKind::LimitExceeded));
        }
        Ok(())
    }

    fn walk_list(&mut self, dot: &Val<'d>, list: &'t [Node]) -> Res<Flow> {
        for node in list {
            let flow = self.walk(dot, node)?;
            if flow != Flow::Normal {
                return Ok(flow);
            }
        }
        Ok(Flow::Normal)
    }

    fn walk(&mut self, dot: &Val<'d>, node: &'t Node) -> Res<Flow> {
        match node {
            Node::Text(t) => {
                self.out.push_str(t);
                self.step(0)?;
            }
            Node::Action(pipe) => {
                self.step(pipe.pos)?;
                let v = self.eval_pipe(dot, pipe)?;
                if pipe.decl.is_empty() {
                    self.print(&v);
                }
            }
            Node::If(b) => return self.if_or_with(dot, b, false),
            Node::With(b) => return self.if_or_with(dot, b, true),
            Node::Range(b) => return self.range(dot, b),
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
        }
        Ok(Flow::Normal)
    }

    /// What `{{ pipeline }}` prints: `<no value>` for a missing value (Go's invalid
    /// `reflect.Value`, which a nil interface also unwraps to), else `%v`.
    fn print(&mut self, v: &Val<'d>) {
        match v {
            Val::NoValue | Val::Nil => self.out.push_str("<no value>"),
            other => self.out.push_str(&format_v(other)),
        }
    }

    fn if_or_with(&mut self, dot: &Val<'d>, b: &'t Branch, with: bool) -> Res<Flow> {
        self.step(b.pipe.pos)?;
        let mark = self.vars.len();
        let v = self.eval_pipe(dot, &b.pipe)?;
        let flow = if v.truth() {
            let inner = if with { v } else { dot.clone() };
            self.walk_list(&inner, &b.body)?
        } else if let Some(e) = &b.else_body {
            self.walk_list(dot, e)?
        } else {
            Flow::Normal
        };
        self.vars.truncate(mark);
        Ok(flow)
    }

    fn range(&mut self, dot: &Val<'d>, b: &'t Branch) -> Res<Flow> {
        let pos = b.pipe.pos;
        self.step(pos)?;
        let mark = self.vars.len();
        let v = self.eval_cmds(dot, &b.pipe)?;
        if !b.pipe.is_assign {
            for name in &b.pipe.decl {
                self.vars.push((name.clone(), Val::NoValue));
            }
        }
        let mut items: Vec<(Val<'d>, Val<'d>)> = Vec::new();
        match &v {
            Val::List(l, ctx) => {
                for (i, e) in l.iter().enumerate() {
                    items.push((Val::Int(i as i64), Val::from_json(e, *ctx)));
                }
            }
            Val::Map(m) => {
                for (k, e) in crate::value::sorted_entries(m) {
                    items.push((Val::Str(k.as_str().into()), Val::from_json(e, Ctx::Any)));
                }
            }
            Val::NilMap | Val::NoValue | Val::Nil => {}
            Val::Int(_) | Val::Uint(_) => {
                // Go 1.22: range over an integer n yields 0..n-1.
                if b.pipe.decl.len() > 1 {
                    return Err(self.err(pos, ExecErrorKind::RangeIntTwoVars(format_v(&v))));
                }
                let n = match v {
                    Val::Int(i) => u64::try_from(i).unwrap_or(0),
                    Val::Uint(u) => u,
                    _ => 0,
                };
                if n > MAX_STEPS as u64 {
                    return Err(self.err(pos, ExecErrorKind::LimitExceeded));
                }
                for i in 0..n {
                    items.push((Val::Int(i as i64), Val::Int(i as i64)));
                }
            }
            other => return Err(self.err(pos, ExecErrorKind::RangeCantIterate(format_v(other)))),
        }
        if items.is_empty() {
            let flow = match &b.else_body {
                Some(e) => self.walk_list(dot, e)?,
                None => Flow::Normal,
            };
            self.vars.truncate(mark);
            // break/continue in the else body belong to an enclosing range.
            return Ok(flow);
        }
        for (index, elem) in items {
            self.step(pos)?;
            match b.pipe.decl.as_slice() {
                [] => {}
                [one] => self.bind(pos, one, elem.clone())?,
                [first, second, ..] => {
                    self.bind(pos, first, index)?;
                    self.bind(pos, second, elem.clone())?;
                }
            }
            let inner_mark = self.vars.len();
            let flow = self.walk_list(&elem, &b.body)?;
            self.vars.truncate(inner_mark);
            if flow == Flow::Break {
                break;
            }
        }
        self.vars.truncate(mark);
        Ok(Flow::Normal)
    }

    /// Sets a variable (range element or `$x = ...`): the innermost one of that name.
    fn bind(&mut self, pos: usize, name: &str, v: Val<'d>) -> Res<()> {
        match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            Some(slot) => {
                slot.1 = v;
                Ok(())
            }
            None => Err(self.err(pos, ExecErrorKind::UndefinedVariable(name.to_owned()))),
        }
    }

    /// A pipeline's value, binding its declarations.
    fn eval_pipe(&mut self, dot: &Val<'d>, pipe: &'t Pipe) -> Res<Val<'d>> {
        let v = self.eval_cmds(dot, pipe)?;
        for name in &pipe.decl {
            if pipe.is_assign {
                self.bind(pipe.pos, name, v.clone())?;
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    /// A pipeline's value without binding (range binds per element).
    fn eval_cmds(&mut self, dot: &Val<'d>, pipe: &'t Pipe) -> Res<Val<'d>> {
        let mut last: Option<Val<'d>> = None;
        for cmd in &pipe.cmds {
            last = Some(self.eval_cmd(dot, cmd, last)?);
        }
        // The parser guarantees at least one command.
        Ok(last.unwrap_or(Val::NoValue))
    }

    fn eval_cmd(&mut self, dot: &Val<'d>, cmd: &'t Cmd, fin: Option<Val<'d>>) -> Res<Val<'d>> {
        let Some(first) = cmd.args.first() else {
            return Err(self.err(cmd.pos, ExecErrorKind::NilCommand));
        };
        if let Arg::Func(pos, name) = first {
            return self.call(dot, *pos, name, &cmd.args[1..], fin);
        }
        if let Arg::Nil(pos) = first {
            return Err(self.err(*pos, ExecErrorKind::NilCommand));
        }
        if cmd.args.len() > 1 || fin.is_some() {
            return Err(self.err(
                arg_pos(first),
                ExecErrorKind::ArgsToNonFunction(arg_text(first)),
            ));
        }
        self.eval_arg(dot, first)
    }

    fn eval_arg(&mut self, dot: &Val<'d>, arg: &'t Arg) -> Res<Val<'d>> {
        match arg {
            Arg::Field { pos, chain } => self.chain(*pos, dot.clone(), chain),
            Arg::Variable { pos, name, chain } => {
                let v = match self.vars.iter().rev().find(|(n, _)| n == name) {
                    Some((_, v)) => v.clone(),
                    None => {
                        return Err(self.err(*pos, ExecErrorKind::UndefinedVariable(name.clone())));
                    }
                };
                self.chain(*pos, v, chain)
            }
            Arg::Dot(_) => Ok(dot.clone()),
            Arg::Nil(_) => Ok(Val::Nil),
            Arg::Bool(_, b) => Ok(Val::Bool(*b)),
            Arg::Number(_, Number::Int(i)) => Ok(Val::Int(*i)),
            Arg::Number(_, Number::Float(f)) => Ok(Val::Float(*f)),
            Arg::Str(_, s) => Ok(Val::Str(s.clone().into())),
            Arg::Func(pos, name) => self.call(dot, *pos, name, &[], None),
            Arg::Pipe { pos, pipe, chain } => {
                let v = self.eval_pipe(dot, pipe)?;
                self.chain(*pos, v, chain)
            }
        }
    }

    fn chain(&self, pos: usize, mut v: Val<'d>, chain: &[String]) -> Res<Val<'d>> {
        for f in chain {
            v = self.field(pos, v, f)?;
        }
        Ok(v)
    }

    /// `.name` on `recv`, Go's `evalField` for maps and structs.
    fn field(&self, pos: usize, recv: Val<'d>, name: &str) -> Res<Val<'d>> {
        match recv {
            // Go: a field of nothing is nothing (and a missing key in a nil map too).
            Val::NoValue | Val::NilMap => Ok(Val::NoValue),
            Val::Nil | Val::NilPtr => Err(self.err(
                pos,
                ExecErrorKind::NilPointer {
                    field: name.to_owned(),
                    ty: recv.type_name(),
                },
            )),
            Val::Map(m) => Ok(m
                .get(name)
                .map_or(Val::NoValue, |v| Val::from_json(v, Ctx::Any))),
            Val::Struct(m) => match m.get(name) {
                Some(v) => Ok(Val::from_json(v, self.model.field_ctx(name))),
                None if self.model.is_map_field(name) => Ok(Val::NilMap),
                None => Err(self.err(
                    pos,
                    ExecErrorKind::CantEvaluateField {
                        field: name.to_owned(),
                        ty: recv.type_name(),
                    },
                )),
            },
            other => Err(self.err(
                pos,
                ExecErrorKind::CantEvaluateField {
                    field: name.to_owned(),
                    ty: other.type_name(),
                },
            )),
        }
    }

    fn call(
        &mut self,
        dot: &Val<'d>,
        pos: usize,
        name: &str,
        args: &'t [Arg],
        fin: Option<Val<'d>>,
    ) -> Res<Val<'d>> {
        let Some(arity) = funcs::arity(name) else {
            return Err(self.err(
                pos,
                ExecErrorKind::Call {
                    func: name.to_owned(),
                    msg: "not defined".into(),
                },
            ));
        };
        let n = args.len() + usize::from(fin.is_some());
        if (arity.variadic && n < arity.fixed) || (!arity.variadic && n != arity.fixed) {
            let want = if arity.variadic {
                format!("at least {}", arity.fixed)
            } else {
                arity.fixed.to_string()
            };
            return Err(self.err(
                pos,
                ExecErrorKind::WrongArgCount {
                    func: name.to_owned(),
                    want,
                    got: n,
                },
            ));
        }
        if name == "and" || name == "or" {
            // Go 1.18+: evaluate left to right, stop at the first false (and) / true (or)
            // argument and return it; else return the last.
            let stop_on = name == "or";
            let mut last = Val::NoValue;
            for a in args {
                last = self.eval_arg(dot, a)?;
                if last.truth() == stop_on {
                    return Ok(last);
                }
            }
            if let Some(f) = fin {
                last = f;
            }
            return Ok(last);
        }
        let mut vals = Vec::with_capacity(n);
        for a in args {
            vals.push(self.eval_arg(dot, a)?);
        }
        if let Some(f) = fin {
            vals.push(f);
        }
        if name == "printf" {
            match vals.first() {
                Some(Val::Str(_)) => {}
                Some(Val::NoValue) => {
                    return Err(self.err(
                        pos,
                        ExecErrorKind::WrongType {
                            expected: "string".into(),
                            got: "invalid value".into(),
                        },
                    ));
                }
                Some(other) => {
                    let got = other.type_name();
                    return Err(self.err(
                        pos,
                        ExecErrorKind::WrongType {
                            expected: "string".into(),
                            got,
                        },
                    ));
                }
                None => {}
            }
        }
        let r = funcs::call(name, vals).map_err(|msg| {
            self.err(
                pos,
                ExecErrorKind::Call {
                    func: name.to_owned(),
                    msg,
                },
            )
        })?;
        if self.out.len() + r_len(&r) > MAX_OUTPUT {
            return Err(self.err(pos, ExecErrorKind::LimitExceeded));
        }
        Ok(r)
    }
}

fn r_len(v: &Val<'_>) -> usize {
    match v {
        Val::Str(s) => s.len(),
        _ => 0,
    }
}

fn arg_pos(a: &Arg) -> usize {
    match a {
        Arg::Field { pos, .. } | Arg::Variable { pos, .. } | Arg::Pipe { pos, .. } => *pos,
        Arg::Dot(p)
        | Arg::Nil(p)
        | Arg::Bool(p, _)
        | Arg::Number(p, _)
        | Arg::Str(p, _)
        | Arg::Func(p, _) => *p,
    }
}

/// The operand as Go shows it in "can't give argument to non-function" errors.
fn arg_text(a: &Arg) -> String {
    match a {
        Arg::Field { chain, .. } => chain.iter().map(|f| format!(".{f}")).collect(),
        Arg::Variable { name, chain, .. } => format!(
            "{name}{}",
            chain.iter().map(|f| format!(".{f}")).collect::<String>()
        ),
        Arg::Dot(_) => ".".into(),
        Arg::Nil(_) => "nil".into(),
        Arg::Bool(_, b) => b.to_string(),
        Arg::Number(_, Number::Int(i)) => i.to_string(),
        Arg::Number(_, Number::Float(f)) => f.to_string(),
        Arg::Str(_, s) => format!("{s:?}"),
        Arg::Func(_, n) => n.clone(),
        Arg::Pipe { .. } => "(pipeline)".into(),
    }
}
