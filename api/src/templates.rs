//! BrokeredSecret file templates (`spec.files`): file name to a minijinja
//! template over the variables a source provides (`postgres`: `username`,
//! `password`; `kubernetesSecret`: each key of the Secret; `jwt`: `token`).
//!
//! This module checks templates without rendering them (what the operator
//! reports in a BrokeredSecret's status and `kubectl ferry lint` reports
//! offline) and defines the environment they run in; the broker renders
//! them (`ferry_broker::templates`) in this same environment.
//!
//! Templates are written by namespace owners and rendered inside the broker,
//! so the language is a deliberately small, bounded subset of Jinja:
//!
//! - `{{ expression }}` over variables and literals, with the filters
//!   `default`, `lower`, `upper`, `trim`, `urlencode`, `tojson` and
//!   `b64encode`; the tests `defined`, `undefined` and `none`; `range()`.
//! - `{% if %}` / `{% elif %}` / `{% else %}` and `{% for %}`, `{% raw %}`.
//! - No `set`, macros, `filter` blocks, includes or any loader, and no `~`,
//!   `+`, `*` or `**`: those build values in memory before any output limit
//!   can see them (`"x" * 100000000`, doubling by `set`), so a template could
//!   exhaust the broker's memory. Every value is thus at most a small
//!   multiple of the template and the variables, and the output is bounded
//!   by [`MAX_FILE_BYTES`] and [`MAX_TOTAL_BYTES`] as it is written.
//! - An undefined variable is an error (strict), never an empty string;
//!   loops are bounded by [`FUEL_PER_FILE`] instructions. No autoescaping.
//!
//! Errors name files, lines, variables and minijinja's error kind; never a
//! variable's value or rendered output. Rendered bytes and variables are
//! wiped when dropped (copies minijinja makes while rendering are freed but
//! not wiped).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use minijinja::machinery::{Token, tokenize};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior};

/// The most bytes one rendered file may have.
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// The most bytes all rendered files of one secret may have together.
pub const MAX_TOTAL_BYTES: usize = 256 * 1024;

/// The most template instructions one file's rendering may run: plenty
/// for any configuration file, and a bound on loops.
pub const FUEL_PER_FILE: u64 = 50_000;

/// The variables the `postgres` source provides to templates.
pub const POSTGRES_VARIABLES: [&str; 5] = ["username", "password", "host", "port", "database"];

/// The variables the `jwt` source provides to templates.
pub const JWT_VARIABLES: [&str; 1] = ["token"];

/// The variables the `oauth2` source provides to templates: its files'
/// names, and the token's granted `scope`.
pub const OAUTH2_VARIABLES: [&str; 4] = ["access_token", "token_type", "expires_at", "scope"];

/// The statements a template may use.
const ALLOWED_STATEMENTS: [&str; 7] = ["if", "elif", "else", "endif", "for", "endfor", "raw"];

