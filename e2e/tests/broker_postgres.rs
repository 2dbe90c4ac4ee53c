//! The postgres provider against a real PostgreSQL server and a real
//! apiserver: an issued role logs in and can do exactly what its
//! `memberOf` roles allow; renewal moves `VALID UNTIL`; revocation, expiry
//! and the pod's deletion each end it; and neither the broker's log nor
//! the database's statement log ever holds a password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use ferry_api::resources::BrokeredSecret;
use ferry_e2e::https_client::HttpsClient;
use ferry_e2e::{Postgres, Tenant, World, audit_lines, captured_logs, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const WAIT: Duration = Duration::from_secs(60);

/// The shared world, and in the shared database a table `orders` readable
/// by role `orders_reader`, a table `payroll` nobody is granted, and the
/// broker's admin role `broker_admin`.
async fn world() -> &'static World {
    static SCHEMA: OnceCell<()> = OnceCell::const_new();
    SCHEMA
        .get_or_init(|| async {
            Postgres::shared()
                .await
                .unwrap()
                .admin()
                .await
                .unwrap()
                .batch_execute(
                    "CREATE TABLE orders (id int PRIMARY KEY, item text);
                     INSERT INTO orders VALUES (1, 'tea'), (2, 'coffee');
                     CREATE TABLE payroll (name text, salary int);
                     CREATE ROLE orders_reader NOLOGIN;
                     GRANT SELECT ON orders TO orders_reader;
                     CREATE ROLE broker_admin LOGIN CREATEROLE PASSWORD 'admin-password';
                     GRANT orders_reader TO broker_admin WITH ADMIN OPTION;
                     GRANT pg_signal_backend TO broker_admin;",
                )
                .await
                .unwrap();
        })
        .await;
    World::shared()
        .await
        .expect("the cluster, operator and broker")
}

/// An owner namespace with BrokeredSecret `orders-db` (a role in
/// `orders_reader` for 5m, at most 10m) granted to `checkout` of the app
/// namespace.
async fn scenario(prefix: &str) -> Tenant {
    world().await;
    let database = Postgres::shared().await.unwrap();
    let tenant = Tenant::create(prefix).await.unwrap();
    tenant
        .secret(
            "orders-db-admin",
            json!({"dsn": database.dsn("broker_admin", "admin-password")}),
        )
        .await
        .unwrap();
    tenant
        .create_brokered_secret(
            tenant
                .brokered_secret("orders-db")
                .ttl("5m")
                .max_ttl("10m")
                .postgres("orders-db-admin", "dsn")
                .member_of(&["orders_reader"]),
        )
        .await
        .unwrap();
    tenant.grant("checkout", &["orders-db"]).await.unwrap();
    tenant
}

/// A lease for `orders-db`, retried while the broker's indexes catch up.
async fn issue(broker: &HttpsClient, token: &str, owner: &str, ttl: Option<&str>) -> Value {
    let mut asked = json!({"namespace": owner, "name": "orders-db"});
    if let Some(ttl) = ttl {
        asked["ttl"] = json!(ttl);
    }
    let body = serde_json::to_vec(&json!({"secrets": [asked]})).unwrap();
    eventually("a postgres lease", WAIT, || async {
        let reply = broker
            .request("POST", "/v1/leases", Some(token), &body)
            .await
            .unwrap();
        (reply.status == 200).then(|| reply.json().unwrap()["leases"][0].clone())
    })
    .await
}

