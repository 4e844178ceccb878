//! Hostile input before authentication: a flood of idle and garbage connections from one
//! host must not keep agents from relaying or from connecting.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use wirekube_relay::{Metrics, Relay};
use wirekube_relay_client::{RelayClient, RelayReceiver, Status};
use wirekube_relay_proto::{ErrorCode, PrivateKey};

const FLOOD_SOURCE: &str = "127.0.0.2";
/// Idle connections the flooder keeps open at most: more than the relay's
/// max_connections in this test, so without pre-auth limits it takes every slot that
/// frees up.
const HELD: usize = 1000;
/// How long the flooder keeps an idle connection: past the relay's 10 s auth timeout.
const KEEP: Duration = Duration::from_secs(12);

async fn connect_from(ip: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(ip.parse().unwrap(), 0))?;
    s.connect(to).await
}

/// Whether the relay still holds `s` open without having said anything (a refusal sends
/// an Error frame and closes).
fn silent(s: &TcpStream) -> bool {
    matches!(s.try_read(&mut [0u8; 64]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Opens connections from `FLOOD_SOURCE` until `stop`: idle ones, kept for `KEEP` (past
/// the auth timeout) while the relay keeps them, and garbage ones. Refused connections
/// are let go, so the flooder takes every slot that frees up.
fn flood(to: SocketAddr, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut held: Vec<(Instant, TcpStream)> = Vec::new();
        let mut opened = 0u64;
        while !stop.is_cancelled() {
            held.retain(|(t, s)| t.elapsed() < KEEP && silent(s));
            if held.len() < HELD
                && let Ok(s) = connect_from(FLOOD_SOURCE, to).await
            {
                opened += 1;
                held.push((Instant::now(), s));
            }
            if let Ok(mut s) = connect_from(FLOOD_SOURCE, to).await {
                opened += 1;
                let _ = s.write_all(&[0xff; 64]).await;
            }
            tokio::task::yield_now().await;
        }
        opened
    })
}

async fn exchange(a: &RelayClient, b_rx: &mut RelayReceiver, b: &PrivateKey, n: usize) {
    for i in 0..n {
        let msg = Bytes::from(format!("packet {i}"));
        a.send(b.public_key(), msg.clone()).unwrap();
        let (src, p) = within("packet delivery during the flood", b_rx.recv())
            .await
            .unwrap();
        assert_eq!((src, p), (a.public_key(), msg));
    }
}

fn refused(r: &Relay, reason: &'static str) -> u64 {
    Metrics::count(&r.metrics().auth_failures, "reason", reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_keep_relaying_and_connecting_during_a_flood_from_one_host() {
    let mut cfg = config();
    // Small enough that the flooder alone could take every slot.
    cfg.max_connections = 200;
    let relay = Relay::start(cfg).await.unwrap();
    let (a, mut a_rx, ak) = connected(&relay).await;
    let (b, mut b_rx, bk) = connected(&relay).await;

    let stop = CancellationToken::new();
    let flooder = flood(relay.tcp_addr, stop.clone());
    wait_for("the flood source refused at its limit", || {
        refused(&relay, "source_limit") >= 200
    })
    .await;

    exchange(&a, &mut b_rx, &bk, 50).await;
    exchange(&b, &mut a_rx, &ak, 50).await;
    // A new agent (another source address) still gets in while the flood goes on.
    let (c, mut c_rx, ck) = connected(&relay).await;
    exchange(&c, &mut a_rx, &ak, 10).await;
    exchange(&a, &mut c_rx, &ck, 10).await;
    wait_for(
        "idle flood connections cut at the first-frame deadline",
        || refused(&relay, "hello_timeout") > 0,
    )
    .await;
    exchange(&a, &mut b_rx, &bk, 10).await;

    stop.cancel();
    let opened = flooder.await.unwrap();
    eprintln!(
        "flood opened {opened} connections; refused: source_limit {} hello_timeout {} \
         malformed {} server_full {}",
        refused(&relay, "source_limit"),
        refused(&relay, "hello_timeout"),
        refused(&relay, "malformed"),
        refused(&relay, "server_full"),
    );
    for cl in [&a, &b] {
        let st = cl.state();
        assert_eq!(st.status, Status::Connected);
        assert_eq!(st.sessions, 1, "the flood never disconnected an agent");
    }
    assert_eq!(refused(&relay, "server_full"), 0);
    relay.shutdown().await;
}

/// Idle connections from 50 addresses (127.0.1.x), first as fast as possible, then one
/// every 5 ms: more than the unauthenticated budget, none over its per-source limit.
fn distributed_flood(to: SocketAddr, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = std::collections::VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for i in 0usize.. {
            if stop.is_cancelled() {
                return;
            }
            if i >= 300 {
                tick.tick().await;
            }
            let ip = format!("127.0.1.{}", 1 + i % 50);
            if let Ok(s) = connect_from(&ip, to).await {
                held.push_back(s);
                if held.len() > 1000 {
                    held.pop_front();
                }
            }
        }
    })
}

/// Many hosts keep the unauthenticated budget full: the oldest unauthenticated connection
/// makes room for each newcomer, so an agent's handshake (a round trip) still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_unauthenticated_budget_evicts_the_oldest_so_agents_get_in() {
    let mut cfg = config();
    cfg.max_connections = 400;
    let relay = Relay::start(cfg).await.unwrap();
    let (a, mut a_rx, ak) = connected(&relay).await;
    let stop = CancellationToken::new();
    let flooder = distributed_flood(relay.tcp_addr, stop.clone());
    wait_for("flood connections evicted", || {
        refused(&relay, "evicted") >= 50
    })
    .await;
    let (c, mut c_rx, ck) = connected(&relay).await;
    exchange(&c, &mut a_rx, &ak, 10).await;
    exchange(&a, &mut c_rx, &ck, 10).await;
    stop.cancel();
    flooder.await.unwrap();
    eprintln!(
        "evicted {} source_limit {} server_full {}",
        refused(&relay, "evicted"),
        refused(&relay, "source_limit"),
        refused(&relay, "server_full")
    );
    assert_eq!(refused(&relay, "server_full"), 0);
    relay.shutdown().await;
}

/// Before authentication only handshake-sized frames are accepted: a connection that
/// announces a 60,000-byte frame is refused at once instead of making the relay reserve
/// the buffer and wait for it.
#[tokio::test]
async fn oversized_handshake_frame_is_refused_before_buffering() {
    let relay = start().await;
    let mut raw = Raw::connect(relay.tcp_addr).await;
    let mut head = 60_000u32.to_be_bytes().to_vec();
    head.extend_from_slice(&[1, 1]);
    raw.0.get_mut().write_all(&head).await.unwrap();
    raw.expect_refused(ErrorCode::MalformedFrame).await;
    assert_eq!(refused(&relay, "malformed"), 1);
    relay.shutdown().await;
}

/// A source over its limit of unauthenticated connections is told so (RateLimited) and
/// closed at once; its other connection is unaffected.
#[tokio::test]
async fn source_over_its_unauthenticated_limit_is_refused() {
    let mut cfg = config();
    cfg.max_unauthenticated_per_source = 1;
    let relay = Relay::start(cfg).await.unwrap();
    let first = connect_from("127.0.0.5", relay.tcp_addr).await.unwrap();
    wait_for("first connection admitted", || {
        relay.metrics().accepted.get() == 1
    })
    .await;
    let second = connect_from("127.0.0.5", relay.tcp_addr).await.unwrap();
    let mut second = Raw(tokio_util::codec::Framed::new(
        second,
        wirekube_relay_proto::FrameCodec,
    ));
    second.expect_refused(ErrorCode::RateLimited).await;
    assert_eq!(refused(&relay, "source_limit"), 1);
    // Another address is not affected.
    let (_c, _rx, _k) = connected(&relay).await;
    drop(first);
    relay.shutdown().await;
}
