//! CRD schema enforcement of the test API server: pruning, defaulting, OpenAPI keywords,
//! Kubernetes extensions and `x-kubernetes-validations` CEL rules, with good and bad examples.

use serde_json::{Value, json};
use wirekube_e2e::apiserver::schema::{CompiledSchema, FieldError, FieldErrorReason, SchemaError};

/// A resource schema with `spec` described by `spec`.
fn resource(spec: Value) -> CompiledSchema {
    CompiledSchema::from_openapi_v3(&json!({"type": "object", "properties": {"spec": spec}}))
        .expect("schema compiles")
}

fn obj(spec: Value) -> Value {
    json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "Test", "metadata": {"name": "t"}, "spec": spec})
}

fn admit(schema: &CompiledSchema, spec: Value) -> Result<Value, Vec<FieldError>> {
    let mut o = obj(spec);
    schema.admit(&mut o, None).map(|()| o["spec"].clone())
}

/// One schema for `spec.x`, values it accepts, and values it rejects (with the reason).
struct Case {
    name: &'static str,
    schema: Value,
    good: Vec<Value>,
    bad: Vec<(Value, FieldErrorReason)>,
}

fn case(
    name: &'static str,
    schema: Value,
    good: Vec<Value>,
    bad: Vec<(Value, FieldErrorReason)>,
) -> Case {
    Case {
        name,
        schema,
        good,
        bad,
    }
}

fn run(cases: Vec<Case>) {
    use FieldErrorReason::*;
    let _ = (Required, Invalid);
    for c in cases {
        let schema = resource(json!({"type": "object", "properties": {"x": c.schema}}));
        for good in c.good {
            let res = admit(&schema, json!({"x": good}));
            assert!(
                res.is_ok(),
                "{}: {good} should be accepted: {res:?}",
                c.name
            );
        }
        for (bad, reason) in c.bad {
            let errs = admit(&schema, json!({"x": bad}))
                .expect_err(&format!("{}: {bad} should be rejected", c.name));
            assert!(
                errs.iter()
                    .any(|e| e.reason == reason && e.path.starts_with("spec.x")),
                "{}: {bad} should fail with {reason:?} at spec.x, got {errs:?}",
                c.name
            );
        }
    }
}

