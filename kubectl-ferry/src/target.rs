//! The names on the command line: `NS/NAME` (or `NAME` in the current
//! namespace) and `system:serviceaccount:NS:NAME`.

use std::fmt;

/// An object by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Target {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A DNS-1123 subdomain (names) or label (namespaces), as Kubernetes
/// checks them: lower-case letters, digits, `-` (and `.` in names).
fn valid_name(text: &str, dots: bool, max: usize) -> bool {
    let bytes = text.as_bytes();
    let inner =
        |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || (dots && *b == b'.');
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !text.is_empty()
        && text.len() <= max
        && bytes.iter().all(inner)
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
}

/// Parses `NS/NAME`, or `NAME` in `default_namespace`; `what` names the
/// argument in errors (`secret`, `pod`).
pub fn parse_target(text: &str, default_namespace: &str, what: &str) -> Result<Target, String> {
    let (namespace, name) = match text.split_once('/') {
        Some((namespace, name)) => (namespace, name),
        None => (default_namespace, text),
    };
    if !valid_name(namespace, false, 63) {
        return Err(format!(
            "{what} {text:?}: namespace {namespace:?} is not a valid namespace name; write NAMESPACE/NAME"
        ));
    }
    if !valid_name(name, true, 253) {
        return Err(format!(
            "{what} {text:?}: {name:?} is not a valid name (lower-case letters, digits, '-' and '.'); write NAMESPACE/NAME"
        ));
    }
    Ok(Target {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// Parses `system:serviceaccount:NS:NAME` into the service account.
pub fn parse_service_account_user(user: &str) -> Result<Target, String> {
    let rest = user.strip_prefix("system:serviceaccount:").ok_or_else(|| {
        format!(
            "--as {user:?}: ferry grants secrets to service accounts only; \
             write --as system:serviceaccount:NAMESPACE:NAME"
        )
    })?;
    let (namespace, name) = rest
        .split_once(':')
        .ok_or_else(|| format!("--as {user:?}: write system:serviceaccount:NAMESPACE:NAME"))?;
    parse_target(&format!("{namespace}/{name}"), "", "--as")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_namespace_and_name_or_a_name_in_the_current_namespace() {
        let t = parse_target("payments/orders-db", "default", "secret").unwrap();
        assert_eq!(t.to_string(), "payments/orders-db");
        let t = parse_target("orders-db", "shop", "secret").unwrap();
        assert_eq!(t.to_string(), "shop/orders-db");
    }

    #[test]
    fn a_malformed_target_names_what_to_write() {
        let error = parse_target("Payments/x", "default", "secret").unwrap_err();
        assert!(error.contains("NAMESPACE/NAME"), "{error}");
        assert!(parse_target("a/b/c", "default", "pod").is_err());
        assert!(parse_target("a/", "default", "pod").is_err());
    }

    #[test]
    fn only_service_account_users_are_understood() {
        let sa = parse_service_account_user("system:serviceaccount:shop:checkout").unwrap();
        assert_eq!(sa.to_string(), "shop/checkout");
        let error = parse_service_account_user("alice").unwrap_err();
        assert!(error.contains("service accounts only"), "{error}");
        assert!(parse_service_account_user("system:serviceaccount:shop").is_err());
    }
}
