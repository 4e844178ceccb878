//! Relay throughput and memory benchmark (not a timed test).
//!
//! `cargo bench -p wirekube-relay --bench relay` prints, for 1 and 10 sender→receiver
//! pairs of 1400-byte packets: a plain TCP loopback pipe (one hop), a trivial TCP copy
//! proxy (two hops through a forwarder, `tokio::io::copy_buf` with a 64 KiB buffer), the
//! same traffic through the relay, and the ratios; then the relay process's RSS with
//! 1,000 idle authenticated connections. Senders write pre-encoded Data frames as fast as
//! TCP accepts them and receivers decode every frame, identically in all setups; the
//! throughput is what the receivers decoded (delivered), not what was sent. Frames the
//! relay dropped at full queues (UDP semantics) are reported as a share of the frames it
//! was offered. Each pair count runs `RELAY_BENCH_ROUNDS` (default 3) rounds of the three
//! setups, interleaved, then a `med` line with the median of every column.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use wirekube_relay::{Relay, RelayConfig, TokenSource};
use wirekube_relay_proto::flags::RelayFlags;
use wirekube_relay_proto::{
    Frame, FrameCodec, PROTOCOL_VERSION, PrivateKey, PublicKey, client_auth,
};

const PACKET: usize = 1400;
const RUN: Duration = Duration::from_secs(3);
const TOKEN: &[u8] = b"bench-token";

/// Frames receivers decoded that were not the expected Data frames (must stay 0).
static BAD: std::sync::LazyLock<Arc<AtomicU64>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicU64::new(0)));

struct Rate {
    gbps: f64,
    pps: f64,
}

fn batch(dest: PublicKey) -> Bytes {
    let mut b = BytesMut::new();
    let f = Frame::Data {
        key: dest,
        payload: Bytes::from(vec![0xA5; PACKET]),
    };
    for _ in 0..32 {
        f.encode(&mut b).unwrap();
    }
    b.freeze()
}

async fn sender<S: AsyncWriteExt + Unpin>(mut s: S, data: Bytes, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(&data).await.is_err() {
            return;
        }
    }
}

/// Counts the Data frames that decode with the expected key and packet size; anything
/// else is counted in `bad` (and reported), so a forwarder cannot score by mangling frames.
async fn receiver<R: AsyncReadExt + Unpin>(
    mut r: R,
    expect: PublicKey,
    got: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    while !stop.load(Ordering::Relaxed) {
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (mut n, mut wrong) = (0, 0);
        while let Ok(Some(f)) = Frame::decode(&mut buf) {
            match f {
                Frame::Data { key, payload } if key == expect && payload.len() == PACKET => n += 1,
                _ => wrong += 1,
            }
        }
        got.fetch_add(n, Ordering::Relaxed);
        if wrong > 0 {
            bad.fetch_add(wrong, Ordering::Relaxed);
        }
        if buf.capacity() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
    }
}

