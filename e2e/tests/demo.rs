//! `make demo` is the README's first command: it must keep working. This
//! runs the demo binary as a user would, checks the story it tells, and
//! checks for itself that the demo left nothing behind: its process groups
//! are empty and its directories gone.

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
        "Running",
        "440",
        "orders-db/dsn",
        "\"scope\":\"orders:read\"",
        "(2 rows)",
        "permission denied for table orders",
        "No such file or directory",
        "(0 rows)",
    ] {
        assert!(
            stdout.contains(expected) || stderr.contains(expected),
            "the demo did not show {expected:?}:\n{stdout}\n{stderr}"
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
    let groups = listed("process groups: ");
    assert_eq!(groups.len(), 3, "{groups:?}");
    for group in groups {
        let group: i32 = group.parse().unwrap();
        assert!(
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), None).is_err(),
            "a process of the demo's group {group} is still running"
        );
    }
    let dirs = listed("directories: ");
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    for dir in dirs {
        assert!(
            !std::path::Path::new(&dir).exists(),
            "the demo left {dir} behind"
        );
    }
}
