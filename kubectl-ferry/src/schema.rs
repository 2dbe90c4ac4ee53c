//! The apiserver's admission of a custom resource, offline: the CRD's own
//! structural schema (`openAPIV3Schema`, as `ferry_api::crds()` generates
//! it) applied to an object the way kube-apiserver applies it on create —
//! null fields pruned, defaults filled in, types, patterns, lengths, bounds,
//! enums and formats checked, unknown fields refused (kubectl's default
//! strict field validation), and every `x-kubernetes-validations` CEL rule
//! evaluated with the `cel` crate on the node it sits on.
//!
//! Nothing here restates a rule: the rules are read from the CRD, so a rule
//! added to `api/src/resources.rs` is checked here without a change. The
//! walker knows the schema keywords ferry's generated CRDs use and refuses
//! a schema with any other ([`SchemaError::UnknownKeyword`]); a test runs it
//! over every CRD, so a new keyword fails a test rather than being ignored.
//!
//! Transition rules (those reading `oldSelf`) judge updates only; a lint
//! judges a creation, so they are skipped, as the apiserver skips them on
//! create. Messages follow the apiserver's wording so that a finding reads
//! the same here and in `kubectl apply`'s refusal.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

/// One refusal: the field path as the apiserver names it (`spec.ttl`,
/// `spec.secrets[0].name`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldError {
    /// The field, as `kubectl apply` prints it.
    pub field: String,
    /// The apiserver's message for it.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The schema itself is beyond what this walker knows, so an object could
/// not be judged as the apiserver would.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    /// A schema keyword this walker does not implement.
    #[error("schema keyword {keyword:?} at {path} is not understood by kubectl ferry lint")]
    UnknownKeyword {
        /// The keyword.
        keyword: String,
        /// Where in the schema.
        path: String,
    },
    /// A CEL rule the `cel` crate cannot compile or evaluate.
    #[error("CEL rule at {path} cannot be evaluated: {rule}: {detail}")]
    Rule {
        /// The field the rule sits on.
        path: String,
        /// The rule's text.
        rule: String,
        /// What the CEL crate said.
        detail: String,
    },
}

/// The keywords the walker implements; anything else is refused.
const KNOWN_KEYWORDS: [&str; 22] = [
    "type",
    "description",
    "title",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "nullable",
    "default",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "minimum",
    "maximum",
    "enum",
    "format",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
];

/// Checks that `schema` uses only keywords [`validate`] implements, and
/// that every CEL rule compiles.
pub fn check_schema(schema: &Value) -> Result<(), SchemaError> {
    check_schema_at(schema, "")
}

