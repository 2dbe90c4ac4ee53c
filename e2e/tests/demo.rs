//! `make demo` is the README's first command: it must keep working. This
//! runs the demo binary as a user would, checks the story it tells, and
//! checks for itself that the demo left nothing behind: its process groups
//! are empty, its directories gone and, on the real node, the node's
//! cgroups too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_demo_tells_the_whole_story_and_stops_cleanly() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-e2e"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "brokeredsecret.ferry.dev/orders-db",
        "grant.ferry.dev/payments.checkout-reads-orders.orders-db.checkout",
        "\"scope\":\"orders:read\"",
        "(2 rows)",
        "permission denied for table orders",
        "No such file or directory",
        "(0 rows)",
        "brokeredsecret.ferry.dev/crm",
        // The CRM token as hydra sees it: live and narrowed to the
        // policy's scope while the pod runs, revoked once it is gone.
        r#""active":true,"aud":["https://api.crm.example"],"client_id":"crm-reports""#,
        r#""scope":"contacts.read"}"#,
        r#"{"active":false}   # the broker revoked it at hydra"#,
    ] {
        assert!(
            stdout.contains(expected) || stderr.contains(expected),
            "the demo did not show {expected:?}:\n{stdout}\n{stderr}"
        );
    }
    // The app and its sidecar both ready, and every file there, readable
    // by the app's group only, before the app started.
    assert!(
        stdout.lines().any(|line| line.starts_with("checkout ")
            && line.contains(" 2/2 ")
            && line.contains(" Running ")),
        "the demo did not show the pod's two containers running:\n{stdout}"
    );
    for file in [
        "orders-api-token/token",
        "orders-db/dsn",
        "orders-db/username",
        "orders-db/password",
        "crm/access_token",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.starts_with("  440 ") && line.ends_with(&format!("  {file}"))),
            "the demo did not show {file} with mode 440:\n{stdout}"
        );
    }

    // Where a real node can run (as root, with containerd installed) the
    // demo must use it; elsewhere it says why it uses the stand-in.
    let on_real_node = stdout.contains("node: localhost, a kubelet with containerd");
    let can_run_containers = nix::unistd::geteuid().is_root()
        && ["/usr/bin/containerd", "/usr/sbin/containerd"]
            .iter()
            .any(|path| std::path::Path::new(path).exists());
    if can_run_containers {
        assert!(
            on_real_node,
            "the demo did not use the real node:\n{stdout}"
        );
    }
    if on_real_node {
        // The queries' results are the app container's own log.
        let (_, log) = stdout
            .split_once("$ kubectl -n shop logs checkout -c app\n")
            .unwrap_or_else(|| panic!("the demo did not show the app's log:\n{stdout}"));
        let (log, _) = log
            .split_once("$ kubectl -n shop delete pod checkout")
            .unwrap();
        for expected in ["(2 rows)", "ERROR:  permission denied for table orders"] {
            assert!(
                log.contains(expected),
                "the app did not log {expected:?}:\n{log}"
            );
        }
    } else {
        assert!(
            stdout.contains("a stand-in for the kubelet") && stdout.contains("(no real node: "),
            "the demo did not say why it ran without the real node:\n{stdout}"
        );
    }

    let listed = |label: &str| -> Vec<String> {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .unwrap_or_else(|| panic!("the demo did not list its {label}:\n{stdout}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // The control plane's, PostgreSQL's, hydra's and the node's (real or
    // stand-in).
    let groups = listed("process groups: ");
    assert_eq!(groups.len(), 4, "{groups:?}");
    for group in groups {
        let group: i32 = group.parse().unwrap();
        assert!(
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), None).is_err(),
            "a process of the demo's group {group} is still running"
        );
    }
    let dirs = listed("directories: ");
    assert_eq!(dirs.len(), 4, "{dirs:?}");
    for dir in dirs {
        assert!(
            !std::path::Path::new(&dir).exists(),
            "the demo left {dir} behind"
        );
    }
    if on_real_node {
        let [root] = <[String; 1]>::try_from(listed("node cgroup root: ")).unwrap();
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
            let cgroup = hierarchy.unwrap().path().join(&root);
            assert!(!cgroup.exists(), "the demo left cgroup {cgroup:?} behind");
        }
    }
}