#[test]
#[rustfmt::skip]
fn openapi_keywords_accept_good_and_reject_bad_values() {
    use FieldErrorReason::*;
    run(vec![
        case("type object", json!({"type": "object"}), vec![json!({})], vec![(json!("s"), Invalid), (json!([]), Invalid)]),
        case("type array", json!({"type": "array"}), vec![json!([])], vec![(json!({}), Invalid)]),
        case("type string", json!({"type": "string"}), vec![json!("a")], vec![(json!(1), Invalid), (json!(true), Invalid)]),
        case("type integer", json!({"type": "integer"}), vec![json!(1), json!(-3), json!(2.0)], vec![(json!(1.5), Invalid), (json!("1"), Invalid)]),
        case("type number", json!({"type": "number"}), vec![json!(1), json!(1.5)], vec![(json!("1.5"), Invalid)]),
        case("type boolean", json!({"type": "boolean"}), vec![json!(false)], vec![(json!("true"), Invalid), (json!(0), Invalid)]),
        case("nullable", json!({"type": "string", "nullable": true}), vec![json!(null), json!("a")], vec![(json!(3), Invalid)]),
        case("enum", json!({"type": "string", "enum": ["auto", "always", "never"]}), vec![json!("auto"), json!("never")], vec![(json!("sometimes"), NotSupported), (json!("Auto"), NotSupported)]),
        case("minimum", json!({"type": "integer", "minimum": 1}), vec![json!(1), json!(9)], vec![(json!(0), Invalid)]),
        case("maximum", json!({"type": "integer", "maximum": 65535}), vec![json!(65535)], vec![(json!(65536), Invalid)]),
        case("exclusiveMinimum", json!({"type": "number", "minimum": 0, "exclusiveMinimum": true}), vec![json!(0.1)], vec![(json!(0), Invalid)]),
        case("exclusiveMaximum", json!({"type": "number", "maximum": 1, "exclusiveMaximum": true}), vec![json!(0.9)], vec![(json!(1), Invalid)]),
        case("multipleOf", json!({"type": "integer", "multipleOf": 8}), vec![json!(16)], vec![(json!(12), Invalid)]),
        case("minLength", json!({"type": "string", "minLength": 2}), vec![json!("ab"), json!("é√")], vec![(json!("a"), Invalid)]),
        case("maxLength", json!({"type": "string", "maxLength": 3}), vec![json!("abc"), json!("ééé")], vec![(json!("abcd"), TooLong)]),
        case("pattern", json!({"type": "string", "pattern": "^[a-z]+:[0-9]{1,5}$"}), vec![json!("host:3478")], vec![(json!("host"), Invalid), (json!("host:port"), Invalid)]),
        case("minItems", json!({"type": "array", "minItems": 2, "items": {"type": "string"}}), vec![json!(["a", "b"])], vec![(json!(["a"]), Invalid)]),
        case("maxItems", json!({"type": "array", "maxItems": 1, "items": {"type": "string"}}), vec![json!(["a"])], vec![(json!(["a", "b"]), TooMany)]),
        case("uniqueItems", json!({"type": "array", "uniqueItems": true, "items": {"type": "string"}}), vec![json!(["a", "b"])], vec![(json!(["a", "a"]), Duplicate)]),
        case("items", json!({"type": "array", "items": {"type": "integer", "maximum": 5}}), vec![json!([1, 5])], vec![(json!([1, 6]), Invalid), (json!([1, "x"]), Invalid)]),
        case("minProperties", json!({"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}), vec![json!({"a": "b"})], vec![(json!({}), Invalid)]),
        case("maxProperties", json!({"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string"}}), vec![json!({"a": "b"})], vec![(json!({"a": "b", "c": "d"}), TooMany)]),
        case("additionalProperties map", json!({"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}}), vec![json!({"zone": "a"})], vec![(json!({"zone": 1}), Invalid), (json!({"zone": "long"}), TooLong)]),
        case("required", json!({"type": "object", "required": ["endpoint"], "properties": {"endpoint": {"type": "string"}}}), vec![json!({"endpoint": "a:1"})], vec![(json!({}), Required), (json!({"endpoint": null}), Required)]),
        case("format int32", json!({"type": "integer", "format": "int32"}), vec![json!(2147483647)], vec![(json!(2147483648_i64), Invalid)]),
        case("format int64", json!({"type": "integer", "format": "int64"}), vec![json!(9007199254740993_i64)], vec![(json!(1.5), Invalid)]),
        case("format ipv4", json!({"type": "string", "format": "ipv4"}), vec![json!("10.0.0.1")], vec![(json!("10.0.0.256"), Invalid)]),
        case("format ipv6", json!({"type": "string", "format": "ipv6"}), vec![json!("fd00::1")], vec![(json!("fd00::g"), Invalid)]),
        case("format cidr", json!({"type": "string", "format": "cidr"}), vec![json!("10.0.0.0/8")], vec![(json!("10.0.0.0/33"), Invalid)]),
        case("format uuid", json!({"type": "string", "format": "uuid"}), vec![json!("123e4567-e89b-12d3-a456-426614174000")], vec![(json!("123e4567"), Invalid)]),
        case("format byte", json!({"type": "string", "format": "byte"}), vec![json!("aGVsbG8=")], vec![(json!("not base64!"), Invalid)]),
        case("unknown format tolerated", json!({"type": "integer", "format": "uint16"}), vec![json!(3)], vec![(json!("3"), Invalid)]),
        case("int-or-string", json!({"x-kubernetes-int-or-string": true}), vec![json!(3), json!("50%")], vec![(json!(1.5), Invalid), (json!(true), Invalid), (json!({}), Invalid)]),
        case("list-type set", json!({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}), vec![json!(["a", "b"])], vec![(json!(["a", "b", "a"]), Duplicate)]),
        case("list-type map", json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"], "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}}), vec![json!([{"name": "a", "port": 1}, {"name": "b", "port": 1}])], vec![(json!([{"name": "a", "port": 1}, {"name": "a", "port": 2}]), Duplicate)]),
        case("list-type atomic allows duplicates", json!({"type": "array", "x-kubernetes-list-type": "atomic", "items": {"type": "string"}}), vec![json!(["a", "a"])], vec![(json!("a"), Invalid)]),
        case("allOf", json!({"type": "integer", "allOf": [{"minimum": 1}, {"maximum": 3}]}), vec![json!(2)], vec![(json!(4), Invalid)]),
        case("anyOf", json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+%$"}]}), vec![json!(5), json!("5%")], vec![(json!("five"), Invalid)]),
        case("oneOf", json!({"type": "integer", "oneOf": [{"minimum": 5}, {"maximum": 7}]}), vec![json!(1), json!(9)], vec![(json!(6), Invalid)]),
        case("not", json!({"type": "string", "not": {"enum": ["forbidden"]}}), vec![json!("ok")], vec![(json!("forbidden"), Invalid)]),
    ]);
}

#[test]
fn error_paths_and_messages_look_like_kube_apiserver() {
    let schema = resource(json!({"type": "object", "properties": {
        "stunServers": {"type": "array", "items": {"type": "string", "pattern": "^[^:]+:[0-9]+$"}},
        "listenPort": {"type": "integer", "maximum": 65535},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 2}},
        "mode": {"type": "string", "enum": ["auto", "never"]},
        "relay": {"type": "object", "required": ["port"], "properties": {"port": {"type": "integer"}}},
    }}));
    let errs = admit(&schema, json!({
        "stunServers": ["a:1", "b"], "listenPort": 70000, "labels": {"zone": "abc"}, "mode": "x", "relay": {}
    }))
    .unwrap_err();
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let want = [
        "spec.stunServers[1]: Invalid value: \"b\": spec.stunServers[1] in body should match '^[^:]+:[0-9]+$'",
        "spec.listenPort: Invalid value: 70000: spec.listenPort in body should be less than or equal to 65535",
        "spec.labels[zone]: Too long: may not be more than 2 bytes",
        "spec.mode: Unsupported value: \"x\": supported values: \"auto\", \"never\"",
        "spec.relay.port: Required value",
    ];
    for w in want {
        assert!(lines.iter().any(|l| l == w), "missing {w:?} in {lines:#?}");
    }
    let required = errs.iter().find(|e| e.path == "spec.relay.port").unwrap();
    assert_eq!(required.reason.as_status_cause(), "FieldValueRequired");
    assert_eq!(
        FieldErrorReason::Invalid.as_status_cause(),
        "FieldValueInvalid"
    );
    assert_eq!(
        FieldErrorReason::NotSupported.as_status_cause(),
        "FieldValueNotSupported"
    );
    assert_eq!(
        FieldErrorReason::Duplicate.as_status_cause(),
        "FieldValueDuplicate"
    );
    assert_eq!(
        FieldErrorReason::TooLong.as_status_cause(),
        "FieldValueTooLong"
    );
    assert_eq!(
        FieldErrorReason::TooMany.as_status_cause(),
        "FieldValueTooMany"
    );
    assert_eq!(
        FieldErrorReason::Forbidden.as_status_cause(),
        "FieldValueForbidden"
    );
}

#[test]
fn unknown_fields_are_pruned_except_where_preserved() {
    let schema = CompiledSchema::from_openapi_v3(&json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "known": {"type": "string"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "list": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}},
            "labels": {"type": "object", "additionalProperties": {"type": "object", "properties": {"v": {"type": "string"}}}},
            "template": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}},
        }},
    }}))
    .unwrap();
    let mut o = json!({
        "apiVersion": "wirekube.io/v1alpha1", "kind": "Test",
        "metadata": {"name": "t", "labels": {"a": "b"}, "annotations": {"x": "y"}},
        "unknownTop": 1,
        "spec": {
            "known": "k", "bogus": true,
            "free": {"anything": {"deep": [1, 2]}},
            "list": [{"a": "x", "b": "dropped"}],
            "labels": {"k": {"v": "1", "w": "dropped"}},
            "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}, "junk": 1},
        },
    });
    schema.admit(&mut o, None).unwrap();
    assert_eq!(
        o,
        json!({
            "apiVersion": "wirekube.io/v1alpha1", "kind": "Test",
            "metadata": {"name": "t", "labels": {"a": "b"}, "annotations": {"x": "y"}},
            "spec": {
                "known": "k",
                "free": {"anything": {"deep": [1, 2]}},
                "list": [{"a": "x"}],
                "labels": {"k": {"v": "1"}},
                "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}},
            },
        })
    );
    let root_preserved = CompiledSchema::from_openapi_v3(
        &json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    )
    .unwrap();
    let mut o = json!({"kind": "X", "spec": {"a": 1}, "extra": true});
    root_preserved.admit(&mut o, None).unwrap();
    assert_eq!(o, json!({"kind": "X", "spec": {"a": 1}, "extra": true}));
}

