//! Continuous ping at a fixed rate (`ping -i`), for measuring how long a path change interrupts
//! traffic: every echo has a sequence number, so the longest run of unanswered ones is the gap.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use crate::wait::wait_until;
use crate::{Host, Lab, LabError, Proc, Result};

/// A running `ping -i <interval>` in a lab host.
#[derive(Debug)]
pub struct PingStream {
    proc: Proc,
    interval: Duration,
}

/// What a [`PingStream`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingReport {
    /// Echo requests sent.
    pub sent: u64,
    /// Echo replies received (each sequence number once).
    pub received: u64,
    /// The longest run of consecutive unanswered requests.
    pub longest_gap: u64,
    /// The interval between requests.
    pub interval: Duration,
}

/// How long a request waits for its reply before ping reports it unanswered (`-W`).
pub const REPLY_DEADLINE: Duration = Duration::from_secs(1);

impl PingReport {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// The longest time without a reply, at the request rate.
    pub fn longest_gap_time(&self) -> Duration {
        self.interval * u32::try_from(self.longest_gap).unwrap_or(u32::MAX)
    }

    /// Parses `ping -n -O` output: reply lines carry `icmp_seq=N ... time=`, unanswered ones
    /// `no answer yet for icmp_seq=N`, and the summary `S packets transmitted`. Requests at
    /// the end still within the reply deadline ([`REPLY_DEADLINE`]) when the stream stopped
    /// were in flight, not lost, and are not counted as sent (the fault suite saw one such
    /// request turn a clean run into "1 lost" on a loaded machine). A reply that came later
    /// than the reply deadline counts as unanswered: WireGuard holds packets while it
    /// handshakes, so a path that was down for 5 s delivered every ping 1-5 s late and read
    /// as "0 lost, no gap" while a TCP stream beside it stalled for 5 s.
    pub fn parse(text: &str, interval: Duration) -> PingReport {
        let seq = |l: &str| {
            l.split("icmp_seq=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        let rtt_ms = |l: &str| {
            l.split("time=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|t| t.parse::<f64>().ok())
        };
        let deadline_ms = REPLY_DEADLINE.as_secs_f64() * 1000.0;
        let mut replies = std::collections::BTreeSet::new();
        let mut highest = 0;
        for line in text.lines() {
            if let Some(n) = seq(line) {
                highest = highest.max(n);
                if rtt_ms(line).is_some_and(|ms| ms <= deadline_ms) {
                    replies.insert(n);
                }
            }
        }
        let transmitted = text
            .lines()
            .find_map(|l| l.split_once(" packets transmitted"))
            .and_then(|(n, _)| n.trim().parse::<u64>().ok())
            .unwrap_or(highest)
            .max(highest);
        let trailing = (1..=transmitted)
            .rev()
            .take_while(|n| !replies.contains(n))
            .count() as u64;
        let in_flight = if interval * u32::try_from(trailing).unwrap_or(u32::MAX) < REPLY_DEADLINE {
            trailing
        } else {
            0
        };
        let sent = transmitted - in_flight;
        let (mut longest, mut run) = (0, 0);
        for n in 1..=sent {
            if replies.contains(&n) {
                run = 0;
            } else {
                run += 1;
                longest = longest.max(run);
            }
        }
        PingReport {
            sent,
            received: replies.len() as u64,
            longest_gap: longest,
            interval,
        }
    }
}

impl Lab {
    /// Starts pinging `ip` from `from` every `interval` (below 200 ms needs root) until
    /// [`Lab::finish_ping`].
    pub fn start_ping(&self, from: &Host, ip: Ipv4Addr, interval: Duration) -> Result<PingStream> {
        let mut cmd = Command::new("ping");
        cmd.args(["-n", "-O", "-W"])
            .arg(REPLY_DEADLINE.as_secs().to_string())
            .arg("-i")
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .arg(ip.to_string());
        let proc = self.spawn(from, cmd)?;
        Ok(PingStream { proc, interval })
    }

    /// Stops the stream with SIGINT (ping then prints its summary) and reports what it saw.
    pub fn finish_ping(&self, s: PingStream) -> Result<PingReport> {
        let pid = libc::pid_t::try_from(s.proc.pid)
            .map_err(|_| LabError::Traffic(format!("pid {} out of range", s.proc.pid)))?;
        // A pid the lab started and still owns.
        crate::signal(pid, libc::SIGINT);
        let summary = wait_until(Duration::from_secs(5), "ping summary", || {
            self.log(&s.proc).contains("packets transmitted")
        });
        let text = self.log(&s.proc);
        self.stop(&s.proc)?;
        summary?;
        Ok(PingReport::parse(&text, s.interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_and_losses_from_ping_output() {
        let text = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.1 ms\n\
            no answer yet for icmp_seq=2\n\
            no answer yet for icmp_seq=3\n\
            64 bytes from 10.0.0.2: icmp_seq=4 ttl=64 time=0.1 ms\n\
            no answer yet for icmp_seq=5\n\
            64 bytes from 10.0.0.2: icmp_seq=6 ttl=64 time=0.1 ms\n\
            \n--- 10.0.0.2 ping statistics ---\n\
            7 packets transmitted, 3 received, 57% packet loss, time 600ms\n";
        let r = PingReport::parse(text, Duration::from_millis(100));
        // 2-3 missing, 5 missing; 7 was sent 100 ms before the end: in flight, not lost.
        assert_eq!((r.sent, r.received, r.lost()), (6, 3, 3));
        assert_eq!(r.longest_gap, 2);
        assert_eq!(r.longest_gap_time(), Duration::from_millis(200));
    }

    #[test]
    fn a_late_reply_counts_once() {
        let text = "64 bytes from x: icmp_seq=1 ttl=64 time=0.1 ms\n\
            64 bytes from x: icmp_seq=1 ttl=64 time=900 ms (DUP!)\n\
            2 packets transmitted, 1 received\n";
        let r = PingReport::parse(text, Duration::from_millis(100));
        assert_eq!((r.sent, r.received, r.longest_gap), (1, 1, 0));
    }

    #[test]
    fn replies_later_than_the_deadline_are_unanswered() {
        let text = "64 bytes from x: icmp_seq=1 ttl=64 time=0.4 ms\n\
            no answer yet for icmp_seq=2\n\
            64 bytes from x: icmp_seq=2 ttl=64 time=2100 ms\n\
            64 bytes from x: icmp_seq=3 ttl=64 time=2000 ms\n\
            64 bytes from x: icmp_seq=4 ttl=64 time=1000 ms\n\
            64 bytes from x: icmp_seq=5 ttl=64 time=0.5 ms\n\
            64 bytes from x: icmp_seq=6 ttl=64 time=0.5 ms\n\
            6 packets transmitted, 6 received\n";
        let r = PingReport::parse(text, Duration::from_millis(100));
        // 2 and 3 came back after more than 1 s: a gap of two; 4 just made it.
        assert_eq!((r.sent, r.received, r.lost(), r.longest_gap), (6, 4, 2, 2));
    }

    #[test]
    fn requests_unanswered_longer_than_the_deadline_at_the_end_are_lost() {
        let mut text = String::from("64 bytes from x: icmp_seq=1 ttl=64 time=0.1 ms\n");
        for n in 2..=12 {
            text += &format!("no answer yet for icmp_seq={n}\n");
        }
        text += "12 packets transmitted, 1 received\n";
        let r = PingReport::parse(&text, Duration::from_millis(100));
        // 11 unanswered for 1.1 s: past the 1 s deadline, the path was down at the end.
        assert_eq!(
            (r.sent, r.received, r.lost(), r.longest_gap),
            (12, 1, 11, 11)
        );
    }
}
