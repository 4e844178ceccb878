//! Traffic helpers: ping, a verified TCP transfer, a NAT behaviour probe (RFC 4787/5780 style)
//! and an iperf3 wrapper. Sockets are created in-process on threads that joined the namespace.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{IoContext, LabError, Result};
use crate::{Host, Lab, wait_until};

/// Result of [`Lab::tcp_transfer`].
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// Bytes the receiver got and verified.
    pub bytes: u64,
    /// From connect to the receiver's confirmation.
    pub elapsed: Duration,
}

impl Transfer {
    /// Throughput in bits per second.
    pub fn bits_per_second(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Mapping behaviour (RFC 4787 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Same public address and port towards every destination ("cone").
    EndpointIndependent,
    /// Same towards one IP, different towards another.
    AddressDependent,
    /// Different for every destination ("symmetric").
    AddressAndPortDependent,
}

/// Filtering behaviour (RFC 4787 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone may send to an existing mapping.
    EndpointIndependent,
    /// Only IPs the inner host has sent to.
    AddressDependent,
    /// Only the exact IP and port the inner host has sent to.
    AddressAndPortDependent,
}

/// What [`Lab::probe_nat`] saw.
#[derive(Clone, Debug)]
pub struct NatProbe {
    /// Public source of one inner socket as seen by DMZ A:p1, A:p2, B:p1 (empty if UDP is blocked).
    pub mapped: Vec<SocketAddrV4>,
    /// A packet from A:p2 (same IP, other port) reached a fresh mapping made towards A:p1.
    pub from_other_port: bool,
    /// A packet from B (other IP) reached that mapping.
    pub from_other_ip: bool,
    /// The reply from A:p1 itself came back (sanity check of the filtering test).
    pub reply_ok: bool,
}

impl NatProbe {
    /// Outbound UDP did not get through at all.
    pub fn udp_blocked(&self) -> bool {
        self.mapped.is_empty()
    }

    /// Classified mapping; `None` if UDP is blocked.
    pub fn mapping(&self) -> Option<Mapping> {
        match self.mapped.as_slice() {
            [a1, a2, b] if a1 == a2 && a1 == b => Some(Mapping::EndpointIndependent),
            [a1, a2, _] if a1 == a2 => Some(Mapping::AddressDependent),
            [_, _, _] => Some(Mapping::AddressAndPortDependent),
            _ => None,
        }
    }

    /// Classified filtering; `None` if UDP is blocked.
    pub fn filtering(&self) -> Option<Filtering> {
        if self.udp_blocked() || !self.reply_ok {
            None
        } else if self.from_other_ip {
            Some(Filtering::EndpointIndependent)
        } else if self.from_other_port {
            Some(Filtering::AddressDependent)
        } else {
            Some(Filtering::AddressAndPortDependent)
        }
    }
}

/// Byte `i` of the TCP transfer pattern (251 is prime, so shifted or dropped chunks show).
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

impl Lab {
    /// One ICMP echo from `from` to `ip` (1 s timeout); the round-trip time.
    pub fn ping(&self, from: &Host, ip: Ipv4Addr) -> Result<Duration> {
        let ip_s = ip.to_string();
        let out = self.exec_timeout(
            from,
            &["ping", "-n", "-q", "-c1", "-W1", &ip_s],
            Duration::from_secs(5),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(LabError::Traffic(format!(
                "ping {ip} from {}: no reply ({})",
                from.name,
                text.lines().last().unwrap_or("").trim()
            )));
        }
        // rtt min/avg/max/mdev = 0.064/0.064/0.064/0.000 ms
        let rtt = text
            .lines()
            .find_map(|l| l.split_once("= ").filter(|_| l.contains("rtt")))
            .and_then(|(_, v)| v.split('/').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| LabError::Traffic(format!("cannot parse ping output: {text}")))?;
        Ok(Duration::from_secs_f64(rtt / 1000.0))
    }

    /// Pings until a reply or `timeout`; the RTT of the first reply.
    pub fn ping_until(&self, from: &Host, ip: Ipv4Addr, timeout: Duration) -> Result<Duration> {
        let mut rtt = None;
        wait_until(timeout, &format!("ping {ip} from {}", from.name), || {
            rtt = self.ping(from, ip).ok();
            rtt.is_some()
        })?;
        Ok(rtt.expect("set when the wait succeeded"))
    }

    /// Sends `bytes` of a known pattern over TCP from `from` to a listener in `to`, reached at
    /// `ip` (an address of `to` as seen from `from`: LAN, public, mesh). The receiver verifies
    /// every byte and confirms the count. 10 s deadline for connect, 30 s overall.
    pub fn tcp_transfer(
        &self,
        from: &Host,
        to: &Host,
        ip: Ipv4Addr,
        bytes: u64,
    ) -> Result<Transfer> {
        self.tcp_transfer_within(from, to, ip, bytes, Duration::from_secs(10))
    }

