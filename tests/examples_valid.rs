//! The RaftCluster manifests in `examples/` are what the installed CRD accepts: every field is one
//! the schema knows (a typo is an error, as with `kubectl apply`'s strict field validation), every
//! value has the schema's type, range, enum and pattern, the CEL rules the API server runs hold,
//! and the operator's Rust types read the manifest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raft_operator::crd::RaftCluster;
use serde_json::Value;
use std::path::{Path, PathBuf};

const EXAMPLE_VOTERS: [i64; 4] = [3, 5, 7, 9];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The openAPIV3Schema of v1alpha1 in the CRD users install (`crds/raftcluster.yaml`, which
/// `make crd-drift` keeps equal to the Rust types).
fn installed_schema() -> Value {
    let crd = read_yaml(&repo_path("crds/raftcluster.yaml"));
    let version = crd["spec"]["versions"]
        .as_array()
        .expect("spec.versions")
        .iter()
        .find(|v| v["name"] == "v1alpha1")
        .expect("v1alpha1 in the CRD");
    version["schema"]["openAPIV3Schema"].clone()
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

/// Structural validation as the API server does it for a CRD (types, unknown fields, required,
/// enum, minimum/maximum, maxItems, pattern). Appends one message per violation, naming the path.
fn structural_errors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_string() || type_name(value) == "integer") {
            errors.push(format!(
                "{path}: expected an integer or a string, got {}",
                type_name(value)
            ));
        }
        return;
    }
    let expected = schema["type"].as_str().unwrap_or("");
    let actual = type_name(value);
    let type_ok = expected.is_empty()
        || expected == actual
        || (expected == "number" && actual == "integer")
        || (value.is_null() && schema["nullable"] == true);
    if !type_ok {
        errors.push(format!(
            "{path}: expected {expected}, got {actual} ({value})"
        ));
        return;
    }
    if let Some(number) = value.as_f64() {
        if let Some(minimum) = schema["minimum"].as_f64()
            && number < minimum
        {
            errors.push(format!("{path}: {value} is below the minimum {minimum}"));
        }
        if let Some(maximum) = schema["maximum"].as_f64()
            && number > maximum
        {
            errors.push(format!("{path}: {value} is above the maximum {maximum}"));
        }
    }
    if let (Some(text), Some(pattern)) = (value.as_str(), schema["pattern"].as_str()) {
        let regex = regex::Regex::new(pattern).expect("CRD pattern compiles");
        if !regex.is_match(text) {
            errors.push(format!("{path}: {text:?} does not match {pattern}"));
        }
    }
    match value {
        Value::Object(fields) => {
            let properties = schema["properties"].as_object();
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if !fields.contains_key(name) {
                    errors.push(format!("{path}.{name}: required"));
                }
            }
            for (name, field) in fields {
                let field_path = format!("{path}.{name}");
                if let Some(field_schema) = properties.and_then(|p| p.get(name)) {
                    structural_errors(field_schema, field, &field_path, errors);
                } else if schema["additionalProperties"].is_object() {
                    structural_errors(&schema["additionalProperties"], field, &field_path, errors);
                } else if schema["x-kubernetes-preserve-unknown-fields"] != true
                    && schema["additionalProperties"] != true
                    && properties.is_some()
                {
                    let known: Vec<&String> =
                        properties.into_iter().flat_map(|p| p.keys()).collect();
                    errors.push(format!(
                        "{field_path}: unknown field (known here: {known:?})"
                    ));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                errors.push(format!("{path}: {} items, at most {max}", items.len()));
            }
            for (index, item) in items.iter().enumerate() {
                structural_errors(&schema["items"], item, &format!("{path}[{index}]"), errors);
            }
        }
        _ => {}
    }
}

/// The CRD schema plus the fields the API server checks on every object without them being in
/// the CRD: apiVersion and kind of this resource, and metadata with a name.
fn with_type_and_object_meta(schema: &Value) -> Value {
    let mut full = schema.clone();
    let properties = full["properties"].as_object_mut().expect("root properties");
    properties.insert(
        "apiVersion".into(),
        serde_json::json!({"type": "string", "enum": ["raft-operator.dev/v1alpha1"]}),
    );
    properties.insert(
        "kind".into(),
        serde_json::json!({"type": "string", "enum": ["RaftCluster"]}),
    );
    properties.insert(
        "metadata".into(),
        serde_json::json!({"type": "object", "required": ["name"], "x-kubernetes-preserve-unknown-fields": true}),
    );
    let required = full["required"].as_array().cloned().unwrap_or_default();
    let mut required: Vec<Value> = required;
    required.extend(["apiVersion", "kind", "metadata"].map(Value::from));
    full["required"] = Value::Array(required);
    full
}

/// Everything the API server would refuse in `manifest`, as messages naming the field.
fn refusals(schema: &Value, manifest: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    structural_errors(
        &with_type_and_object_meta(schema),
        manifest,
        "",
        &mut errors,
    );
    if errors.is_empty() {
        // CEL runs only on a structurally valid object, as in the API server.
        if let Err(failures) = kube_cel::validate(schema, manifest, None) {
            errors.extend(failures.iter().map(|failure| failure.to_string()));
        }
    }
    if errors.is_empty()
        && let Err(e) = serde_json::from_value::<RaftCluster>(manifest.clone())
    {
        errors.push(format!("the operator's RaftCluster type refuses it: {e}"));
    }
    errors
}

