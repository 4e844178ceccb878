//! Relay behaviour on loopback with real sockets.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::AsyncWriteExt;
use wirekube_relay::{Metrics, Relay};
use wirekube_relay_client::Status;
use wirekube_relay_proto::{ErrorCode, Frame, PrivateKey, client_auth};

fn auth_failures(r: &Relay, reason: &'static str) -> u64 {
    Metrics::count(&r.metrics().auth_failures, "reason", reason)
}

fn drops(r: &Relay, reason: &'static str) -> u64 {
    Metrics::count(&r.metrics().drops, "reason", reason)
}

async fn exchange(
    a: &wirekube_relay_client::RelayClient,
    b_rx: &mut wirekube_relay_client::RelayReceiver,
    b_key: &PrivateKey,
    msg: &'static [u8],
) {
    a.send(b_key.public_key(), Bytes::from_static(msg)).unwrap();
    let (src, p) = within("packet delivery", b_rx.recv()).await.unwrap();
    assert_eq!(src, a.public_key(), "delivered with the source key");
    assert_eq!(&p[..], msg);
}

#[tokio::test]
async fn two_clients_exchange_packets() {
    let relay = start().await;
    let (a, mut a_rx, ak) = connected(&relay).await;
    let (b, mut b_rx, bk) = connected(&relay).await;
    for _ in 0..10 {
        exchange(&a, &mut b_rx, &bk, b"hello b").await;
        exchange(&b, &mut a_rx, &ak, b"hello a").await;
    }
    assert_eq!(relay.metrics().forwarded_frames.get(), 20);
    assert_eq!(a.state().status, Status::Connected);
    relay.shutdown().await;
}

