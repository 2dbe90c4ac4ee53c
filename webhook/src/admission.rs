//! From an AdmissionReview request body to the AdmissionReview response:
//! parse, call the pure mutation, and say what was decided. No I/O here, so
//! real AdmissionReview fixtures can be run through it in tests.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferry_api::grants::GrantLookup;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde::Serialize;

use crate::config::InjectionConfig;
use crate::mutation::{Injection, inject_sidecar};

/// Audit annotation (prefixed by the apiserver with the webhook's name)
/// recording what the webhook decided.
pub const DECISION_AUDIT_KEY: &str = "decision";

/// What the webhook did with one admission request, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The sidecar was injected (possibly with warnings).
    Injected {
        /// How many secrets the sidecar will fetch.
        secrets: usize,
        /// Whether the pod lacks Grants and was admitted with a warning.
        warned: bool,
    },
    /// The pod was admitted unchanged; the reason is a short label.
    Untouched(&'static str),
    /// The pod was refused; the reason is a short label.
    Refused(&'static str),
}

impl Decision {
    /// The metric label: `injected`, `untouched` or `refused`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Injected { .. } => "injected",
            Self::Untouched(_) => "untouched",
            Self::Refused(_) => "refused",
        }
    }

    /// The metric label saying why.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Injected { warned: false, .. } => "granted",
            Self::Injected { warned: true, .. } => "missing_grant_warned",
            Self::Untouched(reason) | Self::Refused(reason) => reason,
        }
    }
}

/// A request body that is not an AdmissionReview for a pod. Messages never
/// quote the body: a pod spec may carry values its author considers private.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReview {
    /// The body is not JSON of the expected shape.
    #[error(
        "request body is not an admission.k8s.io/v1 AdmissionReview of a v1 Pod: {category} error at line {line}, column {column}"
    )]
    Malformed {
        /// serde_json's classification (syntax, data, eof).
        category: &'static str,
        /// Where parsing stopped.
        line: usize,
        /// Where parsing stopped.
        column: usize,
    },
    /// The review carries no request.
    #[error("AdmissionReview has no request")]
    NoRequest,
    /// The request is about something other than a pod.
    #[error(
        "AdmissionReview is for {0}, but this webhook only mutates core/v1 pods; check the MutatingWebhookConfiguration's rules"
    )]
    NotAPod(String),
    /// A CREATE without the object.
    #[error("AdmissionReview CREATE request has no object")]
    NoObject,
    /// Neither the request nor the object names a namespace.
    #[error("AdmissionReview request has no namespace")]
    NoNamespace,
}

impl From<serde_json::Error> for BadReview {
    fn from(error: serde_json::Error) -> Self {
        use serde_json::error::Category;
        Self::Malformed {
            category: match error.classify() {
                Category::Io => "read",
                Category::Syntax => "syntax",
                Category::Data => "data",
                Category::Eof => "unexpected end of input",
            },
            line: error.line(),
            column: error.column(),
        }
    }
}

/// The AdmissionReview sent back to the apiserver. kube's own response type
/// serialises the patch as an array of numbers; this one sends base64, as
/// the API documents, which is a quarter of the size.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewResponse {
    /// `admission.k8s.io/v1`.
    pub api_version: &'static str,
    /// `AdmissionReview`.
    pub kind: &'static str,
    /// The answer.
    pub response: AdmissionAnswer,
}

/// The `response` of an AdmissionReview.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionAnswer {
    /// The request's uid, echoed.
    pub uid: String,
    /// Whether the pod is admitted.
    pub allowed: bool,
    /// Why not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AnswerStatus>,
    /// The JSON patch, base64-encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// `JSONPatch` when there is a patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Recorded in the apiserver's audit log under the webhook's name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<&'static str, String>,
    /// Shown to the client that created the pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The status of a denied admission, as the client sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerStatus {
    /// HTTP-like code: 403 for a refused pod.
    pub code: u16,
    /// Machine-readable reason.
    pub reason: &'static str,
    /// What to fix.
    pub message: String,
}