    /// [`Lab::tcp_transfer`] with a connect deadline (short for negative checks).
    pub fn tcp_transfer_within(
        &self,
        from: &Host,
        to: &Host,
        ip: Ipv4Addr,
        bytes: u64,
        connect_timeout: Duration,
    ) -> Result<Transfer> {
        let listener = self
            .in_host(to, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))?
            .ctx(|| format!("{}: bind TCP listener", to.name))?;
        let port = listener
            .local_addr()
            .ctx(|| "listener address".into())?
            .port();
        listener
            .set_nonblocking(true)
            .ctx(|| "listener nonblocking".into())?;
        let deadline = Instant::now() + connect_timeout + Duration::from_secs(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = cancel.clone();
        let server = thread::spawn(move || -> io::Result<(u64, bool)> {
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline || cancelled.load(Ordering::Relaxed) {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "no connection"));
                        }
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => return Err(e),
                }
            };
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let (mut n, mut ok, mut buf) = (0u64, true, vec![0u8; 64 * 1024]);
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                ok &= buf[..k]
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == pattern(n + i as u64));
                n += k as u64;
            }
            s.write_all(&n.to_be_bytes())?;
            Ok((n, ok))
        });
        let start = Instant::now();
        let addr = SocketAddr::from((ip, port));
        let client = self.in_host(from, move || -> io::Result<u64> {
            let mut c = TcpStream::connect_timeout(&addr, connect_timeout)?;
            c.set_write_timeout(Some(Duration::from_secs(20)))?;
            c.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut chunk = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            while sent < bytes {
                let k = (bytes - sent).min(chunk.len() as u64) as usize;
                for (i, b) in chunk[..k].iter_mut().enumerate() {
                    *b = pattern(sent + i as u64);
                }
                c.write_all(&chunk[..k])?;
                sent += k as u64;
            }
            c.shutdown(std::net::Shutdown::Write)?;
            let mut ack = [0u8; 8];
            c.read_exact(&mut ack)?;
            Ok(u64::from_be_bytes(ack))
        })?;
        let fail = |m: String| {
            LabError::Traffic(format!("tcp {} -> {} ({addr}): {m}", from.name, to.name))
        };
        let acked = match client {
            Ok(n) => n,
            Err(e) => {
                // Stop the server (it may wait for a connection that never comes).
                cancel.store(true, Ordering::Relaxed);
                let _ = server.join();
                return Err(fail(e.to_string()));
            }
        };
        let elapsed = start.elapsed();
        let (got, ok) = server
            .join()
            .map_err(|_| fail("receiver panicked".into()))?
            .map_err(|e| fail(e.to_string()))?;
        if !ok || got != bytes || acked != bytes {
            return Err(fail(format!(
                "sent {bytes}, received {got}, acknowledged {acked}, pattern ok: {ok}"
            )));
        }
        Ok(Transfer { bytes, elapsed })
    }

    /// Probes the NAT in front of `node` with UDP against two addresses of `dmz` (RFC 5780
    /// style): one socket sends to A:p1, A:p2 and B:p1 (mapping); a fresh socket sends to A:p1,
    /// then A:p2 and B send to its mapping unsolicited (filtering). About 0.5 s for a cone,
    /// 1.5 s if UDP is blocked.
    pub fn probe_nat(&self, node: &Host, dmz: &Host) -> Result<NatProbe> {
        let (a, b) = match dmz.ips.as_slice() {
            [a, b, ..] => (*a, *b),
            _ => {
                return Err(LabError::Topology(format!(
                    "{} needs two addresses",
                    dmz.name
                )));
            }
        };
        let udp = |host: &Host, ip: Ipv4Addr| -> Result<UdpSocket> {
            let s = self
                .in_host(host, move || UdpSocket::bind((ip, 0)))?
                .ctx(|| format!("{}: bind UDP {ip}", host.name))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .ctx(|| "timeout".into())?;
            Ok(s)
        };
        let (sa1, sa2, sb) = (udp(dmz, a)?, udp(dmz, a)?, udp(dmz, b)?);
        let addr = |s: &UdpSocket| s.local_addr().expect("bound");
        let seen = |s: &UdpSocket| -> Option<SocketAddrV4> {
            let mut buf = [0u8; 64];
            match s.recv_from(&mut buf) {
                Ok((_, SocketAddr::V4(from))) => Some(from),
                _ => None,
            }
        };
        let io = |e: io::Error| LabError::Traffic(format!("probe from {}: {e}", node.name));

        let c1 = udp(node, Ipv4Addr::UNSPECIFIED)?;
        let mut mapped = Vec::new();
        for s in [&sa1, &sa2, &sb] {
            c1.send_to(b"map", addr(s)).map_err(io)?;
            match seen(s) {
                Some(m) => mapped.push(m),
                None if mapped.is_empty() => {
                    return Ok(NatProbe {
                        mapped,
                        from_other_port: false,
                        from_other_ip: false,
                        reply_ok: false,
                    });
                }
                None => {
                    return Err(LabError::Traffic(format!(
                        "probe from {}: {} answered, {} did not",
                        node.name,
                        addr(&sa1),
                        addr(s)
                    )));
                }
            }
        }

        let c2 = udp(node, Ipv4Addr::UNSPECIFIED)?;
        c2.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(io)?;
        c2.send_to(b"filter", addr(&sa1)).map_err(io)?;
        let m = seen(&sa1).ok_or_else(|| {
            LabError::Traffic(format!(
                "probe from {}: second socket got no mapping",
                node.name
            ))
        })?;
        sa2.send_to(b"port", m).map_err(io)?;
        sb.send_to(b"ip", m).map_err(io)?;
        sa1.send_to(b"reply", m).map_err(io)?;
        let (mut port, mut ip, mut reply) = (false, false, false);
        let start = Instant::now();
        // Wait for all three; what has not arrived 300 ms after the first is filtered.
        while start.elapsed() < Duration::from_millis(300) && !(port && ip && reply) {
            let mut buf = [0u8; 16];
            if let Ok((k, _)) = c2.recv_from(&mut buf) {
                match &buf[..k] {
                    b"port" => port = true,
                    b"ip" => ip = true,
                    b"reply" => reply = true,
                    _ => {}
                }
            }
        }
        Ok(NatProbe {
            mapped,
            from_other_port: port,
            from_other_ip: ip,
            reply_ok: reply,
        })
    }

    /// Sends `count` UDP datagrams from `from` to a fresh socket in `to`, addressed to `ip`;
    /// how many arrived (the receiver stops 200 ms after the last one). One-way, so a loss rate
    /// shows directly; 0 means UDP does not get through.
    pub fn udp_delivery(&self, from: &Host, to: &Host, ip: Ipv4Addr, count: u32) -> Result<u32> {
        let rx = self
            .in_host(to, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?
            .ctx(|| format!("{}: bind UDP", to.name))?;
        let port = rx.local_addr().ctx(|| "udp address".into())?.port();
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .ctx(|| "timeout".into())?;
        let tx = self
            .in_host(from, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?
            .ctx(|| format!("{}: bind UDP", from.name))?;
        let receiver = thread::spawn(move || {
            let (mut n, mut buf) = (0u32, [0u8; 64]);
            while rx.recv_from(&mut buf).is_ok() {
                n += 1;
            }
            n
        });
        for i in 0..count {
            // Unreachable errors (ICMP) are fine: the datagram is simply lost.
            let _ = tx.send_to(&i.to_be_bytes(), (ip, port));
            if i % 32 == 31 {
                thread::sleep(Duration::from_millis(1)); // stay below socket buffer limits
            }
        }
        receiver
            .join()
            .map_err(|_| LabError::Traffic("UDP receiver panicked".into()))
    }

    /// Whether something in `host` listens on TCP `port` (any address, IPv4 or IPv6), read from
    /// that namespace's `/proc/net/tcp{,6}`. For waiting until a server is up.
    pub fn tcp_listening(&self, host: &Host, port: u16) -> bool {
        let want = format!(":{port:04X} ");
        self.in_host(host, move || {
            ["tcp", "tcp6"].iter().any(|f| {
                std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                    .unwrap_or_default()
                    .lines()
                    .skip(1)
                    .any(|l| {
                        let cols: Vec<&str> = l.split_whitespace().collect();
                        // local_address is column 1, state column 3 (0A = LISTEN)
                        cols.len() > 3
                            && format!("{} ", &cols[1][cols[1].len() - 5..]) == want
                            && cols[3] == "0A"
                    })
            })
        })
        .unwrap_or(false)
    }

    /// Runs `iperf3 -c ip -t secs` from `client` against a one-shot `iperf3 -s` in `server`;
    /// receiver bits per second.
    pub fn iperf3(&self, server: &Host, client: &Host, ip: Ipv4Addr, secs: u32) -> Result<f64> {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-1", "-p", "5201"]);
        let srv = self.spawn(server, cmd)?;
        // iperf3 block-buffers its banner when not on a tty; look at the socket instead.
        let ready = wait_until(Duration::from_secs(5), "iperf3 server listening", || {
            self.tcp_listening(server, 5201)
        });
        if let Err(e) = ready {
            let _ = self.stop(&srv);
            return Err(e);
        }
        let (ip_s, t) = (ip.to_string(), secs.to_string());
        let out = self.exec_timeout(
            client,
            &["iperf3", "-c", &ip_s, "-p", "5201", "-t", &t, "-J"],
            Duration::from_secs(u64::from(secs) + 15),
        );
        let _ = self.stop(&srv);
        let out = out?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| LabError::Traffic(format!("iperf3 JSON: {e}")))?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| {
                LabError::Traffic(format!(
                    "iperf3 gave no result: {}",
                    v["error"].as_str().unwrap_or("?")
                ))
            })
    }
}
