//! Parsing the pod annotations a workload opts in with: which secrets it
//! asks for (`ferry.dev/secrets`) and where they are mounted
//! (`ferry.dev/mount-path`). Annotation values come from whoever creates the
//! pod, so every check here assumes a hostile value and every message quotes
//! it escaped and shortened.

use std::collections::HashMap;
use std::fmt;

use ferry_api::resources::SecretReference;
use ferry_contract::{MOUNT_PATH_ANNOTATION, SECRETS_ANNOTATION};

/// The longest `ferry.dev/secrets` value accepted, in bytes.
pub const MAX_SECRETS_ANNOTATION_BYTES: usize = 4096;

/// The longest mount path accepted, in bytes.
pub const MAX_MOUNT_PATH_BYTES: usize = 256;

/// The longest a quoted value gets in a message.
const QUOTE_LIMIT: usize = 64;

/// A value from a pod, quoted for a message: escaped, and shortened when long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted(String);

impl Quoted {
    /// Quotes `value`.
    pub fn new(value: &str) -> Self {
        let mut chars = value.chars();
        let head: String = chars.by_ref().take(QUOTE_LIMIT).collect();
        if chars.next().is_some() {
            Self(format!("{head:?}… ({} bytes)", value.len()))
        } else {
            Self(format!("{head:?}"))
        }
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a `ferry.dev/secrets` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsAnnotationError {
    /// The value lists nothing.
    #[error(
        "annotation {SECRETS_ANNOTATION} is empty: list BrokeredSecrets, such as \"orders-db, payments/orders-db\""
    )]
    Empty,
    /// The value is longer than [`MAX_SECRETS_ANNOTATION_BYTES`].
    #[error(
        "annotation {SECRETS_ANNOTATION} is {0} bytes long; at most {MAX_SECRETS_ANNOTATION_BYTES} are accepted"
    )]
    TooLong(usize),
    /// An entry between commas is blank.
    #[error(
        "annotation {SECRETS_ANNOTATION}: entry {0} is empty (look for a doubled or trailing comma)"
    )]
    EmptyEntry(usize),
    /// More entries than the configured maximum.
    #[error(
        "annotation {SECRETS_ANNOTATION} lists {count} secrets; at most {max} are allowed per pod"
    )]
    TooMany {
        /// How many were listed.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// An entry is not `name` or `namespace/name` with valid names.
    #[error("annotation {SECRETS_ANNOTATION}: entry {entry} {why}")]
    InvalidEntry {
        /// The entry, quoted.
        entry: Quoted,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The same secret is listed twice.
    #[error("annotation {SECRETS_ANNOTATION} lists {0} twice")]
    Duplicate(String),
    /// Two secrets would be written to the same directory.
    #[error(
        "annotation {SECRETS_ANNOTATION}: {first} and {second} would share the directory {name}/ under the mount path; a pod can ask for only one secret of each name"
    )]
    SameDirectory {
        /// The first secret, as `namespace/name`.
        first: String,
        /// The second secret, as `namespace/name`.
        second: String,
        /// The shared name.
        name: String,
    },
}

