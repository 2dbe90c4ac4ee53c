//! BrokeredSecret file templates (`spec.files`): file name to a minijinja
//! template over the variables a source provides (`postgres`: `username`,
//! `password`; `kubernetesSecret`: each key of the Secret; `jwt`: `token`).
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
use std::io;

use base64::Engine as _;
use minijinja::machinery::{Token, tokenize};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use zeroize::Zeroizing;

use super::providers::Files;

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

/// The statements a template may use.
const ALLOWED_STATEMENTS: [&str; 7] = ["if", "elif", "else", "endif", "for", "endfor", "raw"];

/// Global functions a template may call; not variables.
const GLOBALS: [&str; 1] = ["range"];

/// The values templates are rendered with: variable name to secret bytes.
/// Wiped from memory when dropped; `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct Variables(BTreeMap<String, Zeroizing<Vec<u8>>>);

impl Variables {
    /// No variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets variable `name` to `value`.
    pub fn insert(&mut self, name: impl Into<String>, value: Zeroizing<Vec<u8>>) {
        self.0.insert(name.into(), value);
    }

    /// The variable names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The names of the variables that are UTF-8 text (only those can be
    /// rendered), as a minijinja context.
    fn context(&self) -> Value {
        Value::from_pairs(
            self.0
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), std::str::from_utf8(value).ok()?)))
                .map(|(name, text)| (Value::from(name), Value::from(text))),
        )
    }
}

impl From<Files> for Variables {
    /// A source's natural files as variables (such as a Secret's keys).
    fn from(files: Files) -> Self {
        Self(files)
    }
}

impl<N: Into<String>> FromIterator<(N, Zeroizing<Vec<u8>>)> for Variables {
    fn from_iter<I: IntoIterator<Item = (N, Zeroizing<Vec<u8>>)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(n, v)| (n.into(), v)).collect())
    }
}

