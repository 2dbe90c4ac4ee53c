//! Property-based fuzzing of what the broker parses from pods and from
//! resources: lease ids (sealed and opened, and arbitrary or altered ones),
//! the terms a lease request asks for, and file templates as rendered.
//! Nothing panics, every refusal is an error with a reason, a sealed id
//! opens to its claims, and an altered one never opens.
//!
//! `FERRY_FUZZ_CASES` sets the number of cases (`make fuzz` runs many).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use ferry_api::resources::{BrokeredSecretSpec, GrantSpec};
use ferry_api::templates::{MAX_FILE_BYTES, MAX_TOTAL_BYTES, check_templates};
use ferry_broker::lease_id::{CLAIMS_VERSION, LeaseClaims, LeaseKeys, MAX_LEASE_ID_BYTES};
use ferry_broker::templates::{Variables, render_files};
use ferry_broker::terms::lease_terms;
use ferry_contract::wire::SecretRequest;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::json;
use zeroize::Zeroizing;

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

fn keys() -> LeaseKeys {
    LeaseKeys::new(&[7; 32], &[&[6; 32]])
}

/// Strings of the sizes the schema allows, of any characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max).prop_map(|chars| chars.into_iter().collect())
}

fn claims() -> impl Strategy<Value = LeaseClaims> {
    (
        (text(63), text(253), text(36), text(63)),
        (any::<i64>(), any::<i64>(), any::<i64>()),
        prop::collection::vec(text(253), 0..=16),
        proptest::option::of(prop::collection::vec("[!#-\\[\\]-~]{1,128}", 0..=32)),
        "[0-9a-f]{32}",
    )
        .prop_map(
            |(
                (secret_namespace, secret_name, pod_uid, handle),
                (issued_at, expires_at, max_expires_at),
                audience,
                scopes,
                serial,
            )| LeaseClaims {
                version: CLAIMS_VERSION,
                secret_namespace,
                secret_name,
                pod_uid,
                handle,
                issued_at,
                expires_at,
                max_expires_at,
                audience,
                scopes,
                serial,
            },
        )
}

/// A duration as a resource or a pod might spell it, valid or not.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,7}[smh]",
        "([0-9]{1,6}[smh]){1,3}",
        Just("0s".to_owned()),
        any::<String>(),
    ]
}

fn words() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop_oneof!["[a-c]", any::<String>()], 0..4)
}

/// Pieces templates are made of (see `ferry-api`'s fuzz tests).
fn template() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "{{ ", " }}", "{% ", " %}", "{%- ", " -%}", "{# ", " #}",
            "if ", "elif ", "else", "endif", "for ", " in ", "endfor", "raw", "endraw",
            "set ", "macro ", "include ", "filter ",
            "range(", ")", "(", ",", "[", "]", "|", ".", "=", "==", " is ",
            "default(", "lower", "upper", "trim", "urlencode", "tojson", "b64encode",
            "defined", "undefined", "none", "not ", " and ", " or ",
            "~", "+", "*", "**", "-", "/", "//", "%",
            "password", "username", "x", "i", "loop.index", "loop", "99999999", "100000",
            "0", "-1", "1e308", "\"s\"", "'q'", "\n", " ", "{", "}", "\\",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// Values planted in the variables: they must never appear in an error.
const PLANTED: &str = "pl4nted-v4lue";

