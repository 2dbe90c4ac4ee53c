//! Renders BrokeredSecret file templates into a lease's files, in the
//! environment and under the rules `ferry_api::templates` checks (see its
//! documentation for the language). Output is bounded by [`MAX_FILE_BYTES`]
//! and [`MAX_TOTAL_BYTES`] as it is written; loops by fuel.
//!
//! Errors name files, lines, variables and minijinja's error kind; never a
//! variable's value or rendered output. Rendered bytes and variables are
//! wiped when dropped (copies minijinja makes while rendering are freed but
//! not wiped).

use std::collections::BTreeMap;
use std::io;

use ferry_api::files::Files;
use ferry_api::templates::{
    GLOBALS, MAX_FILE_BYTES, MAX_TOTAL_BYTES, TemplateError, check_subset, environment, syntax,
};
use minijinja::{ErrorKind, Value};
use zeroize::Zeroizing;

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
    use ferry_api::templates::check_templates;

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
