//! Arbitrary input to `parse` and `execute` never panics: every outcome is a value or a
//! typed error.

use proptest::prelude::*;
use serde_json::{Value, json};
use sigil_gotemplate::{DataModel, Template};

/// Fragments of template syntax, so generated inputs get past the lexer often.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{{".to_owned()),
        Just("}}".to_owned()),
        Just("{{- ".to_owned()),
        Just(" -}}".to_owned()),
        Just("/*".to_owned()),
        Just("*/".to_owned()),
        Just(".A".to_owned()),
        Just(".B.C".to_owned()),
        Just(".".to_owned()),
        Just("$".to_owned()),
        Just("$x".to_owned()),
        Just(":=".to_owned()),
        Just("=".to_owned()),
        Just(",".to_owned()),
        Just("|".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("if".to_owned()),
        Just("else".to_owned()),
        Just("end".to_owned()),
        Just("range".to_owned()),
        Just("with".to_owned()),
        Just("break".to_owned()),
        Just("continue".to_owned()),
        Just("nil".to_owned()),
        Just("true".to_owned()),
        Just("index".to_owned()),
        Just("slice".to_owned()),
        Just("printf".to_owned()),
        Just("len".to_owned()),
        Just("eq".to_owned()),
        Just("lt".to_owned()),
        Just("and".to_owned()),
        Just("or".to_owned()),
        Just("not".to_owned()),
        Just("print".to_owned()),
        Just("html".to_owned()),
        Just("js".to_owned()),
        Just("urlquery".to_owned()),
        Just("call".to_owned()),
        Just("\"%v%d%s%q%x%5.2f%*d%[2]s%\"".to_owned()),
        Just("`raw`".to_owned()),
        Just("'a'".to_owned()),
        Just("-1".to_owned()),
        Just("3".to_owned()),
        Just("1.5e3".to_owned()),
        Just("0x1F".to_owned()),
        Just(" ".to_owned()),
        Just("\n".to_owned()),
        "[ -~]{0,4}",
        any::<char>().prop_map(String::from),
    ]
}

fn template_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(fragment(), 0..24).prop_map(|v| v.concat()),
        any::<String>(),
    ]
}

fn data() -> Value {
    json!({
        "A": {"B": {"C": [1, "two", 3.5, null, {"D": true}]}, "L": {"x": "y"}},
        "B": [],
        "S": "héllo",
        "N": -7,
        "Nil": null,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parse_and_execute_never_panic(src in template_text()) {
        if let Ok(t) = Template::parse("fuzz", &src) {
            let d = data();
            let _ = t.execute(&d);
            let _ = t.execute_with(&d, &DataModel::kubernetes());
            let _ = t.execute(&Value::Null);
            let _ = t.execute(&json!([1, 2, 3]));
        }
    }
}

/// Hand-picked inputs that once looked risky: multi-byte text around delimiters, slicing
/// inside a character, huge widths, deep nesting.
#[test]
fn edge_cases_do_not_panic() {
    let d = data();
    for src in [
        "é{{- \"é\" -}}é",
        "{{ slice .S 1 2 }}",
        "{{ printf \"%99999999d\" 1 }}",
        "{{ printf \"%.99999999f\" 1.5 }}",
        "{{ printf \"%*d\" -5 1 }}",
        "{{ printf \"%[0]d %[9]d\" 1 }}",
        "{{ index .S 99 }}",
        "{{ printf \"%c %U %q\" -1 -1 1114112 }}",
        "{{ range $i, $v := .A }}{{ $i }}{{ end }}",
        "{{ -9223372036854775808 }}",
        "{{ 0x8000000000000000 }}",
        "{{ len .Nil.X }}",
        "{{ .A.B.C.D }}",
        "{{ (((((1))))) }}",
    ] {
        if let Ok(t) = Template::parse("edge", src) {
            let _ = t.execute(&d);
            let _ = t.execute_with(&d, &DataModel::kubernetes());
        }
    }
}
