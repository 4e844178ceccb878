//! ICMP echo from inside a lab host without a process per request: one raw socket made in the
//! host's network namespace sends echo requests to many addresses and reads their replies.
//!
//! Why not `ping -c1` in a loop: the start-up measurement waits for the first reply of every
//! pair, and at 20-30 nodes that was 190-435 threads each spawning a process in a namespace
//! several times a second, on two cores. The probes then cost more CPU than the mesh they
//! measure, and a reply was noticed seconds after the path worked.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};
use crate::{Host, Lab, netns};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// Distinct identifiers for the sockets of one test process (raw sockets see every ICMP
/// packet of their namespace, so replies are told apart by it).
static NEXT_ID: AtomicU16 = AtomicU16::new(1);

/// A raw ICMP socket that lives in one lab host's network namespace.
#[derive(Debug)]
pub struct EchoSocket {
    fd: OwnedFd,
    id: u16,
    seq: u16,
}

impl Lab {
    /// An [`EchoSocket`] in `host` (the socket stays in the host's namespace whichever thread
    /// uses it).
    pub fn echo_socket(&self, host: &Host) -> Result<EchoSocket> {
        let fd = netns::in_netns(&host.ns, raw_icmp_socket)?
            .ctx(|| format!("{}: raw ICMP socket", host.name))?;
        let salt = (std::process::id() as u16).rotate_left(7);
        Ok(EchoSocket {
            fd,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ salt,
            seq: 0,
        })
    }
}

#[allow(unsafe_code)]
fn raw_icmp_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the OwnedFd from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl EchoSocket {
    /// Sends one echo request to `to`. A send error (no route yet, the interface not up) is
    /// returned; the caller decides whether that is a failure or just "not yet".
    #[allow(unsafe_code)]
    pub fn send(&mut self, to: Ipv4Addr) -> std::io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let packet = echo_request(self.id, self.seq);
        let addr = sockaddr(SocketAddrV4::new(to, 0));
        // SAFETY: the buffer and the address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The sources of the echo replies to this socket's requests that arrive within `wait`.
    #[allow(unsafe_code)]
    pub fn replies(&self, wait: Duration) -> Vec<Ipv4Addr> {
        let mut from = Vec::new();
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            if ready <= 0 {
                return from;
            }
            loop {
                // SAFETY: the buffer is valid for its length.
                let n = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                let Ok(n) = usize::try_from(n) else { break };
                if let Some(src) = reply_source(&buf[..n], self.id) {
                    from.push(src);
                }
            }
            if left.is_zero() {
                return from;
            }
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// An echo request with identifier `id` and sequence `seq` (8 bytes of payload).
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = ECHO_REQUEST;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"wirekube");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The source of `packet` (an IPv4 datagram as a raw socket reads it) when it is an echo reply
/// with identifier `id`.
fn reply_source(packet: &[u8], id: u16) -> Option<Ipv4Addr> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..)?;
    let is_ours = *icmp.first()? == ECHO_REPLY && icmp.get(4..6)? == id.to_be_bytes();
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    is_ours.then(|| Ipv4Addr::from(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!((p[0], &p[4..8]), (ECHO_REQUEST, &[0x12, 0x34, 0, 7][..]));
    }

    #[test]
    fn only_our_echo_replies_are_taken() {
        let mut ip = vec![
            0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 99, 0, 4, 10, 99, 0, 1,
        ];
        let mut reply = echo_request(0x1234, 1);
        reply[0] = ECHO_REPLY;
        ip.extend_from_slice(&reply);
        assert_eq!(reply_source(&ip, 0x1234), Some(Ipv4Addr::new(10, 99, 0, 4)));
        assert_eq!(reply_source(&ip, 0x4321), None, "another socket's reply");
        ip[20] = ECHO_REQUEST;
        assert_eq!(reply_source(&ip, 0x1234), None, "a request is not a reply");
        assert_eq!(reply_source(&ip[..22], 0x1234), None, "truncated");
        assert_eq!(reply_source(&[], 0x1234), None);
    }
}