#[test]
fn defaults_apply_including_nested_objects_and_nulls() {
    let schema = resource(json!({"type": "object", "default": {}, "properties": {
        "listenPort": {"type": "integer", "default": 51820},
        "relay": {"type": "object", "default": {}, "properties": {
            "mode": {"type": "string", "default": "auto"},
            "managed": {"type": "object", "properties": {"port": {"type": "integer", "default": 3478}}},
        }},
        "note": {"type": "string"},
        "maybe": {"type": "string", "nullable": true},
        "items": {"type": "array", "items": {"type": "object", "properties": {"w": {"type": "integer", "default": 1}}}},
        "tags": {"type": "object", "additionalProperties": {"type": "string", "default": "on"}},
    }}));
    // Parent absent: `spec` itself defaults to {}, then its fields default; `managed` has no
    // default, so its own nested default does not apply.
    let mut o = json!({"apiVersion": "v", "kind": "T", "metadata": {"name": "t"}});
    schema.admit(&mut o, None).unwrap();
    assert_eq!(
        o["spec"],
        json!({"listenPort": 51820, "relay": {"mode": "auto"}})
    );
    // Parent present: nested defaults apply; explicit values win; non-nullable null takes the
    // default or disappears; nullable null stays.
    let spec = admit(
        &schema,
        json!({"listenPort": 1, "relay": {"mode": null, "managed": {}}, "note": null, "maybe": null,
               "items": [{}, {"w": 5}], "tags": {"a": null, "b": "off"}}),
    )
    .unwrap();
    assert_eq!(
        spec,
        json!({"listenPort": 1, "relay": {"mode": "auto", "managed": {"port": 3478}}, "maybe": null,
               "items": [{"w": 1}, {"w": 5}], "tags": {"a": "on", "b": "off"}})
    );
}

