//! ferry's CRDs against a real apiserver: they install and are established,
//! valid objects are accepted with their defaults, invalid ones are refused
//! with a message naming the problem, and kubectl explains and lists them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_api::resources::{AccessPolicy, BrokeredSecret, Grant, JwtAlgorithm, TokenSharing};
use ferry_e2e::{Cluster, eventually, install_crds};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, Resource};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The shared cluster with the CRDs installed, an admin client and a fresh
/// namespace.
async fn setup(prefix: &str) -> (&'static Cluster, Client, String) {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    install_crds(&client).await.unwrap();
    let ns = cluster.create_namespace(prefix).await.unwrap();
    (cluster, client, ns)
}

/// The API of the ferry kind named in `object["kind"]`, untyped so that
/// objects the Rust types could not even represent can be sent.
fn api_for(client: &Client, ns: &str, object: &Value) -> Api<DynamicObject> {
    let resource = match object["kind"].as_str() {
        Some("BrokeredSecret") => ApiResource::erase::<BrokeredSecret>(&()),
        Some("AccessPolicy") => ApiResource::erase::<AccessPolicy>(&()),
        Some("Grant") => ApiResource::erase::<Grant>(&()),
        other => panic!("not a ferry kind: {other:?}"),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// Creates `object` in `ns`, as a client sending that exact JSON would.
async fn create(client: &Client, ns: &str, object: &Value) -> Result<DynamicObject, kube::Error> {
    let dynamic: DynamicObject = serde_json::from_value(object.clone()).unwrap();
    api_for(client, ns, object)
        .create(&PostParams::default(), &dynamic)
        .await
}

fn secret(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokeredSecret",
        "metadata": {"name": name}, "spec": spec,
    })
}

fn policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": name}, "spec": spec,
    })
}

fn postgres() -> Value {
    json!({"postgres": {"connectionSecretRef": {"name": "orders-db-admin"}}})
}

fn checkout() -> Value {
    json!([{"serviceAccount": {"name": "checkout", "namespace": "shop"}}])
}

/// Runs kubectl with `args` until it succeeds (the apiserver publishes a
/// new CRD's discovery and OpenAPI a moment after it is established);
/// returns its standard output. A private discovery cache keeps a stale
/// one from an earlier run out of the picture.
async fn kubectl(cluster: &Cluster, ns: &str, args: &[&str]) -> String {
    let cache = cluster.dir().join(format!("kubectl-cache-{ns}"));
    let what = format!("kubectl {}", args.join(" "));
    eventually(&what, WAIT, || async {
        let output = tokio::process::Command::from(cluster.kubectl())
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .output()
            .await
            .unwrap();
        output
            .status
            .success()
            .then(|| String::from_utf8(output.stdout).unwrap())
    })
    .await
}

/// The header line of the kubectl table holding the row `row_name`.
fn header_before<'a>(table: &'a str, row_name: &str) -> &'a str {
    let lines: Vec<&str> = table.lines().collect();
    let row = lines
        .iter()
        .position(|line| line.contains(row_name))
        .unwrap_or_else(|| panic!("no row {row_name} in:\n{table}"));
    lines[..row]
        .iter()
        .rev()
        .find(|line| line.starts_with("NAME"))
        .unwrap_or_else(|| panic!("no header above {row_name} in:\n{table}"))
}

fn columns(header: &str) -> Vec<&str> {
    header.split_whitespace().collect()
}

#[tokio::test]
async fn crds_install_idempotently_and_are_established() {
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    // Concurrent and repeated installs converge on the same objects.
    let (a, b) = tokio::join!(install_crds(&client), install_crds(&client));
    a.unwrap();
    b.unwrap();
    install_crds(&client).await.unwrap();

    let api: Api<CustomResourceDefinition> = Api::all(client);
    for name in [
        BrokeredSecret::crd_name(),
        AccessPolicy::crd_name(),
        Grant::crd_name(),
    ] {
        let crd = api.get(name).await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["NamesAccepted", "Established"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == wanted && c.status == "True"),
                "{name}: {wanted} is not True: {conditions:?}"
            );
        }
    }
}

