//! Property-based fuzzing of what the sidecar reads from the network: the
//! broker's HTTP/1.1 responses (any bytes, in any read sizes) and their
//! JSON leases, and the file names those carry. Nothing panics, every
//! refusal is an error with a reason, a well-formed response is read back
//! exactly however it is framed, and a name that passes stays in its
//! directory.
//!
//! `FERRY_FUZZ_CASES` sets the number of cases (`make fuzz` runs many).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{self, Read};
use std::time::Duration;

use ferry_sidecar::broker_client::{decode_lease, parse_leases};
use ferry_sidecar::http1::{MAX_RESPONSE_BYTES, decode_chunked, read_response};
use ferry_sidecar::names::{MAX_NAME_LEN, check_file_name, check_object_name};
use ferry_sidecar::schedule::{MAX_LEASE_TTL, MAX_RETRY_AFTER};
use proptest::prelude::*;
use serde_json::{Value, json};

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

/// Hands out its bytes `step` at a time, as a socket may, then EOF.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.bytes.len().min(self.step).min(out.len());
        out[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// How a generated response frames its body.
#[derive(Debug, Clone)]
enum Framing {
    Length,
    Chunked(Vec<usize>),
    UntilClose,
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::Length),
        prop::collection::vec(1usize..64, 1..8).prop_map(Framing::Chunked),
        Just(Framing::UntilClose),
    ]
}

/// A response as a server would send it.
fn encode(status: u16, retry_after: Option<&str>, body: &[u8], framing: &Framing) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Whatever\r\nServer: x\r\n").into_bytes();
    if let Some(value) = retry_after {
        out.extend_from_slice(format!("Retry-After: {value}\r\n").as_bytes());
    }
    match framing {
        Framing::Length => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        }
        Framing::UntilClose => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
        Framing::Chunked(sizes) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = body;
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                out.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
                rest = tail;
            }
            out.extend_from_slice(b"0\r\nTrailer: t\r\n\r\n");
        }
    }
    out
}