fn with_rules(ty: &str, rules: Value) -> CompiledSchema {
    resource(
        json!({"type": "object", "properties": {"x": {"type": ty, "x-kubernetes-validations": rules}}}),
    )
}

#[test]
#[rustfmt::skip]
fn cel_functions_good_and_bad() {
    // (type of spec.x, rule, accepted value, rejected value)
    let cases = [
        ("string", "size(self) <= 3", json!("abc"), json!("abcd")),
        ("string", "self.size() > 0", json!("a"), json!("")),
        ("array", "size(self) == 0 || size(self) >= 2", json!(["a", "b"]), json!(["a"])),
        ("string", "self.matches('^[a-z]+$')", json!("abc"), json!("ABC")),
        ("string", "self.startsWith('wg')", json!("wg0"), json!("eth0")),
        ("string", "self.endsWith(':3478')", json!("r:3478"), json!("r:1")),
        ("string", "self.contains('.')", json!("a.b"), json!("ab")),
        ("string", "self.split(':').size() == 2", json!("h:1"), json!("h")),
        ("string", "self.lowerAscii() == self", json!("abc"), json!("aBc")),
        ("string", "isCIDR(self)", json!("10.0.0.0/8"), json!("10.0.0.0")),
        ("string", "isCIDR(self) && cidr(self).prefixLength() >= 8 && cidr(self).prefixLength() <= 28", json!("10.99.0.0/16"), json!("10.0.0.0/30")),
        ("string", "isCIDR(self) && cidr(self).ip().family() == 4", json!("100.64.0.0/10"), json!("fd00::/64")),
        ("string", "isIP(self)", json!("fd00::1"), json!("fd00::1/64")),
        ("string", "isIP(self) && ip(self).family() == 6", json!("fd00::1"), json!("10.0.0.1")),
        ("string", "cidr('10.0.0.0/8').containsIP(self)", json!("10.1.2.3"), json!("11.1.2.3")),
        ("object", "has(self.a) || has(self.b)", json!({"a": 1}), json!({})),
        ("object", "self.all(k, k.startsWith('x-'))", json!({"x-a": 1}), json!({"y": 1})),
        ("array", "self.exists(e, e == 'relay')", json!(["relay"]), json!(["direct"])),
        ("array", "self.all(e, self.filter(f, f == e).size() == 1)", json!([1, 2]), json!([1, 1])),
        ("integer", "self % 2 == 0", json!(4), json!(3)),
        ("number", "self > 0.5", json!(1), json!(0.25)),
        ("string", "duration(self) <= duration('1h')", json!("30m"), json!("2h")),
        ("object", "!has(self.ext) || self.ext.endpoint != ''", json!({"ext": {"endpoint": "a"}}), json!({"ext": {"endpoint": ""}})),
    ];
    for (ty, rule, good, bad) in cases {
        let mut schema_x = json!({"type": ty, "x-kubernetes-validations": [{"rule": rule}]});
        if ty == "object" {
            schema_x["x-kubernetes-preserve-unknown-fields"] = json!(true);
        }
        if ty == "array" {
            schema_x["items"] = json!({"x-kubernetes-int-or-string": true});
        }
        let schema = resource(json!({"type": "object", "properties": {"x": schema_x}}));
        assert!(
            admit(&schema, json!({"x": good})).is_ok(),
            "{rule}: {good} should pass"
        );
        let errs = admit(&schema, json!({"x": bad})).expect_err(rule);
        assert_eq!(errs.len(), 1, "{rule}: {errs:?}");
        assert_eq!(errs[0].path, "spec.x");
        assert_eq!(errs[0].reason, FieldErrorReason::Invalid);
        assert!(
            errs[0].message.contains(&format!("failed rule: {rule}")),
            "{rule}: {}",
            errs[0].message
        );
    }
}

