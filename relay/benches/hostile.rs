//! Relay under hostile load (not a timed test): a separate `wirekube-relay` process, and
//! this process as agents and attackers on loopback.
//!
//! `cargo bench -p wirekube-relay --bench hostile` prints:
//! 1. throughput of one sender→receiver pair of 1400-byte packets, alone and while a
//!    flood of idle and garbage connections runs (from one host, 127.0.0.2, and from 250
//!    hosts, 127.0.1.x), rounds interleaved, with the relay's RSS at the end of each run
//!    and how many of 10 new logins succeed during the flood (`--max-connections 1000`);
//! 2. the relay's RSS idle and with 1,000 authenticated receivers that never read (small
//!    receive buffers) while 10 senders push 1400-byte packets to all of them round-robin.
//!
//! `RELAY_BIN` runs another relay binary (e.g. an older build, to compare); only flags
//! every version knows are passed. `RELAY_BENCH_ROUNDS` (default 3) sets the rounds.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;
use wirekube_relay_proto::flags::RelayFlags;
use wirekube_relay_proto::{
    Frame, FrameCodec, PROTOCOL_VERSION, PrivateKey, PublicKey, client_auth,
};

const PACKET: usize = 1400;
const RUN: Duration = Duration::from_secs(3);
const TOKEN: &[u8] = b"bench-token";

struct Child {
    proc: tokio::process::Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn_relay(max_connections: Option<usize>) -> Child {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let bin = std::env::var("RELAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_wirekube-relay").to_string());
    let proc = tokio::process::Command::new(bin)
        .args(
            RelayFlags {
                listen: Some(addr),
                no_stun: true,
                metrics_listen: Some(metrics),
                token_file: Some(token.clone()),
                registration_rate: Some(100_000.0),
                registration_burst: Some(100_000),
                max_connections,
                ..RelayFlags::default()
            }
            .to_args(),
        )
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(metrics).await.is_err() {
        assert!(Instant::now() < end, "relay child did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Child {
        proc,
        addr,
        metrics,
        _dir: dir,
    }
}

impl Child {
    fn rss_mib(&self) -> f64 {
        let pid = self.proc.id().unwrap();
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// Sum of the samples of `metric` whose line contains `filter` (None if absent).
    async fn metric(&self, metric: &str, filter: &str) -> Option<f64> {
        let mut s = TcpStream::connect(self.metrics).await.ok()?;
        let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        s.write_all(req.as_bytes()).await.ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        let v: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }
}

async fn connect_from(
    ip: IpAddr,
    to: SocketAddr,
    rcvbuf: Option<u32>,
) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.bind(SocketAddr::new(ip, 0))?;
    s.connect(to).await
}

async fn login(addr: SocketAddr, key: &PrivateKey, rcvbuf: Option<u32>) -> TcpStream {
    try_login(addr, key, rcvbuf).await.expect("login")
}

async fn try_login(addr: SocketAddr, key: &PrivateKey, rcvbuf: Option<u32>) -> Option<TcpStream> {
    let s = connect_from([127, 0, 0, 1].into(), addr, rcvbuf)
        .await
        .ok()?;
    s.set_nodelay(true).ok()?;
    let mut f = Framed::new(s, FrameCodec);
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        key: key.public_key(),
    };
    f.send(hello).await.ok()?;
    let Some(Ok(Frame::Challenge { ephemeral, nonce })) = f.next().await else {
        return None;
    };
    let auth = client_auth(key, &ephemeral, &nonce, TOKEN).ok()?;
    f.send(auth).await.ok()?;
    let Some(Ok(Frame::AuthOk)) = f.next().await else {
        return None;
    };
    Some(f.into_parts().io)
}

/// 32 pre-encoded Data frames for each destination, one after the other.
fn batch(dests: &[PublicKey]) -> Bytes {
    let mut b = BytesMut::new();
    for d in dests {
        let f = Frame::Data {
            key: *d,
            payload: Bytes::from(vec![0xA5; PACKET]),
        };
        for _ in 0..32 {
            f.encode(&mut b).unwrap();
        }
    }
    b.freeze()
}