/// Counts packets delivered during RUN after a short warm-up.
async fn measure(got: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Rate {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c0, t0) = (got.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(RUN).await;
    let (c1, dt) = (got.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let pps = (c1 - c0) as f64 / dt;
    Rate {
        gbps: pps * PACKET as f64 * 8.0 / 1e9,
        pps,
    }
}

async fn plain(pairs: usize) -> Rate {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (got, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    for _ in 0..pairs {
        let tx = TcpStream::connect(addr).await.unwrap();
        let (rx, _) = l.accept().await.unwrap();
        tx.set_nodelay(true).unwrap();
        tokio::spawn(sender(tx, batch(PublicKey([1; 32])), stop.clone()));
        let dest = PublicKey([1; 32]);
        tokio::spawn(receiver(rx, dest, got.clone(), BAD.clone(), stop.clone()));
    }
    measure(got, stop).await
}

/// Two hops like the relay, through the most trivial forwarder: accept, connect onward,
/// copy bytes.
async fn proxy(pairs: usize) -> Rate {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (faddr, baddr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
    let (got, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    for _ in 0..pairs {
        let tx = TcpStream::connect(faddr).await.unwrap();
        let (pin, _) = front.accept().await.unwrap();
        let pout = TcpStream::connect(baddr).await.unwrap();
        let (rx, _) = back.accept().await.unwrap();
        for s in [&tx, &pin, &pout] {
            s.set_nodelay(true).unwrap();
        }
        tokio::spawn(async move {
            let (mut pin, mut pout) = (BufReader::with_capacity(64 * 1024, pin), pout);
            let _ = tokio::io::copy_buf(&mut pin, &mut pout).await;
        });
        tokio::spawn(sender(tx, batch(PublicKey([1; 32])), stop.clone()));
        let dest = PublicKey([1; 32]);
        tokio::spawn(receiver(rx, dest, got.clone(), BAD.clone(), stop.clone()));
    }
    measure(got, stop).await
}

async fn login(addr: SocketAddr, key: &PrivateKey) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut f = Framed::new(s, FrameCodec);
    f.send(Frame::Hello {
        version: PROTOCOL_VERSION,
        key: key.public_key(),
    })
    .await
    .unwrap();
    let Some(Ok(Frame::Challenge { ephemeral, nonce })) = f.next().await else {
        panic!("no challenge")
    };
    f.send(client_auth(key, &ephemeral, &nonce, TOKEN).unwrap())
        .await
        .unwrap();
    let Some(Ok(Frame::AuthOk)) = f.next().await else {
        panic!("auth refused")
    };
    let parts = f.into_parts();
    assert!(parts.read_buf.is_empty());
    parts.io
}

async fn relayed(relay: &Relay, pairs: usize) -> Rate {
    let (got, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    for _ in 0..pairs {
        let (sk, rk) = (PrivateKey::generate(), PrivateKey::generate());
        let rx = login(relay.tcp_addr, &rk).await;
        let tx = login(relay.tcp_addr, &sk).await;
        // Senders' inbound side is unused; keep it open so the relay sees a live client.
        let (tx_r, tx_w) = tx.into_split();
        let (rx_r, rx_w) = rx.into_split();
        tokio::spawn(sender(tx_w, batch(rk.public_key()), stop.clone()));
        // Delivered frames must carry the sender's key (rewritten by the relay).
        let src = sk.public_key();
        tokio::spawn(receiver(rx_r, src, got.clone(), BAD.clone(), stop.clone()));
        std::mem::forget((tx_r, rx_w));
    }
    measure(got, stop).await
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn idle_rss(n: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wirekube-relay"))
        .args(
            RelayFlags {
                listen: Some(addr),
                no_stun: true,
                metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                token_file: Some(token.clone()),
                registration_rate: Some(100_000.0),
                registration_burst: Some(100_000),
                max_connections: Some(5000),
                ..RelayFlags::default()
            }
            .to_args(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < end, "relay child did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = vm_rss_kib(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(login(addr, &PrivateKey::generate()).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = vm_rss_kib(pid);
    child.kill().await.unwrap();
    (before, after)
}

fn print_row(label: &str, r: &[f64]) {
    println!(
        "{:<6} {:>13.2} {:>12.0} {:>13.2} {:>13.2} {:>12.0} {:>9.1}% {:>12.2} {:>12.2}",
        label, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), TokenSource::Static(TOKEN.to_vec()));
        cfg.registration_rate = 1e6;
        cfg.registration_burst = 1_000_000;
        let relay = Relay::start(cfg).await.unwrap();
        println!("relay benchmark: {PACKET}-byte packets, {} s per run, 2 tokio workers, loopback; Gbit/s = delivered payload", RUN.as_secs());
        println!(
            "{:<6} {:>13} {:>12} {:>13} {:>13} {:>12} {:>10} {:>12} {:>12}",
            "pairs", "plain Gbit/s", "plain pkt/s", "proxy Gbit/s", "relay Gbit/s", "relay pkt/s",
            "relay drop", "relay/plain", "relay/proxy"
        );
        let m = relay.metrics().clone();
        let offered = || {
            let d: u64 = ["queue_full", "unknown_destination", "write_failed"]
                .iter()
                .map(|r| wirekube_relay::Metrics::count(&m.drops, "reason", r))
                .sum();
            (m.forwarded_frames.get(), d)
        };
        let rounds: usize = std::env::var("RELAY_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        for pairs in [1, 10] {
            // Rounds interleave the three setups so load from elsewhere hits all of them
            // alike; the summary line holds the median of each column.
            let mut rows: Vec<[f64; 8]> = Vec::new();
            for _ in 0..rounds {
                let p = plain(pairs).await;
                let x = proxy(pairs).await;
                let (f0, d0) = offered();
                let r = relayed(&relay, pairs).await;
                let (f1, d1) = offered();
                let drop = (d1 - d0) as f64 / ((f1 - f0) + (d1 - d0)).max(1) as f64;
                let row = [p.gbps, p.pps, x.gbps, r.gbps, r.pps, drop * 100.0, r.gbps / p.gbps, r.gbps / x.gbps];
                print_row(&pairs.to_string(), &row);
                rows.push(row);
            }
            let median: Vec<f64> = (0..8)
                .map(|c| {
                    let mut v: Vec<f64> = rows.iter().map(|r| r[c]).collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                })
                .collect();
            print_row(&format!("{pairs} med"), &median);
        }
        let (f, d) = offered();
        println!(
            "relay forwarded {f} frames, dropped {d}; frames receivers could not verify: {}",
            BAD.load(Ordering::Relaxed)
        );
        let (before, after) = idle_rss(1000).await;
        println!(
            "relay RSS: {:.1} MiB at start, {:.1} MiB with 1000 idle authenticated connections ({:.1} KiB/conn)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after - before) as f64 / 1000.0
        );
    });
    // Spawned pipe tasks are still parked on their sockets; do not wait for them.
    rt.shutdown_background();
}