#[tokio::test]
async fn valid_objects_of_each_kind_are_accepted_with_defaults_applied() {
    let (_cluster, client, ns) = setup("crds-valid").await;
    let valid = [
        secret(
            "orders-db",
            json!({
                "source": {"postgres": {
                    "connectionSecretRef": {"name": "orders-db-admin"},
                    "memberOf": ["orders_reader", "_audit"],
                }},
                "files": {
                    "username": "{{ username }}",
                    "password": "{{ password }}",
                    "dsn": "postgres://{{ username }}:{{ password }}@db.payments:5432/orders",
                    "ca.crt": "{{ ca }}",
                },
            }),
        ),
        secret(
            "orders-token",
            json!({
                "ttl": "5m", "maxTtl": "1h30m",
                "source": {"jwt": {
                    "issuer": "https://ferry.example",
                    "audience": ["orders-api"],
                    "scopes": ["orders:read", "orders:write"],
                    "claims": {"team": "payments"},
                }},
            }),
        ),
        secret(
            "crm-for-the-pod",
            json!({"source": {"oauth2": {
                "tokenUrl": "https://idp.example/token",
                "credentialsSecretName": "crm-client",
                "grant": "TokenExchange",
                "tokenExchange": {"subjectTokenAudience": "https://idp.example"},
                "scopes": ["contacts:read"],
            }}}),
        ),
        // An explicit null is the same as leaving a source out.
        secret(
            "legacy-api-key",
            json!({"ttl": "1h", "maxTtl": "168h", "source": {"kubernetesSecret": {"name": "legacy-api-key"}, "jwt": null}}),
        ),
        policy(
            "checkout-reads-orders",
            json!({
                "subjects": checkout(),
                "secrets": [
                    {"name": "orders-db", "maxTtl": "10m"},
                    {"name": "orders-token", "audience": ["orders-api"], "scopes": ["orders:read"]},
                ],
                "validUntil": "2030-12-31T00:00:00Z",
            }),
        ),
        policy(
            "batch-reads-orders",
            json!({
                "subjects": [{"namespaceSelector": {"matchLabels": {"team": "payments"}}, "serviceAccountName": "batch"}],
                // A null maxTtl is no cap, not a duration rule failing on null.
                "secrets": [{"name": "orders-db", "maxTtl": null}],
            }),
        ),
    ];
    for object in &valid {
        if let Err(error) = create(&client, &ns, object).await {
            panic!(
                "{} {} was refused: {error}",
                object["kind"], object["metadata"]["name"]
            );
        }
    }

    let secrets: Api<BrokeredSecret> = Api::namespaced(client.clone(), &ns);
    let orders_db = secrets.get("orders-db").await.unwrap();
    assert_eq!(orders_db.spec.ttl, "15m");
    assert_eq!(orders_db.spec.max_ttl, "1h");
    let postgres = orders_db.spec.source.postgres.unwrap();
    assert_eq!(postgres.connection_secret_ref.key, "dsn");
    assert_eq!(postgres.member_of, ["orders_reader", "_audit"]);
    assert_eq!(orders_db.spec.files.len(), 4);

    let token = secrets.get("orders-token").await.unwrap();
    assert_eq!(
        (token.spec.ttl.as_str(), token.spec.max_ttl.as_str()),
        ("5m", "1h30m")
    );
    let jwt = token.spec.source.jwt.unwrap();
    assert_eq!(jwt.algorithm, JwtAlgorithm::ES256);
    assert_eq!(jwt.claims["team"], "payments");

    let crm = secrets.get("crm-for-the-pod").await.unwrap();
    let oauth2 = crm.spec.source.oauth2.unwrap();
    assert_eq!(
        (oauth2.token_sharing, oauth2.requests_per_minute),
        (TokenSharing::PerLease, 600),
        "defaults applied"
    );
    assert_eq!(
        oauth2.token_exchange.unwrap().subject_token_audience,
        "https://idp.example"
    );

    let legacy = secrets.get("legacy-api-key").await.unwrap();
    assert_eq!(
        legacy.spec.source.kubernetes_secret.unwrap().name,
        "legacy-api-key"
    );
    assert!(legacy.spec.source.jwt.is_none(), "the null jwt was stored");

    let policies: Api<AccessPolicy> = Api::namespaced(client, &ns);
    let checkout = policies.get("checkout-reads-orders").await.unwrap();
    assert_eq!(checkout.spec.secrets[0].max_ttl.as_deref(), Some("10m"));
    assert!(checkout.spec.valid_until.is_some());
    let batch = policies.get("batch-reads-orders").await.unwrap();
    assert_eq!(
        batch.spec.subjects[0].service_account_name.as_deref(),
        Some("batch")
    );
    assert_eq!(batch.spec.secrets[0].max_ttl, None);
}

