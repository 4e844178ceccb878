//! The forwarding path of an authenticated connection: a reader that moves Data frames
//! as raw bytes into the destinations' outboxes, and a writer that drains this
//! connection's outbox into its socket.
//!
//! The reader reads up to [`READ_BUF`] bytes at a time, rewrites each Data frame's
//! destination key to the sender's key in place, and hands every run of consecutive
//! frames for one destination to that destination's outbox as one chunk (zero-copy for
//! large runs). When the outbox is full and its writer is still making progress, the
//! reader waits, so the sender feels TCP back-pressure instead of having its frames
//! dropped; when that writer has stalled, frames are dropped at once.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;
use wirekube_relay_proto::{
    DATA_KEY_OFFSET, ErrorCode, Frame, FrameHead, LEN_PREFIX, PublicKey, peek,
};

use crate::outbox::{Chunk, Limit, Outbox, Push};
use crate::shared::Shared;

/// Read size. Large reads make per-read costs (syscall, wakeup, queue push) small.
const READ_BUF: usize = 256 * 1024;
/// Reserve a new read buffer when less than this is left in the current one.
const MIN_READ: usize = 64 * 1024;
/// Runs shorter than this are copied out of the read buffer instead of sharing it: a
/// shared run keeps the whole buffer alive and is charged for all of it (see
/// [`Chunk::charge`]), which for a short run would waste most of its queue's byte budget.
const COPY_BELOW: usize = READ_BUF / 4;
/// Encoded Data frame overhead in front of the payload.
const DATA_HEADER: usize = DATA_KEY_OFFSET + 32;
/// Slices per `writev`.
const IOV: usize = 64;
/// Unknown-destination notices: at most one per destination per interval, and at most
/// this many destinations remembered per connection.
const NOTICE_INTERVAL: Duration = Duration::from_secs(1);
const NOTICE_KEYS: usize = 64;

/// How the reader ended: the disconnect reason and an optional Error frame to send.
pub(crate) type End = (&'static str, Option<Frame>);

/// Frames for one destination collected from the current read buffer.
struct Run {
    outbox: Arc<Outbox>,
    dest: PublicKey,
    frames: u32,
    payload: u64,
}

/// Reader-side context of one connection.
pub(crate) struct Reader<'a> {
    pub me: PublicKey,
    pub own: &'a Outbox,
    pub kick: &'a CancellationToken,
    pub shared: &'a Shared,
    notices: HashMap<PublicKey, Instant>,
    /// Size of the allocation behind the read buffer: what a chunk sharing it pins.
    alloc: usize,
}

impl<'a> Reader<'a> {
    pub fn new(
        me: PublicKey,
        own: &'a Outbox,
        kick: &'a CancellationToken,
        shared: &'a Shared,
    ) -> Self {
        Self {
            me,
            own,
            kick,
            shared,
            notices: HashMap::new(),
            alloc: 0,
        }
    }

