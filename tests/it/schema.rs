//! The Python client's records (`python/src/wfcg/client.py`) against the JSON
//! Schema generated from `src/api.rs` ([`wfcg::api::schema`]): every field a
//! Python record has is in the schema with a type it can hold, and every field
//! the schema requires is known to the Python side (a field of the record, or
//! one it keeps in `raw` only: its `RAW_ONLY`). A field renamed on either side
//! fails here.
//!
//! Python is `$WFCG_PYTHON`, else `python3`; it only introspects the
//! dataclasses (tests/fixtures/api_records.py), standard library only.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Map, Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$WFCG_PYTHON`, else `python3`.
fn python() -> PathBuf {
    std::env::var_os("WFCG_PYTHON")
        .filter(|p| !p.is_empty())
        .map(|p| root().join(p))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// What tests/fixtures/api_records.py says of the Python records.
fn python_records() -> Value {
    let python = python();
    let out = Command::new(&python)
        .arg(root().join("tests/fixtures/api_records.py"))
        .env("PYTHONPATH", root().join("python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{} tests/fixtures/api_records.py: {}{}",
        python.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the records as JSON")
}

/// The JSON type of a value in the schema (`enum`, `const`).
fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The JSON types a (sub)schema admits: `any` where it does not say.
fn schema_types(s: &Value, defs: &Map<String, Value>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        let def = defs.get(name).unwrap_or_else(|| panic!("no $defs/{name}"));
        return schema_types(def, defs);
    }
    match s.get("type") {
        Some(Value::String(t)) => {
            out.insert(t.clone());
        }
        Some(Value::Array(ts)) => out.extend(ts.iter().filter_map(Value::as_str).map(String::from)),
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        for sub in s.get(key).and_then(Value::as_array).into_iter().flatten() {
            out.extend(schema_types(sub, defs));
        }
    }
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        out.extend(values.iter().map(|v| type_of(v).to_string()));
    }
    if let Some(v) = s.get("const") {
        out.insert(type_of(v).to_string());
    }
    if out.is_empty() {
        out.insert("any".into());
    }
    out
}

/// What does not match between the schema and the Python records, one line each.
fn mismatches(schema: &Value, records: &Value) -> Vec<String> {
    let defs = schema["$defs"].as_object().expect("$defs");
    let mut found = Vec::new();
    for (class, record) in records.as_object().expect("records") {
        let wire = record["wire_name"].as_str().unwrap();
        let Some(def) = defs.get(wire) else {
            found.push(format!(
                "Python's {class} is the API's {wire}: no such type in the schema"
            ));
            continue;
        };
        let empty = Map::new();
        let props = def["properties"].as_object().unwrap_or(&empty);
        let fields = record["fields"].as_object().unwrap();
        for (field, py) in fields {
            let Some(prop) = props.get(field) else {
                found.push(format!("Python's {class}.{field} is not a field of {wire}"));
                continue;
            };
            let py: BTreeSet<&str> = py
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let wire_types = schema_types(prop, defs);
            let held = |t: &str| py.contains("any") || py.contains(t);
            let not_held: Vec<&String> = wire_types.iter().filter(|t| !held(t)).collect();
            if !not_held.is_empty() {
                let py: Vec<&str> = py.into_iter().collect();
                found.push(format!(
                    "Python's {class}.{field} ({py:?}) cannot hold {wire}.{field}'s {not_held:?}"
                ));
            }
        }
        let raw_only: BTreeSet<&str> = record["raw_only"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for name in &raw_only {
            if !props.contains_key(*name) {
                found.push(format!(
                    "Python's {class}.RAW_ONLY names {name}, not a field of {wire}"
                ));
            }
        }
        for required in def["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !fields.contains_key(name) && !raw_only.contains(name) {
                found.push(format!(
                    "{wire}.{name} is required, and Python's {class} does not know it \
                     (a field, or in its RAW_ONLY)"
                ));
            }
        }
    }
    found
}

#[test]
fn python_records_match_the_api_schema() {
    let schema = wfcg::api::schema();
    let records = python_records();
    for class in ["RunInfo", "KillResult", "KillPermission"] {
        assert!(
            records.get(class).is_some(),
            "no record {class}: {records:#}"
        );
    }
    let found = mismatches(&schema, &records);
    assert!(
        found.is_empty(),
        "the Python client and the API schema differ:\n{}",
        found.join("\n")
    );
}

/// The check itself: a field renamed on the Python side, or on the Rust side,
/// is found (the test above then fails).
#[test]
fn a_renamed_field_on_either_side_is_found() {
    let schema = wfcg::api::schema();
    let records = python_records();
    assert!(mismatches(&schema, &records).is_empty());

    let mut renamed_in_python = records.clone();
    let fields = renamed_in_python["RunInfo"]["fields"]
        .as_object_mut()
        .unwrap();
    let types = fields.remove("exit_code").unwrap();
    fields.insert("exit_status".into(), types);
    assert_eq!(
        mismatches(&schema, &renamed_in_python),
        ["Python's RunInfo.exit_status is not a field of RunInfo"]
    );

    let mut renamed_in_rust = schema.clone();
    let kill = &mut renamed_in_rust["$defs"]["KillResult"];
    let props = kill["properties"].as_object_mut().unwrap();
    let prop = props.remove("success").unwrap();
    props.insert("succeeded".into(), prop);
    let required = kill["required"].as_array_mut().unwrap();
    for r in required.iter_mut().filter(|r| *r == "success") {
        *r = json!("succeeded");
    }
    let found = mismatches(&renamed_in_rust, &records);
    assert!(
        found.contains(&"Python's KillResult.success is not a field of KillResult".to_string()),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("KillResult.succeeded is required")),
        "{found:?}"
    );

    let mut retyped = schema;
    retyped["$defs"]["RunInfo"]["properties"]["processes"] = json!({"type": "string"});
    assert_eq!(
        mismatches(&retyped, &records),
        ["Python's RunInfo.processes ([\"integer\"]) cannot hold RunInfo.processes's [\"string\"]"]
    );
}

