#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Whatever arrives at `/mutate` or sits in a pod's annotations, the
//! webhook answers or refuses; it never panics. A deterministic fuzz run:
//! many corrupted variants of a real AdmissionReview, and random
//! annotation values.

use ferry_runtime::grant_index::GrantIndex;
use ferry_webhook::admission::review_pod_admission;
use ferry_webhook::annotations::{parse_secrets_annotation, validate_mount_path};
use ferry_webhook::config::InjectionConfig;
use k8s_openapi::jiff::Timestamp;

/// xorshift64*: reproducible, and enough to shake a parser.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"\"\\u0000\"",
    b"\"ferry.dev/inject\"",
    b"\"..\"",
    b"/",
    b"\xff",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        if out.is_empty() {
            break;
        }
        let at = rng.below(out.len());
        match rng.below(4) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out.truncate(at),
            2 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, token.iter().copied());
            }
            _ => {
                let end = (at + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

#[test]
fn corrupted_admission_reviews_are_answered_or_refused_never_a_panic() {
    let fixtures = [
        "create_opted_in_pod.json",
        "create_pod_with_bad_annotation.json",
    ]
    .map(|name| {
        std::fs::read(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    });
    let config = InjectionConfig::default();
    let grants = GrantIndex::from_objects([], []);
    let now = Timestamp::now();
    let mut rng = Rng(0x5eed_f00d_cafe_d00d);
    let (mut answered, mut refused) = (0, 0);
    for round in 0..5_000 {
        let body = mutate(&mut rng, &fixtures[round % fixtures.len()]);
        match review_pod_admission(&body, &config, &grants, now) {
            Ok(reviewed) => {
                serde_json::to_vec(&reviewed.review).unwrap();
                answered += 1;
            }
            Err(bad) => {
                assert!(!bad.to_string().is_empty());
                refused += 1;
            }
        }
    }
    // Both paths were exercised, not just the parser's first line.
    assert!(
        answered > 100 && refused > 100,
        "{answered} answered, {refused} refused"
    );
}

#[test]
fn random_annotation_values_are_parsed_or_refused_never_a_panic() {
    let alphabet: Vec<char> = "ab-./, \t\n\u{0}é💥Z9:\\".chars().collect();
    let mut rng = Rng(0xdead_beef_0bad_f00d);
    for _ in 0..20_000 {
        let length = rng.below(80);
        let value: String = (0..length)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        if let Ok(secrets) = parse_secrets_annotation(&value, "app", 16) {
            for secret in secrets {
                assert!(!secret.name.is_empty() && !secret.name.contains(['/', ',', ' ']));
                assert!(secret.name != ".." && !secret.name.starts_with('.'));
            }
        }
        if validate_mount_path(&value).is_ok() {
            assert!(value.starts_with('/') && !value.contains("/../") && !value.ends_with("/.."));
        }
    }
}
