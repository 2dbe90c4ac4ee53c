//! x509 leases over the broker's real API: the pod (here, the sidecar's
//! own key and CSR code) makes the key; the broker asks for a CSR when none
//! came, signs with the namespace's opted-in CA and sets every name itself
//! from the pod's identity; PostgreSQL lets the certificate log in as its
//! service account's role with no password, refuses it for another role,
//! and refuses it once expired. Bad CSRs and CAs are refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferry_api::testing::{self, secret_access};
use ferry_contract::BROKERABLE_LABEL;
use ferry_contract::READY_MARKER;
use ferry_e2e::sidecar_process::{SidecarProcess, SidecarSpec};
use ferry_e2e::{
    Postgres, Tenant, World, audit_lines, create_object, error_message, eventually, grant,
    issue_once_known, lease_file, postgres_bin_dir,
};
use ferry_sidecar::csr::{self, KeyAlgorithm, KeyAndCsr};
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData as _,
};
use serde_json::{Value, json};
use x509_parser::extensions::GeneralName;

const WAIT: Duration = Duration::from_secs(60);

async fn world() -> &'static World {
    World::shared()
        .await
        .expect("the cluster, operator and broker")
}

/// A CA: certificate and key, PEM.
fn new_ca(name: &str) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The CA's `kubernetes.io/tls` Secret `name` in `namespace`, opted in
/// unless `opted_in` is false.
async fn ca_secret(tenant: &Tenant, name: &str, ca: &(String, String), opted_in: bool) {
    let labels = if opted_in {
        json!({BROKERABLE_LABEL: "true"})
    } else {
        json!({})
    };
    create_object::<Secret>(
        &tenant.client,
        &tenant.owner,
        json!({
            "metadata": {"name": name, "labels": labels},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": ca.0, "tls.key": ca.1, "ca.crt": ca.0},
        }),
    )
    .await
    .unwrap();
}

/// A tenant whose `checkout` account is granted x509 secret `client-cert`
/// (CN `{{ serviceAccount }}`, a service and a pod DNS name, signed by
/// `ca`), `short-cert` (the same for 10s, narrowed by the policy to the
/// service name), `hidden-ca`
/// (CA Secret not opted in) and `wrong-key` (CA key not its certificate's).
async fn scenario(prefix: &str, ca: &(String, String)) -> Tenant {
    world().await;
    let tenant = Tenant::create(prefix).await.unwrap();
    ca_secret(&tenant, "shop-ca", ca, true).await;
    ca_secret(&tenant, "hidden-ca", ca, false).await;
    let other = new_ca("other");
    ca_secret(&tenant, "wrong-key", &(ca.0.clone(), other.1), true).await;
    for (name, ca_secret, ttl) in [
        ("client-cert", "shop-ca", "15m"),
        ("short-cert", "shop-ca", "10s"),
        ("hidden-ca", "hidden-ca", "15m"),
        ("wrong-key", "wrong-key", "15m"),
    ] {
        let mut secret = tenant
            .brokered_secret(name)
            .ttl(ttl)
            .x509(ca_secret)
            .build();
        let x509 = secret.spec.source.x509.as_mut().unwrap();
        x509.common_name = Some("{{ serviceAccount }}".into());
        x509.dns_names = vec![
            "{{ serviceAccount }}.{{ namespace }}.svc".into(),
            "{{ podName }}.{{ namespace }}.pod".into(),
        ];
        ferry_e2e::create_brokered_secret(&tenant.client, &secret)
            .await
            .unwrap();
    }
    let policy = testing::access_policy(&tenant.owner, "checkout")
        .service_account(&tenant.app, "checkout")
        .secret("client-cert")
        // The policy narrows the certificate to the service's name.
        .narrowed(
            secret_access("short-cert").dns_names(&["{{ serviceAccount }}.{{ namespace }}.svc"]),
        )
        .secret("hidden-ca")
        .secret("wrong-key")
        .build();
    grant(&tenant.client, policy).await.unwrap();
    tenant
}

