//! Property-based fuzzing of what ferry's API crate parses from resources
//! that namespace owners write: durations and file templates. Nothing
//! panics, every refusal is an error with a reason, and a duration prints
//! and parses back to itself.
//!
//! `FERRY_FUZZ_CASES` sets the number of cases (`make fuzz` runs many).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::duration::{MAX_DURATION, format_duration, parse_duration};
use ferry_api::templates::{check_templates, check_variables, referenced_variables};
use proptest::prelude::*;

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

/// Pieces templates are made of: delimiters, statements, filters, tests,
/// the refused operators, variables and literals; glued at random they
/// make templates that parse, fail to parse, and break the subset.
pub fn template() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "{{ ", " }}", "{% ", " %}", "{%- ", " -%}", "{# ", " #}",
            "if ", "elif ", "else", "endif", "for ", " in ", "endfor", "raw", "endraw",
            "set ", "macro ", "include ", "filter ", "call ",
            "range(", ")", "(", ",", "[", "]", "|", ".", "=", "==", " is ",
            "default(", "lower", "upper", "trim", "urlencode", "tojson", "b64encode",
            "defined", "undefined", "none", "not ", " and ", " or ",
            "~", "+", "*", "**", "-", "/", "//", "%",
            "password", "username", "x", "loop.index", "99999999", "0", "-1", "1e308",
            "\"s\"", "'q'", "\n", " ", "{", "}", "\\",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// Small maps of file name to template.
pub fn templates() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![Just("dsn".to_owned()), any::<String>()],
        template(),
        1..3,
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_a_duration_or_refused_with_a_reason(input in any::<String>()) {
        match parse_duration(&input) {
            Ok(duration) => {
                prop_assert!(duration <= MAX_DURATION);
                prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
            }
            Err(error) => {
                let message = error.to_string();
                prop_assert!(message.contains("invalid duration"));
                // The input is quoted shortened, whatever its length.
                prop_assert!(message.len() < 1024, "{} bytes", message.len());
            }
        }
    }

    #[test]
    fn duration_like_text_parses_or_is_refused(input in "([0-9]{0,8}[smhd ]?){0,6}") {
        if let Ok(duration) = parse_duration(&input) {
            prop_assert!(input.chars().all(|c| c.is_ascii_digit() || "smh".contains(c)));
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
    }

    #[test]
    fn sums_of_valid_pairs_parse_and_print_back_or_are_refused(
        pairs in prop::collection::vec((0u64..=999_999, prop::sample::select(vec!['s', 'm', 'h'])), 1..5)
    ) {
        let input: String = pairs.iter().map(|(n, unit)| format!("{n}{unit}")).collect();
        match parse_duration(&input) {
            Ok(duration) => {
                prop_assert!(duration <= MAX_DURATION);
                prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
            }
            Err(_) => {
                let secs: u64 = pairs
                    .iter()
                    .map(|(n, unit)| n * match unit { 's' => 1, 'm' => 60, _ => 3600 })
                    .sum();
                prop_assert!(secs > MAX_DURATION.as_secs(), "{input:?} refused");
            }
        }
    }

    #[test]
    fn every_duration_up_to_the_maximum_prints_and_parses_back(
        secs in 0..=MAX_DURATION.as_secs()
    ) {
        let duration = Duration::from_secs(secs);
        prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
    }

    #[test]
    fn any_duration_formats_without_panicking(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        let text = format_duration(Duration::new(secs, nanos));
        prop_assert!(!text.is_empty());
    }

    #[test]
    fn any_template_is_checked_or_refused_with_a_reason(templates in templates()) {
        match check_templates(&templates) {
            Ok(()) => {
                let used = referenced_variables(&templates).unwrap();
                let names: Vec<&str> = used.values().flatten().map(String::as_str).collect();
                // Every variable it names is provided: nothing is missing.
                prop_assert!(check_variables(&templates, &names).is_ok());
                if !names.is_empty() {
                    let error = check_variables(&templates, &[]).unwrap_err();
                    prop_assert!(error.to_string().contains("undefined variable"));
                }
            }
            Err(error) => {
                prop_assert!(!error.to_string().is_empty());
                prop_assert!(referenced_variables(&templates).is_err());
                prop_assert!(check_variables(&templates, &["password"]).is_err());
            }
        }
    }
}
