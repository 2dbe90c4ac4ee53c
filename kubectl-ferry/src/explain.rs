//! `kubectl ferry explain pod`: what the webhook injected into a pod (its
//! `ferry.dev/status` annotation), which Grant allows each secret, the
//! sidecar's state, the pod's live leases, and the last errors recorded
//! for it (Warning Events, the sidecar's last warn/error log lines).

use ferry_contract::{
    InjectionStatus, SECRETS_ANNOTATION, SIDECAR_CONTAINER_NAME, STATUS_ANNOTATION,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde::Serialize;

use crate::access::Decision;
use crate::leases::LeaseView;
use crate::output::Output;

/// One secret of the pod and whether its service account may have it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretExplanation {
    /// `namespace/name`.
    pub secret: String,
    /// can-i's answer for the pod's service account.
    pub decision: Decision,
}

/// The sidecar container's state, from the pod's status.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarState {
    /// Whether its startup probe passed (every secret written).
    pub ready: bool,
    /// How often the kubelet restarted it.
    pub restarts: i32,
    /// Running, Waiting (reason) or Terminated (reason, exit code).
    pub state: String,
    /// How it last ended, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_termination: Option<String>,
}

/// Everything explain says of a pod.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodExplanation {
    /// `namespace/name`.
    pub pod: String,
    /// Its service account, `namespace/name`.
    pub service_account: String,
    /// Its phase.
    pub phase: String,
    /// What the webhook recorded, if it injected the pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injected: Option<InjectionStatus>,
    /// Why ferry did not inject it, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_injected: Option<String>,
    /// Each injected secret and the Grant behind it.
    pub secrets: Vec<SecretExplanation>,
    /// The sidecar's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarState>,
    /// The pod's live leases, as the broker knows them.
    pub leases: Vec<LeaseView>,
    /// Why the leases are not shown, if they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases_unavailable: Option<String>,
    /// The last errors recorded for the pod, newest last.
    pub errors: Vec<String>,
}

/// The pod's service account name (`default` when unset).
pub fn service_account_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// What the webhook recorded in the pod, or why there is nothing.
pub fn injection_of(pod: &Pod) -> Result<InjectionStatus, String> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    match annotations.get(STATUS_ANNOTATION) {
        Some(text) => serde_json::from_str(text).map_err(|error| {
            format!("its {STATUS_ANNOTATION} annotation is not the webhook's: {error}")
        }),
        None if annotations.contains_key(SECRETS_ANNOTATION) => Err(format!(
            "it asks for secrets ({SECRETS_ANNOTATION}) but has no {STATUS_ANNOTATION} \
             annotation: the webhook did not inject it (is the pod labelled \
             ferry.dev/inject=true, and was the webhook running when it was created?)"
        )),
        None => Err(format!(
            "it has no {SECRETS_ANNOTATION} annotation: it did not ask ferry for secrets"
        )),
    }
}

/// The sidecar container's state, if the pod has one.
pub fn sidecar_of(pod: &Pod) -> Option<SidecarState> {
    let status = pod.status.as_ref()?;
    let container: &ContainerStatus = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == SIDECAR_CONTAINER_NAME)?;
    let state = match &container.state {
        Some(s) if s.running.is_some() => "Running".to_owned(),
        Some(s) => match (&s.waiting, &s.terminated) {
            (Some(w), _) => format!(
                "Waiting: {}{}",
                w.reason.as_deref().unwrap_or("unknown"),
                w.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            (_, Some(t)) => format!(
                "Terminated: {} (exit code {})",
                t.reason.as_deref().unwrap_or("unknown"),
                t.exit_code
            ),
            _ => "Unknown".to_owned(),
        },
        None => "Unknown".to_owned(),
    };
    let last_termination = container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| {
            format!(
                "{} (exit code {}){}",
                t.reason.as_deref().unwrap_or("unknown"),
                t.exit_code,
                t.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )
        });
    Some(SidecarState {
        ready: container.ready,
        restarts: container.restart_count,
        state,
        last_termination,
    })
}

