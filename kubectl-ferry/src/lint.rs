//! `kubectl ferry lint`: BrokeredSecrets, AccessPolicies (and any other
//! ferry object) judged before they are applied, in two stages, each by
//! the code that judges them in the cluster:
//!
//! 1. **schema** — what the apiserver would refuse: the CRD's structural
//!    schema and its CEL rules, read from `ferry_api::crds()` and applied
//!    by [`crate::schema`];
//! 2. **reconciler** — what the operator would report in the `Ready`
//!    condition: `ferry_api::checks::judge` for BrokeredSecrets (templates,
//!    the Secret they name, the installation's limits) and
//!    `ferry_api::grants::derive_grants` for AccessPolicies (missing
//!    secrets, narrowing wider than the secret, expiry).
//!
//! Lint sees only what it is given: the files (Secrets and Namespaces in
//! them count too) and, with `--cluster`, what the cluster holds. Where the
//! operator's verdict depends on an object lint cannot see, it says so as a
//! warning rather than guessing.

use std::collections::BTreeMap;

use ferry_api::checks::{self, FoundSecret};
use ferry_api::confinement::Installation;
use ferry_api::grants::{PolicyWorld, Problem, derive_grants};
use ferry_api::resources::{AccessPolicy, BrokeredSecret};
use ferry_contract::{BROKERABLE_LABEL, GROUP_VERSION};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::output::{Output, Table};
use crate::schema::{self, SchemaError};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The apiserver would refuse the object, or the operator would mark it
    /// not Ready: fix before applying.
    Error,
    /// The verdict depends on something lint could not see.
    Warning,
}

/// One thing lint found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The file (`-` for standard input).
    pub file: String,
    /// `Kind namespace/name`.
    pub object: String,
    /// Error or warning.
    pub level: Level,
    /// Which stage found it: `schema` (the apiserver) or `reconciler`
    /// (the operator's `Ready` condition).
    pub stage: &'static str,
    /// The field for schema findings; the condition's reason for the
    /// reconciler's (`SecretNotFound`, `InvalidNarrowing`, ...).
    pub reason: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// What lint judges against besides the objects themselves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The namespace of objects that name none.
    pub default_namespace: String,
    /// The installation's limits (ferry's namespace, allowed issuers).
    pub installation: Installation,
    /// The time to judge validUntil against.
    pub now: Timestamp,
}

/// Objects lint may consult that are not in the files: read from the
/// cluster with `--cluster`.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// BrokeredSecrets by (namespace, name).
    pub brokered_secrets: BTreeMap<(String, String), BrokeredSecret>,
    /// What is known of Secrets by (namespace, name).
    pub secrets: BTreeMap<(String, String), FoundSecret>,
    /// Namespaces, for namespaceSelector subjects.
    pub namespaces: Vec<Namespace>,
    /// Whether these come from the cluster: then an object absent here is
    /// absent, not merely unseen.
    pub complete: bool,
}

/// One YAML document of a file, parsed.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file it came from.
    pub file: String,
    /// The object.
    pub object: Value,
}

/// Reads every YAML (or JSON) document of `text`, unwrapping `kind: List`.
pub fn documents(file: &str, text: &str) -> Result<Vec<Document>, String> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| format!("{file}: document {}: not YAML: {e}", index + 1))?;
        match value {
            Value::Null => {}
            Value::Object(ref map) if map.get("kind") == Some(&Value::from("List")) => {
                for item in map
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.push(Document {
                        file: file.to_owned(),
                        object: item.clone(),
                    });
                }
            }
            Value::Object(_) => out.push(Document {
                file: file.to_owned(),
                object: value,
            }),
            _ => {
                return Err(format!(
                    "{file}: document {} is not a Kubernetes object",
                    index + 1
                ));
            }
        }
    }
    Ok(out)
}

/// The ferry objects of `documents` and the (namespace, name) of each:
/// what `--cluster` should look up for them.
pub fn references(documents: &[Document], default_namespace: &str) -> Vec<(String, String)> {
    let mut wanted = Vec::new();
    for document in documents {
        let object = &document.object;
        if object["apiVersion"] != GROUP_VERSION {
            continue;
        }
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(default_namespace)
            .to_owned();
        if let Ok(secret) = serde_json::from_value::<BrokeredSecret>(object.clone())
            && let Some(reference) = checks::reference(&secret)
        {
            wanted.push((namespace.clone(), reference.name.to_owned()));
        }
        if let Ok(policy) = serde_json::from_value::<AccessPolicy>(object.clone()) {
            for access in &policy.spec.secrets {
                wanted.push((namespace.clone(), access.name.clone()));
            }
        }
    }
    wanted.sort();
    wanted.dedup();
    wanted
}

