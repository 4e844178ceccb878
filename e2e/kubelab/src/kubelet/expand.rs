//! Kubernetes `$(VAR)` expansion of commands, args and env values, and the argv of a container.
//!
//! Rules (as the API documents them): `$(VAR)` is replaced by the variable's value when it is
//! defined and left as written otherwise; `$$` is an escaped `$`, so `$$(VAR)` yields `$(VAR)`;
//! any other `$` is literal.

use std::path::Path;

/// Expands `$(VAR)` references in `input` with `lookup`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Expands with a list of `(name, value)` pairs (the last definition of a name wins).
pub fn expand_with(input: &str, env: &[(String, String)]) -> String {
    expand(input, |name| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    })
}

/// The argv of a container: the mapped binary replaces the image entrypoint (`command[0]`, or
/// the image's own entrypoint when `command` is empty), then the rest of `command`, then `args`,
/// all expanded with the container's environment.
pub fn argv(
    binary: &Path,
    command: &[String],
    args: &[String],
    env: &[(String, String)],
) -> Vec<String> {
    let mut argv = vec![binary.to_string_lossy().into_owned()];
    let tail = command.iter().skip(1).chain(args);
    argv.extend(tail.map(|a| expand_with(a, env)));
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        [
            ("NODE_NAME", "n1"),
            ("EMPTY", ""),
            ("X", "first"),
            ("X", "second"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn expansion_table() {
        let cases = [
            ("--node-name=$(NODE_NAME)", "--node-name=n1"),
            ("$(NODE_NAME)$(NODE_NAME)", "n1n1"),
            ("$(UNDEFINED)", "$(UNDEFINED)"),
            ("$$(NODE_NAME)", "$(NODE_NAME)"),
            ("$$$(NODE_NAME)", "$n1"),
            ("cost $5", "cost $5"),
            ("trailing $", "trailing $"),
            ("$$", "$"),
            ("$(NODE_NAME", "$(NODE_NAME"),
            ("a$(EMPTY)b", "ab"),
            ("$(X)", "second"),
            ("$()", "$()"),
            ("no refs", "no refs"),
            ("ünïcode $(NODE_NAME) ✓", "ünïcode n1 ✓"),
        ];
        for (input, want) in cases {
            assert_eq!(expand_with(input, &env()), want, "{input:?}");
        }
    }

    #[test]
    fn argv_replaces_the_entrypoint() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let bin = Path::new("/usr/bin/agent");
        let cases: [(&[&str], &[&str], &[&str]); 4] = [
            (&[], &[], &["/usr/bin/agent"]),
            (
                &[],
                &["--node=$(NODE_NAME)"],
                &["/usr/bin/agent", "--node=n1"],
            ),
            (&["/agent"], &["-v"], &["/usr/bin/agent", "-v"]),
            (
                &["/bin/sh", "-c", "echo $(NODE_NAME)"],
                &["x"],
                &["/usr/bin/agent", "-c", "echo n1", "x"],
            ),
        ];
        for (command, args, want) in cases {
            assert_eq!(
                argv(bin, &s(command), &s(args), &env()),
                s(want),
                "{command:?} {args:?}"
            );
        }
    }
}
