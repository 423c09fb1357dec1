//! KalamDB compatibility, replayed: every request of `tests/compat/kalamdb-api.json` (taken
//! from KalamDB's API documentation and its CLI's queries) goes to a fresh server in order, and
//! each answer must have the documented status and shape. The cases are data, so a change that
//! breaks one of KalamDB's clients fails here with the case's name and its source.

mod common;

use std::collections::HashMap;

use common::Server;
use serde_json::Value;

/// Where `actual` differs from the `expected` pattern (see the file's `about`), if anywhere.
fn mismatch(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    let fail = || Some(format!("{path}: expected {expected}, got {actual}"));
    match expected {
        Value::String(p) if p.starts_with('<') && p.ends_with('>') => {
            let ok = match p.as_str() {
                "<string>" => actual.is_string(),
                "<number>" => actual.is_number(),
                "<bool>" => actual.is_boolean(),
                "<array>" => actual.is_array(),
                "<object>" => actual.is_object(),
                "<any>" => true,
                "<string|null>" => actual.is_string() || actual.is_null(),
                "<bigint>" => actual.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
                other => panic!("unknown pattern {other} at {path}"),
            };
            if ok { None } else { fail() }
        }
        Value::Object(fields) => {
            let Some(obj) = actual.as_object() else { return fail() };
            fields.iter().find_map(|(k, v)| match obj.get(k) {
                Some(a) => mismatch(v, a, &format!("{path}.{k}")),
                None => Some(format!("{path}.{k} is missing in {actual}")),
            })
        }
        Value::Array(items) => {
            let Some(arr) = actual.as_array() else { return fail() };
            if arr.len() != items.len() {
                return Some(format!("{path}: expected {} elements, got {}: {actual}", items.len(), arr.len()));
            }
            items.iter().zip(arr).enumerate().find_map(|(i, (e, a))| mismatch(e, a, &format!("{path}[{i}]")))
        }
        literal => (literal != actual).then(|| format!("{path}: expected {literal}, got {actual}")),
    }
}

/// `{{name}}` in strings replaced by captured values.
fn substitute(v: &Value, captured: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => {
            let mut out = s.clone();
            for (k, val) in captured {
                out = out.replace(&format!("{{{{{k}}}}}"), val);
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, captured)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), substitute(x, captured))).collect()),
        other => other.clone(),
    }
}

fn at<'a>(v: &'a Value, dotted: &str) -> &'a Value {
    dotted.split('.').fold(v, |v, k| &v[k])
}

#[test]
fn the_matcher_itself() {
    let e = serde_json::json!({"a": "<bigint>", "b": ["<string|null>"], "c": 1});
    assert_eq!(mismatch(&e, &serde_json::json!({"a": "12", "b": [null], "c": 1, "extra": 0}), "$"), None);
    assert!(mismatch(&e, &serde_json::json!({"a": 12, "b": [null], "c": 1}), "$").is_some(), "a number is no BIGINT");
    assert!(mismatch(&e, &serde_json::json!({"a": "1", "b": [], "c": 1}), "$").is_some(), "length counts");
    assert!(mismatch(&e, &serde_json::json!({"a": "1", "b": ["x"]}), "$").is_some(), "missing keys count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kalamdb_documented_requests_get_documented_answers() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/kalamdb-api.json");
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let mut captured: HashMap<String, String> = HashMap::new();
    let cases = spec["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20, "the replay covers the documented endpoints");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let auth = case["auth"].as_str().map(|a| match a.split_once(':') {
            Some(("basic", "root")) => common::ROOT_BASIC.to_string(),
            Some(("bearer", token)) => format!("Bearer {}", captured.get(token).map_or(token, String::as_str)),
            _ => panic!("{name}: unknown auth {a}"),
        });
        let body = match case.get("body") {
            Some(b) => substitute(b, &captured).to_string().into_bytes(),
            None => Vec::new(),
        };
        let method = case["method"].as_str().unwrap();
        let path = case["path"].as_str().unwrap();
        let content_type = (!body.is_empty()).then_some("application/json");
        let (status, answer) = s.request_raw_as(auth.as_deref(), method, path, content_type, body).await.unwrap();
        assert_eq!(
            u64::from(status),
            case["status"].as_u64().unwrap(),
            "case '{name}' ({}): {answer}",
            case["doc"].as_str().unwrap_or("")
        );
        if let Some(why) = mismatch(&case["expect"], &answer, "$") {
            panic!("case '{name}' ({}): {why}", case["doc"].as_str().unwrap_or(""));
        }
        for (key, field) in case["capture"].as_object().into_iter().flatten() {
            let v = at(&answer, field.as_str().unwrap()).as_str().unwrap_or_else(|| panic!("{name}: no {field}"));
            captured.insert(key.clone(), v.to_string());
        }
    }
}