fn request(namespace: &str, name: &str, csr: Option<&KeyAndCsr>, ttl: Option<&str>) -> Vec<u8> {
    let mut asked = json!({"namespace": namespace, "name": name});
    if let Some(made) = csr {
        asked["csr"] = json!(BASE64.encode(&made.csr_der));
    }
    if let Some(ttl) = ttl {
        asked["ttl"] = json!(ttl);
    }
    serde_json::to_vec(&json!({"secrets": [asked]})).unwrap()
}

/// The certificates of a PEM bundle, DER.
fn certificates(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|der| der.unwrap().to_vec())
        .collect()
}

/// Runs `select current_user` through psql as `user` with the certificate
/// files in `dir`: what PostgreSQL answered, or its error.
fn psql_as(
    postgres: &Postgres,
    user: &str,
    dir: &Path,
    server_ca: &Path,
) -> Result<String, String> {
    let output = Command::new(postgres_bin_dir().unwrap().join("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} dbname=postgres user={user} sslmode=verify-ca \
             sslrootcert={} sslcert={} sslkey={}",
            postgres.port(),
            server_ca.display(),
            dir.join("tls.crt").display(),
            dir.join("tls.key").display(),
        ))
        .args(["-XAtc", "select current_user"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Writes a lease's files and the pod's key as the sidecar would.
fn write_files(dir: &Path, lease: &Value, key: &KeyAndCsr) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(dir.join("tls.crt"), lease_file(lease, "tls.crt")).unwrap();
    std::fs::write(dir.join("ca.crt"), lease_file(lease, "ca.crt")).unwrap();
    let key_path = dir.join("tls.key");
    std::fs::write(&key_path, key.key_pem.as_bytes()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn a_pods_own_key_gets_a_certificate_that_logs_into_postgresql_as_its_role_only() {
    let ca = new_ca("shop CA");
    let tenant = scenario("x509", &ca).await;
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    let secrets = tenant.owner.clone();

    // Without a CSR: the key to make, and nothing issued.
    let asked = issue_once_known(
        &broker,
        &token,
        &request(&secrets, "client-cert", None, None),
    )
    .await;
    assert_eq!(asked.status, 422, "{:?}", asked.json());
    assert_eq!(
        asked.json().unwrap()["error"]["keysRequired"],
        json!([{"secret": {"namespace": secrets, "name": "client-cert"}, "algorithm": "ecdsa-p256"}])
    );

    let key = csr::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let issued = issue_once_known(
        &broker,
        &token,
        &request(&secrets, "client-cert", Some(&key), None),
    )
    .await;
    assert_eq!(issued.status, 200, "{:?}", issued.json());
    let lease = issued.json().unwrap()["leases"][0].clone();
    let mut names: Vec<&str> = lease["files"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["ca.crt", "tls.crt"],
        "the key never comes from the broker"
    );
    assert_eq!(lease_file(&lease, "ca.crt"), ca.0);
    let chain = certificates(&lease_file(&lease, "tls.crt"));
    assert_eq!(
        chain.len(),
        1,
        "the CA is the root pods trust: not repeated"
    );
    let (_, certificate) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(certificate.subject().to_string(), "CN=checkout");
    let sans: Vec<String> = certificate
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => uri.to_string(),
            GeneralName::DNSName(dns) => dns.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    let app = &tenant.app;
    assert_eq!(
        sans,
        [
            format!("spiffe://cluster.local/ns/{app}/sa/checkout"),
            format!("checkout.{app}.svc"),
            format!("api.{app}.pod"),
        ]
    );
    let expires: k8s_openapi::jiff::Timestamp =
        lease["expiresAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        certificate.validity().not_after.timestamp(),
        expires.as_second()
    );
    let serial = certificate.raw_serial_as_string().replace(':', "");
    let certified = audit_lines(|fields| fields["action"] == "certify");
    assert!(
        certified
            .iter()
            .any(|fields| fields["serial"] == serial.as_str()),
        "the audit log records serial {serial}: {certified:?}"
    );

    // PostgreSQL trusts the tenant's CA for client certificates.
    let (postgres, server_ca) =
        Postgres::start_certificate_logins(&ca.0, &["checkout", "intruder"])
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server_ca_file = dir.path().join("server-ca.crt");
    std::fs::write(&server_ca_file, server_ca).unwrap();
    let files = tempfile::tempdir().unwrap();
    write_files(files.path(), &lease, &key);
    assert_eq!(
        psql_as(&postgres, "checkout", files.path(), &server_ca_file),
        Ok("checkout".to_owned())
    );
    let refused = psql_as(&postgres, "intruder", files.path(), &server_ca_file).unwrap_err();
    assert!(
        refused.contains("certificate authentication failed for user \"intruder\""),
        "{refused}"
    );

    // Renewal: a new key, a new certificate; the old key is not reused.
    let id = lease["id"].as_str().unwrap();
    let renewal_key = csr::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let renewed = broker
        .request(
            "POST",
            &format!("/v1/leases/{id}/renew"),
            Some(&token),
            &serde_json::to_vec(&json!({"csr": BASE64.encode(&renewal_key.csr_der)})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.json());
    let renewed = renewed.json().unwrap()["leases"][0].clone();
    assert_ne!(
        lease_file(&renewed, "tls.crt"),
        lease_file(&lease, "tls.crt")
    );
    let renewed_files = tempfile::tempdir().unwrap();
    write_files(renewed_files.path(), &renewed, &renewal_key);
    assert_eq!(
        psql_as(&postgres, "checkout", renewed_files.path(), &server_ca_file),
        Ok("checkout".to_owned())
    );
    // Renewing without a CSR is refused by name.
    let renewed_id = renewed["id"].as_str().unwrap();
    let bare = broker
        .request(
            "POST",
            &format!("/v1/leases/{renewed_id}/renew"),
            Some(&token),
            b"{}",
        )
        .await
        .unwrap();
    assert_eq!(bare.status, 400);
    assert!(
        error_message(&bare).contains("send a CSR"),
        "{}",
        error_message(&bare)
    );

    // A short lease's certificate stops working when it expires.
    let short_key = csr::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let short = issue_once_known(
        &broker,
        &token,
        &request(&secrets, "client-cert", Some(&short_key), Some("10s")),
    )
    .await;
    assert_eq!(short.status, 200, "{:?}", short.json());
    let short_files = tempfile::tempdir().unwrap();
    write_files(
        short_files.path(),
        &short.json().unwrap()["leases"][0],
        &short_key,
    );
    let expired = eventually("the short certificate to expire", WAIT, || async {
        psql_as(&postgres, "checkout", short_files.path(), &server_ca_file).err()
    })
    .await;
    assert!(expired.contains("certificate"), "{expired}");
}

#[tokio::test]
async fn bad_csrs_and_bad_cas_are_refused_by_name() {
    let ca = new_ca("shop CA");
    let tenant = scenario("x509-bad", &ca).await;
    let broker = world().await.broker.client().unwrap();
    let (_, token) = tenant.pod("api", "checkout").await.unwrap();
    let secrets = tenant.owner.clone();
    // Once the broker knows the pod (422: keys required), every answer is
    // the refusal itself.
    issue_once_known(
        &broker,
        &token,
        &request(&secrets, "client-cert", None, None),
    )
    .await;
    let refusal = |body: Vec<u8>| {
        let (broker, token) = (&broker, &token);
        async move {
            let reply = broker
                .request("POST", "/v1/leases", Some(token), &body)
                .await
                .unwrap();
            (reply.status, error_message(&reply))
        }
    };
    let good = csr::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let ed25519 = csr::generate(KeyAlgorithm::Ed25519).unwrap();
    let mut forged = csr::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let last = forged.csr_der.len() - 1;
    forged.csr_der[last] ^= 1;
    let garbage = serde_json::to_vec(
        &json!({"secrets": [{"namespace": secrets, "name": "client-cert", "csr": "%%%"}]}),
    )
    .unwrap();

    for (body, status, says) in [
        (
            request(&secrets, "client-cert", Some(&ed25519), None),
            400,
            "the CSR has a key type that is not allowed here (allowed: ecdsa-p256)".to_owned(),
        ),
        (
            request(&secrets, "client-cert", Some(&forged), None),
            400,
            "the CSR signature does not verify".to_owned(),
        ),
        (
            garbage,
            400,
            "csr is not base64 (standard alphabet, padded)".to_owned(),
        ),
        (
            request(&secrets, "hidden-ca", Some(&good), None),
            403,
            format!(
                "Secret {secrets}/hidden-ca is not opted in: its owner must label it \
                 ferry.dev/brokerable=true for BrokeredSecrets to use it"
            ),
        ),
        (
            request(&secrets, "wrong-key", Some(&good), None),
            400,
            format!("Secret {secrets}/wrong-key: the key does not match the certificate"),
        ),
    ] {
        assert_eq!(refusal(body).await, (status, says));
    }
    // No message quoted the CA's key.
    for line in ferry_e2e::captured_logs().lines() {
        assert!(
            !line.contains(ca.1.lines().nth(1).unwrap()),
            "the CA key is in a log line"
        );
    }
}

/// The DNS names of the first certificate in `pem`.
fn dns_names(pem: &str) -> Vec<String> {
    let der = certificates(pem).remove(0);
    let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
    certificate
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// The DER SubjectPublicKeyInfo of the first certificate in `pem`.
fn certificate_key(pem: &str) -> Vec<u8> {
    let der = certificates(pem).remove(0);
    let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
    certificate.tbs_certificate.subject_pki.raw.to_vec()
}

#[tokio::test]
async fn the_sidecar_makes_the_key_writes_all_three_files_and_rotates_the_key_at_renewal() {
    let ca = new_ca("shop CA");
    let tenant = scenario("x509-sidecar", &ca).await;
    let world = world().await;
    let broker = world.broker.client().unwrap();
    let (_, token) = tenant.pod("api-0", "checkout").await.unwrap();
    let owner = tenant.owner.clone();
    // A real sidecar starts long after its pod is created: wait until the
    // broker knows the pod (its answer is then 422, keys required).
    issue_once_known(&broker, &token, &request(&owner, "short-cert", None, None)).await;

    let cluster = ferry_e2e::Cluster::shared().await.unwrap();
    let sidecar = SidecarProcess::start(&SidecarSpec {
        broker_url: &world.broker.url(),
        broker_ca_pem: &cluster.authority().cert_pem(),
        token: &token,
        secrets: &[format!("{owner}/short-cert")],
        pod_namespace: &tenant.app,
        pod_name: "api-0",
    })
    .unwrap();
    let dir = sidecar.volume().join("short-cert");
    eventually("the certificate files", WAIT, || async {
        (sidecar.volume().join(READY_MARKER).exists() && dir.join("tls.key").exists()).then_some(())
    })
    .await;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(read("ca.crt"), ca.0);
    assert_eq!(
        dns_names(&read("tls.crt")),
        [format!("checkout.{}.svc", tenant.app)],
        "the policy's narrowing: no pod name"
    );
    let key = KeyPair::from_pem(&read("tls.key")).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    assert_eq!(
        certificate_key(&read("tls.crt")),
        key.subject_public_key_info(),
        "the certificate is for the key the sidecar made"
    );

    let renewed = sidecar
        .wait_for_line("secret_written", Duration::from_secs(30), |line| {
            line["how"] == "renewed"
        })
        .await;
    assert_eq!(renewed["changed"], true, "a new key and certificate");
    let new_key = KeyPair::from_pem(&read("tls.key")).unwrap();
    assert_ne!(
        new_key.subject_public_key_info(),
        key.subject_public_key_info()
    );
    assert_eq!(
        certificate_key(&read("tls.crt")),
        new_key.subject_public_key_info(),
        "swapped together"
    );
    // The key never reaches the log.
    let key_line = read("tls.key").lines().nth(1).unwrap().to_owned();
    for line in sidecar.log_lines() {
        assert!(
            !line.to_string().contains(&key_line),
            "the key is in the log"
        );
    }
}
