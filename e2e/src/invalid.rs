//! The invalid objects of ferry's tests, in one place: those the
//! apiserver refuses by the CRDs' schemas and CEL rules
//! (`e2e/tests/crds.rs`), and those the operator admits but marks not
//! Ready (`e2e/tests/reconciler.rs`). `e2e/tests/kubectl_ferry.rs` checks
//! that `kubectl ferry lint` reaches the same verdict on every one, so a
//! case added here is covered there too.

use serde_json::{Value, json};

/// An object the apiserver refuses with 422, naming `field` and a message
/// containing `message`.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The object as a client sends it (no namespace).
    pub object: Value,
    /// The field path the refusal names.
    pub field: &'static str,
    /// A part of the refusal's message.
    pub message: &'static str,
}

/// A BrokeredSecret named `name` with `spec`.
pub fn secret(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
        "metadata": {"name": name}, "spec": spec,
    })
}

/// An AccessPolicy named `name` with `spec`.
pub fn policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": name}, "spec": spec,
    })
}

/// A postgres source naming the Secret `orders-db-admin`.
pub fn postgres() -> Value {
    json!({"postgres": {"connectionSecretRef": {"name": "orders-db-admin"}}})
}

/// Subjects: the service account `shop/checkout`.
pub fn checkout() -> Value {
    json!([{"serviceAccount": {"name": "checkout", "namespace": "shop"}}])
}