async fn send_loop(mut s: tokio::net::tcp::OwnedWriteHalf, data: Bytes, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(&data).await.is_err() {
            return;
        }
    }
}

async fn count_loop(mut r: tokio::net::tcp::OwnedReadHalf, got: Arc<AtomicU64>) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut n = 0;
        while let Ok(Some(f)) = Frame::decode(&mut buf) {
            n += u64::from(matches!(f, Frame::Data { .. }));
        }
        got.fetch_add(n, Ordering::Relaxed);
        if buf.capacity() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
    }
}

/// An authenticated sender→receiver pair, not yet sending.
struct Pair {
    tx: TcpStream,
    rx: TcpStream,
    dest: PublicKey,
}

async fn pair(relay: &Child) -> Pair {
    let (sk, rk) = (PrivateKey::generate(), PrivateKey::generate());
    let rx = login(relay.addr, &rk, None).await;
    let tx = login(relay.addr, &sk, None).await;
    Pair {
        tx,
        rx,
        dest: rk.public_key(),
    }
}

/// Gbit/s of delivered payload over `RUN`.
async fn measure(p: Pair) -> f64 {
    let (got, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (tx_r, tx_w) = p.tx.into_split();
    let (rx_r, rx_w) = p.rx.into_split();
    let s = tokio::spawn(send_loop(tx_w, batch(&[p.dest]), stop.clone()));
    let r = tokio::spawn(count_loop(rx_r, got.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c0, t0) = (got.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(RUN).await;
    let pps = (got.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    s.abort();
    r.abort();
    drop((tx_r, rx_w));
    pps * PACKET as f64 * 8.0 / 1e9
}

/// Of `n` login attempts from 127.0.0.1 (one after the other, 2 s deadline each), how
/// many succeeded.
async fn logins(relay: &Child, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let k = PrivateKey::generate();
        let attempt = try_login(relay.addr, &k, None);
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            ok += 1;
        }
    }
    ok
}

/// Whether the relay still holds `s` open without having said anything (a refusal sends
/// an Error frame and closes).
fn silent(s: &TcpStream) -> bool {
    matches!(s.try_read(&mut [0u8; 64]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Opens connections from `sources` round-robin until `stop`: idle ones, kept 12 s (past
/// the 10 s auth timeout) while the relay keeps them (at most 12,000), and garbage ones.
/// Refused connections are let go, so without pre-auth limits the flood takes every slot
/// that frees up. Returns how many connections were opened.
fn flood(
    to: SocketAddr,
    sources: Vec<IpAddr>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut held: Vec<(Instant, TcpStream)> = Vec::new();
        let (mut opened, mut i) = (0u64, 0usize);
        for round in 0u64.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            i = (i + 1) % sources.len();
            if round % 64 == 0 {
                held.retain(|(t, s)| t.elapsed() < Duration::from_secs(12) && silent(s));
            }
            if held.len() < 12_000
                && let Ok(s) = connect_from(sources[i], to, None).await
            {
                opened += 1;
                held.push((Instant::now(), s));
            }
            if let Ok(mut s) = connect_from(sources[i], to, None).await {
                opened += 1;
                let _ = s.write_all(&[0xff; 64]).await;
            }
            tokio::task::yield_now().await;
        }
        opened
    })
}

async fn throughput_under_flood(relay: &Child, rounds: usize) {
    let one: Vec<IpAddr> = vec![[127, 0, 0, 2].into()];
    let many: Vec<IpAddr> = (1..=250).map(|i| [127, 0, 1, i].into()).collect();
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>9} {:>11}",
        "flood", "Gbit/s", "conn/s", "refused/s", "RSS MiB", "new logins"
    );
    let mut med: Vec<(&str, Vec<f64>)> =
        vec![("none", vec![]), ("1 host", vec![]), ("250 hosts", vec![])];
    for _ in 0..rounds {
        for (label, sources) in [
            ("none", None),
            ("1 host", Some(&one)),
            ("250 hosts", Some(&many)),
        ] {
            let p = pair(relay).await;
            let stop = Arc::new(AtomicBool::new(false));
            let failures = "wirekube_relay_auth_failures_total";
            let refused0 = relay.metric(failures, "").await.unwrap_or(0.0);
            let t0 = Instant::now();
            let f = sources.map(|s| flood(relay.addr, s.clone(), stop.clone()));
            let gbps = measure(p).await;
            let rss = relay.rss_mib();
            let ok = logins(relay, 10).await;
            stop.store(true, Ordering::Relaxed);
            let opened = match f {
                Some(f) => f.await.unwrap(),
                None => 0,
            };
            let dt = t0.elapsed().as_secs_f64();
            let refused = relay.metric(failures, "").await.unwrap_or(0.0) - refused0;
            println!(
                "{label:<10} {gbps:>8.2} {:>10.0} {:>10.0} {rss:>9.1} {ok:>8}/10",
                opened as f64 / dt,
                refused / dt
            );
            if let Some(m) = med.iter_mut().find(|m| m.0 == label) {
                m.1.push(gbps);
            }
            // Let held connections time out before the next setup.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    for (label, mut v) in med {
        v.sort_by(f64::total_cmp);
        println!("median {label:<15} {:>8.2} Gbit/s", v[v.len() / 2]);
    }
    for reason in [
        "source_limit",
        "evicted",
        "hello_timeout",
        "timeout",
        "malformed",
        "server_full",
    ] {
        let filter = format!("reason=\"{reason}\"");
        if let Some(v) = relay
            .metric("wirekube_relay_auth_failures_total", &filter)
            .await
        {
            print!("{reason} {v:.0}  ");
        }
    }
    println!();
}

async fn slow_receivers(relay: &Child, n: usize) {
    let mut receivers = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let k = PrivateKey::generate();
        receivers.push(login(relay.addr, &k, Some(4096)).await);
        keys.push(k.public_key());
    }
    let connected = relay.rss_mib();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for chunk in keys.chunks(n.div_ceil(10)) {
        let s = login(relay.addr, &PrivateKey::generate(), None).await;
        let (r, w) = s.into_split();
        senders.push(r);
        tokio::spawn(send_loop(w, batch(chunk), stop.clone()));
    }
    let mut peak: f64 = 0.0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(relay.rss_mib());
    }
    let queued = relay.metric("wirekube_relay_queued_bytes", "").await;
    let depth = relay
        .metric("wirekube_relay_queue_depth", "")
        .await
        .unwrap_or(0.0);
    let drops = relay
        .metric("wirekube_relay_drops_total", "")
        .await
        .unwrap_or(0.0);
    stop.store(true, Ordering::Relaxed);
    println!(
        "{n} receivers that never read: RSS {connected:.1} MiB connected, peak {peak:.1} MiB over 6 s of \
         10 senders pushing to them; queued {} MiB / {depth:.0} frames at the end; {drops:.0} frames dropped",
        queued.map_or("n/a".into(), |q| format!("{:.1}", q / (1 << 20) as f64)),
    );
    drop((receivers, senders));
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rounds: usize = std::env::var("RELAY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    rt.block_on(async {
        // 1,000 slots: this flooder opens a few hundred to a few thousand connections per
        // second next to a pair at full speed on 2 vCPUs, so it fills 1,000 within a run
        // as ~1,000/s fill the default 10,000 within the 10 s auth timeout.
        let relay = spawn_relay(Some(1000)).await;
        println!("relay under hostile load: separate relay process, 2 tokio workers here, loopback, {} s per run", RUN.as_secs());
        println!("relay RSS idle: {:.1} MiB", relay.rss_mib());
        throughput_under_flood(&relay, rounds).await;
        println!("relay RSS after the floods: {:.1} MiB", relay.rss_mib());
        drop(relay);
        let relay = spawn_relay(None).await;
        slow_receivers(&relay, 1000).await;
    });
    rt.shutdown_background();
}