#[test]
fn cel_rule_message_message_expression_field_path_and_reason() {
    let schema = resource(json!({"type": "object", "properties": {"relay": {
        "type": "object",
        "properties": {"provider": {"type": "string"}, "external": {"type": "object", "properties": {"endpoint": {"type": "string"}}}},
        "x-kubernetes-validations": [
            {"rule": "self.provider != 'external' || (has(self.external) && size(self.external.endpoint) > 0)",
             "message": "relay.external.endpoint is required when relay.provider is external",
             "fieldPath": ".external.endpoint", "reason": "FieldValueRequired"},
            {"rule": "self.provider != 'banned'", "messageExpression": "'provider ' + self.provider + ' is not allowed'",
             "reason": "FieldValueForbidden"},
            {"rule": "self.provider != 'empty-message'", "messageExpression": "''", "message": "static fallback"},
        ],
    }}}));
    let errs = admit(&schema, json!({"relay": {"provider": "external"}})).unwrap_err();
    assert_eq!(
        errs,
        vec![FieldError {
            path: "spec.relay.external.endpoint".into(),
            reason: FieldErrorReason::Required,
            message: "Required value: relay.external.endpoint is required when relay.provider is external".into(),
        }]
    );
    assert!(
        admit(
            &schema,
            json!({"relay": {"provider": "external", "external": {"endpoint": "r:1"}}})
        )
        .is_ok()
    );
    let errs = admit(&schema, json!({"relay": {"provider": "banned"}})).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "spec.relay: Forbidden: provider banned is not allowed"
    );
    let errs = admit(&schema, json!({"relay": {"provider": "empty-message"}})).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "spec.relay: Invalid value: \"object\": static fallback"
    );
}

