//! `deployPatch`: a strategic-merge patch (YAML or JSON object) as `kubectl patch` applies it to
//! a Deployment, with the list merge keys of the pod types; or a JSON array, applied as an
//! RFC 6902 JSON Patch.

use serde_json::{Map, Value};

/// What is wrong with a patch.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// Neither YAML nor JSON.
    #[error("deployPatch is not YAML or JSON")]
    Syntax(#[source] Box<serde_saphyr::Error>),
    /// Not an object or an array.
    #[error("deployPatch is a {0}: give an object (strategic merge) or an array (JSON Patch)")]
    Shape(&'static str),
    /// A JSON Patch that does not parse.
    #[error("deployPatch is not a JSON Patch")]
    JsonPatchSyntax(#[source] serde_json::Error),
    /// A JSON Patch that does not apply.
    #[error("deployPatch does not apply")]
    JsonPatch(#[source] json_patch::PatchError),
    /// A patch longer than [`MAX_PATCH_BYTES`], or a JSON Patch of more than
    /// [`MAX_OPERATIONS`] operations or making the Deployment larger than [`MAX_PATCHED_BYTES`].
    #[error("deployPatch is too large: {0}")]
    TooLarge(String),
    /// A strategic-merge directive that is not supported, or misused.
    #[error("deployPatch at {path}: {message}")]
    Directive {
        /// Where, as a JSON pointer.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The merge key of a list field of a Deployment, by the field's name: lists without one are
/// replaced whole, as Kubernetes does.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Longest patch text taken (the CRD says so too): a strategic merge's lists are merged item
/// by item against the Deployment's, so the text bounds that work.
pub const MAX_PATCH_BYTES: usize = 64 * 1024;

/// Most operations of a JSON Patch.
pub const MAX_OPERATIONS: usize = 1024;

/// Most `copy` operations of a JSON Patch, the only ones that add more than their own text.
pub const MAX_COPIES: usize = 16;

/// Largest Deployment a JSON Patch may leave with its copies, as JSON (the API server's own
/// limit on an object is 1.5 MiB). Each `copy` of the spec into itself doubles it: thirty of
/// them would take gigabytes, in the operator that renders every tunnel's Deployment.
pub const MAX_PATCHED_BYTES: usize = 1024 * 1024;

/// Applies the patch text to `target` (a Deployment as JSON).
pub fn apply(target: &mut Value, patch: &str) -> Result<(), PatchError> {
    if patch.len() > MAX_PATCH_BYTES {
        return Err(PatchError::TooLarge(format!("{} bytes, more than {MAX_PATCH_BYTES}", patch.len())));
    }
    let patch: Value = serde_saphyr::from_str(patch).map_err(|e| PatchError::Syntax(Box::new(e)))?;
    match patch {
        Value::Array(_) => {
            let patch: json_patch::Patch =
                serde_json::from_value(patch).map_err(PatchError::JsonPatchSyntax)?;
            json_patch_within_bounds(target, patch)
        }
        Value::Object(patch) => merge_object(target, patch, ""),
        Value::Null => Ok(()),
        Value::Bool(_) => Err(PatchError::Shape("boolean")),
        Value::Number(_) => Err(PatchError::Shape("number")),
        Value::String(_) => Err(PatchError::Shape("string")),
    }
}

/// Applies a JSON Patch as one change (all of it or nothing), one operation at a time so that
/// the Deployment's size is checked after each copy, before the next can double it. (An `add`
/// or `replace` adds its own value, which the patch's text bounds; `move` adds nothing.)
fn json_patch_within_bounds(target: &mut Value, patch: json_patch::Patch) -> Result<(), PatchError> {
    let operations = patch.0.len();
    if operations > MAX_OPERATIONS {
        return Err(PatchError::TooLarge(format!("{operations} operations, more than {MAX_OPERATIONS}")));
    }
    let copies = patch.0.iter().filter(|op| matches!(op, json_patch::PatchOperation::Copy(_))).count();
    if copies > MAX_COPIES {
        return Err(PatchError::TooLarge(format!("{copies} copy operations, more than {MAX_COPIES}")));
    }
    let mut patched = target.clone();
    for (i, operation) in patch.0.into_iter().enumerate() {
        let copy = matches!(operation, json_patch::PatchOperation::Copy(_));
        json_patch::patch(&mut patched, &[operation]).map_err(|mut e| {
            // Its place in the whole patch, not in the one-operation patch applied.
            e.operation = i;
            PatchError::JsonPatch(e)
        })?;
        let size = if copy { json_size(&patched) } else { 0 };
        if size > MAX_PATCHED_BYTES {
            let why =
                format!("operation {i} makes the Deployment {size} bytes, more than {MAX_PATCHED_BYTES}");
            return Err(PatchError::TooLarge(why));
        }
    }
    *target = patched;
    Ok(())
}

/// The length of `value` as JSON, without building the text.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn directive(path: &str, message: impl Into<String>) -> PatchError {
    PatchError::Directive {
        path: if path.is_empty() { "/".into() } else { path.into() },
        message: message.into(),
    }
}

fn merge_object(target: &mut Value, mut patch: Map<String, Value>, path: &str) -> Result<(), PatchError> {
    match patch.remove("$patch") {
        None => {}
        Some(Value::String(s)) if s == "merge" => {}
        Some(Value::String(s)) if s == "replace" => {
            *target = Value::Object(strip(patch, path)?);
            return Ok(());
        }
        Some(Value::String(s)) if s == "delete" => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => {
            return Err(directive(path, format!("$patch {other} is not replace, merge or delete")))
        }
    }
    let retain = match patch.remove("$retainKeys") {
        None => None,
        Some(Value::Array(keys)) => Some(
            keys.into_iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| directive(path, "$retainKeys lists key names"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(directive(path, "$retainKeys lists key names")),
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(fields) = target else { unreachable!("made an object above") };
    for (key, value) in patch {
        let here = format!("{path}/{key}");
        if key.starts_with("$setElementOrder/") {
            // An ordering hint from `kubectl`: the merged order is kept as it is.
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(gone)) = (fields.get_mut(field), &value) {
                list.retain(|item| !gone.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(directive(&here, format!("{key} is not a supported directive")));
        }
        match value {
            Value::Null => {
                fields.remove(&key);
            }
            Value::Object(inner) => {
                let slot = fields.entry(key.clone()).or_insert(Value::Null);
                merge_object(slot, inner, &here)?;
                if slot.is_null() {
                    fields.remove(&key);
                }
            }
            Value::Array(items) => match merge_key(&key) {
                Some(merge) => {
                    let slot = fields.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                    merge_list(slot, items, merge, &here)?;
                }
                None => {
                    fields.insert(key, Value::Array(strip_list(items, &here)?));
                }
            },
            scalar => {
                fields.insert(key, scalar);
            }
        }
    }
    if let Some(keep) = retain {
        fields.retain(|k, _| keep.contains(k));
    }
    Ok(())
}

fn merge_list(target: &mut Value, items: Vec<Value>, merge: &str, path: &str) -> Result<(), PatchError> {
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        let kept = items.into_iter().filter(|i| i.get("$patch").is_none()).collect();
        *target = Value::Array(strip_list(kept, path)?);
        return Ok(());
    }
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let Value::Array(list) = target else { unreachable!("made an array above") };
    for item in items {
        let Value::Object(mut fields) = item else {
            return Err(directive(path, format!("items of this list are objects keyed by {merge}")));
        };
        let Some(key) = fields.get(merge).cloned() else {
            return Err(directive(path, format!("an item has no {merge}, the key this list merges by")));
        };
        let at = list.iter().position(|existing| existing.get(merge) == Some(&key));
        let here = format!("{path}[{merge}={key}]");
        if fields.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(at) = at {
                list.remove(at);
            }
            continue;
        }
        match at {
            Some(at) => merge_object(&mut list[at], fields, &here)?,
            None => {
                fields.remove("$patch");
                list.push(Value::Object(strip(fields, &here)?));
            }
        }
    }
    Ok(())
}

/// A patch fragment taken as a value: directives inside it are refused.
fn strip(fields: Map<String, Value>, path: &str) -> Result<Map<String, Value>, PatchError> {
    let mut out = Map::new();
    for (key, value) in fields {
        if key.starts_with('$') {
            return Err(directive(&format!("{path}/{key}"), format!("{key} cannot be used here")));
        }
        let value = match value {
            Value::Object(inner) => Value::Object(strip(inner, &format!("{path}/{key}"))?),
            Value::Array(items) => Value::Array(strip_list(items, &format!("{path}/{key}"))?),
            other => other,
        };
        out.insert(key, value);
    }
    Ok(out)
}

fn strip_list(items: Vec<Value>, path: &str) -> Result<Vec<Value>, PatchError> {
    items
        .into_iter()
        .map(|item| match item {
            Value::Object(fields) => strip(fields, path).map(Value::Object),
            other => Ok(other),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment() -> Value {
        json!({"spec": {"replicas": 1, "template": {"spec": {
            "containers": [{"name": "connector", "image": "a:1", "args": ["connect"],
                "env": [{"name": "A", "value": "1"}],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/tunnel/config"}]}],
            "volumes": [{"name": "config", "configMap": {"name": "c"}}]}}}})
    }

    fn patched(patch: &str) -> Result<Value, PatchError> {
        let mut d = deployment();
        apply(&mut d, patch).map(|()| d)
    }

    #[test]
    fn lists_with_merge_keys_merge_by_key_and_others_are_replaced() {
        let d = patched(
            "spec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n      - name: connector\n        image: a:2\n        args: [connect, -v]\n        env: [{name: B, value: '2'}, {name: A, value: '3'}]\n      - name: sidecar\n        image: s\n      volumes: [{name: extra, emptyDir: {}}]\n      tolerations: [{key: k, operator: Exists}]\n",
        )
        .unwrap();
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(containers[0]["image"], "a:2");
        assert_eq!(containers[0]["args"], json!(["connect", "-v"]));
        assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "3"}, {"name": "B", "value": "2"}]));
        assert_eq!(containers[0]["volumeMounts"][0]["mountPath"], "/etc/tunnel/config");
        assert_eq!(containers[1]["name"], "sidecar");
        assert_eq!(d["spec"]["template"]["spec"]["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(d["spec"]["template"]["spec"]["tolerations"][0]["key"], "k");
    }

    #[test]
    fn directives_delete_replace_and_null_remove_what_they_name() {
        let d = patched(
            r#"{"spec": {"template": {"spec": {"containers": [{"name": "connector", "env": [{"name": "A", "$patch": "delete"}],
                 "volumeMounts": [{"mountPath": "/x", "name": "x"}, {"$patch": "replace"}]}],
                 "volumes": null}}}}"#,
        )
        .unwrap();
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["env"], json!([]));
        assert_eq!(container["volumeMounts"], json!([{"mountPath": "/x", "name": "x"}]));
        assert!(d["spec"]["template"]["spec"].get("volumes").is_none());
        let d =
            patched(r#"{"spec": {"template": {"spec": {"$patch": "replace", "containers": []}}}}"#).unwrap();
        assert_eq!(d["spec"]["template"]["spec"], json!({"containers": []}));
    }

    #[test]
    fn a_json_array_is_a_json_patch() {
        let d = patched(r#"[{"op": "replace", "path": "/spec/replicas", "value": 2}, {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "-v"}]"#).unwrap();
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["args"], json!(["connect", "-v"]));
        let err = patched(r#"[{"op": "test", "path": "/spec/replicas", "value": 5}]"#).unwrap_err();
        assert!(matches!(err, PatchError::JsonPatch(_)), "{err}");
    }

    #[test]
    fn bad_patches_say_what_is_wrong_and_where() {
        for (patch, needle) in [
            ("spec: [", "not YAML or JSON"),
            ("3", "is a number"),
            ("\"x\"", "is a string"),
            ("[{\"op\": \"jump\"}]", "not a JSON Patch"),
            ("spec: {$magic: 1}", "/spec/$magic: $magic is not a supported directive"),
            (
                "spec: {template: {spec: {containers: [{image: x}]}}}",
                "/spec/template/spec/containers: an item has no name",
            ),
            ("spec: {template: {spec: {containers: [3]}}}", "are objects keyed by name"),
            ("spec: {$patch: sideways}", "/spec: $patch \"sideways\" is not"),
        ] {
            let err = patched(patch).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(needle), "{patch}: {text}");
        }
    }

    /// A tenant's patch copying the spec into itself: each copy doubles the Deployment, and
    /// 30 of them took gigabytes in the operator, which renders every tunnel's Deployment.
    #[test]
    fn a_json_patch_is_held_to_its_bounds_and_applies_whole_or_not_at_all() {
        let doubling = |n: usize| {
            let ops: Vec<String> =
                (0..n).map(|i| format!(r#"{{"op":"copy","from":"/spec","path":"/spec/a{i}"}}"#)).collect();
            format!("[{}]", ops.join(","))
        };
        let err = patched(&doubling(16)).unwrap_err();
        assert!(
            matches!(&err, PatchError::TooLarge(why) if why.starts_with("operation 1") && why.contains("more than 1048576")),
            "{err}"
        );
        let err = patched(&doubling(30)).unwrap_err();
        assert!(
            matches!(&err, PatchError::TooLarge(why) if why == "30 copy operations, more than 16"),
            "{err}"
        );
        let many =
            format!("[{}]", vec![r#"{"op":"test","path":"/spec/replicas","value":1}"#; 1025].join(","));
        assert!(matches!(patched(&many), Err(PatchError::TooLarge(_))));
        assert!(matches!(patched(&" ".repeat(MAX_PATCH_BYTES + 1)), Err(PatchError::TooLarge(_))));

        // A few copies within the bound apply; a failing operation leaves nothing applied and
        // is named by its place in the whole patch.
        let d = patched(&doubling(3)).unwrap();
        assert_eq!(d["spec"]["a0"]["replicas"], 1);
        let failing =
            r#"[{"op":"replace","path":"/spec/replicas","value":5},{"op":"remove","path":"/nowhere"}]"#;
        let mut d = deployment();
        let Err(PatchError::JsonPatch(err)) = apply(&mut d, failing) else { panic!("applied") };
        assert_eq!(err.operation, 1);
        assert_eq!(d, deployment());
    }
}