/// Global functions a template may call; not variables.
pub const GLOBALS: [&str; 1] = ["range"];
/// Why templates could not be checked or rendered. Names files, lines and
/// variables, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("file {file:?}, line {line}: syntax error: {detail}")]
    Syntax {
        /// The file.
        file: String,
        /// Its line (1-based).
        line: usize,
        /// What the parser expected, in template terms.
        detail: String,
    },
    /// The template uses something outside ferry's template subset.
    #[error("file {file:?}, line {line}: {construct} is not allowed in ferry templates")]
    Unsupported {
        /// The file.
        file: String,
        /// Its line (1-based).
        line: usize,
        /// What was used, such as `the ~ operator` or `{% set %}`.
        construct: String,
    },
    /// The template uses variables the source does not provide.
    #[error(
        "file {file:?}{}: undefined variable {} (the source provides: {})",
        line.map(|l| format!(", line {l}")).unwrap_or_default(),
        quoted(missing),
        if available.is_empty() { "nothing".to_string() } else { available.join(", ") }
    )]
    UndefinedVariable {
        /// The file.
        file: String,
        /// The line, when known (rendering knows it, a static check not).
        line: Option<usize>,
        /// The variables used but not provided.
        missing: Vec<String>,
        /// The variables the source provides.
        available: Vec<String>,
    },
    /// A variable used in the template is not UTF-8 text.
    #[error("file {file:?}, line {line}: variable {variable:?} is binary, not UTF-8 text")]
    NotText {
        /// The file.
        file: String,
        /// Its line (1-based).
        line: usize,
        /// The variable.
        variable: String,
    },
    /// One rendered file exceeds [`MAX_FILE_BYTES`].
    #[error("file {file:?}: rendered output exceeds {limit} bytes")]
    FileTooLarge {
        /// The file.
        file: String,
        /// The limit.
        limit: usize,
    },
    /// All rendered files together exceed [`MAX_TOTAL_BYTES`].
    #[error("file {file:?}: rendered files together exceed {limit} bytes")]
    TotalTooLarge {
        /// The file at which the total was exceeded.
        file: String,
        /// The limit.
        limit: usize,
    },
    /// Rendering ran more than [`FUEL_PER_FILE`] instructions.
    #[error("file {file:?}: rendering ran over {FUEL_PER_FILE} steps (a loop too long?)")]
    OutOfFuel {
        /// The file.
        file: String,
    },
    /// Rendering failed otherwise.
    #[error("file {file:?}, line {line}: {kind}")]
    Render {
        /// The file.
        file: String,
        /// Its line (1-based).
        line: usize,
        /// minijinja's error kind, such as `invalid operation`.
        kind: String,
    },
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("{{{{ {name} }}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The environment every template runs in: strict, fuelled, no loader, no
/// autoescape, and only the filters, tests and functions listed in the
/// module documentation, each taking strings so none amplifies a value.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL_PER_FILE));
    env.add_filter("default", minijinja::filters::default);
    env.add_filter("lower", |text: &str| text.to_lowercase());
    env.add_filter("upper", |text: &str| text.to_uppercase());
    env.add_filter("trim", |text: &str| text.trim().to_owned());
    env.add_filter("urlencode", urlencode);
    env.add_filter("tojson", |text: &str| {
        serde_json::to_string(text).unwrap_or_default()
    });
    env.add_filter("b64encode", |text: &str| {
        base64::engine::general_purpose::STANDARD.encode(text)
    });
    env.add_test("defined", minijinja::tests::is_defined);
    env.add_test("undefined", minijinja::tests::is_undefined);
    env.add_test("none", minijinja::tests::is_none);
    env.add_function("range", minijinja::functions::range);
    env
}

/// Percent-encodes every byte but RFC 3986's unreserved ones, so a value is
/// safe anywhere in a URL, a password in its userinfo included (Jinja's own
/// `urlencode` keeps `/`, which would end the userinfo).
fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Refuses what is outside ferry's template subset (see the module
/// documentation), by minijinja's own tokenizer.
pub fn check_subset(file: &str, source: &str) -> Result<(), TemplateError> {
    let mut after_block_start = false;
    for token in tokenize(source, false, SyntaxConfig::default()) {
        let (token, span) = token.map_err(|error| syntax(file, &error))?;
        let construct = match token {
            Token::Tilde => Some("the ~ operator".to_owned()),
            Token::Plus => Some("the + operator".to_owned()),
            Token::Mul => Some("the * operator".to_owned()),
            Token::Pow => Some("the ** operator".to_owned()),
            Token::Ident(statement) if after_block_start => {
                (!ALLOWED_STATEMENTS.contains(&statement)).then(|| format!("{{% {statement} %}}"))
            }
            _ => None,
        };
        if let Some(construct) = construct {
            return Err(TemplateError::Unsupported {
                file: file.to_owned(),
                line: span.start_line as usize,
                construct,
            });
        }
        after_block_start = matches!(token, Token::BlockStart);
    }
    Ok(())
}

/// A parse error of `file` as a [`TemplateError::Syntax`].
pub fn syntax(file: &str, error: &minijinja::Error) -> TemplateError {
    TemplateError::Syntax {
        file: file.to_owned(),
        line: error.line().unwrap_or(1),
        // Parse errors describe the template, which is not secret.
        detail: error
            .detail()
            .map_or_else(|| error.kind().to_string(), str::to_owned),
    }
}

/// Checks that every template parses and stays within ferry's template
/// subset, without rendering: what the controller reports on a
/// BrokeredSecret.
pub fn check_templates(templates: &BTreeMap<String, String>) -> Result<(), TemplateError> {
    let env = environment();
    for (file, source) in templates {
        check_subset(file, source)?;
        env.template_from_named_str(file, source)
            .map_err(|error| syntax(file, &error))?;
    }
    Ok(())
}

