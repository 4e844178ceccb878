//! Third-party STUN clients against our responder on loopback: Debian's `stun`
//! (package stun-client, RFC 3489) and coturn's `turnutils_natdiscovery` (RFC 5780).
//! Loopback has no NAT, so both must report an open / endpoint-independent path.
//!
//! These tests fail (they do not skip) when the tools are missing:
//! `apt-get install -y --no-install-recommends stun-client coturn`.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;

async fn run(tool: &str, args: &[String]) -> String {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` not found: install it with `apt-get install -y --no-install-recommends stun-client coturn`"
    );
    let child = tokio::process::Command::new(tool)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out: Output = tokio::time::timeout(Duration::from_secs(20), child)
        .await
        .unwrap_or_else(|_| panic!("{tool} did not finish"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- {tool} {args:?} ---\n{text}");
    text
}

#[tokio::test]
async fn debian_stun_client_sees_open_internet() {
    let relay = start().await;
    let server = relay.stun_addrs[0].to_string();
    let text = run("stun", &[server]).await;
    // On loopback there is no NAT between client and server.
    // RFC 3489 classifies "Open" only when the change-IP-and-port reply (test II) came
    // back and the mapped address equals the local one, so this exercises CHANGE-REQUEST.
    assert!(
        text.contains("Primary: Open"),
        "unexpected stun output:\n{text}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn coturn_natdiscovery_sees_endpoint_independent_mapping_and_filtering() {
    let relay = start().await;
    let port = relay.stun_addrs[0].port().to_string();
    let args: Vec<String> = ["-m", "-f", "-p", &port, "127.0.0.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = run("turnutils_natdiscovery", &args).await;
    let other = relay.stun_addrs[3];
    relay.shutdown().await;
    for want in [
        "NAT with Endpoint Independent Mapping!",
        "NAT with Endpoint Independent Filtering!",
        // No "No ALG: Mapped == XOR-Mapped": RFC 5389 clients get XOR-MAPPED-ADDRESS only
        // (a smaller answer to reflect), so coturn reports "Not received mapped address".
        &format!("Other addr: : {other}"),
        // The change-IP-and-port reply really came from the diagonal socket.
        &format!("Response origin: : {other}"),
    ] {
        assert!(
            text.contains(want),
            "missing {want:?} in natdiscovery output:\n{text}"
        );
    }
}
