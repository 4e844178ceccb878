//! Compiling an `openAPIV3Schema` into a tree of [`Node`]s, checking every keyword's shape.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use super::{FieldErrorReason, SchemaError};
use crate::apiserver::cel::CelProgram;

/// The `type` keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl Type {
    pub(super) fn name(self) -> &'static str {
        match self {
            Type::Object => "object",
            Type::Array => "array",
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
        }
    }
}

/// `x-kubernetes-list-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ListType {
    Atomic,
    Set,
    Map,
}

/// One `x-kubernetes-validations` rule, compiled.
#[derive(Debug)]
pub(super) struct Rule {
    pub program: CelProgram,
    pub message: Option<String>,
    pub message_expression: Option<CelProgram>,
    pub field_path: Option<String>,
    pub reason: FieldErrorReason,
    /// The rule refers to `oldSelf`: evaluated on updates only (unless `optional_old_self`).
    pub transition: bool,
    pub optional_old_self: bool,
}

/// One schema node.
#[derive(Debug, Default)]
pub(super) struct Node {
    pub ty: Option<Type>,
    pub nullable: bool,
    pub properties: BTreeMap<String, Node>,
    /// `additionalProperties` with a schema: a map whose values follow it.
    pub additional_properties: Option<Box<Node>>,
    /// `additionalProperties: true`: keep any field, unvalidated.
    pub additional_any: bool,
    pub items: Option<Box<Node>>,
    pub required: Vec<String>,
    pub enum_values: Option<Vec<Value>>,
    pub default: Option<Value>,
    pub minimum: Option<f64>,
    pub exclusive_minimum: bool,
    pub maximum: Option<f64>,
    pub exclusive_maximum: bool,
    pub multiple_of: Option<f64>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<Regex>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub unique_items: bool,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub format: Option<String>,
    pub int_or_string: bool,
    pub preserve_unknown: bool,
    pub embedded_resource: bool,
    pub list_type: Option<ListType>,
    pub list_map_keys: Vec<String>,
    pub all_of: Vec<Node>,
    pub any_of: Vec<Node>,
    pub one_of: Vec<Node>,
    pub not: Option<Box<Node>>,
    pub rules: Vec<Rule>,
}

fn invalid(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        path: if path.is_empty() {
            "<root>".to_string()
        } else {
            path.to_string()
        },
        message: message.into(),
    }
}

fn get_bool(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<bool, SchemaError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(path, format!("{key} must be a boolean"))),
    }
}

fn get_u64(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<u64>, SchemaError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(path, format!("{key} must be a non-negative integer"))),
    }
}

fn get_f64(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<f64>, SchemaError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(path, format!("{key} must be a number"))),
    }
}

fn get_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, SchemaError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(path, format!("{key} must be a string"))),
    }
}

fn child(path: &str, segment: &str) -> String {
    if path.is_empty() {
        segment.to_string()
    } else {
        format!("{path}.{segment}")
    }
}

fn sub_schemas(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Vec<Node>, SchemaError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, s)| Node::compile(s, &format!("{}[{i}]", child(path, key))))
            .collect(),
        Some(_) => Err(invalid(path, format!("{key} must be a list of schemas"))),
    }
}

fn parse_reason(reason: Option<&str>, path: &str) -> Result<FieldErrorReason, SchemaError> {
    Ok(match reason {
        None | Some("FieldValueInvalid") => FieldErrorReason::Invalid,
        Some("FieldValueForbidden") => FieldErrorReason::Forbidden,
        Some("FieldValueRequired") => FieldErrorReason::Required,
        Some("FieldValueDuplicate") => FieldErrorReason::Duplicate,
        Some(other) => {
            return Err(invalid(
                path,
                format!(
                    "x-kubernetes-validations reason {other:?} is not one of FieldValueInvalid, \
                     FieldValueForbidden, FieldValueRequired, FieldValueDuplicate"
                ),
            ));
        }
    })
}

fn compile_rules(value: Option<&Value>, path: &str) -> Result<Vec<Rule>, SchemaError> {
    let list = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid(path, "x-kubernetes-validations must be a list")),
    };
    let mut rules = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let rule_path = format!("{}[{i}]", child(path, "x-kubernetes-validations"));
        let obj = raw
            .as_object()
            .ok_or_else(|| invalid(&rule_path, "a validation rule must be an object"))?;
        let source = get_str(obj, "rule", &rule_path)?
            .ok_or_else(|| invalid(&rule_path, "rule is required"))?;
        let cel_error = |e| SchemaError::Cel {
            path: rule_path.clone(),
            source: e,
        };
        let program = CelProgram::compile(source).map_err(cel_error)?;
        let message_expression = get_str(obj, "messageExpression", &rule_path)?
            .map(CelProgram::compile)
            .transpose()
            .map_err(cel_error)?;
        let transition = program.references_variable("oldSelf");
        rules.push(Rule {
            program,
            message: get_str(obj, "message", &rule_path)?.map(str::to_string),
            message_expression,
            field_path: get_str(obj, "fieldPath", &rule_path)?.map(str::to_string),
            reason: parse_reason(get_str(obj, "reason", &rule_path)?, &rule_path)?,
            transition,
            optional_old_self: get_bool(obj, "optionalOldSelf", &rule_path)?,
        });
    }
    Ok(rules)
}