fn variables() -> impl Strategy<Value = Variables> {
    (
        prop_oneof![Just(0usize), Just(10), Just(70_000)],
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(repeat, binary)| {
            let mut variables = Variables::new();
            variables.insert(
                "password",
                Zeroizing::new(format!("{PLANTED}{}", "p".repeat(repeat)).into_bytes()),
            );
            variables.insert("username", Zeroizing::new(PLANTED.as_bytes().to_vec()));
            variables.insert("x", Zeroizing::new(binary));
            variables
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_sealed_lease_id_opens_to_its_claims(claims in claims()) {
        let id = keys().seal(&claims);
        prop_assert!(id.len() <= MAX_LEASE_ID_BYTES, "{} bytes", id.len());
        prop_assert_eq!(keys().open(&id).unwrap(), claims);
    }

    #[test]
    fn an_altered_lease_id_never_opens(
        claims in claims(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let id = keys().seal(&claims);
        let mut bytes = id.clone().into_bytes();
        for (at, byte, how) in edits {
            let at = at.index(bytes.len().max(1)).min(bytes.len());
            match how {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.truncate(at),
                _ => bytes.insert(at, byte),
            }
        }
        let altered = String::from_utf8_lossy(&bytes).into_owned();
        if altered != id {
            let error = keys().open(&altered).unwrap_err();
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn any_text_as_a_lease_id_is_refused_with_a_reason(id in any::<String>()) {
        let error = keys().open(&id).unwrap_err();
        prop_assert!(!error.to_string().is_empty());
    }

    #[test]
    fn lease_id_shaped_text_is_refused_with_a_reason(id in "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,60}") {
        let error = keys().open(&id).unwrap_err();
        prop_assert!(!error.to_string().is_empty());
    }

    #[test]
    fn lease_terms_are_granted_or_refused_with_a_reason(
        secret_ttl in duration_text(),
        secret_max in duration_text(),
        grant_max in duration_text(),
        jwt in any::<bool>(),
        granted_audience in words(),
        granted_scopes in words(),
        valid_until in proptest::option::of(-100_000i64..100_000),
        ttl in proptest::option::of(duration_text()),
        audience in proptest::option::of(words()),
        scopes in proptest::option::of(words()),
        now in 0i64..4_000_000_000,
    ) {
        let source = if jwt {
            json!({"jwt": {"audience": ["a", "b"]}})
        } else {
            json!({"kubernetesSecret": {"name": "s"}})
        };
        let secret: BrokeredSecretSpec = serde_json::from_value(json!({
            "ttl": secret_ttl, "maxTtl": secret_max, "source": source,
        })).unwrap();
        let mut grant = json!({
            "serviceAccount": "sa",
            "secret": {"namespace": "n", "name": "s"},
            "maxTtl": grant_max, "audience": granted_audience, "scopes": granted_scopes,
            "policy": {"namespace": "n", "name": "p", "uid": "u"},
        });
        if let Some(offset) = valid_until {
            grant["validUntil"] = json!(Timestamp::from_second(now + offset).unwrap().to_string());
        }
        let grant: GrantSpec = serde_json::from_value(grant).unwrap();
        let request = SecretRequest {
            namespace: "n".into(),
            name: "s".into(),
            ttl,
            audience,
            scopes,
            csr: None,
        };
        let now = Timestamp::from_second(now).unwrap();
        match lease_terms(&secret, &grant, &request, now) {
            Ok(terms) => {
                prop_assert!(terms.max_expires_at >= now.as_second());
                let ttl_secs = i64::try_from(terms.ttl.as_secs()).unwrap();
                prop_assert!(now.as_second() + ttl_secs <= terms.max_expires_at);
                prop_assert!(terms.audience.iter().all(|a| grant.audience.contains(a)));
                prop_assert!(terms.scopes.iter().all(|s| grant.scopes.contains(s)));
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn templates_render_within_bounds_or_are_refused_without_values(
        templates in prop::collection::btree_map(
            prop_oneof![Just("dsn".to_owned()), "[a-z.]{1,12}"], template(), 1..3),
        variables in variables(),
    ) {
        let checked = check_templates(&templates);
        match render_files(&templates, &variables) {
            Ok(files) => {
                prop_assert!(checked.is_ok(), "rendered what the checker refused: {checked:?}");
                let total: usize = files.values().map(|f| f.len()).sum();
                prop_assert!(files.values().all(|f| f.len() <= MAX_FILE_BYTES));
                prop_assert!(total <= MAX_TOTAL_BYTES);
                prop_assert_eq!(files.len(), templates.len());
            }
            Err(error) => {
                let message = error.to_string();
                prop_assert!(!message.is_empty());
                prop_assert!(!message.contains(PLANTED), "a value in {message}");
            }
        }
    }

    #[test]
    fn any_text_as_a_template_renders_or_is_refused(source in any::<String>()) {
        let templates = BTreeMap::from([("f".to_owned(), source)]);
        if let Err(error) = render_files(&templates, &Variables::new()) {
            prop_assert!(!error.to_string().is_empty());
        }
    }
}