/// The warn and error lines of the sidecar's log (one JSON object a
/// line: `ts`, `level`, `event` and facts, never a secret), newest last,
/// at most `keep`.
pub fn sidecar_errors(log: &str, keep: usize) -> Vec<String> {
    let lines: Vec<String> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| matches!(entry["level"].as_str(), Some("warn" | "error")))
        .map(|entry| {
            let mut facts: Vec<String> = entry
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(key, _)| !["ts", "level", "event"].contains(&key.as_str()))
                .map(|(key, value)| match value {
                    serde_json::Value::String(text) => format!("{key}={text}"),
                    other => format!("{key}={other}"),
                })
                .collect();
            facts.sort();
            format!(
                "{} sidecar {}: {} {}",
                entry["ts"].as_str().unwrap_or_default(),
                entry["level"].as_str().unwrap_or_default(),
                entry["event"].as_str().unwrap_or_default(),
                facts.join(" ")
            )
            .trim_end()
            .to_owned()
        })
        .collect();
    let skip = lines.len().saturating_sub(keep);
    lines.into_iter().skip(skip).collect()
}

/// The explanation as text, like `kubectl describe`.
pub fn describe(explanation: &PodExplanation, output: &Output) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("Pod:              {}", explanation.pod));
    line(format!("Service account:  {}", explanation.service_account));
    line(format!("Phase:            {}", explanation.phase));
    match (&explanation.injected, &explanation.not_injected) {
        (Some(injected), _) => {
            line(format!(
                "Injected:         yes, by webhook {} (mount path {})",
                injected.version, injected.mount_path
            ));
        }
        (None, Some(why)) => line(format!("Injected:         no: {why}")),
        (None, None) => line("Injected:         no".to_owned()),
    }
    if !explanation.secrets.is_empty() {
        line("Secrets:".to_owned());
        for secret in &explanation.secrets {
            let answer = if secret.decision.allowed {
                output.green("allowed")
            } else {
                output.red("refused")
            };
            line(format!(
                "  {}: {answer}: {}",
                secret.secret, secret.decision.reason
            ));
        }
    }
    if let Some(sidecar) = &explanation.sidecar {
        line(format!(
            "Sidecar:          {}, ready {}, {} restarts{}",
            sidecar.state,
            sidecar.ready,
            sidecar.restarts,
            sidecar
                .last_termination
                .as_deref()
                .map(|t| format!(", last ended {t}"))
                .unwrap_or_default()
        ));
    }
    match (
        &explanation.leases_unavailable,
        explanation.leases.is_empty(),
    ) {
        (Some(why), _) => line(format!("Live leases:      unknown: {why}")),
        (None, true) => line("Live leases:      none".to_owned()),
        (None, false) => {
            line("Live leases:".to_owned());
            for lease in &explanation.leases {
                line(format!(
                    "  {} {} ({}): issued {}, expires {}, renewable until {}",
                    lease.secret,
                    lease.serial,
                    lease.kind,
                    lease.issued_at,
                    lease.expires_at,
                    lease.max_expires_at
                ));
            }
        }
    }
    if explanation.errors.is_empty() {
        line("Last errors:      none recorded".to_owned());
    } else {
        line("Last errors:".to_owned());
        for error in &explanation.errors {
            line(format!("  {error}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_status_annotation_is_read_as_the_webhook_writes_it() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"annotations": {
            "ferry.dev/secrets": "orders-db",
            "ferry.dev/status": r#"{"version":"0.1.0","secrets":["shop/orders-db"],"mountPath":"/var/run/secrets/ferry"}"#,
        }}})).unwrap();
        let status = injection_of(&pod).unwrap();
        assert_eq!(status.secrets, ["shop/orders-db"]);
    }

    #[test]
    fn a_pod_asking_without_injection_is_told_why() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"annotations": {
            "ferry.dev/secrets": "orders-db"}}}))
        .unwrap();
        assert!(injection_of(&pod).unwrap_err().contains("did not inject"));
    }

    #[test]
    fn only_the_sidecars_warnings_and_errors_are_kept_newest_last() {
        let log = [
            r#"{"ts":"t1","level":"info","event":"issued","secret":"shop/db"}"#,
            r#"{"ts":"t2","level":"warn","event":"renew_failed","secret":"shop/db","status":503}"#,
            "not json",
            r#"{"ts":"t3","level":"error","event":"expired","secret":"shop/db"}"#,
        ]
        .join("\n");
        assert_eq!(
            sidecar_errors(&log, 5),
            [
                "t2 sidecar warn: renew_failed secret=shop/db status=503",
                "t3 sidecar error: expired secret=shop/db"
            ]
        );
        assert_eq!(sidecar_errors(&log, 1).len(), 1);
    }
}