#[tokio::test]
async fn invalid_objects_are_refused_with_a_message_naming_the_problem() {
    let (_cluster, client, ns) = setup("crds-invalid").await;
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

    let mut failures = Vec::new();
    for (object, field, message) in &cases {
        let name = object["metadata"]["name"].as_str().unwrap();
        match create(&client, &ns, object).await {
            Ok(_) => failures.push(format!("{name}: accepted")),
            // A duration rule must not also fail, with a type-conversion
            // error, on a string the pattern already refused.
            Err(kube::Error::Api(status))
                if status.code == 422
                    && status.message.contains(&format!("{field}: "))
                    && status.message.contains(message)
                    && !status.message.contains("type conversion error") => {}
            Err(error) => failures.push(format!(
                "{name}: wanted 422 with {field}: {message:?}; got {error}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid objects were not refused as expected:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn kubectl_explain_prints_the_field_docs() {
    let (cluster, _client, ns) = setup("crds-explain").await;
    let explained = kubectl(cluster, &ns, &["explain", "brokeredsecret.spec.source"]).await;
    for wanted in [
        "Where the material comes from: exactly one of `postgres`",
        "kubernetesSecret",
        "A dynamic PostgreSQL role per pod",
        "A JWT minted and signed by the broker.",
    ] {
        assert!(
            explained.contains(wanted),
            "explain lacks {wanted:?}:\n{explained}"
        );
    }
}

#[tokio::test]
async fn kubectl_lists_ferry_objects_with_short_names_category_and_printer_columns() {
    let (cluster, client, ns) = setup("crds-kubectl").await;
    create(
        &client,
        &ns,
        &secret("orders-db", json!({"source": postgres()})),
    )
    .await
    .unwrap();
    create(
        &client,
        &ns,
        &policy(
            "checkout-reads-orders",
            json!({"subjects": checkout(), "secrets": [{"name": "orders-db", "maxTtl": "10m"}]}),
        ),
    )
    .await
    .unwrap();
    create(
        &client,
        &ns,
        &json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Grant",
            "metadata": {"name": "payments.orders-db.checkout"},
            "spec": {
                "serviceAccount": "checkout",
                "secret": {"namespace": ns, "name": "orders-db"},
                "maxTtl": "10m",
                "validUntil": "2030-12-31T00:00:00Z",
                "policy": {"namespace": ns, "name": "checkout-reads-orders", "uid": "0"},
            },
        }),
    )
    .await
    .unwrap();
    // Stand in for the reconciler so the status columns have values.
    let ready = json!({"type": "Ready", "status": "True", "reason": "Resolved", "message": "",
        "lastTransitionTime": "2025-01-01T00:00:00Z"});
    let status = PatchParams::apply("crds-test").force();
    Api::<BrokeredSecret>::namespaced(client.clone(), &ns)
        .patch_status(
            "orders-db",
            &status,
            &Patch::Apply(json!({
                "apiVersion": BrokeredSecret::api_version(&()), "kind": "BrokeredSecret",
                "status": {"conditions": [ready], "source": "postgres"},
            })),
        )
        .await
        .unwrap();
    Api::<AccessPolicy>::namespaced(client.clone(), &ns)
        .patch_status(
            "checkout-reads-orders",
            &status,
            &Patch::Apply(json!({
                "apiVersion": AccessPolicy::api_version(&()), "kind": "AccessPolicy",
                "status": {"conditions": [ready], "subjects": 1, "grants": 1},
            })),
        )
        .await
        .unwrap();

    let table = kubectl(cluster, &ns, &["get", "bs,ap,grants", "-n", &ns]).await;
    let expectations = [
        (
            "brokeredsecret.ferry.dev/orders-db",
            vec!["NAME", "READY", "SOURCE", "TTL", "AGE"],
            vec!["True", "postgres", "15m"],
        ),
        (
            "accesspolicy.ferry.dev/checkout-reads-orders",
            vec!["NAME", "SUBJECTS", "SECRETS", "READY", "AGE"],
            vec!["1", "orders-db", "True"],
        ),
        (
            "grant.ferry.dev/payments.orders-db.checkout",
            vec![
                "NAME",
                "SERVICEACCOUNT",
                "SECRET",
                "FROM",
                "MAXTTL",
                "VALIDUNTIL",
                "AGE",
            ],
            vec!["checkout", "orders-db", ns.as_str(), "10m"],
        ),
    ];
    for (row_name, header, values) in &expectations {
        assert_eq!(
            &columns(header_before(&table, row_name)),
            header,
            "in:\n{table}"
        );
        let row = table.lines().find(|l| l.starts_with(row_name)).unwrap();
        let cells = columns(row);
        assert_eq!(&cells[1..=values.len()], values.as_slice(), "row {row}");
    }

    let short = kubectl(cluster, &ns, &["get", "bs", "-n", &ns, "-o", "name"]).await;
    assert_eq!(short.trim(), "brokeredsecret.ferry.dev/orders-db");
    let short = kubectl(cluster, &ns, &["get", "ap", "-n", &ns, "-o", "name"]).await;
    assert_eq!(short.trim(), "accesspolicy.ferry.dev/checkout-reads-orders");

    let category = kubectl(cluster, &ns, &["get", "ferry", "-n", &ns, "-o", "name"]).await;
    let mut names: Vec<&str> = category.lines().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "accesspolicy.ferry.dev/checkout-reads-orders",
            "brokeredsecret.ferry.dev/orders-db",
            "grant.ferry.dev/payments.orders-db.checkout",
        ]
    );
}
