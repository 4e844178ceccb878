use std::sync::Arc;

use super::*;

fn budget(limit: usize) -> Arc<Budget> {
    Arc::new(Budget::new(limit, Gauge::default()))
}

fn outbox(frames: usize, bytes: usize, budget: &Arc<Budget>) -> Outbox {
    Outbox::new(Caps { frames, bytes }, budget.clone())
}

fn data(n: u32) -> Chunk {
    sized(n, 1)
}

fn sized(frames: u32, charge: usize) -> Chunk {
    Chunk {
        bytes: Bytes::from_static(b"x"),
        frames,
        data: true,
        payload: 1,
        last: false,
        charge,
    }
}

#[tokio::test]
async fn bound_wait_and_stall() {
    let o = outbox(4, 1 << 20, &budget(1 << 20));
    assert!(matches!(o.try_push(data(4)), Push::Queued));
    assert!(matches!(o.try_push(data(1)), Push::Full(_, Limit::Queue)));
    // The writer never takes anything: after the stall timeout the push gives up.
    let cancel = CancellationToken::new();
    let t = Instant::now();
    let stall = Duration::from_millis(50);
    assert!(matches!(
        o.push_wait(data(1), stall, &cancel).await,
        Push::Full(..)
    ));
    assert!(t.elapsed() >= Duration::from_millis(40));
    // A writer that takes frames makes room for a waiting reader.
    let o = Arc::new(o);
    let w = {
        let o = o.clone();
        tokio::spawn(async move {
            let mut out = VecDeque::new();
            o.take(&mut out).await
        })
    };
    let r = o.push_wait(data(1), Duration::from_secs(10), &cancel).await;
    assert!(matches!(r, Push::Queued));
    assert_eq!(w.await.unwrap(), Some(4));
    assert!(o.close_with(Some(Chunk::control(Bytes::from_static(b"e"), true))));
    assert!(matches!(o.try_push(data(1)), Push::Closed(_)));
    let d = o.discard();
    assert_eq!((d.frames, d.data_frames), (2, 1));
}

/// Frames of 64 KiB: the old frame bound (512) let one queue hold 32 MiB.
#[test]
fn queue_is_bounded_in_bytes_until_written() {
    const FRAME: usize = 64 * 1024;
    let b = budget(usize::MAX);
    let o = outbox(512, 256 * 1024, &b);
    let mut queued = 0;
    while let Push::Queued = o.try_push(sized(1, FRAME)) {
        queued += 1;
        assert!(queued <= 512);
    }
    assert_eq!(queued, 4, "256 KiB of 64 KiB frames");
    // Taking frames does not free bytes: they are still held until written.
    let mut out = VecDeque::new();
    let taken = futures::executor::block_on(o.take(&mut out));
    assert_eq!(taken, Some(4));
    assert!(matches!(
        o.try_push(sized(1, FRAME)),
        Push::Full(_, Limit::Queue)
    ));
    o.written(FRAME);
    assert!(matches!(o.try_push(sized(1, FRAME)), Push::Queued));
    o.discard();
    assert_eq!(b.used(), 0, "everything released on close");
}

#[test]
fn budget_is_shared_and_each_queue_keeps_a_floor() {
    const CHUNK: usize = 64 * 1024;
    let b = budget(4 * CHUNK);
    let stalled: Vec<Outbox> = (0..10).map(|_| outbox(512, 1 << 20, &b)).collect();
    let mut dropped = 0;
    for o in &stalled {
        for _ in 0..4 {
            if let Push::Full(_, limit) = o.try_push(sized(1, CHUNK)) {
                assert_eq!(limit, Limit::Budget);
                dropped += 1;
            }
        }
    }
    assert!(dropped > 0);
    assert!(b.used() <= 4 * CHUNK, "budget never exceeded: {}", b.used());
    // Small packets to a fresh queue still fit within its floor.
    let healthy = outbox(512, 1 << 20, &b);
    for _ in 0..(FLOOR / 1500) {
        assert!(matches!(healthy.try_push(sized(1, 1500)), Push::Queued));
    }
    for o in &stalled {
        o.discard();
    }
    healthy.discard();
    assert_eq!(b.used(), 0);
}