/// Every object the CRDs refuse in the tests, with what the refusal names.
pub fn refused_by_schema() -> Vec<Refused> {
    let pg_ref = json!({"name": "orders-db-admin"});
    let exactly_one_source =
        "exactly one of postgres, kubernetesSecret, jwt, x509 or oauth2 must be set";
    let plain_file_names = "file names must be plain names: letters, digits, '.', '_' or '-', no '/', no '..', no leading dot";
    let duration_pattern = r"should match '^([0-9]{1,6}(s|m|h))+$'";
    let subdomain_pattern = r"should match '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'";
    // (object, field path, message): the apiserver must answer 422 naming both.
    let cases = [
        (
            secret(
                "two-sources",
                json!({"source": {"postgres": {"connectionSecretRef": pg_ref}, "kubernetesSecret": {"name": "legacy"}}}),
            ),
            "spec.source",
            exactly_one_source,
        ),
        (
            secret("no-source", json!({"source": {}})),
            "spec.source",
            exactly_one_source,
        ),
        (
            secret("null-source", json!({"source": {"postgres": null}})),
            "spec.source",
            exactly_one_source,
        ),
        (
            secret(
                "ttl-words",
                json!({"ttl": "15 minutes", "source": postgres()}),
            ),
            "spec.ttl",
            duration_pattern,
        ),
        (
            secret("ttl-too-short", json!({"ttl": "5s", "source": postgres()})),
            "spec.ttl",
            "ttl must be between 10s and 24h",
        ),
        (
            secret(
                "ttl-above-max",
                json!({"ttl": "2h", "maxTtl": "1h", "source": postgres()}),
            ),
            "spec",
            "ttl must not exceed maxTtl",
        ),
        (
            secret(
                "max-ttl-too-long",
                json!({"maxTtl": "200h", "source": postgres()}),
            ),
            "spec.maxTtl",
            "maxTtl must be between 10s and 168h",
        ),
        (
            secret(
                "admin-rotation-too-often",
                json!({"source": {"postgres": {"connectionSecretRef": pg_ref, "adminRotationPeriod": "30m"}}}),
            ),
            "spec.source.postgres.adminRotationPeriod",
            "adminRotationPeriod must be at least 1h",
        ),
        (
            secret(
                "file-traversal",
                json!({"source": postgres(), "files": {"../etc/passwd": "x"}}),
            ),
            "spec.files",
            plain_file_names,
        ),
        (
            secret(
                "file-subdir",
                json!({"source": postgres(), "files": {"a/b": "x"}}),
            ),
            "spec.files",
            plain_file_names,
        ),
        (
            secret(
                "file-hidden",
                json!({"source": postgres(), "files": {".hidden": "x"}}),
            ),
            "spec.files",
            plain_file_names,
        ),
        (
            secret(
                "member-injection",
                json!({"source": {"postgres": {"connectionSecretRef": pg_ref, "memberOf": ["bad-role;drop"]}}}),
            ),
            "spec.source.postgres.memberOf[0]",
            "should match '^[a-z_][a-z0-9_]{0,62}$'",
        ),
        (
            secret(
                "jwt-sub",
                json!({"source": {"jwt": {"audience": ["orders-api"], "claims": {"sub": "admin"}}}}),
            ),
            "spec.source.jwt.claims",
            "claims may not set iss, sub, aud, exp, nbf, iat, jti, scope, pod_uid or ferry.dev/secret",
        ),
        (
            secret(
                "jwt-no-audience",
                json!({"source": {"jwt": {"audience": []}}}),
            ),
            "spec.source.jwt.audience",
            "should have at least 1 items",
        ),
        (
            secret(
                "jwt-hs256",
                json!({"source": {"jwt": {"audience": ["orders-api"], "algorithm": "HS256"}}}),
            ),
            "spec.source.jwt.algorithm",
            r#"Unsupported value: "HS256""#,
        ),
        (
            secret(
                "oauth2-http",
                json!({"source": {"oauth2": {"tokenUrl": "http://idp.example/token", "credentialsSecretName": "crm"}}}),
            ),
            "spec.source.oauth2.tokenUrl",
            "should match '^https://",
        ),
        (
            secret(
                "oauth2-refresh-per-lease",
                json!({"source": {"oauth2": {"tokenUrl": "https://idp.example/token", "credentialsSecretName": "crm", "grant": "RefreshToken"}}}),
            ),
            "spec.source.oauth2",
            "grant RefreshToken makes one access token at a time",
        ),
        (
            secret(
                "oauth2-exchange-shared",
                json!({"source": {"oauth2": {"tokenUrl": "https://idp.example/token", "credentialsSecretName": "crm", "grant": "TokenExchange", "tokenExchange": {"subjectTokenAudience": "https://idp.example"}, "tokenSharing": "Shared"}}}),
            ),
            "spec.source.oauth2",
            "grant TokenExchange gets a token naming one pod: it cannot be shared",
        ),
        (
            secret(
                "oauth2-exchange-without-audience",
                json!({"source": {"oauth2": {"tokenUrl": "https://idp.example/token", "credentialsSecretName": "crm", "grant": "TokenExchange"}}}),
            ),
            "spec.source.oauth2",
            "tokenExchange is set exactly when grant is TokenExchange",
        ),
        (
            secret(
                "oauth2-exchange-stray",
                json!({"source": {"oauth2": {"tokenUrl": "https://idp.example/token", "credentialsSecretName": "crm", "tokenExchange": {"subjectTokenAudience": "https://idp.example"}}}}),
            ),
            "spec.source.oauth2",
            "tokenExchange is set exactly when grant is TokenExchange",
        ),
        (
            secret(
                "oauth2-resource-not-a-uri",
                json!({"source": {"oauth2": {"tokenUrl": "https://idp.example/token", "credentialsSecretName": "crm", "audience": ["crm-api"], "audienceParameter": "Resource"}}}),
            ),
            "spec.source.oauth2",
            "with audienceParameter Resource every audience must be an absolute URI",
        ),
        (
            policy(
                "no-subjects",
                json!({"subjects": [], "secrets": [{"name": "orders-db"}]}),
            ),
            "spec.subjects",
            "should have at least 1 items",
        ),
        (
            policy(
                "account-and-selector",
                json!({
                    "subjects": [{
                        "serviceAccount": {"name": "checkout", "namespace": "shop"},
                        "namespaceSelector": {"matchLabels": {"team": "payments"}},
                        "serviceAccountName": "batch",
                    }],
                    "secrets": [{"name": "orders-db"}],
                }),
            ),
            "spec.subjects[0]",
            "set exactly one of serviceAccount or namespaceSelector",
        ),
        (
            policy(
                "selector-without-name",
                json!({
                    "subjects": [{"namespaceSelector": {"matchLabels": {"team": "payments"}}}],
                    "secrets": [{"name": "orders-db"}],
                }),
            ),
            "spec.subjects[0]",
            "namespaceSelector needs serviceAccountName",
        ),
        (
            policy(
                "name-without-selector",
                json!({
                    "subjects": [{"serviceAccount": {"name": "checkout", "namespace": "shop"}, "serviceAccountName": "batch"}],
                    "secrets": [{"name": "orders-db"}],
                }),
            ),
            "spec.subjects[0]",
            "namespaceSelector needs serviceAccountName",
        ),
        (
            policy(
                "duplicate-secrets",
                json!({"subjects": checkout(), "secrets": [{"name": "orders-db"}, {"name": "orders-db", "maxTtl": "5m"}]}),
            ),
            "spec.secrets",
            "each secret may be listed only once",
        ),
        (
            policy(
                "uppercase-secret",
                json!({"subjects": checkout(), "secrets": [{"name": "Orders-DB"}]}),
            ),
            "spec.secrets[0].name",
            subdomain_pattern,
        ),
        (
            policy(
                "max-ttl-days",
                json!({"subjects": checkout(), "secrets": [{"name": "orders-db", "maxTtl": "1d"}]}),
            ),
            "spec.secrets[0].maxTtl",
            duration_pattern,
        ),
    ];
    cases
        .into_iter()
        .map(|(object, field, message)| Refused {
            object,
            field,
            message,
        })
        .collect()
}