fn example(voters: i64) -> (PathBuf, Value) {
    let path = repo_path(&format!("examples/raftcluster-{voters}.yaml"));
    let manifest = read_yaml(&path);
    (path, manifest)
}

#[test]
fn every_example_is_accepted_by_the_installed_crd() {
    let schema = installed_schema();
    for voters in EXAMPLE_VOTERS {
        let (path, manifest) = example(voters);
        let errors = refusals(&schema, &manifest);
        assert!(
            errors.is_empty(),
            "{}:\n  {}",
            path.display(),
            errors.join("\n  ")
        );
        assert_eq!(
            manifest["spec"]["replicas"],
            voters,
            "{}: replicas",
            path.display()
        );
        // The operator reads it with serde-saphyr too, straight from the file.
        let text = std::fs::read_to_string(&path).unwrap();
        let cluster: RaftCluster = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(i64::from(cluster.spec.replicas), voters);
    }
}

#[test]
fn every_example_spells_out_the_fields_that_matter() {
    let wanted = [
        "/replicas",
        "/version",
        "/raft/electionTimeoutMinMs",
        "/raft/electionTimeoutMaxMs",
        "/raft/heartbeatIntervalMs",
        "/readMode",
        "/maxClockDriftMs",
        "/storage/size",
        "/storage/retention/whenDeleted",
        "/storage/retention/whenScaled",
        "/rollout/maxLagEntries",
        "/rollout/gateTimeoutSeconds",
        "/recovery/policy",
        "/paused",
    ];
    for voters in EXAMPLE_VOTERS {
        let (path, manifest) = example(voters);
        for pointer in wanted {
            assert!(
                manifest["spec"].pointer(pointer).is_some(),
                "{}: spec{} is not set",
                path.display(),
                pointer.replace('/', ".")
            );
        }
    }
}

/// Change `pointer` in the 5-voter example (None removes it) and return the refusals.
fn refusals_after(pointer: &str, new_value: Option<Value>) -> Vec<String> {
    let (_, mut manifest) = example(5);
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    let object = manifest
        .pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap();
    match new_value {
        Some(value) => object.insert(field.to_string(), value),
        None => object.remove(field),
    };
    refusals(&installed_schema(), &manifest)
}

fn assert_refused(errors: &[String], expected: &str) {
    assert!(
        errors.iter().any(|e| e.contains(expected)),
        "expected a refusal containing {expected:?}, got {errors:?}"
    );
}

#[test]
fn a_manifest_of_another_kind_is_refused() {
    let errors = refusals_after("/kind", Some(Value::from("RaftClusters")));
    assert_refused(&errors, ".kind: \"RaftClusters\" is not one of");
    let errors = refusals_after("/metadata/name", None);
    assert_refused(&errors, ".metadata.name: required");
}

#[test]
fn a_misspelt_field_is_refused_with_its_path() {
    // maxLagEntry for maxLagEntries: serde alone would ignore it and use the default.
    let errors = refusals_after("/spec/rollout/maxLagEntry", Some(Value::from(10)));
    assert_refused(&errors, ".spec.rollout.maxLagEntry: unknown field");
    let errors = refusals_after("/spec/readmode", Some(Value::from("ReadIndex")));
    assert_refused(&errors, ".spec.readmode: unknown field");
}

#[test]
fn wrong_types_ranges_enums_and_patterns_are_refused() {
    let errors = refusals_after("/spec/replicas", Some(Value::from("five")));
    assert_refused(&errors, ".spec.replicas: expected integer, got string");
    let errors = refusals_after("/spec/replicas", Some(Value::from(11)));
    assert_refused(&errors, ".spec.replicas: 11 is above the maximum 9");
    let errors = refusals_after("/spec/readMode", Some(Value::from("Eventually")));
    assert_refused(&errors, ".spec.readMode: \"Eventually\" is not one of");
    let errors = refusals_after("/spec/storage/size", Some(Value::from("5 GB")));
    assert_refused(&errors, ".spec.storage.size: \"5 GB\" does not match");
    let errors = refusals_after("/spec/replicas", None);
    assert_refused(&errors, ".spec.replicas: required");
}

#[test]
fn the_crd_cel_rules_are_evaluated() {
    // Even voter count: the API server's message, with the arithmetic.
    let errors = refusals_after("/spec/replicas", Some(Value::from(4)));
    assert_refused(
        &errors,
        "4 voters need 3 for quorum and survive only 1 failures",
    );
    // Drift bound not below the minimum election timeout (200 ms in the 5-voter example).
    let errors = refusals_after("/spec/maxClockDriftMs", Some(Value::from(200)));
    assert_refused(
        &errors,
        "maxClockDriftMs must be below raft.electionTimeoutMinMs",
    );
    let errors = refusals_after("/spec/raft/heartbeatIntervalMs", Some(Value::from(150)));
    assert_refused(
        &errors,
        "heartbeatIntervalMs must be at most half of electionTimeoutMinMs",
    );
}