impl Node {
    /// Compiles the schema at `path` (a JSON-ish location used in error messages).
    pub(super) fn compile(schema: &Value, path: &str) -> Result<Node, SchemaError> {
        let obj = schema
            .as_object()
            .ok_or_else(|| invalid(path, "a schema must be an object"))?;
        if obj.contains_key("$ref") {
            return Err(invalid(
                path,
                "$ref is not allowed in CustomResourceDefinition schemas",
            ));
        }
        let ty = match get_str(obj, "type", path)? {
            None | Some("") => None,
            Some("object") => Some(Type::Object),
            Some("array") => Some(Type::Array),
            Some("string") => Some(Type::String),
            Some("integer") => Some(Type::Integer),
            Some("number") => Some(Type::Number),
            Some("boolean") => Some(Type::Boolean),
            Some(other) => return Err(invalid(path, format!("unknown type {other:?}"))),
        };
        let mut properties = BTreeMap::new();
        match obj.get("properties") {
            None | Some(Value::Null) => {}
            Some(Value::Object(props)) => {
                for (name, sub) in props {
                    properties.insert(name.clone(), Node::compile(sub, &child(path, name))?);
                }
            }
            Some(_) => return Err(invalid(path, "properties must be an object")),
        }
        let (additional_properties, additional_any) = match obj.get("additionalProperties") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => (None, false),
            Some(Value::Bool(true)) => (None, true),
            Some(sub @ Value::Object(_)) => (
                Some(Box::new(Node::compile(
                    sub,
                    &child(path, "additionalProperties"),
                )?)),
                false,
            ),
            Some(_) => {
                return Err(invalid(
                    path,
                    "additionalProperties must be a boolean or a schema",
                ));
            }
        };
        if additional_properties.is_some() && !properties.is_empty() {
            return Err(invalid(
                path,
                "properties and additionalProperties are mutually exclusive",
            ));
        }
        let items = match obj.get("items") {
            None | Some(Value::Null) => None,
            Some(sub @ Value::Object(_)) => {
                Some(Box::new(Node::compile(sub, &child(path, "items"))?))
            }
            Some(_) => return Err(invalid(path, "items must be a single schema")),
        };
        let required = match obj.get("required") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid(path, "required must be a list of strings"))?,
            Some(_) => return Err(invalid(path, "required must be a list of strings")),
        };
        let enum_values = match obj.get("enum") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => Some(list.clone()),
            Some(_) => return Err(invalid(path, "enum must be a list")),
        };
        let pattern = get_str(obj, "pattern", path)?
            .map(|p| {
                Regex::new(p).map_err(|e| SchemaError::Pattern {
                    path: child(path, "pattern"),
                    source: e,
                })
            })
            .transpose()?;
        let list_type = match get_str(obj, "x-kubernetes-list-type", path)? {
            None => None,
            Some("atomic") => Some(ListType::Atomic),
            Some("set") => Some(ListType::Set),
            Some("map") => Some(ListType::Map),
            Some(other) => {
                return Err(invalid(
                    path,
                    format!("unknown x-kubernetes-list-type {other:?}"),
                ));
            }
        };
        let list_map_keys = match obj.get("x-kubernetes-list-map-keys") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    invalid(path, "x-kubernetes-list-map-keys must be a list of strings")
                })?,
            Some(_) => {
                return Err(invalid(
                    path,
                    "x-kubernetes-list-map-keys must be a list of strings",
                ));
            }
        };
        if list_type == Some(ListType::Map) && list_map_keys.is_empty() {
            return Err(invalid(
                path,
                "x-kubernetes-list-type map requires x-kubernetes-list-map-keys",
            ));
        }
        let not = match obj.get("not") {
            None | Some(Value::Null) => None,
            Some(sub) => Some(Box::new(Node::compile(sub, &child(path, "not"))?)),
        };
        Ok(Node {
            ty,
            nullable: get_bool(obj, "nullable", path)?,
            properties,
            additional_properties,
            additional_any,
            items,
            required,
            enum_values,
            default: obj.get("default").cloned(),
            minimum: get_f64(obj, "minimum", path)?,
            exclusive_minimum: get_bool(obj, "exclusiveMinimum", path)?,
            maximum: get_f64(obj, "maximum", path)?,
            exclusive_maximum: get_bool(obj, "exclusiveMaximum", path)?,
            multiple_of: get_f64(obj, "multipleOf", path)?,
            min_length: get_u64(obj, "minLength", path)?,
            max_length: get_u64(obj, "maxLength", path)?,
            pattern,
            min_items: get_u64(obj, "minItems", path)?,
            max_items: get_u64(obj, "maxItems", path)?,
            unique_items: get_bool(obj, "uniqueItems", path)?,
            min_properties: get_u64(obj, "minProperties", path)?,
            max_properties: get_u64(obj, "maxProperties", path)?,
            format: get_str(obj, "format", path)?.map(str::to_string),
            int_or_string: get_bool(obj, "x-kubernetes-int-or-string", path)?,
            preserve_unknown: get_bool(obj, "x-kubernetes-preserve-unknown-fields", path)?,
            embedded_resource: get_bool(obj, "x-kubernetes-embedded-resource", path)?,
            list_type,
            list_map_keys,
            all_of: sub_schemas(obj, "allOf", path)?,
            any_of: sub_schemas(obj, "anyOf", path)?,
            one_of: sub_schemas(obj, "oneOf", path)?,
            not,
            rules: compile_rules(obj.get("x-kubernetes-validations"), path)?,
        })
    }

    /// Whether fields this node does not declare are kept.
    pub(super) fn keeps_unknown_fields(&self) -> bool {
        self.preserve_unknown || self.additional_any
    }
}
