//! The CRD's OpenAPI rules that are not CEL, evaluated as the API server would: bounds of
//! numbers, lengths of strings and lists, and patterns, read from the generated schema itself,
//! so `render` refuses what `kubectl apply` would (a Secret name that is no DNS name, 65
//! replicas) rather than render it.

use serde_json::Value;

/// Each rule of `schema` that `value` breaks, as `field.path: what is wrong`. Keywords
/// other than `properties`, `items`, `minimum`, `maximum`, `minLength`, `maxLength`,
/// `minItems`, `maxItems` and `pattern` are not evaluated here (types are, by the typed
/// objects; CEL rules by `kube::core::cel`).
pub fn problems(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, value, "", &mut Patterns::default(), &mut out);
    out
}

/// Each pattern compiled once per check, however many values it is matched against.
#[derive(Default)]
struct Patterns(std::collections::HashMap<String, Result<regex::Regex, String>>);

impl Patterns {
    fn get(&mut self, pattern: &str) -> &Result<regex::Regex, String> {
        self.0
            .entry(pattern.to_owned())
            .or_insert_with(|| regex::Regex::new(pattern).map_err(|e| e.to_string()))
    }
}

/// At most the first 64 characters of `text`, for a message.
fn shown(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// The schema of `K`'s first version, as JSON.
pub fn of<K: kube::CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions.first().and_then(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref());
    schema.and_then(|s| serde_json::to_value(s).ok()).unwrap_or(Value::Null)
}

fn walk(schema: &Value, value: &Value, path: &str, patterns: &mut Patterns, out: &mut Vec<String>) {
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    let count = |key: &str| schema.get(key).and_then(Value::as_u64);
    match value {
        Value::Object(fields) => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return };
            for (name, field) in fields {
                if let Some(rule) = properties.get(name) {
                    let at = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    walk(rule, field, &at, patterns, out);
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(most) = count("maxItems").filter(|most| len > *most) {
                out.push(format!("{path}: {len} items, at most {most}"));
            }
            if let Some(least) = count("minItems").filter(|least| len < *least) {
                out.push(format!("{path}: {len} items, at least {least}"));
            }
            if let Some(rule) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    walk(rule, item, &format!("{path}[{index}]"), patterns, out);
                }
            }
        }
        Value::Number(n) => {
            let Some(n) = n.as_f64() else { return };
            if let Some(least) = number("minimum").filter(|least| n < *least) {
                out.push(format!("{path}: {n} is less than the minimum {least}"));
            }
            if let Some(most) = number("maximum").filter(|most| n > *most) {
                out.push(format!("{path}: {n} is more than the maximum {most}"));
            }
        }
        Value::String(text) => {
            let len = text.chars().count() as u64;
            if let Some(most) = count("maxLength").filter(|most| len > *most) {
                out.push(format!("{path}: {len} characters, at most {most}"));
            }
            if let Some(least) = count("minLength").filter(|least| len < *least) {
                out.push(format!("{path}: {len} characters, at least {least}"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match patterns.get(pattern) {
                    Ok(re) if re.is_match(text) => {}
                    Ok(_) => out.push(format!("{path}: {} does not match {pattern}", shown(text))),
                    Err(e) => out.push(format!("{path}: the schema's pattern does not compile: {e}")),
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_bounds_lengths_and_patterns_are_named_by_field() {
        let schema = of::<crate::crd::Tunnel>();
        assert!(schema.get("properties").is_some(), "{schema}");
        let spec = serde_json::json!({
            "spec": {
                "existingTunnel": {"name": "c", "secret": "Bad_Name"},
                "server": {"address": "h:1", "caSecret": "ok.name", "adminSecret": ""},
                "replicas": 65,
                "allowedHosts": vec!["a.example.com"; 65],
                "deployPatch": "x".repeat(65_537),
            }
        });
        let found = problems(&schema, &spec);
        let fields: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.allowedHosts",
                "spec.deployPatch",
                "spec.existingTunnel.secret",
                "spec.replicas",
                "spec.server.adminSecret"
            ],
            "{found:?}"
        );
        let good =
            serde_json::json!({"spec": {"existingTunnel": {"name": "c", "secret": "s.1-a"}, "replicas": 64}});
        assert_eq!(problems(&schema, &good), Vec::<String>::new());
        let none = serde_json::json!({"spec": {"replicas": 0}});
        assert_eq!(problems(&schema, &none), ["spec.replicas: 0 is less than the minimum 1"]);
    }
}
