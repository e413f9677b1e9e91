//! `-expandEnv`: environment variables in a configuration file.

/// `$VAR` and `${VAR}` expansion (spire-agent's `-expandEnv`); unset variables expand to "".
pub fn expand_env(text: &str) -> String {
    expand_env_with(text, |name| std::env::var(name).ok())
}

/// [`expand_env`] with `lookup` standing in for the process environment.
pub fn expand_env_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let name: String = if chars.peek() == Some(&'{') {
            chars.next();
            let mut name = String::new();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
            name
        } else {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
                continue;
            }
            name
        };
        out.push_str(&lookup(&name).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        let out = expand_env("a $SIGIL_TEST_UNSET_VAR b ${SIGIL_TEST_UNSET_VAR} $ c");
        assert_eq!(out, "a  b  $ c");
    }
}
