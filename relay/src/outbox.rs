//! Per-connection send queue: already-encoded frames waiting for the connection's writer.
//!
//! Readers push chunks (one or more encoded frames for this connection); the writer takes
//! everything queued at once. The queue is bounded in frames and in bytes: a chunk is
//! charged (see [`Chunk::charge`]) from the moment it is queued until the writer has
//! written it, both to this queue and to the relay-wide [`Budget`]. When the queue is
//! full a reader either waits for room (the writer is still making progress:
//! back-pressure, like TCP) or drops (the writer made no progress for the stall timeout:
//! a stalled client must never slow its senders down for longer than that). When the
//! relay-wide budget is spent, the same rule applies: wait while the destination makes
//! progress (its own writes free budget), drop otherwise.
//!
//! The first [`FLOOR`] bytes of every queue are not charged to the budget, so receivers
//! that stall while holding the whole budget cannot starve everyone else's small packets:
//! memory stays bounded by budget + connections × `FLOOR`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Encoded frames for one connection.
pub(crate) struct Chunk {
    /// Wire bytes of `frames` complete frames.
    pub bytes: Bytes,
    /// Number of frames in `bytes` (counts against the queue bound).
    pub frames: u32,
    /// Whether the frames are forwarded Data frames (counted as forwarded when written).
    pub data: bool,
    /// Payload bytes of the Data frames.
    pub payload: u64,
    /// The writer closes the connection after writing this chunk.
    pub last: bool,
    /// Bytes of memory this chunk keeps alive: its length, or for a chunk that shares a
    /// sender's read buffer, the whole buffer (which lives as long as any part of it).
    pub charge: usize,
}

impl Chunk {
    /// A single control frame built by the relay.
    pub fn control(bytes: Bytes, last: bool) -> Self {
        Self {
            charge: bytes.len(),
            bytes,
            frames: 1,
            data: false,
            payload: 0,
            last,
        }
    }

    /// Data frames inside this chunk.
    pub fn data_frames(&self) -> u64 {
        if self.data { self.frames as u64 } else { 0 }
    }
}

/// Bytes each queue may hold outside the relay-wide budget.
pub(crate) const FLOOR: usize = 16 * 1024;

/// Bytes charged to all outboxes together, with a hard limit.
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// All charged bytes (inside and outside the budget), for /metrics.
    gauge: Gauge,
}

impl Budget {
    pub fn new(limit: usize, gauge: Gauge) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            gauge,
        }
    }

    /// Charges `n` bytes unless that would exceed the limit (`force`: charge anyway, for
    /// the few bytes of a final control frame).
    fn charge(&self, n: usize, force: bool) -> bool {
        if n == 0 {
            return true;
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                let v = u.saturating_add(n);
                (force || v <= self.limit).then_some(v)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Bytes charged now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Budget bytes needed to add `n` bytes to a queue holding `held`.
fn over_floor(held: usize, n: usize) -> usize {
    (held + n).saturating_sub(FLOOR) - held.saturating_sub(FLOOR)
}

/// Which bound refused a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// This connection's queue (frames or bytes).
    Queue,
    /// The relay-wide byte budget.
    Budget,
}

/// Result of offering a chunk.
pub(crate) enum Push {
    Queued,
    /// Full (and, after [`Outbox::push_wait`], the destination is stalled).
    Full(Chunk, Limit),
    /// The connection is closing.
    Closed(Chunk),
}

struct State {
    chunks: VecDeque<Chunk>,
    frames: usize,
    /// Charged bytes: queued, plus taken by the writer and not yet written. The part
    /// above [`FLOOR`] is charged to the budget as well.
    bytes: usize,
    closed: bool,
    failed: bool,
}

/// Per-connection bounds of an [`Outbox`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub frames: usize,
    pub bytes: usize,
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    cap: usize,
    byte_cap: usize,
    budget: std::sync::Arc<Budget>,
    /// Wakes the writer when the queue becomes non-empty or closes.
    ready: Notify,
    /// Wakes readers waiting for room.
    space: Notify,
    base: Instant,
    /// Microseconds after `base` when the writer last made progress (took frames or
    /// wrote bytes), or the queue last went from empty to non-empty.
    progress_us: AtomicU64,
}

/// What was still queued when the outbox was closed for good.
pub(crate) struct Discarded {
    pub frames: u64,
    pub data_frames: u64,
}

impl Outbox {
    pub fn new(caps: Caps, budget: std::sync::Arc<Budget>) -> Self {
        Self {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                frames: 0,
                bytes: 0,
                closed: false,
                failed: false,
            }),
            cap: caps.frames.max(1),
            byte_cap: caps.bytes.max(1),
            budget,
            ready: Notify::new(),
            space: Notify::new(),
            base: Instant::now(),
            progress_us: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records writer progress now.
    pub fn touch(&self) {
        let us = self.base.elapsed().as_micros() as u64;
        self.progress_us.store(us, Ordering::Relaxed);
    }

