//! The mutating half of admission: defaulting, then pruning of unknown fields.

use serde_json::Value;

use super::compile::Node;

/// Fields kept at the root of a resource (and of an `x-kubernetes-embedded-resource`) whatever the
/// schema says; `metadata` is left to the server's own ObjectMeta handling.
const RESOURCE_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Applies `default`s. Non-nullable `null`s are replaced by the field's default, or removed when it
/// has none; a default inserted for an object is itself defaulted (nested defaults apply once the
/// parent exists).
pub(super) fn apply_defaults(node: &Node, value: &mut Value, resource_root: bool) {
    match value {
        Value::Object(fields) => {
            if let Some(values) = node.additional_properties.as_deref() {
                fields
                    .retain(|_, v| !(v.is_null() && !values.nullable && values.default.is_none()));
                for v in fields.values_mut() {
                    default_slot(values, v);
                }
                return;
            }
            for (name, sub) in &node.properties {
                if resource_root && name == "metadata" {
                    continue;
                }
                match fields.get_mut(name) {
                    None => {
                        if let Some(default) = &sub.default {
                            let mut v = default.clone();
                            apply_defaults(sub, &mut v, sub.embedded_resource);
                            fields.insert(name.clone(), v);
                        }
                    }
                    Some(v) if v.is_null() && !sub.nullable && sub.default.is_none() => {
                        fields.remove(name);
                    }
                    Some(v) => default_slot(sub, v),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = node.items.as_deref() {
                for v in items.iter_mut() {
                    default_slot(item, v);
                }
            }
        }
        _ => {}
    }
}

/// Defaults a present value: a non-nullable `null` with a default becomes the default.
fn default_slot(node: &Node, v: &mut Value) {
    if v.is_null()
        && !node.nullable
        && let Some(default) = &node.default
    {
        *v = default.clone();
    }
    apply_defaults(node, v, node.embedded_resource);
}

/// Removes the fields the schema does not declare, except where it preserves unknown fields.
pub(super) fn prune(node: &Node, value: &mut Value, resource_root: bool) {
    match value {
        Value::Object(fields) => {
            if let Some(values) = node.additional_properties.as_deref() {
                for v in fields.values_mut() {
                    prune(values, v, values.embedded_resource);
                }
                return;
            }
            if !node.keeps_unknown_fields() {
                fields.retain(|k, _| {
                    node.properties.contains_key(k)
                        || (resource_root && RESOURCE_FIELDS.contains(&k.as_str()))
                });
            }
            for (name, v) in fields.iter_mut() {
                if resource_root && name == "metadata" {
                    continue;
                }
                if let Some(sub) = node.properties.get(name) {
                    prune(sub, v, sub.embedded_resource);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = node.items.as_deref() {
                for v in items.iter_mut() {
                    prune(item, v, item.embedded_resource);
                }
            }
        }
        _ => {}
    }
}