/// Parses `ferry.dev/secrets`: comma-separated entries, each a BrokeredSecret
/// `name` in `pod_namespace` or `namespace/name` elsewhere; whitespace around
/// entries is ignored. Each secret is written to a directory named after
/// it, so two secrets of the same name are refused.
pub fn parse_secrets_annotation(
    value: &str,
    pod_namespace: &str,
    max_secrets: usize,
) -> Result<Vec<SecretReference>, SecretsAnnotationError> {
    if value.len() > MAX_SECRETS_ANNOTATION_BYTES {
        return Err(SecretsAnnotationError::TooLong(value.len()));
    }
    if value.trim().is_empty() {
        return Err(SecretsAnnotationError::Empty);
    }
    let count = value.split(',').count();
    if count > max_secrets {
        return Err(SecretsAnnotationError::TooMany {
            count,
            max: max_secrets,
        });
    }
    let mut secrets: Vec<SecretReference> = Vec::with_capacity(count);
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(count);
    for (position, entry) in value.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(SecretsAnnotationError::EmptyEntry(position + 1));
        }
        let invalid = |why| SecretsAnnotationError::InvalidEntry {
            entry: Quoted::new(entry),
            why,
        };
        let (namespace, name) = match entry.split_once('/') {
            None => (pod_namespace, entry),
            Some((namespace, name)) => {
                if name.contains('/') {
                    return Err(invalid(
                        "has more than one '/': write name or namespace/name",
                    ));
                }
                if !is_dns_label(namespace) {
                    return Err(invalid(
                        "has an invalid namespace: lowercase letters, digits and '-', at most 63, starting and ending alphanumeric",
                    ));
                }
                (namespace, name)
            }
        };
        if !is_dns_subdomain(name) {
            return Err(invalid(
                "is not a valid BrokeredSecret name: lowercase letters, digits, '-' and '.', at most 253, each dot-separated part starting and ending alphanumeric",
            ));
        }
        let secret = SecretReference {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        if let Some(&earlier) = by_name.get(name) {
            let first = &secrets[earlier];
            if first == &secret {
                return Err(SecretsAnnotationError::Duplicate(qualified(&secret)));
            }
            return Err(SecretsAnnotationError::SameDirectory {
                first: qualified(first),
                second: qualified(&secret),
                name: name.to_owned(),
            });
        }
        by_name.insert(name, secrets.len());
        secrets.push(secret);
    }
    Ok(secrets)
}

/// `namespace/name`.
pub fn qualified(secret: &SecretReference) -> String {
    format!("{}/{}", secret.namespace, secret.name)
}

/// Whether `value` is a DNS-1123 label (a namespace name).
pub fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// Whether `value` is a DNS-1123 subdomain (an object name): dot-separated
/// DNS labels, 253 bytes at most. This rules out `.`, `..` and `/`.
pub fn is_dns_subdomain(value: &str) -> bool {
    !value.is_empty() && value.len() <= 253 && value.split('.').all(is_dns_label)
}

/// Why a `ferry.dev/mount-path` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {MOUNT_PATH_ANNOTATION}: {path} {why}")]
pub struct MountPathError {
    /// The path, quoted.
    pub path: Quoted,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Directories the secrets volume may never cover, nor be mounted under:
/// the system's own, and the service-account token's.
const PROTECTED_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/proc",
    "/sbin",
    "/sys",
    "/usr",
    "/run/secrets/kubernetes.io",
    "/var/run/secrets/kubernetes.io",
];

/// Directories the volume may be mounted under but must not replace.
const PROTECTED_DIRECTORIES: &[&str] = &[
    "/", "/home", "/root", "/run", "/tmp", "/var", "/var/lib", "/var/run",
];

/// Checks a mount path from `ferry.dev/mount-path`: absolute, normalised
/// (no `.`, `..`, empty segments or trailing `/`), printable, and never over
/// or inside a system directory.
pub fn validate_mount_path(path: &str) -> Result<(), MountPathError> {
    let fail = |why| {
        Err(MountPathError {
            path: Quoted::new(path),
            why,
        })
    };
    if path.len() > MAX_MOUNT_PATH_BYTES {
        return fail("is too long: at most 256 bytes");
    }
    if !path.starts_with('/') {
        return fail("must be an absolute path");
    }
    if path
        .chars()
        .any(|c| c.is_control() || c == ':' || c == '\\')
    {
        return fail("contains a control character, ':' or '\\'");
    }
    if path != "/"
        && path[1..]
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return fail("must be normalised: no '.', '..', '//' or trailing '/'");
    }
    if PROTECTED_DIRECTORIES.contains(&path) {
        return fail(
            "would hide a system directory; mount under it instead, such as /var/run/secrets/ferry",
        );
    }
    let inside = |tree: &str| {
        path == tree
            || path
                .strip_prefix(tree)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if PROTECTED_TREES.iter().any(|tree| inside(tree)) {
        return fail(
            "is a system or service-account directory; choose another, such as /var/run/secrets/ferry",
        );
    }
    Ok(())
}