#[test]
fn transition_rules_use_old_self_on_update_only() {
    let schema = with_rules(
        "string",
        json!([{"rule": "self == oldSelf", "message": "x is immutable"}]),
    );
    let mut created = obj(json!({"x": "a"}));
    schema
        .admit(&mut created, None)
        .expect("transition rules are skipped on create");
    let mut same = obj(json!({"x": "a"}));
    schema.admit(&mut same, Some(&created)).unwrap();
    let mut changed = obj(json!({"x": "b"}));
    let errs = schema.admit(&mut changed, Some(&created)).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "spec.x: Invalid value: \"string\": x is immutable"
    );
    // A field that did not exist before has no oldSelf: the rule is skipped.
    let mut old = obj(json!({}));
    schema.admit(&mut old, None).unwrap();
    let mut added = obj(json!({"x": "new"}));
    schema.admit(&mut added, Some(&old)).unwrap();

    let optional = with_rules(
        "integer",
        json!([{"rule": "!oldSelf.hasValue() || self >= oldSelf.value()", "optionalOldSelf": true, "message": "may only grow"}]),
    );
    assert!(admit(&optional, json!({"x": 1})).is_ok());
    let old = obj(json!({"x": 5}));
    assert!(
        optional
            .admit(&mut obj(json!({"x": 6})), Some(&old))
            .is_ok()
    );
    assert!(
        optional
            .admit(&mut obj(json!({"x": 4})), Some(&old))
            .is_err()
    );
}

