//! Per-connection send queue: already-encoded frames waiting for the connection's writer.
//!
//! Readers push chunks (one or more encoded frames for this connection); the writer takes
//! everything queued at once. The queue is bounded in frames. When it is full a reader
//! either waits for room (the writer is still making progress: back-pressure, like TCP)
//! or drops (the writer made no progress for the stall timeout: a stalled client must
//! never slow its senders down for longer than that).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
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
}

impl Chunk {
    /// A single control frame built by the relay.
    pub fn control(bytes: Bytes, last: bool) -> Self {
        Self {
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

/// Result of offering a chunk.
pub(crate) enum Push {
    Queued,
    /// Full (and, after [`Outbox::push_wait`], the destination is stalled).
    Full(Chunk),
    /// The connection is closing.
    Closed(Chunk),
}

struct State {
    chunks: VecDeque<Chunk>,
    frames: usize,
    closed: bool,
    failed: bool,
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    cap: usize,
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
    pub fn new(cap: usize) -> Self {
        Self {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                frames: 0,
                closed: false,
                failed: false,
            }),
            cap: cap.max(1),
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

    /// Queues `c` if there is room. A chunk is accepted while fewer than `cap` frames are
    /// queued, so the bound can be exceeded by one chunk (at most one read buffer).
    pub fn try_push(&self, c: Chunk) -> Push {
        let mut s = self.lock();
        if s.closed {
            return Push::Closed(c);
        }
        if s.frames >= self.cap {
            return Push::Full(c);
        }
        let was_empty = s.chunks.is_empty();
        s.frames += c.frames as usize;
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
            match self.try_push(c) {
                Push::Full(back) => c = back,
                other => return other,
            }
            let stalled_at = self.last_progress() + stall;
            if Instant::now() >= stalled_at {
                return Push::Full(c);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(stalled_at.into()) => {}
                _ = cancel.cancelled() => return Push::Full(c),
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
                s.frames += c.frames as usize;
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
        drop(s);
        self.space.notify_waiters();
        d
    }

    /// Whether the writer gave up because the socket failed.
    pub fn failed(&self) -> bool {
        self.lock().failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: u32) -> Chunk {
        Chunk {
            bytes: Bytes::from_static(b"x"),
            frames: n,
            data: true,
            payload: 1,
            last: false,
        }
    }

    #[tokio::test]
    async fn bound_wait_and_stall() {
        let o = Outbox::new(4);
        assert!(matches!(o.try_push(data(4)), Push::Queued));
        assert!(matches!(o.try_push(data(1)), Push::Full(_)));
        // The writer never takes anything: after the stall timeout the push gives up.
        let cancel = CancellationToken::new();
        let t = Instant::now();
        let stall = Duration::from_millis(50);
        assert!(matches!(
            o.push_wait(data(1), stall, &cancel).await,
            Push::Full(_)
        ));
        assert!(t.elapsed() >= Duration::from_millis(40));
        // A writer that takes frames makes room for a waiting reader.
        let o = std::sync::Arc::new(o);
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
}