/// A typed object that passed the schema, with the file it came from.
struct Admitted<K> {
    file: String,
    object: K,
}

/// Lints `documents` against `settings` and what `seen` holds.
pub fn lint(
    documents: &[Document],
    settings: &Settings,
    seen: &Seen,
) -> Result<Vec<Finding>, SchemaError> {
    let crds: BTreeMap<String, Value> = ferry_api::crds()
        .into_iter()
        .filter_map(|crd| {
            let kind = crd.spec.names.kind.clone();
            let schema = crd
                .spec
                .versions
                .first()?
                .schema
                .as_ref()?
                .open_api_v3_schema
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())?;
            Some((kind, schema))
        })
        .collect();

    let mut findings = Vec::new();
    let mut secrets: Vec<Admitted<BrokeredSecret>> = Vec::new();
    let mut policies: Vec<Admitted<AccessPolicy>> = Vec::new();
    let mut found = seen.secrets.clone();
    let mut namespaces = seen.namespaces.clone();

    // Secrets and Namespaces of the files are part of the world.
    for document in documents {
        let object = &document.object;
        match (object["apiVersion"].as_str(), object["kind"].as_str()) {
            (Some("v1"), Some("Secret")) => {
                let namespace = object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(&settings.default_namespace);
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let keys = ["data", "stringData"]
                    .iter()
                    .filter_map(|field| object[field].as_object())
                    .flat_map(|map| map.keys().cloned())
                    .collect();
                found.insert(
                    (namespace.to_owned(), name.to_owned()),
                    FoundSecret {
                        keys,
                        secret_type: object["type"].as_str().map(str::to_owned),
                        brokerable: object["metadata"]["labels"][BROKERABLE_LABEL]
                            .as_str()
                            .map(str::to_owned),
                    },
                );
            }
            (Some("v1"), Some("Namespace")) => {
                if let Ok(namespace) = serde_json::from_value(object.clone()) {
                    namespaces.push(namespace);
                }
            }
            _ => {}
        }
    }

    for document in documents {
        let mut object = document.object.clone();
        if object["apiVersion"] != GROUP_VERSION {
            continue;
        }
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(&settings.default_namespace)
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let label = format!("{kind} {namespace}/{name}");
        let mut finding = |level: Level, stage: &'static str, reason: String, message: String| {
            findings.push(Finding {
                file: document.file.clone(),
                object: label.clone(),
                level,
                stage,
                reason,
                message,
            });
        };
        let Some(schema) = crds.get(&kind) else {
            finding(
                Level::Error,
                "schema",
                "kind".into(),
                format!(
                    "no kind {kind:?} in {GROUP_VERSION}; ferry's kinds are {}",
                    crds.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            continue;
        };
        if name.is_empty() {
            finding(
                Level::Error,
                "schema",
                "metadata.name".into(),
                "Required value: name is required".into(),
            );
            continue;
        }
        if let Some(map) = object["metadata"].as_object_mut() {
            map.insert("namespace".into(), Value::from(namespace.clone()));
        }
        let refused = schema::validate(&mut object, schema)?;
        for error in &refused {
            finding(
                Level::Error,
                "schema",
                error.field.clone(),
                error.message.clone(),
            );
        }
        if !refused.is_empty() {
            // The apiserver would refuse it: the operator never sees it.
            continue;
        }
        match kind.as_str() {
            "BrokeredSecret" => match serde_json::from_value(object) {
                Ok(secret) => secrets.push(Admitted {
                    file: document.file.clone(),
                    object: secret,
                }),
                Err(error) => finding(Level::Error, "schema", "spec".into(), error.to_string()),
            },
            "AccessPolicy" => match serde_json::from_value(object) {
                Ok(policy) => policies.push(Admitted {
                    file: document.file.clone(),
                    object: policy,
                }),
                Err(error) => finding(Level::Error, "schema", "spec".into(), error.to_string()),
            },
            "Grant" => finding(
                Level::Error,
                "reconciler",
                "NotOperatorManaged".into(),
                "Grants are written by the operator alone (an admission policy refuses \
                 others, and the broker ignores them): write an AccessPolicy instead"
                    .into(),
            ),
            _ => {}
        }
    }

    for Admitted { file, object } in &secrets {
        let namespace = object.namespace().unwrap_or_default();
        let label = format!("BrokeredSecret {namespace}/{}", object.name_any());
        let reference = checks::reference(object);
        let known = reference
            .as_ref()
            .and_then(|r| found.get(&(namespace.clone(), r.name.to_owned())));
        let verdict = checks::judge(object, known, &settings.installation);
        if verdict.ready {
            continue;
        }
        let unseen = verdict.reason == "SecretNotFound" && known.is_none() && !seen.complete;
        let (level, message) = if unseen {
            (
                Level::Warning,
                format!(
                    "{}; lint sees only the files given: add the Secret's manifest \
                     (its key names are all lint reads) or run with --cluster",
                    verdict.message
                ),
            )
        } else {
            (Level::Error, verdict.message)
        };
        findings.push(Finding {
            file: file.clone(),
            object: label,
            level,
            stage: "reconciler",
            reason: verdict.reason.to_owned(),
            message,
        });
    }

    let mut by_namespace: BTreeMap<String, BTreeMap<String, BrokeredSecret>> = BTreeMap::new();
    for ((namespace, name), secret) in &seen.brokered_secrets {
        by_namespace
            .entry(namespace.clone())
            .or_default()
            .insert(name.clone(), secret.clone());
    }
    for Admitted { object, .. } in &secrets {
        by_namespace
            .entry(object.namespace().unwrap_or_default())
            .or_default()
            .insert(object.name_any(), object.clone());
    }
    let empty = BTreeMap::new();
    for Admitted { file, object } in &policies {
        let namespace = object.namespace().unwrap_or_default();
        let label = format!("AccessPolicy {namespace}/{}", object.name_any());
        let derivation = derive_grants(
            object,
            PolicyWorld {
                secrets: by_namespace.get(&namespace).unwrap_or(&empty),
                namespaces: &namespaces,
                now: settings.now,
                approved: &[],
            },
        );
        let mut finding = |level: Level, reason: &str, message: String| {
            findings.push(Finding {
                file: file.clone(),
                object: label.clone(),
                level,
                stage: "reconciler",
                reason: reason.to_owned(),
                message,
            });
        };
        if derivation.expired {
            finding(
                Level::Error,
                "Expired",
                "validUntil has passed; the policy grants nothing".into(),
            );
        }
        for problem in &derivation.problems {
            let unseen = matches!(problem, Problem::SecretNotFound { .. }) && !seen.complete;
            if unseen {
                finding(
                    Level::Warning,
                    problem.reason(),
                    format!(
                        "{problem}; lint sees only the files given: add its manifest \
                         or run with --cluster"
                    ),
                );
            } else {
                finding(Level::Error, problem.reason(), problem.to_string());
            }
        }
    }
    Ok(findings)
}

