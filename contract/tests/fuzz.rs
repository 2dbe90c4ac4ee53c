//! Property-based fuzzing of the broker's wire types, which both the broker
//! (requests) and the sidecar (responses) parse from the network: any bytes
//! are parsed or refused with a reason, never a panic, and every value
//! survives a serialise/parse round trip unchanged.
//!
//! `FERRY_FUZZ_CASES` sets the number of cases (`make fuzz` runs many).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use ferry_contract::wire::{
    ErrorDetail, ErrorResponse, Lease, LeaseRequest, LeasesResponse, SecretRef, SecretRequest,
};
use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    let cases = std::env::var("FERRY_FUZZ_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-zA-Z]{1,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Field names the wire types use, and others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "secrets",
            "namespace",
            "name",
            "ttl",
            "audience",
            "scopes",
            "leases",
            "id",
            "secret",
            "files",
            "renewAfter",
            "expiresAt",
            "error",
            "code",
            "message",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

fn secret_request() -> impl Strategy<Value = SecretRequest> {
    (
        any::<String>(),
        any::<String>(),
        proptest::option::of(any::<String>()),
        proptest::option::of(prop::collection::vec(any::<String>(), 0..4)),
        proptest::option::of(prop::collection::vec(any::<String>(), 0..4)),
    )
        .prop_map(|(namespace, name, ttl, audience, scopes)| SecretRequest {
            namespace,
            name,
            ttl,
            audience,
            scopes,
            csr: None,
        })
}

fn lease() -> impl Strategy<Value = Lease> {
    (
        any::<String>(),
        (any::<String>(), any::<String>()),
        prop::collection::btree_map(any::<String>(), any::<String>(), 0..4),
        any::<u64>(),
        any::<u64>(),
        any::<String>(),
    )
        .prop_map(
            |(id, (namespace, name), files, ttl, renew_after, expires_at)| Lease {
                id,
                secret: SecretRef { namespace, name },
                files: files.into_iter().collect::<BTreeMap<_, _>>(),
                ttl,
                renew_after,
                expires_at,
            },
        )
}

/// A valid value's JSON with a few bytes flipped, cut or inserted.
fn corrupted(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len().max(1);
    prop::collection::vec((0..len, any::<u8>(), 0..3u8), 1..6).prop_map(move |edits| {
        let mut bytes = valid.clone();
        for (at, byte, how) in edits {
            let at = at.min(bytes.len());
            match how {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.truncate(at),
                _ => bytes.insert(at, byte),
            }
        }
        bytes
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_parse_or_are_refused_with_a_reason(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(error) = serde_json::from_slice::<LeaseRequest>(&bytes) {
            prop_assert!(!error.to_string().is_empty());
        }
        if let Err(error) = serde_json::from_slice::<LeasesResponse>(&bytes) {
            prop_assert!(!error.to_string().is_empty());
        }
        let _ = serde_json::from_slice::<ErrorResponse>(&bytes);
    }

    #[test]
    fn any_json_parses_or_is_refused_with_a_reason(value in json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Err(error) = serde_json::from_slice::<LeaseRequest>(&bytes) {
            prop_assert!(!error.to_string().is_empty());
        }
        if let Err(error) = serde_json::from_slice::<LeasesResponse>(&bytes) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn lease_requests_round_trip(secrets in prop::collection::vec(secret_request(), 0..5)) {
        let request = LeaseRequest { secrets };
        let bytes = serde_json::to_vec(&request).unwrap();
        prop_assert_eq!(serde_json::from_slice::<LeaseRequest>(&bytes).unwrap(), request);
    }

    #[test]
    fn lease_responses_round_trip(leases in prop::collection::vec(lease(), 0..4)) {
        let response = LeasesResponse { leases };
        let bytes = serde_json::to_vec(&response).unwrap();
        prop_assert_eq!(serde_json::from_slice::<LeasesResponse>(&bytes).unwrap(), response);
    }

    #[test]
    fn error_responses_round_trip(code in any::<u16>(), message in any::<String>()) {
        let response = ErrorResponse { error: ErrorDetail { code, message, keys_required: Vec::new() } };
        let bytes = serde_json::to_vec(&response).unwrap();
        prop_assert_eq!(serde_json::from_slice::<ErrorResponse>(&bytes).unwrap(), response);
    }

    #[test]
    fn corrupted_requests_parse_or_are_refused(
        bytes in prop::collection::vec(secret_request(), 1..3)
            .prop_map(|secrets| serde_json::to_vec(&LeaseRequest { secrets }).unwrap())
            .prop_flat_map(corrupted)
    ) {
        if let Err(error) = serde_json::from_slice::<LeaseRequest>(&bytes) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn corrupted_responses_parse_or_are_refused(
        bytes in prop::collection::vec(lease(), 1..3)
            .prop_map(|leases| serde_json::to_vec(&LeasesResponse { leases }).unwrap())
            .prop_flat_map(corrupted)
    ) {
        if let Err(error) = serde_json::from_slice::<LeasesResponse>(&bytes) {
            prop_assert!(!error.to_string().is_empty());
        }
    }
}