fn file(lease: &Value, name: &str) -> String {
    let encoded = lease["files"][name].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

/// The role's `VALID UNTIL` (Unix seconds) and comment, if it exists.
async fn role(name: &str) -> Option<(i64, String)> {
    let admin = Postgres::shared().await.unwrap().admin().await.unwrap();
    admin
        .query_opt(
            "SELECT extract(epoch FROM rolvaliduntil)::bigint, \
                    shobj_description(oid, 'pg_authid') \
             FROM pg_roles WHERE rolname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

fn unix(rfc3339: &Value) -> i64 {
    rfc3339
        .as_str()
        .unwrap()
        .parse::<k8s_openapi::jiff::Timestamp>()
        .unwrap()
        .as_second()
}

async fn wait_role_dropped(name: &str) {
    eventually(&format!("role {name} to be dropped"), WAIT, || async {
        role(name).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_issued_role_can_do_exactly_what_was_granted_until_revoked() {
    let tenant = scenario("pg-lease").await;
    let owner = tenant.owner.clone();
    let app = tenant.app.clone();
    let broker = world().await.broker.client().unwrap();
    let database = Postgres::shared().await.unwrap();
    let (pod, token) = tenant.pod("api", "checkout").await.unwrap();

    let lease = issue(&broker, &token, &owner, None).await;
    let (username, password) = (file(&lease, "username"), file(&lease, "password"));
    assert!(username.starts_with(&format!("ferry_{}_", app.replace('-', "_"))));
    assert!(password.len() >= 40, "a 256-bit password");
    let (valid_until, comment) = role(&username).await.expect("the role exists");
    assert_eq!(valid_until, unix(&lease["expiresAt"]));
    let uid = pod.metadata.uid.unwrap();
    assert!(comment.contains(&format!("pod={uid}")), "{comment}");
    assert!(
        comment.contains(&format!("secret={owner}/orders-db")),
        "{comment}"
    );

    // It logs in as an application would, and can do what orders_reader
    // may: read orders, nothing else.
    let session = database.connect_as(&username, &password).await.unwrap();
    let rows = session
        .query("SELECT item FROM orders ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let write = session
        .execute("INSERT INTO orders VALUES (3, 'cake')", &[])
        .await
        .unwrap_err();
    assert!(
        write.to_string().contains("permission denied")
            || format!("{write:?}").contains("permission denied"),
        "{write:?}"
    );
    let payroll = session
        .query("SELECT * FROM payroll", &[])
        .await
        .unwrap_err();
    assert!(
        format!("{payroll:?}").contains("permission denied"),
        "{payroll:?}"
    );

    // Renewal moves VALID UNTIL to the renewed lease's expiry.
    let id = lease["id"].as_str().unwrap();
    let renewed = broker
        .request("POST", &format!("/v1/leases/{id}/renew"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.json());
    let renewed = renewed.json().unwrap()["leases"][0].clone();
    assert_eq!(renewed["files"], json!({}), "the credentials stay the same");
    assert_eq!(
        role(&username).await.unwrap().0,
        unix(&renewed["expiresAt"])
    );

    // Revocation ends the open session and every later login.
    let revoked = broker
        .request("DELETE", &format!("/v1/leases/{id}"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(revoked.status, 204);
    assert!(role(&username).await.is_none(), "the role is dropped");
    assert!(
        session.query("SELECT 1", &[]).await.is_err(),
        "the session is ended"
    );
    assert!(database.connect_as(&username, &password).await.is_err());

    // Renewing a revoked lease says so.
    let after = broker
        .request("POST", &format!("/v1/leases/{id}/renew"), Some(&token), b"")
        .await
        .unwrap();
    assert_eq!(after.status, 409, "{:?}", after.json());

    // The password never reached a log: not the broker's, not the
    // database's statement log.
    assert!(
        !captured_logs().contains(&password),
        "the password is in the broker's log"
    );
    assert!(
        !database.log().contains(&password),
        "the password is in PostgreSQL's log"
    );
    assert!(
        database
            .log()
            .contains(&format!("CREATE ROLE \"{username}\"")),
        "statements are logged"
    );
}

#[tokio::test]
async fn an_expired_role_cannot_log_in_and_is_reaped() {
    let tenant = scenario("pg-expiry").await;
    let owner = tenant.owner.clone();
    let broker = world().await.broker.client().unwrap();
    let database = Postgres::shared().await.unwrap();
    let (_pod, token) = tenant.pod("api", "checkout").await.unwrap();

    let lease = issue(&broker, &token, &owner, Some("3s")).await;
    let (username, password) = (file(&lease, "username"), file(&lease, "password"));
    let expires_at = unix(&lease["expiresAt"]);
    eventually("the lease to expire", WAIT, || async {
        (k8s_openapi::jiff::Timestamp::now().as_second() > expires_at).then_some(())
    })
    .await;
    let refused = database.connect_as(&username, &password).await.unwrap_err();
    assert!(
        format!("{refused:?}").contains("password authentication failed"),
        "{refused:?}"
    );
    wait_role_dropped(&username).await;
    assert!(
        !audit_lines(|line| line["action"] == "reap"
            && line["role"] == username.as_str()
            && line["reason"] == "expired")
        .is_empty(),
        "the reaper audits the drop of {username}"
    );
}

#[tokio::test]
async fn deleting_the_pod_drops_its_role_and_ends_its_sessions() {
    let tenant = scenario("pg-pod").await;
    let client = tenant.client.clone();
    let owner = tenant.owner.clone();
    let app = tenant.app.clone();
    let broker = world().await.broker.client().unwrap();
    let database = Postgres::shared().await.unwrap();
    let (_pod, token) = tenant.pod("api", "checkout").await.unwrap();

    let lease = issue(&broker, &token, &owner, None).await;
    let (username, password) = (file(&lease, "username"), file(&lease, "password"));
    let session = database.connect_as(&username, &password).await.unwrap();
    session.query("SELECT 1", &[]).await.unwrap();

    // The sidecar never says goodbye (it crashed); the pod is deleted.
    Api::<Pod>::namespaced(client.clone(), &app)
        .delete("api", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_role_dropped(&username).await;
    assert!(
        session.query("SELECT 1", &[]).await.is_err(),
        "the session is ended"
    );
    assert!(database.connect_as(&username, &password).await.is_err());
    assert!(
        !audit_lines(|line| line["action"] == "reap"
            && line["role"] == username.as_str()
            && line["reason"] == "pod_gone")
        .is_empty(),
        "the reaper audits the drop of {username}"
    );
}

#[tokio::test]
async fn file_templates_render_a_dsn_the_app_connects_with() {
    let tenant = scenario("pg-dsn").await;
    let client = tenant.client.clone();
    let owner = tenant.owner.clone();
    let broker = world().await.broker.client().unwrap();
    // host, port and database come from the admin connection string.
    let template =
        "postgres://{{ username }}:{{ password | urlencode }}@{{ host }}:{{ port }}/{{ database }}";
    let secrets: Api<BrokeredSecret> = Api::namespaced(client.clone(), &owner);
    secrets
        .patch(
            "orders-db",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"files": {"dsn": template}}})),
        )
        .await
        .unwrap();
    let (_pod, token) = tenant.pod("api", "checkout").await.unwrap();

    // The broker's BrokeredSecret cache may still hold the old spec.
    let lease = eventually("a lease with the rendered dsn", WAIT, || async {
        let lease = issue(&broker, &token, &owner, None).await;
        lease["files"].get("dsn").is_some().then_some(lease)
    })
    .await;
    assert_eq!(
        lease["files"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["dsn"],
        "only the templated files"
    );
    let dsn = file(&lease, "dsn");
    let config: tokio_postgres::Config = dsn.parse().unwrap();
    let (session, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = session.query("SELECT item FROM orders", &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    let password = String::from_utf8(config.get_password().unwrap().to_vec()).unwrap();
    assert!(!captured_logs().contains(&password));
}