/// The Python client's errors mirror the CLI's exit codes: each exception's
/// `exit_code` is a code of `src/exit.rs`'s table, the one the CLI exits with
/// for the same error kind of the agent, and `error_for_exit_code` maps each
/// code to the exception that has it.
#[test]
fn python_errors_carry_the_clis_exit_codes() {
    let script = "\
import json, wfcg.errors as e
classes = {n: getattr(e, n).exit_code for n in e.__all__ if isinstance(getattr(e, n), type)}
kinds = {k: c.__name__ for k, c in e._KINDS.items()}
codes = {str(k): c.__name__ for k, c in e._CODES.items()}
print(json.dumps({'classes': classes, 'kinds': kinds, 'codes': codes}))
";
    let python = python();
    let out = Command::new(&python)
        .args(["-c", script])
        .env("PYTHONPATH", root().join("python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: BTreeSet<i64> = wfcg::exit::TABLE
        .iter()
        .map(|c| i64::from(c.code))
        .collect();
    let class_code = |name: &str| v["classes"][name].as_i64().unwrap();
    for (class, code) in v["classes"].as_object().unwrap() {
        let code = code.as_i64().unwrap();
        assert!(
            codes.contains(&code),
            "wfcg.errors.{class}.exit_code {code}"
        );
    }
    for (kind, class) in v["kinds"].as_object().unwrap() {
        let kind: wfcg::api::ErrorKind = serde_json::from_value(json!(kind)).unwrap();
        let cli = wfcg::exit::Failure::from(wfcg::client::Error::Api(wfcg::api::ApiError {
            kind,
            error: String::new(),
        }));
        let class = class.as_str().unwrap();
        assert_eq!(
            i64::from(cli.code),
            class_code(class),
            "{kind:?}: the CLI exits {}, Python raises {class}",
            cli.code
        );
    }
    for (code, class) in v["codes"].as_object().unwrap() {
        let class = class.as_str().unwrap();
        assert_eq!(code.parse::<i64>().unwrap(), class_code(class), "{class}");
    }
}
