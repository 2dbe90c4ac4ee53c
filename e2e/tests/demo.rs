//! `make demo` is the README's first command: it must keep working. This
//! runs the demo binary as a user would and checks the story it tells.

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
        "stopped; nothing left behind.",
    ] {
        assert!(
            stdout.contains(expected) || stderr.contains(expected),
            "the demo did not show {expected:?}:\n{stdout}\n{stderr}"
        );
    }
}
