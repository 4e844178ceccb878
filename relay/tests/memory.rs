//! Send queues are bounded in bytes, per connection and relay-wide, whatever the number
//! of receivers that stop reading.

mod common;

use bytes::Bytes;
use common::*;
use tokio_util::sync::CancellationToken;
use wirekube_relay::{Metrics, Relay};
use wirekube_relay_client::RelayClient;
use wirekube_relay_proto::{PrivateKey, PublicKey};

/// What one queued chunk may charge beyond the queue's byte cap: one read buffer
/// (256 KiB plus a partial frame of up to 64 KiB).
const ONE_CHUNK: i64 = 320 * 1024 + 1024;
/// Bytes each queue holds outside the budget (outbox::FLOOR).
const FLOOR: i64 = 16 * 1024;

fn drops(r: &Relay, reason: &'static str) -> u64 {
    Metrics::count(&r.metrics().drops, "reason", reason)
}

/// Sends `size`-byte packets to every key in `to`, round robin, until `stop`.
fn pour(
    from: RelayClient,
    to: Vec<PublicKey>,
    size: usize,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pkt = Bytes::from(vec![7u8; size]);
        while !stop.is_cancelled() {
            for k in &to {
                let _ = from.send(*k, pkt.clone());
            }
            tokio::task::yield_now().await;
        }
    })
}

/// A receiver that never reads, sent 60 KB packets: with the old frame bound its queue
/// grew to 512 frames (30 MB); now it stops at the byte cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_receiver_holds_at_most_its_byte_cap() {
    let mut cfg = config();
    cfg.queue_bytes = 256 * 1024;
    let cap = cfg.queue_bytes as i64;
    let relay = Relay::start(cfg).await.unwrap();
    let sk = PrivateKey::generate();
    let (_staller, _) = Raw::login(relay.tcp_addr, &sk).await;
    let (sender, _rx, _) = connected(&relay).await;
    let stop = CancellationToken::new();
    let pouring = pour(sender, vec![sk.public_key()], 60_000, stop.clone());
    let m = relay.metrics().clone();
    let mut peak = 0;
    wait_for("frames for the staller dropped", || {
        peak = peak.max(m.queued_bytes.get());
        drops(&relay, "queue_full") >= 100
    })
    .await;
    stop.cancel();
    pouring.await.unwrap();
    let peak = peak.max(m.queued_bytes.get());
    eprintln!("peak queued bytes {peak} (cap {cap})");
    assert!(peak <= cap + ONE_CHUNK, "queued {peak} bytes");
    relay.shutdown().await;
}

/// Many stalled receivers together cannot take more than the relay-wide budget, and
/// small packets between two healthy agents still get through while it is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_receivers_share_one_budget_and_others_still_talk() {
    const STALLERS: usize = 20;
    let mut cfg = config();
    cfg.queue_bytes = 256 * 1024;
    cfg.total_queue_bytes = 1 << 20;
    let total = cfg.total_queue_bytes as i64;
    let relay = Relay::start(cfg).await.unwrap();
    let mut stallers = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..STALLERS {
        let k = PrivateKey::generate();
        stallers.push(Raw::login(relay.tcp_addr, &k).await.0);
        keys.push(k.public_key());
    }
    let (a, mut a_rx, ak) = connected(&relay).await;
    let (b, mut b_rx, bk) = connected(&relay).await;
    let (sender, _rx, _) = connected(&relay).await;
    let stop = CancellationToken::new();
    let pouring = pour(sender, keys, 30_000, stop.clone());
    let m = relay.metrics().clone();
    let mut peak = 0;
    wait_for("the budget spent and frames dropped for it", || {
        peak = peak.max(m.queued_bytes.get());
        drops(&relay, "memory_budget") >= 100
    })
    .await;
    for i in 0..20u8 {
        a.send(bk.public_key(), Bytes::from(vec![i; 1200])).unwrap();
        let (src, p) = within("a -> b while the budget is spent", b_rx.recv())
            .await
            .unwrap();
        assert_eq!((src, p[0]), (ak.public_key(), i));
        b.send(ak.public_key(), Bytes::from(vec![i; 1200])).unwrap();
        within("b -> a while the budget is spent", a_rx.recv())
            .await
            .unwrap();
        peak = peak.max(m.queued_bytes.get());
    }
    stop.cancel();
    pouring.await.unwrap();
    // Every authenticated connection may hold its floor outside the budget.
    let bound = total + (STALLERS as i64 + 3) * FLOOR;
    eprintln!(
        "peak queued bytes {peak} (budget {total}, bound {bound}); drops: memory_budget {} \
         queue_full {}",
        drops(&relay, "memory_budget"),
        drops(&relay, "queue_full")
    );
    assert!(peak <= bound, "queued {peak} bytes");
    drop(stallers);
    relay.shutdown().await;
}