fn check_schema_at(schema: &Value, path: &str) -> Result<(), SchemaError> {
    let Some(object) = schema.as_object() else {
        return Ok(());
    };
    for (keyword, value) in object {
        if !KNOWN_KEYWORDS.contains(&keyword.as_str()) {
            return Err(SchemaError::UnknownKeyword {
                keyword: keyword.clone(),
                path: path.to_owned(),
            });
        }
        match keyword.as_str() {
            "properties" => {
                for (name, child) in value.as_object().into_iter().flatten() {
                    check_schema_at(child, &join(path, name))?;
                }
            }
            "items" => check_schema_at(value, &format!("{path}[*]"))?,
            "additionalProperties" => check_schema_at(value, &format!("{path}[*]"))?,
            "x-kubernetes-validations" => {
                for rule in value.as_array().into_iter().flatten() {
                    let text = rule["rule"].as_str().unwrap_or_default();
                    cel::Program::compile(text).map_err(|error| SchemaError::Rule {
                        path: path.to_owned(),
                        rule: text.to_owned(),
                        detail: error.to_string(),
                    })?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Prunes, defaults and validates `object` (a whole custom resource: the
/// schema's root is the object) against `schema`, returning every refusal
/// in the order the walk found them. `object` is left as the apiserver
/// would store it.
pub fn validate(object: &mut Value, schema: &Value) -> Result<Vec<FieldError>, SchemaError> {
    let mut errors = Vec::new();
    // The root's apiVersion, kind and metadata are the apiserver's own, not
    // the CRD schema's.
    let mut walker = Walker {
        errors: &mut errors,
    };
    walker.node(object, schema, "")?;
    Ok(errors)
}

struct Walker<'a> {
    errors: &'a mut Vec<FieldError>,
}

/// `parent.child`, or `child` at the root.
fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

/// How the apiserver quotes a value in `Invalid value: ...`.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{text:?}"),
        Value::Object(_) => "\"object\"".to_owned(),
        Value::Array(_) => "\"array\"".to_owned(),
        other => other.to_string(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// RFC 3339 date-time, as Kubernetes' `date-time` format accepts it.
static DATE_TIME: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$").ok()
});

impl Walker<'_> {
    fn refuse(&mut self, field: &str, message: String) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            message,
        });
    }

    fn node(&mut self, value: &mut Value, schema: &Value, path: &str) -> Result<(), SchemaError> {
        if value.is_null() {
            // Only nullable fields keep a null (the parent pruned others).
            return Ok(());
        }
        let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
        let int_or_string = schema["x-kubernetes-int-or-string"] == Value::Bool(true);
        if let Some(wanted) = schema["type"].as_str() {
            let actual = type_name(value);
            let fits = actual == wanted || (wanted == "number" && actual == "integer");
            if !fits {
                self.refuse(
                    path,
                    format!(
                        "Invalid value: \"{actual}\": {path} in body must be of type {wanted}: \"{actual}\""
                    ),
                );
                return Ok(());
            }
        } else if int_or_string && !(value.is_string() || type_name(value) == "integer") {
            self.refuse(
                path,
                format!(
                    "Invalid value: {}: must be an integer or a string",
                    shown(value)
                ),
            );
            return Ok(());
        }
        match value {
            Value::Object(map) => self.object(map, schema, path, preserve)?,
            Value::Array(items) => self.array(items, schema, path)?,
            Value::String(text) => self.string(text, schema, path),
            Value::Number(number) => self.number(number, schema, path),
            _ => {}
        }
        if let Some(values) = schema["enum"].as_array()
            && !values.contains(value)
        {
            {
                let supported: Vec<String> = values.iter().map(ToString::to_string).collect();
                self.refuse(
                    path,
                    format!(
                        "Unsupported value: {}: supported values: {}",
                        value,
                        supported.join(", ")
                    ),
                );
            }
        }
        self.rules(value, schema, path)
    }

    fn object(
        &mut self,
        map: &mut Map<String, Value>,
        schema: &Value,
        path: &str,
        preserve: bool,
    ) -> Result<(), SchemaError> {
        let properties = schema["properties"].as_object();
        let additional = schema.get("additionalProperties");
        let at_root = path.is_empty();
        // Prune nulls of fields that may not be null, then default.
        map.retain(|key, child| {
            let nullable = properties
                .and_then(|p| p.get(key))
                .is_some_and(|s| s["nullable"] == Value::Bool(true));
            !child.is_null() || nullable
        });
        if let Some(properties) = properties {
            for (key, child_schema) in properties {
                if let (false, Some(default)) = (map.contains_key(key), child_schema.get("default"))
                {
                    map.insert(key.clone(), default.clone());
                }
            }
        }
        let mut unknown = Vec::new();
        for (key, child) in map.iter_mut() {
            if at_root && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                continue;
            }
            let child_path = join(path, key);
            if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                self.node(child, child_schema, &child_path)?;
            } else if let Some(child_schema) = additional.filter(|a| a.is_object()) {
                let map_path = format!("{path}[{key}]");
                self.node(child, child_schema, &map_path)?;
            } else if !preserve && additional != Some(&Value::Bool(true)) {
                unknown.push(child_path);
            }
        }
        for field in unknown {
            self.refuse(&field, format!("unknown field \"{field}\""));
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            if let Some(name) = required.as_str()
                && !map.contains_key(name)
            {
                self.refuse(&join(path, name), "Required value".to_owned());
            }
        }
        if let Some(max) = schema["maxProperties"].as_u64()
            && map.len() as u64 > max
        {
            {
                self.refuse(
                    path,
                    format!("Too many: {}: must have at most {max} items", map.len()),
                );
            }
        }
        Ok(())
    }

    fn array(
        &mut self,
        items: &mut [Value],
        schema: &Value,
        path: &str,
    ) -> Result<(), SchemaError> {
        let count = items.len() as u64;
        if let Some(min) = schema["minItems"].as_u64().filter(|min| count < *min) {
            self.refuse(
                path,
                format!("Invalid value: {count}: {path} in body should have at least {min} items"),
            );
        }
        if let Some(max) = schema["maxItems"].as_u64().filter(|max| count > *max) {
            self.refuse(
                path,
                format!("Too many: {count}: must have at most {max} items"),
            );
        }
        if let Some(item_schema) = schema.get("items") {
            for (index, item) in items.iter_mut().enumerate() {
                if item.is_null() && item_schema["nullable"] != Value::Bool(true) {
                    self.refuse(
                        &format!("{path}[{index}]"),
                        format!("Invalid value: \"null\": {path}[{index}] in body must be of type {}: \"null\"", item_schema["type"].as_str().unwrap_or("object")),
                    );
                    continue;
                }
                self.node(item, item_schema, &format!("{path}[{index}]"))?;
            }
        }
        Ok(())
    }

    fn string(&mut self, text: &str, schema: &Value, path: &str) {
        let length = text.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64().filter(|min| length < *min) {
            self.refuse(
                path,
                format!(
                    "Invalid value: {text:?}: {path} in body should be at least {min} chars long"
                ),
            );
        }
        if let Some(max) = schema["maxLength"].as_u64().filter(|max| length > *max) {
            self.refuse(path, format!("Too long: may not be more than {max} bytes"));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            let matches = Regex::new(pattern).is_ok_and(|re| re.is_match(text));
            if !matches {
                self.refuse(
                    path,
                    format!("Invalid value: {text:?}: {path} in body should match '{pattern}'"),
                );
            }
        }
        if schema["format"].as_str() == Some("date-time") {
            let valid = DATE_TIME.as_ref().is_some_and(|re| re.is_match(text));
            if !valid {
                self.refuse(
                    path,
                    format!("Invalid value: {text:?}: {path} in body must be of type date-time: {text:?}"),
                );
            }
        }
    }

    fn number(&mut self, number: &serde_json::Number, schema: &Value, path: &str) {
        let Some(value) = number.as_f64() else {
            return;
        };
        if let Some(min) = schema["minimum"].as_f64().filter(|min| value < *min) {
            self.refuse(
                path,
                format!("Invalid value: {number}: {path} in body should be greater than or equal to {min}"),
            );
        }
        if let Some(max) = schema["maximum"].as_f64().filter(|max| value > *max) {
            self.refuse(
                path,
                format!(
                    "Invalid value: {number}: {path} in body should be less than or equal to {max}"
                ),
            );
        }
    }

    /// Evaluates the node's CEL rules with `self` bound to `value`.
    fn rules(&mut self, value: &Value, schema: &Value, path: &str) -> Result<(), SchemaError> {
        let Some(rules) = schema["x-kubernetes-validations"].as_array() else {
            return Ok(());
        };
        for rule in rules {
            let text = rule["rule"].as_str().unwrap_or_default();
            if reads_old_self(text) {
                continue;
            }
            let failure = |detail: String| SchemaError::Rule {
                path: path.to_owned(),
                rule: text.to_owned(),
                detail,
            };
            let program = cel::Program::compile(text).map_err(|e| failure(e.to_string()))?;
            let mut context = cel::Context::default();
            let bound = cel::to_value(without_nulls(value)).map_err(|e| failure(e.to_string()))?;
            context.add_variable_from_value("self", bound);
            match program.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let message = rule["message"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("failed rule: {text}"));
                    let field = match rule["fieldPath"].as_str() {
                        Some(extra) => format!("{path}{extra}"),
                        None => path.to_owned(),
                    };
                    let shown = match value {
                        Value::Object(_) => "\"object\"".to_owned(),
                        other => shown(other),
                    };
                    self.refuse(&field, format!("Invalid value: {shown}: {message}"));
                }
                Ok(other) => return Err(failure(format!("evaluated to {other:?}, not a bool"))),
                Err(error) => return Err(failure(error.to_string())),
            }
        }
        Ok(())
    }
}

/// Whether a rule is a transition rule (it reads `oldSelf`).
fn reads_old_self(rule: &str) -> bool {
    rule.contains("oldSelf")
}

/// `value` with every null object field removed: the apiserver's CEL sees
/// a null field as absent (`has()` is false), which a nullable field left
/// null must not change.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The field paths of `errors`, for comparisons.
pub fn fields(errors: &[FieldError]) -> BTreeSet<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}