    /// Reads and forwards until the connection ends. `buf` may hold bytes already read
    /// during the handshake.
    pub async fn run(&mut self, rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> End {
        let idle = self.shared.cfg.idle_timeout;
        self.alloc = buf.capacity();
        loop {
            let need = match self.process(buf).await {
                Ok(need) => need,
                Err(end) => return end,
            };
            if self.kick.is_cancelled() {
                return ("kicked", None);
            }
            let spare = buf.capacity() - buf.len();
            if spare < MIN_READ || buf.capacity() < need {
                let at = buf.as_ptr();
                buf.reserve(READ_BUF.max(need.saturating_sub(buf.len())));
                // A new (or reclaimed) allocation starts at the buffer's start.
                if buf.as_ptr() != at {
                    self.alloc = buf.capacity();
                }
            }
            let read = async {
                match idle {
                    Some(t) => tokio::time::timeout(t, rd.read_buf(buf)).await.ok(),
                    None => Some(rd.read_buf(buf).await),
                }
            };
            let r = tokio::select! {
                _ = self.kick.cancelled() => return ("kicked", None),
                r = read => r,
            };
            match r {
                None => {
                    return (
                        "idle",
                        Some(Frame::error(
                            ErrorCode::IdleTimeout,
                            "nothing received for the idle timeout",
                        )),
                    );
                }
                Some(Ok(0)) => return ("closed", None),
                Some(Ok(_)) => {}
                Some(Err(_)) => return ("io", None),
            }
        }
    }

    /// Forwards every complete frame in `buf`. Returns the size of the incomplete frame
    /// at the front (what the buffer must be able to hold), or how the connection ends.
    async fn process(&mut self, buf: &mut BytesMut) -> Result<usize, End> {
        let mut run: Option<Run> = None;
        // Bytes at the front of `buf` that belong to `run`.
        let mut off = 0;
        loop {
            let head = match peek(&buf[off..]) {
                Ok(h) => h,
                Err(e) => {
                    self.flush(&mut run, buf, off).await;
                    return Err(malformed(e.to_string()));
                }
            };
            match head {
                FrameHead::Incomplete { need } => {
                    self.flush(&mut run, buf, off).await;
                    return Ok(need);
                }
                FrameHead::Data { len } => {
                    let key = &buf[off + DATA_KEY_OFFSET..off + DATA_HEADER];
                    if let Some(r) = run.as_mut().filter(|r| r.dest.as_bytes() == key) {
                        r.frames += 1;
                        r.payload += (len - DATA_HEADER) as u64;
                        buf[off + DATA_KEY_OFFSET..off + DATA_HEADER]
                            .copy_from_slice(self.me.as_bytes());
                        off += len;
                        continue;
                    }
                    self.flush(&mut run, buf, off).await;
                    off = 0;
                    let mut dest = [0u8; 32];
                    dest.copy_from_slice(&buf[DATA_KEY_OFFSET..DATA_HEADER]);
                    let dest = PublicKey(dest);
                    match self.shared.lookup(&dest) {
                        Some(outbox) => {
                            buf[DATA_KEY_OFFSET..DATA_HEADER].copy_from_slice(self.me.as_bytes());
                            run = Some(Run {
                                outbox,
                                dest,
                                frames: 1,
                                payload: (len - DATA_HEADER) as u64,
                            });
                            off = len;
                        }
                        None => {
                            buf.advance(len);
                            self.shared.metrics.drop_unknown.inc();
                            self.notice_unknown(dest);
                        }
                    }
                }
                FrameHead::Other => {
                    self.flush(&mut run, buf, off).await;
                    off = 0;
                    match Frame::decode(buf) {
                        Ok(Some(Frame::Ping(v))) => {
                            if let Ok(b) = Frame::Pong(v).to_bytes() {
                                // A client that does not read its pongs loses them.
                                let _ = self.own.try_push(Chunk::control(b, false));
                            }
                        }
                        Ok(Some(Frame::Pong(_))) => {}
                        Ok(Some(other)) => {
                            let msg = format!("unexpected {} after auth", frame_name(&other));
                            return Err((
                                "protocol",
                                Some(Frame::error(ErrorCode::ProtocolViolation, msg)),
                            ));
                        }
                        // peek saw a complete frame, so decode cannot ask for more.
                        Ok(None) => return Ok(LEN_PREFIX),
                        Err(e) => return Err(malformed(e.to_string())),
                    }
                }
            }
        }
    }

    /// Hands the first `off` bytes of `buf` (the run) to the run's destination.
    async fn flush(&mut self, run: &mut Option<Run>, buf: &mut BytesMut, off: usize) {
        let Some(r) = run.take() else { return };
        let (bytes, charge): (Bytes, usize) = if off < COPY_BELOW {
            let b = Bytes::copy_from_slice(&buf[..off]);
            buf.advance(off);
            (b, off)
        } else {
            (buf.split_to(off).freeze(), off.max(self.alloc))
        };
        let chunk = Chunk {
            bytes,
            frames: r.frames,
            data: true,
            payload: r.payload,
            last: false,
            charge,
        };
        let m = &self.shared.metrics;
        let frames = chunk.frames as i64;
        let pushed = match r.outbox.try_push(chunk) {
            Push::Full(c, _) => {
                r.outbox
                    .push_wait(c, self.shared.cfg.stall_timeout, self.kick)
                    .await
            }
            other => other,
        };
        match pushed {
            Push::Queued => {
                m.queue_depth.inc_by(frames);
            }
            Push::Full(c, Limit::Queue) => {
                m.drop_queue_full.inc_by(c.data_frames());
            }
            Push::Full(c, Limit::Budget) => {
                m.drop_budget.inc_by(c.data_frames());
            }
            Push::Closed(c) => m.drop_n("connection_closed", c.data_frames()),
        }
    }

    /// Rate-limited, optional, non-fatal notice that `dest` is not connected here.
    fn notice_unknown(&mut self, dest: PublicKey) {
        if !self.shared.cfg.notify_unknown_destination {
            return;
        }
        let now = Instant::now();
        if let Some(t) = self.notices.get(&dest)
            && now.duration_since(*t) < NOTICE_INTERVAL
        {
            return;
        }
        if self.notices.len() >= NOTICE_KEYS {
            self.notices
                .retain(|_, t| now.duration_since(*t) < NOTICE_INTERVAL);
            if self.notices.len() >= NOTICE_KEYS {
                return;
            }
        }
        self.notices.insert(dest, now);
        let f = Frame::error(ErrorCode::UnknownDestination, dest.to_string());
        if let Ok(b) = f.to_bytes() {
            let _ = self.own.try_push(Chunk::control(b, false));
        }
    }
}

fn malformed(msg: String) -> End {
    (
        "malformed",
        Some(Frame::error(ErrorCode::MalformedFrame, msg)),
    )
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "Hello",
        Frame::Challenge { .. } => "Challenge",
        Frame::Auth { .. } => "Auth",
        Frame::AuthOk => "AuthOk",
        Frame::Data { .. } => "Data",
        Frame::Ping(_) => "Ping",
        Frame::Pong(_) => "Pong",
        Frame::Error { .. } => "Error",
    }
}

