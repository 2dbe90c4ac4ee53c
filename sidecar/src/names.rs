//! Which names may become paths in the secrets volume: a secret's name is a
//! directory and each file name from the broker a file in it, so neither may
//! climb out, hide among the writer's own `..` entries, or nest.

/// The longest file or secret name accepted, as for a Kubernetes Secret key.
pub const MAX_NAME_LEN: usize = 253;

/// Why a name cannot be a path component in the secrets volume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("{name:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong {
        /// The refused name, cut to a printable length.
        name: String,
    },
    /// The name contains a `/` (or a NUL), so it would nest or be truncated.
    #[error("{name:?} contains a path separator or NUL")]
    Separator {
        /// The refused name.
        name: String,
    },
    /// The name starts with a dot: `..` climbs out, and hidden names are the
    /// writer's own (`..data`, generations, the readiness marker).
    #[error("{name:?} starts with a dot")]
    LeadingDot {
        /// The refused name.
        name: String,
    },
    /// The secret name is not a DNS-1123 subdomain, as Kubernetes names are.
    #[error("{name:?} is not a Kubernetes object name (lowercase letters, digits, '-' and '.')")]
    NotObjectName {
        /// The refused name.
        name: String,
    },
}

/// Checks a file name from the broker: a plain name that stays inside its
/// secret's directory.
pub fn check_file_name(name: &str) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            name: name.chars().take(64).collect(),
        });
    }
    if name.contains(['/', '\0']) {
        return Err(NameError::Separator { name: name.into() });
    }
    if name.starts_with('.') {
        return Err(NameError::LeadingDot { name: name.into() });
    }
    Ok(name)
}

/// Checks a Kubernetes object name (DNS-1123 subdomain), as used for the
/// namespace and name of a BrokeredSecret and so for its directory.
pub fn check_object_name(name: &str) -> Result<&str, NameError> {
    check_file_name(name)?;
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = name
        .chars()
        .all(|c| alphanumeric(c) || c == '-' || c == '.')
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric);
    if valid {
        Ok(name)
    } else {
        Err(NameError::NotObjectName { name: name.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_file_names_are_accepted() {
        for name in ["password", "tls.crt", "ca-bundle.pem", "a", "UPPER_case"] {
            assert_eq!(check_file_name(name), Ok(name));
        }
    }

    #[test]
    fn file_names_that_escape_or_hide_are_refused() {
        assert_eq!(check_file_name(""), Err(NameError::Empty));
        for name in ["..", ".", "../etc/passwd", ".hidden", "..data"] {
            assert!(
                matches!(
                    check_file_name(name),
                    Err(NameError::LeadingDot { .. } | NameError::Separator { .. })
                ),
                "{name}"
            );
        }
        for name in ["a/b", "/abs", "a\0b", "x/../y"] {
            assert!(
                matches!(check_file_name(name), Err(NameError::Separator { .. })),
                "{name}"
            );
        }
        assert!(matches!(
            check_file_name(&"a".repeat(254)),
            Err(NameError::TooLong { .. })
        ));
        assert!(check_file_name(&"a".repeat(253)).is_ok());
    }

    #[test]
    fn object_names_follow_kubernetes_rules() {
        assert!(check_object_name("orders-db").is_ok());
        assert!(check_object_name("a.b-1").is_ok());
        for name in ["Orders", "-a", "a-", "a_b", "a/b", ".a", ""] {
            assert!(check_object_name(name).is_err(), "{name}");
        }
    }
}
