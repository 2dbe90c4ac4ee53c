//! The chart's `allowedIssuers` reaches the operator and the broker as the
//! same `FERRY_ALLOWED_ISSUERS`, in the form both parse, so that a
//! BrokeredSecret's status says what the broker does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use ferry_api::confinement::parse_allowed_issuers;
use ferry_e2e::controlplane_bin_dir;
use serde::Deserialize;
use serde_json::Value;

fn render(values: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let output = Command::new(controlplane_bin_dir().unwrap().join("helm"))
        .args(["template", "ferry"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferry"))
        .args(["--namespace", "ferry-system", "--values"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&output.stdout))
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn allowed_issuers_env(objects: &[Value], deployment: &str) -> String {
    let object = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == deployment)
        .unwrap();
    object["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|env| env["name"] == "FERRY_ALLOWED_ISSUERS")
        .and_then(|env| env["value"].as_str())
        .unwrap()
        .to_owned()
}

#[test]
fn allowed_issuers_reach_the_operator_and_the_broker_alike() {
    let objects = render(
        "allowedIssuers:\n  payments: [https://auth.example.com, https://b.example.com]\n  \"*\": [https://all.example.com]\n",
    );
    let operator = allowed_issuers_env(&objects, "ferry-operator");
    let broker = allowed_issuers_env(&objects, "ferry-broker");
    assert_eq!(operator, broker);
    let parsed = parse_allowed_issuers(&broker).unwrap();
    assert_eq!(parsed["payments"].len(), 2);
    assert!(parsed["payments"].contains("https://b.example.com"));
    assert!(parsed["*"].contains("https://all.example.com"));

    // By default, no issuer besides the broker's.
    let objects = render("{}\n");
    assert_eq!(allowed_issuers_env(&objects, "ferry-broker"), "");
    assert_eq!(allowed_issuers_env(&objects, "ferry-operator"), "");
}