/// Writes `chunks` completely with `writev`; each syscall that makes progress records
/// it in `outbox`, and one that makes none for `limit` fails the write.
async fn write_chunks(
    wr: &mut OwnedWriteHalf,
    chunks: &VecDeque<Chunk>,
    outbox: &Outbox,
    limit: Duration,
) -> std::io::Result<()> {
    let (mut idx, mut off) = (0usize, 0usize);
    while idx < chunks.len() {
        let mut iov = [IoSlice::new(&[]); IOV];
        let mut n = 0;
        for (i, c) in chunks.iter().enumerate().skip(idx).take(IOV) {
            iov[n] = IoSlice::new(if i == idx {
                &c.bytes[off..]
            } else {
                &c.bytes[..]
            });
            n += 1;
        }
        let mut w = match tokio::time::timeout(limit, wr.write_vectored(&iov[..n])).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        };
        outbox.touch();
        let mut done = 0;
        while w > 0 && idx < chunks.len() {
            let rest = chunks[idx].bytes.len() - off;
            if w >= rest {
                w -= rest;
                done += chunks[idx].charge;
                idx += 1;
                off = 0;
            } else {
                off += w;
                w = 0;
            }
        }
        // Released as soon as written, so a sender waiting for room resumes while the
        // rest of a large batch is still being written.
        if done > 0 {
            outbox.written(done);
        }
    }
    Ok(())
}

/// Drains `outbox` into the socket until it is closed and empty, or a write fails.
pub(crate) async fn write_loop(
    mut wr: OwnedWriteHalf,
    outbox: Arc<Outbox>,
    kick: CancellationToken,
    shared: Arc<Shared>,
) {
    let m = &shared.metrics;
    let mut batch = VecDeque::new();
    let mut failed = false;
    while let Some(frames) = outbox.take(&mut batch).await {
        m.queue_depth.dec_by(frames as i64);
        let (mut data, mut bytes, mut last) = (0u64, 0u64, false);
        for c in &batch {
            data += c.data_frames();
            bytes += c.payload;
            last |= c.last;
        }
        if write_chunks(&mut wr, &batch, &outbox, shared.cfg.write_timeout)
            .await
            .is_err()
        {
            failed = true;
            outbox.fail();
            m.drop_n("write_failed", data);
            break;
        }
        batch.clear();
        m.forwarded_frames.inc_by(data);
        m.forwarded_bytes.inc_by(bytes);
        if last {
            break;
        }
    }
    // Stop producers first, then account for what they had queued.
    let d = outbox.discard();
    m.queue_depth.dec_by(d.frames as i64);
    m.drop_n("connection_closed", d.data_frames);
    // Wake the reader so a stalled or finished client releases its slot now.
    kick.cancel();
    if !failed {
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    }
}