#[test]
fn list_map_items_correlate_with_old_items_for_transition_rules() {
    let schema = resource(json!({"type": "object", "properties": {"peers": {
        "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
        "items": {"type": "object", "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                  "x-kubernetes-validations": [{"rule": "self.key == oldSelf.key", "message": "key is immutable"}]},
    }}}));
    let old = obj(json!({"peers": [{"name": "a", "key": "k1"}, {"name": "b", "key": "k2"}]}));
    // Reordered and one added: fine.
    let mut ok = obj(
        json!({"peers": [{"name": "b", "key": "k2"}, {"name": "c", "key": "k3"}, {"name": "a", "key": "k1"}]}),
    );
    schema.admit(&mut ok, Some(&old)).unwrap();
    let mut bad =
        obj(json!({"peers": [{"name": "b", "key": "k2"}, {"name": "a", "key": "changed"}]}));
    let errs = schema.admit(&mut bad, Some(&old)).unwrap_err();
    assert_eq!(errs[0].path, "spec.peers[1]");
}

#[test]
fn unchanged_invalid_values_are_ratcheted_on_update() {
    let strict = resource(
        json!({"type": "object", "properties": {"a": {"type": "string", "maxLength": 2}, "b": {"type": "integer"}}}),
    );
    let old = obj(json!({"a": "too long", "b": 1}));
    let mut unchanged_a = obj(json!({"a": "too long", "b": 2}));
    strict
        .admit(&mut unchanged_a, Some(&old))
        .expect("an unchanged invalid field is tolerated");
    let mut changed_a = obj(json!({"a": "still too long", "b": 1}));
    assert!(strict.admit(&mut changed_a, Some(&old)).is_err());
}

#[test]
fn cel_runtime_errors_reject_with_the_rule_named() {
    let schema = with_rules("object", json!([{"rule": "self.missing == 1"}]));
    let errs = admit(&schema, json!({"x": {}})).unwrap_err();
    assert_eq!(errs[0].path, "spec.x");
    assert!(
        errs[0].message.contains("self.missing == 1"),
        "{}",
        errs[0].message
    );
    let non_bool = with_rules("string", json!([{"rule": "self + 'x'"}]));
    let errs = admit(&non_bool, json!({"x": "a"})).unwrap_err();
    assert!(
        errs[0].message.contains("expected bool"),
        "{}",
        errs[0].message
    );
    let bad_cidr = with_rules("string", json!([{"rule": "cidr(self).prefixLength() > 8"}]));
    let errs = admit(&bad_cidr, json!({"x": "not-a-cidr"})).unwrap_err();
    assert!(
        errs[0].message.contains("cidr(self).prefixLength() > 8"),
        "{}",
        errs[0].message
    );
}

#[test]
fn malformed_schemas_are_typed_errors() {
    let bad = [
        json!("not an object"),
        json!({"type": "strng"}),
        json!({"type": "object", "properties": []}),
        json!({"type": "string", "pattern": "(unclosed"}),
        json!({"type": "string", "maxLength": -1}),
        json!({"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "object"}}),
        json!({"type": "array", "x-kubernetes-list-type": "bag"}),
        json!({"$ref": "#/definitions/x"}),
        json!({"type": "string", "x-kubernetes-validations": [{"message": "no rule"}]}),
        json!({"type": "string", "x-kubernetes-validations": [{"rule": "self.size( >"}]}),
        json!({"type": "string", "x-kubernetes-validations": [{"rule": "quantity(self).isInteger()"}]}),
        json!({"type": "string", "x-kubernetes-validations": [{"rule": "true", "reason": "FieldValueWrong"}]}),
        json!({"type": "string", "x-kubernetes-validations": [{"rule": "true", "messageExpression": "'a' +"}]}),
    ];
    for schema in bad {
        let res = CompiledSchema::from_openapi_v3(
            &json!({"type": "object", "properties": {"spec": schema}}),
        );
        assert!(res.is_err(), "{schema} should not compile");
    }
    let err = CompiledSchema::from_openapi_v3(&json!({"type": "object", "properties": {"spec": {
        "type": "string", "x-kubernetes-validations": [{"rule": "url(self).getHost() != ''"}]}}}))
    .unwrap_err();
    assert!(matches!(err, SchemaError::Cel { .. }), "{err:?}");
    assert!(
        err.to_string().contains("spec.x-kubernetes-validations[0]"),
        "{err}"
    );
}

#[test]
fn compiled_schemas_can_be_shared_between_threads() {
    fn check<T: Send + Sync>() {}
    check::<CompiledSchema>();
}

/// The shipped CRDs (rendered from the Rust types) enforced end to end.
mod shipped_crds {
    use super::*;
    use kube::CustomResourceExt;
    use wirekube_crds::WireKubeMesh;

    fn mesh_schema() -> CompiledSchema {
        let crd = serde_json::to_value(WireKubeMesh::crd()).unwrap();
        CompiledSchema::from_openapi_v3(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            .expect("mesh CRD compiles")
    }

    fn mesh(spec: Value) -> Value {
        json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh", "metadata": {"name": "default"}, "spec": spec})
    }

    #[test]
    fn a_minimal_mesh_is_defaulted() {
        let mut m = mesh(json!({}));
        mesh_schema().admit(&mut m, None).unwrap();
        assert_eq!(
            m["spec"]["meshCIDR"],
            json!(wirekube_crds::mesh::default_mesh_cidr())
        );
        assert_eq!(
            m["spec"]["listenPort"],
            json!(wirekube_crds::mesh::default_listen_port())
        );
    }

    #[test]
    fn bad_meshes_are_rejected_with_the_field_named() {
        let schema = mesh_schema();
        let cases = [
            (json!({"meshCIDR": "10.0.0.0/30"}), "spec.meshCIDR"),
            (json!({"meshCIDR": "fd00::/64"}), "spec.meshCIDR"),
            (json!({"listenPort": 70000}), "spec.listenPort"),
            (
                json!({"stunServers": ["stun.example.com:3478"]}),
                "spec.stunServers",
            ),
            (
                json!({"stunServers": ["a:1", "no port"]}),
                "spec.stunServers[1]",
            ),
            (
                json!({"relay": {"provider": "external"}}),
                "spec.relay.external.endpoint",
            ),
        ];
        for (spec, path) in cases {
            let errs = schema
                .admit(&mut mesh(spec.clone()), None)
                .expect_err(&spec.to_string());
            assert!(
                errs.iter().any(|e| e.path == path),
                "{spec}: want {path}, got {errs:?}"
            );
        }
    }
}
