//! A continuous TCP stream beside the fault suite's ping stream: one connection between two
//! lab nodes' mesh addresses carries a paced, verified byte pattern from before a fault until
//! after the recovery, so the report says whether the connection survived the fault, how long
//! it stalled (no byte arrived) and how many bytes it delivered.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use wirekube_lab::{Host, Lab, wait_until};

/// Bytes written per tick of the sender.
pub const CHUNK: usize = 4 * 1024;
/// The sender's tick: 4 KiB every 20 ms is 200 KiB/s, light enough for a loaded 2-core lab and
/// dense enough that a stall is measured to about 20 ms.
pub const TICK: Duration = Duration::from_millis(20);

/// What a [`TcpFlow`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpReport {
    /// Bytes the receiver got and verified against the pattern.
    pub bytes: u64,
    /// The longest time between two arrivals (the stream's stall).
    pub longest_stall: Duration,
    /// The sender's byte count arrived whole and in order, and the connection closed cleanly.
    pub intact: bool,
}

impl TcpReport {
    /// Markdown cell: stall and bytes, or that the connection broke.
    pub fn cell(&self) -> String {
        let kib = self.bytes / 1024;
        if self.intact {
            format!("{:.1} s ({kib} KiB)", self.longest_stall.as_secs_f64())
        } else {
            format!(
                "broken after {kib} KiB (stall {:.1} s)",
                self.longest_stall.as_secs_f64()
            )
        }
    }
}

/// The longest interval between successive arrival times (zero for fewer than two).
pub fn longest_stall(arrivals: &[Instant]) -> Duration {
    arrivals
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// The byte at stream offset `n`.
fn pattern(n: u64) -> u8 {
    (n % 251) as u8
}

/// Receiver's running state, shared with the flow for [`TcpFlow::received`].
#[derive(Debug, Default)]
struct Seen {
    arrivals: Mutex<Vec<Instant>>,
    bytes: AtomicU64,
}

/// A running stream; [`TcpFlow::finish`] stops it and reports.
#[derive(Debug)]
pub struct TcpFlow {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    sender: JoinHandle<io::Result<u64>>,
    receiver: JoinHandle<io::Result<bool>>,
    /// Both ends, to unblock the threads when the stream does not finish in time.
    ends: [TcpStream; 2],
    what: String,
}

impl TcpFlow {
    /// Connects from `from` to a listener in `to` reached at `ip` (its mesh address) and starts
    /// sending.
    pub fn start(lab: &Lab, from: &Host, to: &Host, ip: Ipv4Addr) -> Result<TcpFlow> {
        let what = format!("TCP stream {} -> {} ({ip})", from.name, to.name);
        let listener = lab
            .in_host(to, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))?
            .with_context(|| format!("{what}: listen"))?;
        let port = listener.local_addr()?.port();
        let addr = SocketAddr::from((ip, port));
        let client = lab
            .in_host(from, move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            })?
            .with_context(|| format!("{what}: connect"))?;
        listener.set_nonblocking(true)?;
        let server = {
            let mut waited = None;
            wait_until(
                Duration::from_secs(10),
                "TCP stream accepted",
                || match listener.accept() {
                    Ok((s, _)) => {
                        waited = Some(s);
                        true
                    }
                    Err(_) => false,
                },
            )?;
            waited.ok_or_else(|| anyhow!("{what}: not accepted"))?
        };
        server.set_nonblocking(false)?;
        let ends = [client.try_clone()?, server.try_clone()?];
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let sender = {
            let stop = stop.clone();
            thread::spawn(move || send(client, &stop))
        };
        let receiver = {
            let seen = seen.clone();
            thread::spawn(move || receive(server, &seen))
        };
        Ok(TcpFlow {
            stop,
            seen,
            sender,
            receiver,
            ends,
            what,
        })
    }

    /// Bytes verified so far.
    pub fn received(&self) -> u64 {
        self.seen.bytes.load(Ordering::Relaxed)
    }

    /// Waits up to `deadline` for bytes beyond what had arrived when called: the stream moves.
    pub fn resumes_within(&self, deadline: Duration) -> Result<()> {
        let before = self.received();
        wait_until(deadline, &format!("{} moving again", self.what), || {
            self.received() > before
        })
        .map(drop)
        .map_err(|e| anyhow!("{e} (stuck at {before} bytes)"))
    }

    /// Stops sending, waits up to `deadline` for the receiver to get every byte and the
    /// close, and reports. A connection that broke (reset, timeout) or did not drain in time
    /// is reported as not intact, not as an error.
    pub fn finish(self, deadline: Duration) -> Result<TcpReport> {
        self.stop.store(true, Ordering::Relaxed);
        let done = wait_until(deadline, &format!("{} drained", self.what), || {
            self.sender.is_finished() && self.receiver.is_finished()
        });
        if done.is_err() {
            // Unblocks a write or read that waits on a dead connection.
            for e in &self.ends {
                let _ = e.shutdown(Shutdown::Both);
            }
        }
        let sent = self
            .sender
            .join()
            .map_err(|_| anyhow!("{}: sender panicked", self.what))?;
        let pattern_ok = self
            .receiver
            .join()
            .map_err(|_| anyhow!("{}: receiver panicked", self.what))?;
        let bytes = self.seen.bytes.load(Ordering::Relaxed);
        let longest_stall = self
            .seen
            .arrivals
            .lock()
            .map(|a| longest_stall(&a))
            .unwrap_or_default();
        Ok(TcpReport {
            bytes,
            longest_stall,
            intact: done.is_ok()
                && pattern_ok.unwrap_or(false)
                && sent.as_ref().is_ok_and(|n| *n == bytes),
        })
    }
}

