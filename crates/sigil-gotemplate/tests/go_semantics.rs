//! Table tests of Go's `text/template` behaviour, expected outputs written from the Go
//! documentation (pkg.go.dev/text/template, pkg.go.dev/fmt) and Go's own behaviour.
//! Where the docs are silent the comment says what we rely on.

use serde_json::{Value, json};
use sigil_gotemplate::{DataModel, ExecErrorKind, ParseErrorKind, Template};

fn data() -> Value {
    json!({
        "Str": "hello", "Empty": "", "Int": 3, "Zero": 0, "Neg": -2, "Float": 1.5,
        "True": true, "False": false, "Nil": null,
        "List": ["a", "b", "c"], "EmptyList": [], "Ints": [1, 2, 3],
        "Map": {"b": 2, "a": 1, "c": 3}, "EmptyMap": {},
        "Nested": {"Inner": {"Deep": "x"}},
        "Labels": {"app": "web", "tier": "front"}
    })
}

fn render(src: &str) -> String {
    let t = Template::parse("t", src).unwrap_or_else(|e| panic!("parse {src:?}: {e}"));
    t.execute(&data())
        .unwrap_or_else(|e| panic!("execute {src:?}: {e}"))
}

#[test]
fn renders_like_go() {
    let cases: &[(&str, &str)] = &[
        // Text, fields, comments, trim markers.
        ("plain text", "plain text"),
        ("{{.Str}}", "hello"),
        ("{{ .Nested.Inner.Deep }}", "x"),
        ("{{/* a comment */}}x", "x"),
        ("a {{- /* c */ -}} b", "ab"),
        ("a  \n {{- .Str }}", "ahello"),
        ("{{ .Str -}}  \n b", "hellob"),
        ("{{- \"a\" -}} {{- \"b\" -}}", "ab"),
        ("{{ .Str\n }}", "hello"),
        // Missing data: a missing map key via field syntax is Go's invalid value, printed
        // `<no value>`; `index` returns the element type's zero value ("" for strings).
        ("{{.Missing}}", "<no value>"),
        ("{{.Labels.missing}}", "<no value>"),
        ("{{.Missing.Deeper}}", "<no value>"),
        ("{{index .Labels \"missing\"}}", ""),
        ("{{index .Labels \"app\"}}", "web"),
        // A null in a map[string]any is a nil interface: printed <no value> by an action,
        // <nil> when passed to print (fmt's rendering of a nil interface).
        ("{{.Nil}}", "<no value>"),
        ("{{print .Missing}}", "<nil>"),
        // if / else if / else; Go's truth.
        ("{{if .True}}yes{{else}}no{{end}}", "yes"),
        ("{{if .Empty}}yes{{else}}no{{end}}", "no"),
        ("{{if .Zero}}yes{{else}}no{{end}}", "no"),
        ("{{if .EmptyList}}yes{{else}}no{{end}}", "no"),
        ("{{if .EmptyMap}}yes{{else}}no{{end}}", "no"),
        ("{{if .Nil}}yes{{else}}no{{end}}", "no"),
        ("{{if .Missing}}yes{{else}}no{{end}}", "no"),
        ("{{if .Nested}}yes{{else}}no{{end}}", "yes"),
        ("{{if .Float}}yes{{else}}no{{end}}", "yes"),
        ("{{if .Neg}}yes{{else}}no{{end}}", "yes"),
        ("{{if .False}}a{{else if .True}}b{{else}}c{{end}}", "b"),
        ("{{if .False}}a{{else if .Zero}}b{{else}}c{{end}}", "c"),
        ("{{if and .True (not .False)}}ok{{end}}", "ok"),
        // with / else with (Go 1.23).
        ("{{with .Str}}{{.}}{{end}}", "hello"),
        ("{{with .Empty}}x{{else}}empty{{end}}", "empty"),
        ("{{with .Missing}}x{{else with .Str}}{{.}}{{end}}", "hello"),
        ("{{with .Nested}}{{$.Str}}{{.Inner.Deep}}{{end}}", "hellox"),
        ("{{with $x := .Str}}{{$x}}{{.}}{{end}}", "hellohello"),
        ("{{if $x := .Int}}{{$x}}{{end}}", "3"),
        // range over lists, maps (sorted keys), integers (Go 1.22); break/continue (1.18).
        ("{{range .List}}{{.}},{{end}}", "a,b,c,"),
        (
            "{{range $i, $v := .List}}{{$i}}={{$v}} {{end}}",
            "0=a 1=b 2=c ",
        ),
        ("{{range $v := .List}}{{$v}}{{end}}", "abc"),
        ("{{range $k, $v := .Map}}{{$k}}{{$v}}{{end}}", "a1b2c3"),
        ("{{range .EmptyList}}x{{else}}none{{end}}", "none"),
        ("{{range .Missing}}x{{else}}none{{end}}", "none"),
        ("{{range 3}}{{.}}{{end}}", "012"),
        (
            "{{range .Ints}}{{if eq . 2}}{{continue}}{{end}}{{.}}{{end}}",
            "13",
        ),
        (
            "{{range .Ints}}{{if eq . 2}}{{break}}{{end}}{{.}}{{end}}",
            "1",
        ),
        (
            "{{range $i, $e := .Ints}}{{if $i}},{{end}}{{$e}}{{end}}",
            "1,2,3",
        ),
        // Variables.
        ("{{$x := .Str}}{{$x}}", "hello"),
        ("{{$x := 1}}{{$x = 2}}{{$x}}", "2"),
        ("{{$x := 1}}{{range .List}}{{$x = .}}{{end}}{{$x}}", "c"),
        (
            "{{$}}",
            "map[Empty: EmptyList:[] EmptyMap:map[] False:false Float:1.5 Int:3 Ints:[1 2 3] Labels:map[app:web tier:front] List:[a b c] Map:map[a:1 b:2 c:3] Neg:-2 Nested:map[Inner:map[Deep:x]] Nil:<nil> Str:hello True:true Zero:0]",
        ),
        // Pipelines and parentheses.
        ("{{.Str | printf \"%s!\"}}", "hello!"),
        ("{{\"raw\" | len}}", "3"),
        ("{{(index .List 0)}}", "a"),
        ("{{(.Nested).Inner.Deep}}", "x"),
        ("{{index .Nested \"Inner\" \"Deep\"}}", "x"),
        ("{{index .List 1}}", "b"),
        // Literals.
        ("{{true}} {{false}} {{\"s\"}}", "true false s"),
        ("{{`a\\nb`}}", "a\\nb"),
        ("{{\"a\\tb\"}}", "a\tb"),
        (
            "{{1e6}} {{1.0}} {{0x10}} {{'a'}} {{-3}} {{1_000}} {{.5}}",
            "1e+06 1 16 97 -3 1000 0.5",
        ),
        ("{{.Float}} {{.Int}} {{.Neg}}", "1.5 3 -2"),
        // Printing composites like fmt's %v.
        ("{{.Map}}", "map[a:1 b:2 c:3]"),
        ("{{printf \"%v\" .Map}}", "map[a:1 b:2 c:3]"),
        (
            "{{.List}} {{.Ints}} {{.EmptyList}} {{.EmptyMap}}",
            "[a b c] [1 2 3] [] map[]",
        ),
        // printf verbs.
        ("{{printf \"%d-%s\" .Int .Str}}", "3-hello"),
        (
            "{{printf \"%5s|%-5s|%05d\" \"ab\" \"cd\" 42}}",
            "   ab|cd   |00042",
        ),
        ("{{printf \"%q\" .Str}}", "\"hello\""),
        ("{{printf \"%x %X %x\" \"hi\" 255 255}}", "6869 FF ff"),
        ("{{printf \"%t %%\" .True}}", "true %"),
        ("{{printf \"%6.2f\" .Float}}", "  1.50"),
        ("{{printf \"%v %v\" 1 \"a\"}}", "1 a"),
        ("{{printf \"%s\" 1}}", "%!s(int=1)"),
        ("{{printf \"%d\"}}", "%!d(MISSING)"),
        ("{{printf \"%s\" \"a\" 1}}", "a%!(EXTRA int=1)"),
        // print / println spacing: a space between operands when neither is a string.
        ("{{print 1 2}}", "1 2"),
        ("{{print \"a\" \"b\"}}", "ab"),
        ("{{print \"a\" 1 2 \"b\"}}", "a1 2b"),
        ("{{println \"a\" 1}}", "a 1\n"),
        // len counts bytes of strings.
        (
            "{{len .List}} {{len .Str}} {{len .Map}} {{len \"héllo\"}}",
            "3 5 3 6",
        ),
        // and/or return an operand, short-circuiting (Go 1.18).
        ("{{and 1 0 \"x\"}}", "0"),
        ("{{and 1 2}}", "2"),
        ("{{or 0 \"\" \"x\"}}", "x"),
        ("{{or 0 \"\"}}", ""),
        ("{{or .True (index .List 99)}}", "true"),
        ("{{and .False (index .List 99)}}", "false"),
        ("{{not .True}} {{not .Empty}}", "false true"),
        // Comparisons.
        ("{{eq .Str \"hello\"}}", "true"),
        ("{{eq .Int 1 2 3}}", "true"),
        ("{{eq .Int 1 2}}", "false"),
        ("{{ne .Int 3}}", "false"),
        (
            "{{lt 1 2}} {{le 2 2}} {{gt \"b\" \"a\"}} {{ge 1 2}} {{lt 1.5 2.5}}",
            "true true true false true",
        ),
        // eq with a missing value is false, not an error (Go: only two valid operands of
        // different kinds are incompatible).
        ("{{eq .Missing \"x\"}}", "false"),
        // Escapers.
        ("{{html \"<a href='x'>\"}}", "&lt;a href=&#39;x&#39;&gt;"),
        ("{{js \"a'b\"}}", "a\\'b"),
        ("{{urlquery \"a b&c\"}}", "a+b%26c"),
        ("{{html .Missing}}", "&lt;no value&gt;"),
        // slice and index on strings (bytes).
        ("{{slice .Str 1 3}}", "el"),
        ("{{slice .List 1}}", "[b c]"),
        ("{{slice .Str}}", "hello"),
        ("{{index \"abc\" 1}}", "98"),
    ];
    let mut failures = Vec::new();
    for (src, want) in cases {
        let got = render(src);
        if got != *want {
            failures.push(format!("{src:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn exec_err(src: &str) -> ExecErrorKind {
    let t = Template::parse("t", src).unwrap_or_else(|e| panic!("parse {src:?}: {e}"));
    match t.execute(&data()) {
        Ok(out) => panic!("{src:?} rendered {out:?}, want an error"),
        Err(e) => e.kind,
    }
}

#[test]
fn execution_errors_like_go() {
    assert!(matches!(exec_err("{{.Str.Foo}}"),
        ExecErrorKind::CantEvaluateField { field, ty } if field == "Foo" && ty == "string"));
    assert!(
        matches!(exec_err("{{.Nil.Foo}}"), ExecErrorKind::NilPointer { field, .. } if field == "Foo")
    );
    assert!(matches!(exec_err("{{index .List 5}}"),
        ExecErrorKind::Call { func, msg } if func == "index" && msg == "index out of range: 5"));
    assert!(
        matches!(exec_err("{{index .Labels 1}}"), ExecErrorKind::Call { func, .. } if func == "index")
    );
    assert!(
        matches!(exec_err("{{len 3}}"), ExecErrorKind::Call { func, msg } if func == "len" && msg == "len of type int")
    );
    assert!(matches!(exec_err("{{lt 1 \"a\"}}"),
        ExecErrorKind::Call { msg, .. } if msg == "incompatible types for comparison"));
    // 1 is an int constant and 1.0 a float64 one: Go refuses to compare them.
    assert!(matches!(exec_err("{{eq 1 1.0}}"),
        ExecErrorKind::Call { msg, .. } if msg == "incompatible types for comparison"));
    assert!(matches!(exec_err("{{lt true false}}"),
        ExecErrorKind::Call { msg, .. } if msg == "invalid type for comparison"));
    assert!(
        matches!(exec_err("{{eq 1}}"), ExecErrorKind::Call { msg, .. } if msg == "missing argument for comparison")
    );
    assert!(matches!(exec_err("{{not 1 2}}"),
        ExecErrorKind::WrongArgCount { func, want, got: 2 } if func == "not" && want == "1"));
    assert!(
        matches!(exec_err("{{printf}}"), ExecErrorKind::WrongArgCount { want, .. } if want == "at least 1")
    );
    assert!(
        matches!(exec_err("{{call .Str}}"), ExecErrorKind::Call { func, .. } if func == "call")
    );
    assert!(matches!(
        exec_err("{{.Str 1}}"),
        ExecErrorKind::ArgsToNonFunction(_)
    ));
    assert!(matches!(
        exec_err("{{1 | .Str}}"),
        ExecErrorKind::ArgsToNonFunction(_)
    ));
    assert!(matches!(exec_err("{{nil}}"), ExecErrorKind::NilCommand));
    assert!(matches!(
        exec_err("{{range .Str}}{{end}}"),
        ExecErrorKind::RangeCantIterate(_)
    ));
    assert!(matches!(
        exec_err("{{range $i, $v := 3}}{{end}}"),
        ExecErrorKind::RangeIntTwoVars(_)
    ));
    assert!(matches!(
        exec_err("{{printf 1}}"),
        ExecErrorKind::WrongType { .. }
    ));
    assert!(
        matches!(exec_err("{{slice .Str 3 1}}"), ExecErrorKind::Call { msg, .. } if msg == "invalid slice index: 3 > 1")
    );
    assert!(matches!(
        exec_err("{{range 10000000}}{{end}}"),
        ExecErrorKind::LimitExceeded
    ));
    assert!(matches!(
        exec_err("{{range .List}}{{range .}}{{end}}{{end}}"),
        ExecErrorKind::RangeCantIterate(_)
    ));
}

#[test]
fn execution_error_has_position() {
    let t = Template::parse("spiffeIDTemplate", "spiffe://x/\n  {{ .Str.Foo }}").unwrap();
    let e = t.execute(&data()).unwrap_err();
    assert_eq!(
        (e.pos.name.as_str(), e.pos.line, e.pos.col),
        ("spiffeIDTemplate", 2, 6)
    );
    assert_eq!(
        e.to_string(),
        "template: spiffeIDTemplate:2:6: executing \"spiffeIDTemplate\": can't evaluate field Foo in type string"
    );
}

fn parse_err(src: &str) -> ParseErrorKind {
    match Template::parse("t", src) {
        Ok(_) => panic!("{src:?} parsed, want an error"),
        Err(e) => e.kind,
    }
}

#[test]
fn parse_errors_like_go() {
    assert_eq!(parse_err("{{.A"), ParseErrorKind::UnclosedAction);
    assert_eq!(parse_err("{{"), ParseErrorKind::UnclosedAction);
    assert_eq!(parse_err("{{if .A}}x"), ParseErrorKind::UnexpectedEof);
    assert!(matches!(
        parse_err("{{end}}"),
        ParseErrorKind::Unexpected { .. }
    ));
    assert!(matches!(
        parse_err("{{else}}"),
        ParseErrorKind::Unexpected { .. }
    ));
    assert!(matches!(
        parse_err("{{if 1}}{{else}}{{else}}{{end}}"),
        ParseErrorKind::Unexpected { .. }
    ));
    // `else with` belongs to `with`, `else if` to `if`; neither to `range`.
    assert!(matches!(
        parse_err("{{if 1}}{{else with 2}}{{end}}"),
        ParseErrorKind::Unexpected { .. }
    ));
    assert!(matches!(
        parse_err("{{range 1}}{{else if 2}}{{end}}"),
        ParseErrorKind::Unexpected { .. }
    ));
    assert_eq!(
        parse_err("{{$x}}"),
        ParseErrorKind::UndefinedVariable("$x".into())
    );
    assert_eq!(
        parse_err("{{if 1}}{{$x := 1}}{{end}}{{$x}}"),
        ParseErrorKind::UndefinedVariable("$x".into())
    );
    assert_eq!(
        parse_err("{{$x = 1}}"),
        ParseErrorKind::UndefinedVariable("$x".into())
    );
    assert_eq!(
        parse_err("{{foo}}"),
        ParseErrorKind::UndefinedFunction("foo".into())
    );
    assert!(matches!(parse_err("{{}}"), ParseErrorKind::MissingValue(_)));
    assert!(matches!(
        parse_err("{{if}}{{end}}"),
        ParseErrorKind::MissingValue(_)
    ));
    assert!(matches!(
        parse_err("{{.A |}}"),
        ParseErrorKind::MissingValue(_)
    ));
    assert_eq!(parse_err("{{.A | 1}}"), ParseErrorKind::NonExecutable(2));
    assert!(matches!(
        parse_err("{{break}}"),
        ParseErrorKind::OutsideRange(_)
    ));
    assert!(matches!(
        parse_err("{{range .}}{{else}}{{break}}{{end}}"),
        ParseErrorKind::OutsideRange(_)
    ));
    assert!(matches!(
        parse_err("{{define \"x\"}}{{end}}"),
        ParseErrorKind::Unsupported(_)
    ));
    assert!(matches!(
        parse_err("{{template \"x\"}}"),
        ParseErrorKind::Unsupported(_)
    ));
    assert_eq!(parse_err("{{/* x }}"), ParseErrorKind::UnclosedComment);
    assert!(matches!(
        parse_err("{{\"abc}}"),
        ParseErrorKind::BadLiteral(_)
    ));
    assert!(matches!(parse_err("{{3x}}"), ParseErrorKind::BadNumber(_)));
    assert!(matches!(
        parse_err("{{1.2.3}}"),
        ParseErrorKind::BadNumber(_)
    ));
    assert_eq!(parse_err("{{(.A}}"), ParseErrorKind::UnbalancedParens);
    assert_eq!(parse_err("{{.A)}}"), ParseErrorKind::UnbalancedParens);
    assert!(matches!(
        parse_err("{{\"x\".A}}"),
        ParseErrorKind::FieldAfterTerm(_)
    ));
    assert!(matches!(
        parse_err("{{..A}}"),
        ParseErrorKind::FieldAfterTerm(_)
    ));
    assert!(matches!(
        parse_err("{{range $a, $b, $c := .}}{{end}}"),
        ParseErrorKind::TooManyDeclarations(_)
    ));
    assert!(matches!(
        parse_err("{{with $a, $b := .}}{{end}}"),
        ParseErrorKind::TooManyDeclarations(_)
    ));
    assert!(matches!(
        parse_err("{{print 1\"a\"}}"),
        ParseErrorKind::BadNumber(_) | ParseErrorKind::Unexpected { .. }
    ));
    let deep = format!("{{{{{}1{}}}}}", "(".repeat(200), ")".repeat(200));
    assert_eq!(parse_err(&deep), ParseErrorKind::TooDeep);
}

#[test]
fn parse_error_has_position() {
    let e = Template::parse("dnsNameTemplates[0]", "a\n  {{ $x }}").unwrap_err();
    assert_eq!((e.pos.line, e.pos.col), (2, 6));
    assert_eq!(
        e.to_string(),
        "template: dnsNameTemplates[0]:2:6: undefined variable \"$x\""
    );
}

/// Objects as Go structs: spire-controller-manager's `templateData` with
/// `metav1.ObjectMeta` / `corev1.PodSpec`.
#[test]
fn struct_model_like_go() {
    let model = DataModel::kubernetes();
    let pod = json!({
        "TrustDomain": "example.org",
        "PodMeta": {"Name": "web-0", "Namespace": "prod", "UID": "", "Labels": {"app": "web"}},
        "PodSpec": {"ServiceAccountName": "web"},
        "NodeMeta": {"Name": "n1", "UID": "u1"},
        "NodeSpec": {},
    });
    let run = |src: &str, data: &Value| {
        Template::parse("t", src)
            .unwrap()
            .execute_with(data, &model)
    };
    assert_eq!(run("{{.PodMeta.Labels.app}}", &pod).unwrap(), "web");
    assert_eq!(run("{{.PodMeta.Labels.tier}}", &pod).unwrap(), "<no value>");
    assert_eq!(run("{{index .PodMeta.Labels \"tier\"}}", &pod).unwrap(), "");
    // Annotations is a map field absent from the object: Go's nil map.
    assert_eq!(
        run("{{.PodMeta.Annotations.a}}", &pod).unwrap(),
        "<no value>"
    );
    assert_eq!(
        run("{{index .PodMeta.Annotations \"a\"}}", &pod).unwrap(),
        ""
    );
    assert_eq!(run("{{len .PodMeta.Annotations}}", &pod).unwrap(), "0");
    // A mistyped field is an error, as in Go.
    let e = run("{{.PodMeta.Lables.app}}", &pod).unwrap_err();
    assert!(
        matches!(e.kind, ExecErrorKind::CantEvaluateField { ref field, .. } if field == "Lables"),
        "{e}"
    );
    assert!(run("{{.Bogus}}", &pod).is_err());
    // A struct is true even with zero fields; a map must be non-empty.
    assert_eq!(run("{{if .NodeSpec}}y{{else}}n{{end}}", &pod).unwrap(), "y");
    assert!(matches!(
        run("{{range .NodeSpec}}{{end}}", &pod).unwrap_err().kind,
        ExecErrorKind::RangeCantIterate(_)
    ));
    // spire-controller-manager renders the parent ID before setting PodMeta: nil pointer.
    let parent_only =
        json!({"TrustDomain": "example.org", "PodMeta": null, "NodeMeta": {"Name": "n1"}});
    let e = run("{{.PodMeta.Name}}", &parent_only).unwrap_err();
    assert!(
        matches!(e.kind, ExecErrorKind::NilPointer { ref field, .. } if field == "Name"),
        "{e}"
    );
    // The same data as maps: nothing is an error.
    let t = Template::parse("t", "{{.PodMeta.Lables.app}}").unwrap();
    assert_eq!(t.execute(&pod).unwrap(), "<no value>");
}

#[test]
fn template_is_reusable_across_threads() {
    let t = Template::parse("t", "{{.Str}}-{{len .List}}").unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || t.execute(&data()).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), "hello-3");
    }
}