/// The variables each template refers to (file name to names), such as
/// `{"dsn": {"password", "username"}}`. Variables a template only tests
/// with `is defined` count as referred to.
pub fn referenced_variables(
    templates: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, BTreeSet<String>>, TemplateError> {
    check_templates(templates)?;
    let env = environment();
    templates
        .iter()
        .map(|(file, source)| {
            let template = env
                .template_from_named_str(file, source)
                .map_err(|error| syntax(file, &error))?;
            let names = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|name| !GLOBALS.contains(&name.as_str()))
                .collect();
            Ok((file.clone(), names))
        })
        .collect()
}

/// Checks the templates and that they use only the variables in
/// `available` (such as [`POSTGRES_VARIABLES`] or a Secret's keys), so a
/// misspelt `{{ pasword }}` is reported before any pod asks. A variable
/// that is only tested with `is defined` counts as used.
pub fn check_variables(
    templates: &BTreeMap<String, String>,
    available: &[&str],
) -> Result<(), TemplateError> {
    for (file, used) in referenced_variables(templates)? {
        let missing: Vec<String> = used
            .into_iter()
            .filter(|name| !available.contains(&name.as_str()))
            .collect();
        if !missing.is_empty() {
            let mut available: Vec<String> = available.iter().map(|&n| n.to_owned()).collect();
            available.sort();
            return Err(TemplateError::UndefinedVariable {
                file,
                line: None,
                missing,
                available,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(file, source)| (file.to_string(), source.to_string()))
            .collect()
    }

    #[test]
    fn check_variables_reports_a_misspelt_variable_before_rendering() {
        let error = check_variables(
            &templates(&[("dsn", "{{ username }}:{{ pasword }}")]),
            &POSTGRES_VARIABLES,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "file \"dsn\": undefined variable {{ pasword }} (the source provides: database, host, password, port, username)"
        );
        check_variables(
            &templates(&[(
                "dsn",
                "{{ username }}{% for i in range(2) %}{{ i }}{% endfor %}",
            )]),
            &POSTGRES_VARIABLES,
        )
        .unwrap();
    }

    #[test]
    fn referenced_variables_lists_the_names_per_file() {
        let used = referenced_variables(&templates(&[
            (
                "a",
                "{{ username }}{% for i in range(2) %}{{ i }}{{ password }}{% endfor %}",
            ),
            ("b", "static"),
        ]))
        .unwrap();
        assert_eq!(
            used["a"],
            BTreeSet::from(["password".to_string(), "username".to_string()])
        );
        assert!(used["b"].is_empty());
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let error =
            check_templates(&templates(&[("ok", "fine"), ("bad", "a\nb\n{{ x }")])).unwrap_err();
        let TemplateError::Syntax { file, line, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!((file.as_str(), *line), ("bad", 3));
        assert!(
            error
                .to_string()
                .starts_with("file \"bad\", line 3: syntax error: ")
        );
    }

    #[test]
    fn constructs_that_grow_values_unboundedly_are_refused() {
        for (source, construct) in [
            ("{{ 'x' * 100000000 }}", "the * operator"),
            ("{{ a ~ a }}", "the ~ operator"),
            ("{{ a + a }}", "the + operator"),
            ("{{ 2 ** 64 }}", "the ** operator"),
            ("line\n{% set a = 'x' %}", "{% set %}"),
            ("{% macro m() %}{% endmacro %}", "{% macro %}"),
            ("{% filter upper %}x{% endfilter %}", "{% filter %}"),
            ("{% include 'other' %}", "{% include %}"),
            ("{%- set a = 1 -%}", "{% set %}"),
            ("{% with a = 1 %}{% endwith %}", "{% with %}"),
            (
                "{% autoescape true %}{% endautoescape %}",
                "{% autoescape %}",
            ),
        ] {
            let error = check_templates(&templates(&[("f", source)])).unwrap_err();
            assert!(
                matches!(&error, TemplateError::Unsupported { construct: c, .. } if c == construct),
                "{source}: {error:?}"
            );
        }
        let error = check_templates(&templates(&[("f", "a\n{% set a = 1 %}")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "file \"f\", line 2: {% set %} is not allowed in ferry templates"
        );
        // Inside strings and raw blocks these are text.
        check_templates(&templates(&[(
            "f",
            "a ~ b * c {{ '~*+' }}{% raw %}{{ a ~ b }}{% set x %}{% endraw %}",
        )]))
        .unwrap();
    }
}