/// Whether any finding is an error (lint then exits 1).
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.level == Level::Error)
}

/// The findings as lint prints them.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Every finding, errors first.
    pub findings: &'a [Finding],
    /// How many objects were judged.
    pub objects: usize,
}

/// The table of `findings`, or a line saying all is well.
pub fn table(report: &Report<'_>, output: &Output) -> String {
    if report.findings.is_empty() {
        return format!("{} ferry objects: no problems found\n", report.objects);
    }
    let mut table = Table::new(&["file", "object", "level", "stage", "reason", "message"]);
    for finding in report.findings {
        let level = match finding.level {
            Level::Error => output.red("error"),
            Level::Warning => output.yellow("warning"),
        };
        table.row(vec![
            finding.file.clone(),
            finding.object.clone(),
            level,
            finding.stage.to_owned(),
            finding.reason.clone(),
            finding.message.clone(),
        ]);
    }
    table.render(output.no_headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            default_namespace: "payments".into(),
            installation: Installation::default(),
            now: "2026-06-01T00:00:00Z".parse().unwrap(),
        }
    }

    fn run(yaml: &str) -> Vec<Finding> {
        lint(
            &documents("f.yaml", yaml).unwrap(),
            &settings(),
            &Seen::default(),
        )
        .unwrap()
    }

    #[test]
    fn every_crd_schema_is_understood_by_the_walker() {
        for crd in ferry_api::crds() {
            for version in &crd.spec.versions {
                let schema = serde_json::to_value(
                    version
                        .schema
                        .as_ref()
                        .unwrap()
                        .open_api_v3_schema
                        .as_ref()
                        .unwrap(),
                )
                .unwrap();
                schema::check_schema(&schema).unwrap();
            }
        }
    }

    #[test]
    fn a_valid_secret_and_policy_with_the_admin_secret_are_clean() {
        let findings = run(r#"
apiVersion: v1
kind: Secret
metadata: {name: orders-db-admin, labels: {ferry.dev/brokerable: "true"}}
stringData: {dsn: "postgres://admin@db/orders"}
---
apiVersion: ferry.dev/v1alpha1
kind: BrokeredSecret
metadata: {name: orders-db}
spec:
  source: {postgres: {connectionSecretRef: {name: orders-db-admin}}}
---
apiVersion: ferry.dev/v1alpha1
kind: AccessPolicy
metadata: {name: checkout-reads-orders}
spec:
  subjects: [{serviceAccount: {name: checkout, namespace: shop}}]
  secrets: [{name: orders-db, maxTtl: 10m}]
"#);
        assert_eq!(findings, []);
    }

    #[test]
    fn schema_and_cel_refusals_name_the_field_and_the_rules_message() {
        let findings = run(r#"
apiVersion: ferry.dev/v1alpha1
kind: BrokeredSecret
metadata: {name: bad}
spec:
  ttl: 2h
  maxTtl: 1h
  source: {postgres: {connectionSecretRef: {name: admin}}, jwt: {audience: [x]}}
  files: {"../etc/passwd": x}
"#);
        let fields: Vec<(&str, &str)> = findings
            .iter()
            .map(|f| (f.reason.as_str(), f.message.as_str()))
            .collect();
        assert!(
            fields
                .iter()
                .any(|(field, m)| *field == "spec" && m.contains("ttl must not exceed maxTtl")),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|(field, m)| *field == "spec.source" && m.contains("exactly one of postgres")),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|(field, m)| *field == "spec.files"
                    && m.contains("file names must be plain names")),
            "{fields:?}"
        );
        assert!(
            findings
                .iter()
                .all(|f| f.stage == "schema" && f.level == Level::Error)
        );
    }

    #[test]
    fn defaults_are_applied_before_the_rules_run() {
        // ttl defaults to 15m and maxTtl to 1h: 2h ttl alone exceeds the default maxTtl.
        let findings = run(r#"
apiVersion: ferry.dev/v1alpha1
kind: BrokeredSecret
metadata: {name: long}
spec: {ttl: 2h, source: {jwt: {audience: [api]}}}
"#);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].message.contains("ttl must not exceed maxTtl"));
    }

    #[test]
    fn unknown_fields_are_refused_as_kubectl_apply_refuses_them() {
        let findings = run(r#"
apiVersion: ferry.dev/v1alpha1
kind: BrokeredSecret
metadata: {name: typo}
spec: {tll: 5m, source: {jwt: {audience: [api]}}}
"#);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].reason, "spec.tll");
        assert!(findings[0].message.contains("unknown field"));
    }

    #[test]
    fn the_reconcilers_verdicts_come_from_the_operators_own_functions() {
        let findings = run(r#"
apiVersion: ferry.dev/v1alpha1
kind: BrokeredSecret
metadata: {name: token}
spec:
  source: {jwt: {audience: [orders]}}
  files: {auth-header: "Bearer {{ tokne }}"}
---
apiVersion: ferry.dev/v1alpha1
kind: BrokeredSecret
metadata: {name: orders-db}
spec: {source: {postgres: {connectionSecretRef: {name: admin}}}}
---
apiVersion: ferry.dev/v1alpha1
kind: AccessPolicy
metadata: {name: too-wide}
spec:
  subjects: [{serviceAccount: {name: checkout, namespace: shop}}]
  secrets: [{name: orders-db, maxTtl: 2h}, {name: token, audience: [billing]}, {name: nope}]
"#);
        let reasons: Vec<(&str, Level, &str)> = findings
            .iter()
            .map(|f| (f.object.as_str(), f.level, f.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "BrokeredSecret payments/token",
                    Level::Error,
                    "InvalidTemplate"
                ),
                (
                    "BrokeredSecret payments/orders-db",
                    Level::Warning,
                    "SecretNotFound"
                ),
                (
                    "AccessPolicy payments/too-wide",
                    Level::Error,
                    "InvalidNarrowing"
                ),
                (
                    "AccessPolicy payments/too-wide",
                    Level::Error,
                    "InvalidNarrowing"
                ),
                (
                    "AccessPolicy payments/too-wide",
                    Level::Warning,
                    "SecretNotFound"
                ),
            ]
        );
        assert!(
            findings[0]
                .message
                .contains("undefined variable {{ tokne }}")
        );
    }

    #[test]
    fn a_secret_in_the_files_is_checked_for_keys_and_opt_in() {
        let findings = run(r#"
apiVersion: v1
kind: Secret
metadata: {name: admin}
stringData: {url: x}
---
apiVersion: ferry.dev/v1alpha1
kind: BrokeredSecret
metadata: {name: orders-db}
spec: {source: {postgres: {connectionSecretRef: {name: admin}}}}
"#);
        assert_eq!(findings.len(), 1, "{findings:?}");
        // The opt-in outranks the missing key, as in the operator.
        assert_eq!(findings[0].reason, "SecretNotBrokerable");
        assert_eq!(findings[0].level, Level::Error);
    }

    #[test]
    fn ferrys_own_namespace_is_refused_as_the_installation_refuses_it() {
        let findings = run(r#"
apiVersion: ferry.dev/v1alpha1
kind: BrokeredSecret
metadata: {name: token, namespace: ferry-system}
spec: {source: {jwt: {audience: [api]}}}
"#);
        assert_eq!(findings[0].reason, "NamespaceRefused");
    }
}
