//! Installing ferry's CRDs into a harness cluster.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::HarnessError;

/// How long the apiserver may take to establish the CRDs.
const ESTABLISH_DEADLINE: Duration = Duration::from_secs(60);

/// Applies ferry's CRDs (server-side apply, idempotent, safe to call from
/// many tests at once) and waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<(), HarnessError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = PatchParams::apply("ferry-e2e").force();
    for crd in ferry_operator::crds() {
        api.patch(&crd.name_any(), &apply, &Patch::Apply(&crd))
            .await?;
    }
    let deadline = Instant::now() + ESTABLISH_DEADLINE;
    for crd in ferry_operator::crds() {
        loop {
            let current = api.get(&crd.name_any()).await?;
            let established = current.status.and_then(|s| s.conditions).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Process(format!(
                    "CRD {} not established after {ESTABLISH_DEADLINE:?}",
                    crd.name_any()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
