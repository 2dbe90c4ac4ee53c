//! Pod creation to app container running on the harness's real node (a
//! kubelet and containerd, images built here), over 20 pods with and
//! without ferry's sidecar; the sidecar's memory as its cgroup reports it;
//! the image sizes. Needs what the real-pod tests need (root, `make node`).
//!
//! `cargo bench -p ferry-e2e --bench pod_start` (part of `make bench`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/real_pods_common/mod.rs"]
mod real_pods_common;

use ferry_contract::SIDECAR_CONTAINER_NAME;
use ferry_e2e::eventually;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use real_pods_common::*;
use serde_json::json;

#[tokio::main]
async fn main() {
    let (client, owner, app) = scenario("measure").await;
    let node = env().await.node;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &app);
    let script = "trap 'exit 0' TERM; sleep 3600 & wait";
    let runs = 20;
    let mut results = Vec::new();
    // Admission must be warm (the Grant index filled) before timing.
    let warm = opted_in(
        "warm",
        &[format!("{owner}/orders-api-key")],
        pod_spec("checkout", json!({"runAsUser": 1000}), script),
    );
    create_pod(&client, &app, &warm).await;
    wait_app_running(&client, &app, "warm").await;
    for with_sidecar in [false, true] {
        let mut times = Vec::new();
        for n in 0..runs {
            let name = format!("m-{with_sidecar}-{n}");
            let spec = pod_spec("checkout", json!({"runAsUser": 1000}), script);
            let pod = if with_sidecar {
                opted_in(&name, &[format!("{owner}/orders-api-key")], spec)
            } else {
                serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
            };
            times.push(time_to_app_running(&client, &app, &pod).await);
            if with_sidecar && n == 0 {
                let pod = pods.get(&name).await.unwrap();
                let id = container_status(&pod, SIDECAR_CONTAINER_NAME)
                    .and_then(|s| s.container_id.clone())
                    .unwrap();
                let (usage, rss) = node.container_memory(&id).unwrap();
                println!(
                    "sidecar memory (cgroup v1): usage {} KiB, rss {} KiB",
                    usage / 1024,
                    rss / 1024
                );
            }
            pods.delete(&name, &DeleteParams::default()).await.unwrap();
            eventually("the pod to be gone", WAIT, || async {
                pods.get_opt(&name).await.unwrap().is_none().then_some(())
            })
            .await;
        }
        times.sort();
        results.push((
            with_sidecar,
            ferry_e2e::percentile(&times, 0.5),
            ferry_e2e::percentile(&times, 0.99),
        ));
    }
    for (with_sidecar, p50, p99) in results {
        println!(
            "pod creation to app running over {runs} pods, {} sidecar: p50 {p50:?}, p99 {p99:?}",
            if with_sidecar { "with" } else { "without" }
        );
    }
    for (image, size) in node.images().sizes() {
        println!("image {image}: {} KiB (OCI archive)", size / 1024);
    }
}
