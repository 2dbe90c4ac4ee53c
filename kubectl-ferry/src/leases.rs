//! `kubectl ferry leases`: the live leases the broker knows, read through
//! the apiserver from the broker's aggregated lease API
//! (`ferry_contract::lease_api`), so any kubeconfig works and the broker
//! sees the caller as the apiserver authenticated it. Names and times only.

use ferry_contract::lease_api::{LiveLeaseItem, LiveLeaseList};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::output::{Output, Table};

/// One live lease as the plugin shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseView {
    /// The lease's serial (not its id: it renews or revokes nothing).
    pub serial: String,
    /// The source kind.
    pub kind: String,
    /// The BrokeredSecret, `namespace/name`.
    pub secret: String,
    /// The pod, `namespace/name`.
    pub pod: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The pod's service account, `namespace/name`.
    pub service_account: String,
    /// When it was issued (RFC 3339).
    pub issued_at: String,
    /// When the current credential expires (RFC 3339).
    pub expires_at: String,
    /// Until when renewals may extend it (RFC 3339).
    pub max_expires_at: String,
}

fn rfc3339(seconds: i64) -> String {
    Timestamp::from_second(seconds).map_or_else(|_| seconds.to_string(), |t| t.to_string())
}

impl From<&LiveLeaseItem> for LeaseView {
    fn from(item: &LiveLeaseItem) -> Self {
        Self {
            serial: item.serial.clone(),
            kind: item.kind.clone(),
            secret: format!("{}/{}", item.secret_namespace, item.secret_name),
            pod: format!("{}/{}", item.pod_namespace, item.pod_name),
            pod_uid: item.pod_uid.clone(),
            service_account: format!("{}/{}", item.pod_namespace, item.service_account),
            issued_at: rfc3339(item.issued_at),
            expires_at: rfc3339(item.expires_at),
            max_expires_at: rfc3339(item.max_expires_at),
        }
    }
}

/// Which leases to show.
#[derive(Debug, Clone, Default)]
pub struct LeaseFilter {
    /// Only of this BrokeredSecret (`namespace/name`).
    pub secret: Option<String>,
    /// Only of this pod (`namespace/name`).
    pub pod: Option<String>,
    /// Only of pods in this namespace.
    pub pod_namespace: Option<String>,
}

/// The leases of `list` that pass `filter`, soonest expiry first.
pub fn select(list: &LiveLeaseList, filter: &LeaseFilter) -> Vec<LeaseView> {
    let mut views: Vec<LeaseView> = list
        .items
        .iter()
        .map(LeaseView::from)
        .filter(|v| filter.secret.as_ref().is_none_or(|s| *s == v.secret))
        .filter(|v| filter.pod.as_ref().is_none_or(|p| *p == v.pod))
        .filter(|v| {
            filter
                .pod_namespace
                .as_ref()
                .is_none_or(|ns| v.pod.split('/').next() == Some(ns.as_str()))
        })
        .collect();
    views.sort_by(|a, b| (&a.expires_at, &a.serial).cmp(&(&b.expires_at, &b.serial)));
    views
}

/// The leases as a table.
pub fn table(leases: &[LeaseView], output: &Output) -> String {
    if leases.is_empty() && !output.no_headers {
        return "No live leases found.\n".to_owned();
    }
    let mut table = Table::new(&[
        "secret",
        "pod",
        "serviceAccount",
        "kind",
        "serial",
        "issued",
        "expires",
        "renewableUntil",
    ]);
    for lease in leases {
        table.row(vec![
            lease.secret.clone(),
            lease.pod.clone(),
            lease.service_account.clone(),
            lease.kind.clone(),
            lease.serial.clone(),
            lease.issued_at.clone(),
            lease.expires_at.clone(),
            lease.max_expires_at.clone(),
        ]);
    }
    table.render(output.no_headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(secret: &str, pod: &str, expires: i64) -> LiveLeaseItem {
        LiveLeaseItem {
            serial: format!("s-{pod}-{secret}"),
            kind: "postgres".into(),
            secret_namespace: "payments".into(),
            secret_name: secret.into(),
            pod_namespace: "shop".into(),
            pod_name: pod.into(),
            pod_uid: "uid".into(),
            service_account: "checkout".into(),
            issued_at: 1_780_000_000,
            expires_at: expires,
            max_expires_at: 1_780_003_600,
        }
    }

    #[test]
    fn leases_are_filtered_by_secret_and_pod_and_sorted_by_expiry() {
        let list = LiveLeaseList {
            items: vec![
                item("orders-db", "a", 30),
                item("orders-db", "b", 20),
                item("ledger", "a", 10),
            ],
            ..LiveLeaseList::default()
        };
        let by_secret = select(
            &list,
            &LeaseFilter {
                secret: Some("payments/orders-db".into()),
                ..LeaseFilter::default()
            },
        );
        let pods: Vec<&str> = by_secret.iter().map(|l| l.pod.as_str()).collect();
        assert_eq!(pods, ["shop/b", "shop/a"]);
        let by_pod = select(
            &list,
            &LeaseFilter {
                pod: Some("shop/a".into()),
                ..LeaseFilter::default()
            },
        );
        assert_eq!(by_pod.len(), 2);
        assert_eq!(by_pod[0].service_account, "shop/checkout");
        assert_eq!(by_pod[0].issued_at, "2026-05-28T20:26:40Z");
    }
}