impl AdmissionAnswer {
    fn allow(uid: String) -> Self {
        Self {
            uid,
            allowed: true,
            status: None,
            patch: None,
            patch_type: None,
            audit_annotations: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}

/// The answer to one admission request.
#[derive(Debug)]
pub struct Reviewed {
    /// The review to send back: allowed, patched or denied.
    pub review: ReviewResponse,
    /// What was decided.
    pub decision: Decision,
    /// The pod, as `namespace/name` (or `namespace/generateName*`), for logs.
    pub pod: String,
}

/// Answers one AdmissionReview request body, or says why the body is not a
/// review this webhook can answer (a 400).
pub fn review_pod_admission(
    body: &[u8],
    config: &InjectionConfig,
    grants: &impl GrantLookup,
    now: Timestamp,
) -> Result<Reviewed, BadReview> {
    let review: AdmissionReview<Pod> = serde_json::from_slice(body).map_err(|error| {
        // A review of another kind fails to parse as a pod review; say so
        // rather than pointing at a line and column.
        match requested_kind(body) {
            Some(kind) if kind != "/v1 Pod" => BadReview::NotAPod(kind),
            _ => BadReview::from(error),
        }
    })?;
    let request: AdmissionRequest<Pod> = review.try_into().map_err(|_| BadReview::NoRequest)?;
    if !request.kind.group.is_empty() || request.kind.kind != "Pod" {
        let kind = &request.kind;
        return Err(BadReview::NotAPod(format!(
            "{}/{} {}",
            kind.group, kind.version, kind.kind
        )));
    }
    let pod_ref = pod_reference(&request);
    let mut answer = AdmissionAnswer::allow(request.uid.clone());
    let decision = if request.operation == Operation::Create {
        let pod = request.object.as_ref().ok_or(BadReview::NoObject)?;
        let namespace = request
            .namespace
            .as_deref()
            .or(pod.metadata.namespace.as_deref())
            .ok_or(BadReview::NoNamespace)?;
        decide(pod, namespace, config, grants, now, &mut answer)
    } else {
        // Pod specs are immutable where it matters; injection happens once,
        // at creation, and updates pass through untouched.
        Decision::Untouched("not_a_create")
    };
    answer.audit_annotations.insert(
        DECISION_AUDIT_KEY,
        format!("{}: {}", decision.result(), decision.reason()),
    );
    Ok(Reviewed {
        review: ReviewResponse {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            response: answer,
        },
        decision,
        pod: pod_ref,
    })
}

/// Runs the mutation and writes its outcome into `answer`.
fn decide(
    pod: &Pod,
    namespace: &str,
    config: &InjectionConfig,
    grants: &impl GrantLookup,
    now: Timestamp,
    answer: &mut AdmissionAnswer,
) -> Decision {
    match inject_sidecar(pod, namespace, config, grants, now) {
        Ok(Injection::Untouched(why)) => Decision::Untouched(why.as_str()),
        Ok(Injection::Injected {
            patch,
            secrets,
            warnings,
        }) => match serde_json::to_vec(&patch) {
            Ok(patch) => {
                answer.patch = Some(BASE64.encode(patch));
                answer.patch_type = Some("JSONPatch");
                let decision = Decision::Injected {
                    secrets: secrets.len(),
                    warned: !warnings.is_empty(),
                };
                answer.warnings = warnings;
                decision
            }
            // Serialising a patch of plain JSON values cannot fail; if it
            // ever did, refusing beats admitting a pod without its secrets.
            Err(error) => {
                deny(
                    answer,
                    format!("ferry webhook cannot encode its patch: {error}"),
                );
                Decision::Refused("internal_error")
            }
        },
        Err(refusal) => {
            deny(answer, refusal.to_string());
            Decision::Refused(refusal.reason())
        }
    }
}

fn deny(answer: &mut AdmissionAnswer, message: String) {
    answer.allowed = false;
    answer.status = Some(AnswerStatus {
        code: 403,
        reason: "Forbidden",
        message,
    });
}

/// `namespace/name`, or `namespace/generateName*` before the name is set.
fn pod_reference(request: &AdmissionRequest<Pod>) -> String {
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let metadata = request.object.as_ref().map(|pod| &pod.metadata);
    let name = match (
        request.name.as_str(),
        metadata.and_then(|m| m.name.as_deref()),
        metadata.and_then(|m| m.generate_name.as_deref()),
    ) {
        (name, _, _) if !name.is_empty() => name.to_owned(),
        (_, Some(name), _) => name.to_owned(),
        (_, None, Some(prefix)) => format!("{prefix}*"),
        (_, None, None) => String::new(),
    };
    format!("{namespace}/{name}")
}

/// The `group/version Kind` a review body is about, if it says.
fn requested_kind(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Review {
        request: Request,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        kind: kube::core::GroupVersionKind,
    }
    let review: Review = serde_json::from_slice(body).ok()?;
    let kind = review.request.kind;
    Some(format!("{}/{} {}", kind.group, kind.version, kind.kind))
}
