//! The broker's read-only API of live leases, as the apiserver serves it
//! through API aggregation (an `APIService` for [`GROUP`]/[`VERSION`]),
//! shared by the broker and `kubectl ferry`. Names and times only: never
//! a credential, a lease id or anything a lease id could be rebuilt from.
//!
//! ```text
//! GET /apis/leases.ferry.dev/v1alpha1                          -> discovery (APIResourceList)
//! GET /apis/leases.ferry.dev/v1alpha1/liveleases               -> LiveLeaseList (every namespace the caller may see)
//! GET /apis/leases.ferry.dev/v1alpha1/namespaces/{ns}/liveleases -> LiveLeaseList (one secret namespace)
//! ```
//!
//! A lease is listed under the namespace of its BrokeredSecret, and shown
//! to a caller only if a SubjectAccessReview says it may `get`
//! BrokeredSecrets in that namespace.

use serde::{Deserialize, Serialize};

/// The API group of the lease API.
pub const GROUP: &str = "leases.ferry.dev";

/// Its version.
pub const VERSION: &str = "v1alpha1";

/// The resource's plural name.
pub const RESOURCE: &str = "liveleases";

/// The list kind.
pub const LIST_KIND: &str = "LiveLeaseList";

/// The name of the `APIService` that registers the API
/// (`<version>.<group>`).
pub const API_SERVICE_NAME: &str = "v1alpha1.leases.ferry.dev";

/// The path of the live leases of every namespace the caller may see, or
/// of `namespace`'s.
pub fn list_path(namespace: Option<&str>) -> String {
    match namespace {
        Some(namespace) => format!("/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{RESOURCE}"),
        None => format!("/apis/{GROUP}/{VERSION}/{RESOURCE}"),
    }
}

/// One live lease, as the broker replica that issued, renewed or watches
/// it records it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LiveLeaseItem {
    /// The lease's serial: names the lease in audit lines and revocation
    /// records; not a lease id (it cannot renew or revoke anything).
    pub serial: String,
    /// The source kind: `postgres`, `jwt`, `kubernetesSecret`, `x509` or
    /// `oauth2`.
    pub kind: String,
    /// The BrokeredSecret's namespace.
    pub secret_namespace: String,
    /// The BrokeredSecret's name.
    pub secret_name: String,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The pod's service account (in the pod's namespace).
    pub service_account: String,
    /// When it was issued, Unix seconds.
    pub issued_at: i64,
    /// When the current credential expires, Unix seconds.
    pub expires_at: i64,
    /// Until when renewals may extend it, Unix seconds.
    pub max_expires_at: i64,
}

/// The answer of a list.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LiveLeaseList {
    /// `leases.ferry.dev/v1alpha1`.
    pub api_version: String,
    /// [`LIST_KIND`].
    pub kind: String,
    /// The leases the caller may see.
    pub items: Vec<LiveLeaseItem>,
    /// The broker replica that answered (its pod name or host name): each
    /// replica knows the leases it issued, renewed or watches.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
}
