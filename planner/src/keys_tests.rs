use super::*;

/// `(name, key)` pairs → expected groups.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a [&'a str]]);

#[test]
fn duplicate_groups_table() {
    let cases: &[Case] = &[
        (&[], &[]),
        (&[("a", "k1")], &[]),
        (&[("a", "k1"), ("b", "k2"), ("c", "k3")], &[]),
        (&[("b", "k1"), ("a", "k1")], &[&["a", "b"]]),
        (
            &[("a", "k1"), ("b", "k1"), ("c", "k1")],
            &[&["a", "b", "c"]],
        ),
        (
            &[
                ("d", "k2"),
                ("a", "k1"),
                ("c", "k2"),
                ("b", "k1"),
                ("e", "k3"),
            ],
            &[&["a", "b"], &["c", "d"]],
        ),
        // Groups sort by their first node, not by key.
        (
            &[("z", "k0"), ("y", "k0"), ("a", "k9"), ("b", "k9")],
            &[&["a", "b"], &["y", "z"]],
        ),
    ];
    for (input, want) in cases {
        let got = duplicate_keys(input.iter().copied());
        let want: Vec<Vec<String>> = want
            .iter()
            .map(|g| g.iter().map(|s| s.to_string()).collect())
            .collect();
        assert_eq!(got, want, "{input:?}");
    }
}

#[test]
fn problems_list_malformed_then_duplicates_and_skip_missing_keys() {
    let p = key_problems([
        ("c", Ok(Some("k1"))),
        ("b", Err("publicKey \"x\" is bad")),
        ("a", Ok(Some("k1"))),
        ("d", Ok(None)),
        ("e", Ok(None)),
    ]);
    assert_eq!(
        p,
        [
            KeyProblem::Malformed {
                node: "b".into(),
                detail: "publicKey \"x\" is bad".into()
            },
            KeyProblem::Duplicate {
                nodes: vec!["a".into(), "c".into()]
            },
        ]
    );
    assert_eq!(p[0].reason(), "MalformedPublicKey");
    assert_eq!(p[1].reason(), "DuplicatePublicKey");
    assert_eq!(p[1].nodes(), ["a", "c"]);
}

#[test]
fn messages_name_every_node_of_the_group() {
    let d = KeyProblem::Duplicate {
        nodes: vec!["node-1".into(), "node-2".into()],
    };
    let m = d.to_string();
    assert!(
        m.contains("node-1, node-2") && m.contains("same public key"),
        "{m}"
    );
    let m = KeyProblem::Malformed {
        node: "n".into(),
        detail: "publicKey \"ab\" (2 bytes) is not …".into(),
    }
    .to_string();
    assert!(
        m.starts_with("node n is left out of the mesh: its publicKey"),
        "{m}"
    );
}