/// A plausible broker answer body: leases, with fields of any JSON type.
fn leases_body() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(json!(i64::MAX)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!("900")),
    ];
    let file_name = prop_oneof![
        "[a-z.]{1,10}",
        Just("..".to_owned()),
        Just("../x".to_owned()),
        Just("a/b".to_owned()),
        Just(String::new()),
        any::<String>(),
    ];
    let content = prop_oneof!["[A-Za-z0-9+/]{0,12}={0,2}", any::<String>()];
    let lease = (
        any::<String>(),
        prop::collection::btree_map(file_name, content, 0..4),
        number.clone(),
        number,
        any::<String>(),
    )
        .prop_map(|(id, files, ttl, renew_after, expires_at)| {
            json!({
                "id": id,
                "secret": {"namespace": "shop", "name": "db"},
                "files": files,
                "ttl": ttl,
                "renewAfter": renew_after,
                "expiresAt": expires_at,
            })
        });
    prop::collection::vec(lease, 0..3)
        .prop_map(|leases| serde_json::to_vec(&json!({ "leases": leases })).unwrap())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_are_a_response_or_refused_with_a_reason(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        step in 1usize..512,
    ) {
        match read_response(&mut Trickle { bytes: &bytes, step }) {
            Ok(response) => {
                prop_assert!(response.body.len() <= bytes.len());
                prop_assert!(response.retry_after.is_none_or(|d| d <= MAX_RETRY_AFTER));
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn response_shaped_bytes_are_a_response_or_refused_with_a_reason(
        head in "HTTP/1\\.[01] [0-9]{1,4} [ -~]{0,8}\r\n((Content-Length|Transfer-Encoding|Retry-After|X): [ -~]{0,12}\r\n){0,4}\r\n",
        body in prop::collection::vec(any::<u8>(), 0..256),
        step in 1usize..64,
    ) {
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        if let Err(error) = read_response(&mut Trickle { bytes: &bytes, step }) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn a_well_formed_response_is_read_back_exactly(
        status in prop_oneof![200u16..=299, 400u16..=599],
        retry_after in proptest::option::of(prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            Just("-1".to_owned()),
            Just("Wed, 21 Oct 2015 07:28:00 GMT".to_owned()),
        ]),
        body in prop::collection::vec(any::<u8>(), 0..600),
        framing in framing(),
        step in 1usize..300,
    ) {
        // A 204 has no body by definition; the others carry theirs.
        prop_assume!(status != 204);
        let bytes = encode(status, retry_after.as_deref(), &body, &framing);
        let response = read_response(&mut Trickle { bytes: &bytes, step }).unwrap();
        prop_assert_eq!(response.status, status);
        prop_assert_eq!(response.body.as_slice(), body.as_slice());
        let expected = retry_after
            .and_then(|value| value.parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
        prop_assert_eq!(response.retry_after, expected);
    }

    #[test]
    fn any_chunked_body_is_decoded_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match decode_chunked(&bytes) {
            Ok(Some(body)) => prop_assert!(body.len() <= bytes.len()),
            Ok(None) => {}
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn chunk_size_lines_of_any_size_are_refused_or_bounded(size in "[0-9a-fA-F+-]{1,24}") {
        let bytes = format!("{size}\r\nabc\r\n0\r\n\r\n");
        match decode_chunked(bytes.as_bytes()) {
            Ok(Some(body)) => prop_assert!(body.len() <= 3),
            Ok(None) => {}
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn broker_answers_are_leases_or_refused_with_a_reason(body in leases_body()) {
        match parse_leases("issue", &body) {
            Ok(leases) => {
                for lease in leases {
                    match decode_lease("issue", lease) {
                        Ok(issued) => {
                            prop_assert!(!issued.ttl.is_zero() && issued.ttl <= MAX_LEASE_TTL);
                            prop_assert!(issued.renew_after <= issued.ttl);
                            prop_assert!(!issued.files.is_empty());
                            for file in &issued.files {
                                prop_assert!(check_file_name(&file.name).is_ok());
                            }
                        }
                        Err(error) => {
                            prop_assert!(error.is_permanent());
                            prop_assert!(!error.to_string().is_empty());
                        }
                    }
                }
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn any_bytes_as_a_broker_answer_are_refused_with_a_reason(
        body in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        if let Err(error) = parse_leases("renew", &body) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn a_file_name_that_passes_stays_in_its_directory(name in prop_oneof![
        any::<String>(),
        "[a-z./\\\\\u{0}-]{0,8}",
        Just("..".to_owned()),
    ]) {
        match check_file_name(&name) {
            Ok(checked) => {
                prop_assert_eq!(checked, name.as_str());
                prop_assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
                prop_assert!(!name.contains(['/', '\0']) && !name.starts_with('.'));
                let path = std::path::Path::new("/volume/secret").join(&name);
                prop_assert_eq!(path.parent(), Some(std::path::Path::new("/volume/secret")));
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
        if check_object_name(&name).is_ok() {
            prop_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'));
            prop_assert!(check_file_name(&name).is_ok());
        }
    }
}

#[test]
fn the_largest_response_is_read_and_a_larger_one_refused() {
    let body = vec![b'x'; MAX_RESPONSE_BYTES - 64];
    let bytes = encode(200, None, &body, &Framing::Length);
    let response = read_response(&mut Trickle {
        bytes: &bytes,
        step: 1 << 16,
    })
    .unwrap();
    assert_eq!(response.body.len(), body.len());
    let bytes = encode(
        200,
        None,
        &vec![b'x'; MAX_RESPONSE_BYTES + 1],
        &Framing::Chunked(vec![4096]),
    );
    assert!(
        read_response(&mut Trickle {
            bytes: &bytes,
            step: 1 << 16,
        })
        .is_err()
    );
}