    fn last_progress(&self) -> Instant {
        self.base + Duration::from_micros(self.progress_us.load(Ordering::Relaxed))
    }

    /// Queues `c` if there is room. A chunk is accepted while fewer than the frame cap and
    /// fewer than the byte cap are charged, so a queue can exceed its bounds by one chunk
    /// (at most one read buffer); the relay-wide budget is never exceeded.
    pub fn try_push(&self, c: Chunk) -> Push {
        let mut s = self.lock();
        if s.closed {
            return Push::Closed(c);
        }
        if s.frames >= self.cap || s.bytes >= self.byte_cap {
            return Push::Full(c, Limit::Queue);
        }
        if !self.budget.charge(over_floor(s.bytes, c.charge), false) {
            return Push::Full(c, Limit::Budget);
        }
        let was_empty = s.chunks.is_empty();
        s.frames += c.frames as usize;
        s.bytes += c.charge;
        self.budget.gauge.inc_by(c.charge as i64);
        s.chunks.push_back(c);
        drop(s);
        if was_empty {
            // The stall clock starts when frames start waiting.
            self.touch();
            self.ready.notify_one();
        }
        Push::Queued
    }

    /// Like [`Outbox::try_push`], but when the queue is full waits for room as long as
    /// the writer keeps making progress. Returns `Full` once the writer has made no
    /// progress for `stall` (the caller drops), or when `cancel` fires.
    pub async fn push_wait(
        &self,
        mut c: Chunk,
        stall: Duration,
        cancel: &CancellationToken,
    ) -> Push {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let limit = match self.try_push(c) {
                Push::Full(back, limit) => {
                    c = back;
                    limit
                }
                other => return other,
            };
            let stalled_at = self.last_progress() + stall;
            if Instant::now() >= stalled_at {
                return Push::Full(c, limit);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(stalled_at.into()) => {}
                _ = cancel.cancelled() => return Push::Full(c, limit),
            }
        }
    }

    /// Queues a last chunk regardless of the bound (may be `None`) and closes the queue
    /// to further pushes; the writer drains what is queued and stops. Returns whether
    /// the chunk was queued.
    pub fn close_with(&self, c: Option<Chunk>) -> bool {
        let mut s = self.lock();
        if s.closed {
            return false;
        }
        s.closed = true;
        let queued = match c {
            Some(c) => {
                self.budget.charge(over_floor(s.bytes, c.charge), true);
                s.frames += c.frames as usize;
                s.bytes += c.charge;
                self.budget.gauge.inc_by(c.charge as i64);
                s.chunks.push_back(c);
                true
            }
            None => false,
        };
        drop(s);
        self.ready.notify_one();
        self.space.notify_waiters();
        queued
    }

    /// Writer side: moves everything queued into `out` (which must be empty) and returns
    /// the number of frames, waiting while the queue is empty. `None` once the queue is
    /// closed and drained.
    pub async fn take(&self, out: &mut VecDeque<Chunk>) -> Option<usize> {
        loop {
            {
                let mut s = self.lock();
                if !s.chunks.is_empty() {
                    std::mem::swap(&mut s.chunks, out);
                    let n = std::mem::take(&mut s.frames);
                    drop(s);
                    self.touch();
                    // Frame room only: the bytes stay charged until written.
                    self.space.notify_waiters();
                    return Some(n);
                }
                if s.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Writer side: `n` charged bytes (of chunks it took) have been written.
    pub fn written(&self, n: usize) {
        let mut s = self.lock();
        // After discard() everything was released already.
        let n = n.min(s.bytes);
        let before = s.bytes.saturating_sub(FLOOR);
        s.bytes -= n;
        let after = s.bytes.saturating_sub(FLOOR);
        drop(s);
        self.budget.release(before - after);
        self.budget.gauge.dec_by(n as i64);
        self.space.notify_waiters();
    }

    /// Writer side, when the socket failed: remembered so the reader can report why the
    /// connection ended (call [`Outbox::discard`] next).
    pub fn fail(&self) {
        self.lock().failed = true;
    }

    /// Closes for good and returns what was still queued.
    pub fn discard(&self) -> Discarded {
        let mut s = self.lock();
        s.closed = true;
        let mut d = Discarded {
            frames: s.frames as u64,
            data_frames: 0,
        };
        for c in s.chunks.drain(..) {
            d.data_frames += c.data_frames();
        }
        s.frames = 0;
        let bytes = std::mem::take(&mut s.bytes);
        drop(s);
        self.budget.release(bytes.saturating_sub(FLOOR));
        self.budget.gauge.dec_by(bytes as i64);
        self.space.notify_waiters();
        d
    }

    /// Whether the writer gave up because the socket failed.
    pub fn failed(&self) -> bool {
        self.lock().failed
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