#[tokio::test]
async fn misbehaving_clients_are_refused_while_others_keep_working() {
    let relay = start().await;
    let addr = relay.tcp_addr;
    let (a, mut a_rx, ak) = connected(&relay).await;
    let (b, mut b_rx, bk) = connected(&relay).await;

    // No valid token (the async client surfaces the relay's error code).
    let (bad, _rx, _) = client_with(addr, b"wrong").await;
    let mut w = bad.watch_state();
    within(
        "bad-token refusal",
        w.wait_for(|s| s.last_error_code == Some(ErrorCode::BadToken)),
    )
    .await
    .unwrap();
    bad.shutdown().await;

    // Stolen public key, wrong private key.
    let mut thief = Raw::connect(addr).await;
    let (e, n) = thief.hello(ak.public_key()).await;
    let Frame::Auth { token, .. } = client_auth(&PrivateKey::generate(), &e, &n, TOKEN).unwrap()
    else {
        unreachable!()
    };
    // Forge an Auth claiming A's key: the MAC cannot be right without A's private key.
    thief
        .send(Frame::Auth {
            mac: [0x42; 32],
            token,
        })
        .await;
    thief.expect_refused(ErrorCode::BadProof).await;
    let mut thief2 = Raw::connect(addr).await;
    let (e, n) = thief2.hello(ak.public_key()).await;
    thief2
        .send(client_auth(&PrivateKey::generate(), &e, &n, TOKEN).unwrap())
        .await;
    thief2.expect_refused(ErrorCode::BadProof).await;

    // Replay of an Auth captured from a genuine login of key C.
    let ck = PrivateKey::generate();
    let (genuine, captured) = Raw::login(addr, &ck).await;
    drop(genuine);
    let mut replay = Raw::connect(addr).await;
    replay.hello(ck.public_key()).await;
    replay.send(captured).await;
    replay.expect_refused(ErrorCode::Replayed).await;

    // Garbage.
    let mut garbage = Raw::connect(addr).await;
    garbage
        .0
        .get_mut()
        .write_all(&[0, 0, 0, 9, 0xee, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    garbage.expect_refused(ErrorCode::MalformedFrame).await;

    // Data before auth.
    let mut eager = Raw::connect(addr).await;
    eager.hello(PrivateKey::generate().public_key()).await;
    eager
        .send(Frame::Data {
            key: bk.public_key(),
            payload: Bytes::from_static(b"x"),
        })
        .await;
    eager.expect_refused(ErrorCode::ProtocolViolation).await;

    assert!(auth_failures(&relay, "bad_token") >= 1);
    assert_eq!(auth_failures(&relay, "bad_proof"), 2);
    assert_eq!(auth_failures(&relay, "replay"), 1);
    assert_eq!(auth_failures(&relay, "malformed"), 1);
    assert_eq!(auth_failures(&relay, "protocol"), 1);
    // The victims were never displaced and still talk.
    assert!(relay.is_registered(&ak.public_key()));
    exchange(&a, &mut b_rx, &bk, b"still here").await;
    exchange(&b, &mut a_rx, &ak, b"me too").await;
    relay.shutdown().await;
}

#[tokio::test]
async fn duplicate_registration_replaces_old_connection_after_auth() {
    let relay = start().await;
    let key = PrivateKey::generate();
    let (mut old, _) = Raw::login(relay.tcp_addr, &key).await;
    wait_for("first registration", || {
        relay.is_registered(&key.public_key())
    })
    .await;
    let (mut new, _) = Raw::login(relay.tcp_addr, &key).await;
    old.expect_refused(ErrorCode::Replaced).await;
    // The new connection owns the key: traffic for it arrives there.
    let (sender, _rx, _) = connected(&relay).await;
    wait_for("replacement registered", || relay.registered() == 2).await;
    sender
        .send(key.public_key(), Bytes::from_static(b"to new"))
        .unwrap();
    match new.recv().await {
        Some(Frame::Data { key: k, payload }) => {
            assert_eq!(k, sender.public_key());
            assert_eq!(&payload[..], b"to new");
        }
        other => panic!("expected data, got {other:?}"),
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn unknown_destination_is_dropped_and_counted() {
    let relay = start().await;
    let (a, _rx, _) = connected(&relay).await;
    a.send(
        PrivateKey::generate().public_key(),
        Bytes::from_static(b"void"),
    )
    .unwrap();
    wait_for("drop counted", || drops(&relay, "unknown_destination") == 1).await;
    assert_eq!(a.state().status, Status::Connected);
    relay.shutdown().await;
}

#[tokio::test]
async fn unknown_destination_notice_is_optional_rate_limited_and_not_fatal() {
    let mut cfg = config();
    cfg.notify_unknown_destination = true;
    let relay = Relay::start(cfg).await.unwrap();
    let (mut raw, _) = Raw::login(relay.tcp_addr, &PrivateKey::generate()).await;
    let nobody = PrivateKey::generate().public_key();
    for _ in 0..50 {
        raw.send(Frame::Data {
            key: nobody,
            payload: Bytes::from_static(b"void"),
        })
        .await;
    }
    // A Ping after the burst: its Pong arrives after whatever notices were sent.
    raw.send(Frame::Ping(1)).await;
    let mut notices = 0;
    loop {
        match raw.recv().await {
            Some(Frame::Error { code, message }) => {
                assert_eq!(code, ErrorCode::UnknownDestination);
                assert_eq!(message, nobody.to_string());
                notices += 1;
            }
            Some(Frame::Pong(1)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(notices, 1, "one notice per destination per second");
    wait_for("drops counted", || {
        drops(&relay, "unknown_destination") == 50
    })
    .await;
    // The connection is still usable, and the async client keeps its session.
    raw.send(Frame::Ping(2)).await;
    assert_eq!(raw.recv().await, Some(Frame::Pong(2)));
    let (a, _rx, _) = connected(&relay).await;
    a.send(nobody, Bytes::from_static(b"void")).unwrap();
    wait_for("client sees the notice", || {
        a.unknown_destination_notices() > 0
    })
    .await;
    assert_eq!(a.state().status, Status::Connected);
    assert_eq!(a.state().sessions, 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn idle_authenticated_connection_is_closed() {
    let mut cfg = config();
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let relay = Relay::start(cfg).await.unwrap();
    // A client that pings more often than the idle timeout stays.
    let key = PrivateKey::generate();
    let mut ccfg = wirekube_relay_client::RelayClientConfig::new(
        relay.tcp_addr.to_string(),
        key.clone(),
        TOKEN.to_vec(),
    );
    ccfg.keepalive_interval = Duration::from_millis(50);
    let (pinger, _rx) = wirekube_relay_client::RelayClient::start(ccfg);
    assert!(pinger.wait_connected(DEADLINE).await);
    // A silent one is told why and closed.
    let (mut silent, _) = Raw::login(relay.tcp_addr, &PrivateKey::generate()).await;
    silent.expect_refused(ErrorCode::IdleTimeout).await;
    wait_for("idle disconnect counted", || {
        Metrics::count(&relay.metrics().disconnects, "reason", "idle") == 1
    })
    .await;
    assert_eq!(pinger.state().status, Status::Connected);
    assert_eq!(pinger.state().sessions, 1);
    assert!(relay.is_registered(&key.public_key()));
    relay.shutdown().await;
}

#[tokio::test]
async fn auth_deadline_and_version_and_rate_limit() {
    let mut cfg = config();
    cfg.auth_timeout = Duration::from_millis(200);
    cfg.registration_rate = 0.001;
    cfg.registration_burst = 2;
    let relay = Relay::start(cfg).await.unwrap();
    let mut idle = Raw::connect(relay.tcp_addr).await;
    idle.expect_refused(ErrorCode::AuthTimeout).await;
    let mut old = Raw::connect(relay.tcp_addr).await;
    old.send(Frame::Hello {
        version: 99,
        key: PrivateKey::generate().public_key(),
    })
    .await;
    old.expect_refused(ErrorCode::UnsupportedVersion).await;
    for _ in 0..2 {
        Raw::connect(relay.tcp_addr)
            .await
            .hello(PrivateKey::generate().public_key())
            .await;
    }
    let mut third = Raw::connect(relay.tcp_addr).await;
    third
        .send(Frame::Hello {
            version: 1,
            key: PrivateKey::generate().public_key(),
        })
        .await;
    third.expect_refused(ErrorCode::RateLimited).await;
    assert_eq!(auth_failures(&relay, "timeout"), 1);
    assert_eq!(auth_failures(&relay, "rate_limited"), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn connection_limit() {
    let mut cfg = config();
    cfg.max_connections = 1;
    let relay = Relay::start(cfg).await.unwrap();
    let (_first, _) = Raw::login(relay.tcp_addr, &PrivateKey::generate()).await;
    let mut second = Raw::connect(relay.tcp_addr).await;
    second.expect_refused(ErrorCode::ServerFull).await;
    relay.shutdown().await;
}

/// A client that authenticates and then never reads must not slow anyone else down:
/// its queue fills, further packets to it are dropped and counted, and the round-trip
/// latency between two other clients stays within a small bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_does_not_slow_others() {
    let mut cfg = config();
    cfg.queue_depth = 64;
    let relay = Relay::start(cfg).await.unwrap();
    let (a, mut a_rx, ak) = connected(&relay).await;
    let (b, mut b_rx, bk) = connected(&relay).await;

    async fn rtts(
        n: usize,
        a: &wirekube_relay_client::RelayClient,
        a_rx: &mut wirekube_relay_client::RelayReceiver,
        b: &wirekube_relay_client::RelayClient,
        b_rx: &mut wirekube_relay_client::RelayReceiver,
        ak: &PrivateKey,
        bk: &PrivateKey,
    ) -> Vec<Duration> {
        let mut v = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            a.send(bk.public_key(), Bytes::from_static(&[1; 1400]))
                .unwrap();
            within("ping", b_rx.recv()).await.unwrap();
            b.send(ak.public_key(), Bytes::from_static(&[2; 1400]))
                .unwrap();
            within("pong", a_rx.recv()).await.unwrap();
            v.push(t.elapsed());
        }
        v.sort();
        v
    }
    let baseline = rtts(200, &a, &mut a_rx, &b, &mut b_rx, &ak, &bk).await;

    // The staller never reads; a flooder sends it 1400-byte packets as fast as it can.
    let sk = PrivateKey::generate();
    let (_staller, _) = Raw::login(relay.tcp_addr, &sk).await;
    let (flood, _frx, _) = connected(&relay).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let flooding = {
        let (stop, flood, dest) = (stop.clone(), flood.clone(), sk.public_key());
        tokio::spawn(async move {
            let pkt = Bytes::from(vec![3u8; 1400]);
            while !stop.is_cancelled() {
                for _ in 0..64 {
                    let _ = flood.send(dest, pkt.clone());
                }
                tokio::task::yield_now().await;
            }
        })
    };
    wait_for("queue_full drops", || drops(&relay, "queue_full") > 1000).await;
    let loaded = rtts(200, &a, &mut a_rx, &b, &mut b_rx, &ak, &bk).await;
    stop.cancel();
    flooding.await.unwrap();

    let p50 = |v: &[Duration]| v[v.len() / 2];
    let p99 = |v: &[Duration]| v[v.len() * 99 / 100];
    eprintln!(
        "rtt baseline p50 {:?} p99 {:?}; with stalled peer p50 {:?} p99 {:?}; drops {}",
        p50(&baseline),
        p99(&baseline),
        p50(&loaded),
        p99(&loaded),
        drops(&relay, "queue_full")
    );
    // Generous bounds: the flooder competes for the same 2 CPUs, but nothing may block
    // on the stalled socket.
    assert!(
        p50(&loaded) < p50(&baseline) * 20 + Duration::from_millis(5),
        "median RTT blew up"
    );
    assert!(
        p99(&loaded) < Duration::from_millis(100),
        "tail RTT blew up"
    );
    assert!(relay.is_registered(&ak.public_key()) && relay.is_registered(&bk.public_key()));
    relay.shutdown().await;
}

#[tokio::test]
async fn slow_writer_times_out() {
    let mut cfg = config();
    cfg.queue_depth = 16;
    cfg.write_timeout = Duration::from_millis(300);
    let relay = Relay::start(cfg).await.unwrap();
    let sk = PrivateKey::generate();
    let (_staller, _) = Raw::login(relay.tcp_addr, &sk).await;
    let (flood, _rx, _) = connected(&relay).await;
    let pkt = Bytes::from(vec![3u8; 60_000]);
    let m = relay.metrics().clone();
    let deadline = Instant::now() + DEADLINE;
    while Metrics::count(&m.disconnects, "reason", "write_failed") == 0 {
        assert!(Instant::now() < deadline, "stalled client never timed out");
        let _ = flood.send(sk.public_key(), pkt.clone());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_for("staller deregistered", || {
        !relay.is_registered(&sk.public_key())
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn client_reconnects_and_reports_state() {
    let relay = start().await;
    let addr = relay.tcp_addr;
    let (a, _rx, _) = connected(&relay).await;
    let first = a
        .state()
        .handshake_time
        .expect("connected: a handshake time");
    assert!(first < Duration::from_secs(5), "{first:?}");
    relay.shutdown().await;
    let mut w = a.watch_state();
    within(
        "client notices shutdown",
        w.wait_for(|s| s.status == Status::Reconnecting),
    )
    .await
    .unwrap();
    assert_eq!(
        a.state().handshake_time,
        None,
        "no handshake time while down"
    );
    let mut cfg = config();
    cfg.listen = addr;
    let relay = Relay::start(cfg).await.unwrap();
    within(
        "reconnected",
        w.wait_for(|s| s.status == Status::Connected && s.sessions == 2),
    )
    .await
    .unwrap();
    assert_eq!(a.state().last_error_code, Some(ErrorCode::ShuttingDown));
    assert!(
        a.state().handshake_time.is_some(),
        "the new session's own time"
    );
    a.shutdown().await;
    assert_eq!(a.state().status, Status::Closed);
    relay.shutdown().await;
}

#[tokio::test]
async fn keepalive_ping_is_answered() {
    let relay = start().await;
    let (mut r, _) = Raw::login(relay.tcp_addr, &PrivateKey::generate()).await;
    r.send(Frame::Ping(7)).await;
    assert_eq!(r.recv().await, Some(Frame::Pong(7)));
    // A frame that is only valid before auth is a protocol violation afterwards.
    r.send(Frame::AuthOk).await;
    r.expect_refused(ErrorCode::ProtocolViolation).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn ops_endpoints_and_token_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "first\n").unwrap();
    let mut cfg = config();
    cfg.token = wirekube_relay::TokenSource::File(path.clone());
    cfg.token_poll_interval = Duration::from_millis(50);
    let relay = Relay::start(cfg).await.unwrap();
    let http = relay.http_addr.unwrap();
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await.0, 200);

    let (old, _rx, _) = client_with(relay.tcp_addr, b"first").await;
    assert!(old.wait_connected(DEADLINE).await);
    // Rotate the Secret; make sure the mtime changes even on coarse-grained filesystems.
    std::fs::write(&path, "second\n").unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let (new, _rx2, _) = client_with(relay.tcp_addr, b"second").await;
    assert!(
        new.wait_connected(DEADLINE).await,
        "rotated token accepted: {:?}",
        new.state()
    );

    let (code, body) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "wirekube_relay_connections",
        "wirekube_relay_auth_failures_total",
        "wirekube_relay_forwarded_bytes_total",
        "wirekube_relay_queue_depth",
    ] {
        assert!(body.contains(name), "metrics lack {name}:\n{body}");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn client_socket_carries_the_configured_mark() {
    // SO_MARK needs CAP_NET_ADMIN; the agent always has it, an unprivileged test run does not.
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false);
    assert!(
        root,
        "SO_MARK needs CAP_NET_ADMIN: run this test as root (a test that cannot run must fail)"
    );
    let relay = start().await;
    let mut ccfg = wirekube_relay_client::RelayClientConfig::new(
        relay.tcp_addr.to_string(),
        PrivateKey::generate(),
        TOKEN.to_vec(),
    );
    ccfg.socket_mark = Some(0xca6d);
    let (client, _rx) = wirekube_relay_client::RelayClient::start(ccfg);
    assert!(
        client.wait_connected(DEADLINE).await,
        "{:?}",
        client.state()
    );
    // The kernel's view of the client's socket: `ss -e` prints the mark.
    let out = std::process::Command::new("ss")
        .args(["-tnHe", "dst", &relay.tcp_addr.to_string()])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fwmark:0xca6d"), "ss -tnHe: {text}");
    client.shutdown().await;
    relay.shutdown().await;
}