impl std::fmt::Debug for Variables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Variables")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

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
fn environment() -> Environment<'static> {
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
fn check_subset(file: &str, source: &str) -> Result<(), TemplateError> {
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

fn syntax(file: &str, error: &minijinja::Error) -> TemplateError {
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

/// Renders every template with `variables`: file name to content.
pub fn render_files(
    templates: &BTreeMap<String, String>,
    variables: &Variables,
) -> Result<Files, TemplateError> {
    let env = environment();
    let context = variables.context();
    let mut files = Files::new();
    let mut total = 0;
    for (file, source) in templates {
        check_subset(file, source)?;
        let template = env
            .template_from_named_str(file, source)
            .map_err(|error| syntax(file, &error))?;
        let limit = MAX_FILE_BYTES.min(MAX_TOTAL_BYTES - total);
        let mut out = BoundedBuffer::new(limit);
        if let Err(error) = template.render_captured_to(context.clone(), &mut out) {
            return Err(if out.exceeded && limit < MAX_FILE_BYTES {
                TemplateError::TotalTooLarge {
                    file: file.clone(),
                    limit: MAX_TOTAL_BYTES,
                }
            } else if out.exceeded {
                TemplateError::FileTooLarge {
                    file: file.clone(),
                    limit: MAX_FILE_BYTES,
                }
            } else {
                render_error(file, &error, &template, variables)
            });
        }
        total += out.bytes.len();
        files.insert(file.clone(), out.bytes);
    }
    Ok(files)
}

/// A rendering error in terms of files, lines and variable names: the
/// error's own detail may quote values, so it is dropped.
fn render_error(
    file: &str,
    error: &minijinja::Error,
    template: &minijinja::Template<'_, '_>,
    variables: &Variables,
) -> TemplateError {
    let line = error.line().unwrap_or(1);
    match error.kind() {
        ErrorKind::OutOfFuel => TemplateError::OutOfFuel {
            file: file.to_owned(),
        },
        ErrorKind::UndefinedError => {
            let used = template.undeclared_variables(false);
            let mut missing: Vec<String> = used
                .into_iter()
                .filter(|name| !GLOBALS.contains(&name.as_str()) && !variables.0.contains_key(name))
                .collect();
            missing.sort();
            if missing.is_empty() {
                if let Some(binary) = variables
                    .0
                    .iter()
                    .find(|(_, value)| std::str::from_utf8(value).is_err())
                    .map(|(name, _)| name.clone())
                {
                    return TemplateError::NotText {
                        file: file.to_owned(),
                        line,
                        variable: binary,
                    };
                }
                // An undefined attribute or item, such as `{{ password.x }}`.
                return TemplateError::Render {
                    file: file.to_owned(),
                    line,
                    kind: error.kind().to_string(),
                };
            }
            TemplateError::UndefinedVariable {
                file: file.to_owned(),
                line: Some(line),
                missing,
                available: variables.names().map(str::to_owned).collect(),
            }
        }
        ErrorKind::SyntaxError => syntax(file, error),
        kind => TemplateError::Render {
            file: file.to_owned(),
            line,
            kind: kind.to_string(),
        },
    }
}

/// Rendered output that refuses to grow past a limit, and grows by copying
/// into a fresh buffer so no unwiped copy of a secret is left behind.
struct BoundedBuffer {
    bytes: Zeroizing<Vec<u8>>,
    limit: usize,
    exceeded: bool,
}

impl BoundedBuffer {
    fn new(limit: usize) -> Self {
        Self {
            bytes: Zeroizing::new(Vec::with_capacity(limit.min(1024))),
            limit,
            exceeded: false,
        }
    }
}

impl io::Write for BoundedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let needed = self.bytes.len() + buf.len();
        if needed > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("output limit exceeded"));
        }
        if needed > self.bytes.capacity() {
            let capacity = needed.max(self.bytes.capacity() * 2).min(self.limit);
            let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
            grown.extend_from_slice(&self.bytes);
            // The old buffer is wiped as it is dropped here.
            self.bytes = grown;
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value that must never appear in an error or a `Debug`.
    const PLANTED: &str = "planted-secret-9c1e77";

    fn templates(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(file, source)| (file.to_string(), source.to_string()))
            .collect()
    }

    fn variables(pairs: &[(&str, &str)]) -> Variables {
        pairs
            .iter()
            .map(|(name, value)| (*name, Zeroizing::new(value.as_bytes().to_vec())))
            .collect()
    }

    fn text(files: &Files, file: &str) -> String {
        String::from_utf8(files[file].to_vec()).unwrap()
    }

    #[test]
    fn renders_each_file_from_the_variables() {
        let files = render_files(
            &templates(&[
                ("username", "{{ username }}"),
                (
                    "dsn",
                    "postgres://{{ username }}:{{ password | urlencode }}@db:5432/orders",
                ),
                (
                    "config.json",
                    r#"{"password": {{ password | tojson }}, "auth": "{{ password | b64encode }}"}"#,
                ),
            ]),
            &variables(&[("username", "v-checkout-1"), ("password", "p@ss/w\"rd")]),
        )
        .unwrap();
        assert_eq!(text(&files, "username"), "v-checkout-1");
        assert_eq!(
            text(&files, "dsn"),
            "postgres://v-checkout-1:p%40ss%2Fw%22rd@db:5432/orders"
        );
        assert_eq!(
            text(&files, "config.json"),
            r#"{"password": "p@ss/w\"rd", "auth": "cEBzcy93InJk"}"#
        );
    }

    #[test]
    fn conditions_loops_and_defaults_work_and_html_is_not_escaped() {
        let files = render_files(
            &templates(&[(
                "page.html",
                "{% if region is defined %}{{ region }}{% else %}{{ zone | default('none') }}{% endif %}\
                 {% for i in range(3) %}[{{ i }}]{% endfor %}<{{ password | upper }}>",
            )]),
            &variables(&[("password", "a&b")]),
        )
        .unwrap();
        assert_eq!(text(&files, "page.html"), "none[0][1][2]<A&B>");
    }

    #[test]
    fn an_undefined_variable_is_an_error_naming_it_and_the_file() {
        let error = render_files(
            &templates(&[("dsn", "user={{ username }}\npass={{ pasword }}")]),
            &variables(&[("username", "u"), ("password", PLANTED)]),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "file \"dsn\", line 2: undefined variable {{ pasword }} (the source provides: password, username)"
        );
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

    #[test]
    fn output_beyond_the_file_limit_is_an_error() {
        let big = "x".repeat(1024);
        let source = format!("{{% for i in range(100) %}}{big}{{% endfor %}}");
        let error = render_files(&templates(&[("f", &source)]), &Variables::new()).unwrap_err();
        assert_eq!(
            error,
            TemplateError::FileTooLarge {
                file: "f".into(),
                limit: MAX_FILE_BYTES
            }
        );
    }

    #[test]
    fn output_beyond_the_total_limit_is_an_error() {
        let big = "x".repeat(1024);
        let source = format!("{{% for i in range(60) %}}{big}{{% endfor %}}");
        let files: Vec<(String, String)> =
            (0..5).map(|n| (format!("f{n}"), source.clone())).collect();
        let error = render_files(&files.into_iter().collect(), &Variables::new()).unwrap_err();
        assert_eq!(
            error,
            TemplateError::TotalTooLarge {
                file: "f4".into(),
                limit: MAX_TOTAL_BYTES
            }
        );
    }

    #[test]
    fn a_loop_that_runs_too_long_runs_out_of_fuel() {
        let error = render_files(
            &templates(&[(
                "f",
                "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            )]),
            &Variables::new(),
        )
        .unwrap_err();
        assert_eq!(error, TemplateError::OutOfFuel { file: "f".into() });
    }

    #[test]
    fn a_binary_variable_used_as_text_is_named() {
        let mut vars = Variables::new();
        vars.insert("keystore", Zeroizing::new(vec![0xff, 0xfe]));
        let error = render_files(&templates(&[("f", "{{ keystore }}")]), &vars).unwrap_err();
        assert!(
            matches!(&error, TemplateError::NotText { variable, .. } if variable == "keystore"),
            "{error:?}"
        );
        // Unused, it does no harm.
        render_files(&templates(&[("f", "static")]), &vars).unwrap();
    }

    #[test]
    fn a_planted_value_never_reaches_an_error_or_debug() {
        let vars = variables(&[("password", PLANTED), ("number", "12")]);
        assert!(!format!("{vars:?}").contains(PLANTED));
        for source in [
            "{{ password.missing }}",
            "{{ password[0] }}",
            "{{ password | nofilter }}",
            "{{ password(1) }}",
            "{{ password - 1 }}",
            "{{ password / 2 }}",
            "{{ password is nosuchtest }}",
            "{% for c in password %}{{ c.x }}{% endfor %}",
            "{{ password | default(1, 2, 3) }}",
            "{{ range(password) }}",
            "{{ number | upper | int }}",
            "{{ undefined_thing }}",
            "{{ password }}{{ pasword }}",
            "{% for i in range(100000) %}{{ password }}{% endfor %}",
        ] {
            if let Err(error) = render_files(&templates(&[("f", source)]), &vars) {
                let shown = format!("{error} {error:?}");
                assert!(!shown.contains(PLANTED), "{source}: {shown}");
                assert!(!shown.contains("planted"), "{source}: {shown}");
            }
        }
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Prng(u64);

    impl Prng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_and_mutated_templates_never_panic_or_leak() {
        const PIECES: [&str; 32] = [
            "{{",
            "}}",
            "{%",
            "%}",
            "{#",
            "#}",
            " ",
            "password",
            "username",
            "x",
            "|",
            "upper",
            "urlencode",
            "default(",
            ")",
            "(",
            "for ",
            " in ",
            "range(",
            "3",
            "100000",
            "if ",
            "else",
            "endif",
            "endfor",
            "'",
            "\"",
            ".",
            "[",
            "]",
            "~",
            "\n",
        ];
        const SEEDS: [&str; 4] = [
            "postgres://{{ username }}:{{ password | urlencode }}@db/x",
            "{% for i in range(3) %}{{ i }}{% endfor %}",
            "{% if password is defined %}{{ password | upper }}{% else %}none{% endif %}",
            "{{ password | tojson }} {{ username | default('u') | b64encode }}",
        ];
        let vars = variables(&[("password", PLANTED), ("username", "u")]);
        let mut rng = Prng(0x5eed_f00d_cafe_d00d);
        for round in 0..4000 {
            let mut source = if round % 2 == 0 {
                SEEDS[rng.below(SEEDS.len())].to_string()
            } else {
                String::new()
            };
            for _ in 0..1 + rng.below(12) {
                let piece = PIECES[rng.below(PIECES.len())];
                // Insert at a character boundary, or delete a character.
                let at = source
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(rng.below(source.chars().count() + 1))
                    .unwrap_or(source.len());
                if rng.below(4) == 0 && at < source.len() {
                    source.remove(at);
                } else {
                    source.insert_str(at, piece);
                }
            }
            let files = templates(&[("f", &source)]);
            let checked = check_templates(&files);
            match render_files(&files, &vars) {
                Ok(rendered) => {
                    assert!(checked.is_ok(), "{source:?} rendered but did not check");
                    assert!(rendered["f"].len() <= MAX_FILE_BYTES);
                }
                Err(error) => {
                    let shown = format!("{error} {error:?}");
                    assert!(!shown.contains(PLANTED), "{source:?}: {shown}");
                }
            }
        }
    }
}