/// Writes the pattern a chunk per [`TICK`] until `stop`, then closes the write side. The
/// write blocks while the path is down (TCP retransmits), which is the point.
fn send(mut c: TcpStream, stop: &AtomicBool) -> io::Result<u64> {
    c.set_write_timeout(Some(Duration::from_secs(120)))?;
    let mut chunk = vec![0u8; CHUNK];
    let mut sent = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = pattern(sent + i as u64);
        }
        c.write_all(&chunk)?;
        sent += CHUNK as u64;
        next += TICK;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            // Behind after a stall: pace from now rather than burst the backlog.
            next = now;
        }
    }
    c.shutdown(Shutdown::Write)?;
    Ok(sent)
}

/// Reads and verifies until the sender closes; records every arrival. Returns whether every
/// byte matched the pattern.
fn receive(mut s: TcpStream, seen: &Seen) -> io::Result<bool> {
    s.set_read_timeout(Some(Duration::from_secs(180)))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut ok = true;
    loop {
        let k = s.read(&mut buf)?;
        if k == 0 {
            return Ok(ok);
        }
        let n = seen.bytes.load(Ordering::Relaxed);
        ok &= buf[..k]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(n + i as u64));
        seen.bytes.fetch_add(k as u64, Ordering::Relaxed);
        if let Ok(mut a) = seen.arrivals.lock() {
            a.push(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_is_the_longest_interval_between_arrivals() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        for (arrivals, want) in [
            (vec![], 0),
            (vec![at(0)], 0),
            (vec![at(0), at(20), at(40)], 20),
            (vec![at(0), at(20), at(3020), at(3040)], 3000),
            (vec![at(0), at(900), at(950), at(2950)], 2000),
        ] {
            assert_eq!(
                longest_stall(&arrivals),
                Duration::from_millis(want),
                "{arrivals:?}"
            );
        }
    }

    #[test]
    fn the_cell_says_stall_and_bytes_or_broken() {
        let r = TcpReport {
            bytes: 2048 * 1024,
            longest_stall: Duration::from_millis(2350),
            intact: true,
        };
        assert_eq!(r.cell(), "2.4 s (2048 KiB)");
        let broken = TcpReport { intact: false, ..r };
        assert_eq!(broken.cell(), "broken after 2048 KiB (stall 2.4 s)");
    }
}