/// An object the apiserver admits and the operator marks `Ready=False`
/// with `reason`.
#[derive(Debug, Clone)]
pub struct NotReady {
    /// The object (no namespace: the owner's namespace of the test).
    pub object: Value,
    /// The `Ready` condition's reason.
    pub reason: &'static str,
}

/// A postgres BrokeredSecret `name` whose admin Secret is `db-admin`.
pub fn postgres_secret(name: &str) -> Value {
    secret(
        name,
        json!({"ttl": "15m", "maxTtl": "1h", "source": {"postgres": {"connectionSecretRef": {"name": "db-admin"}}}}),
    )
}

/// An AccessPolicy `name` granting `secrets` to `checkout` in `shop`.
pub fn policy_for_checkout(name: &str, shop: &str, secrets: Value) -> Value {
    policy(
        name,
        json!({"subjects": [{"serviceAccount": {"name": "checkout", "namespace": shop}}], "secrets": secrets}),
    )
}

/// The objects the reconciler tests mark not Ready, with their reasons;
/// the policies grant to `checkout` in `shop`. `orders-db` (a postgres
/// secret whose admin Secret does not exist) comes first: the policies
/// name it.
pub fn not_ready_after_reconcile(shop: &str) -> Vec<NotReady> {
    vec![
        NotReady {
            object: postgres_secret("orders-db"),
            reason: "SecretNotFound",
        },
        NotReady {
            object: secret(
                "api-token",
                json!({"source": {"jwt": {"audience": ["orders"]}},
                       "files": {"auth-header": "Bearer {{ tokne }}"}}),
            ),
            reason: "InvalidTemplate",
        },
        NotReady {
            object: policy_for_checkout(
                "too-wide",
                shop,
                json!([{"name": "orders-db", "maxTtl": "2h"}]),
            ),
            reason: "InvalidNarrowing",
        },
        NotReady {
            object: policy_for_checkout(
                "not-jwt",
                shop,
                json!([{"name": "orders-db", "audience": ["api"]}]),
            ),
            reason: "InvalidNarrowing",
        },
        NotReady {
            object: policy_for_checkout("missing", shop, json!([{"name": "nope"}])),
            reason: "SecretNotFound",
        },
    ]
}
