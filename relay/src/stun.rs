//! STUN Binding responder (RFC 5389 / RFC 8489) with RFC 5780 behaviour discovery.
//!
//! Sockets form a grid of {primary IP, alternate IP} × {primary port, alternate port}.
//! A request received on cell (i, p) is answered from cell (i', p') chosen by its
//! CHANGE-REQUEST flags; OTHER-ADDRESS names the diagonal cell so clients can run the
//! RFC 5780 mapping tests. Message encoding and decoding is done by `stun-rs`.
//!
//! RFC 3489 clients (e.g. Debian's `stun`) send a 16-byte transaction ID without the
//! magic cookie. They are handled by decoding with the cookie substituted, then putting
//! their 4 ID bytes back into the reply and renaming RESPONSE-ORIGIN/OTHER-ADDRESS to the
//! classic SOURCE-ADDRESS/CHANGED-ADDRESS codes, which have the identical value layout.
//!
//! UDP sources can be spoofed, so every answer is a potential reflection towards a victim.
//! Answers carry only what a client needs (no SOFTWARE, no MAPPED-ADDRESS beside
//! XOR-MAPPED-ADDRESS for RFC 5389 clients), RESPONSE-ORIGIN only for requests with CHANGE-REQUEST), which keeps
//! every answer under 3.5× its request (2.2× for a minimal IPv4 request), and answers are rate-limited per source and in total
//! ([`StunLimits`]); datagrams over a limit are dropped silently.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use stun_rs::attributes::discovery::{
    ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin,
};
use stun_rs::attributes::stun::{
    ErrorCode as ErrorCodeAttr, MappedAddress, UnknownAttributes, XorMappedAddress,
};
use stun_rs::methods::BINDING;
use stun_rs::{
    MAGIC_COOKIE, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

const CHANGE_REQUEST: u16 = 0x0003;
const SOURCE_ADDRESS: u16 = 0x0004;
const CHANGED_ADDRESS: u16 = 0x0005;
const RESPONSE_ORIGIN: u16 = 0x802B;
const OTHER_ADDRESS: u16 = 0x802C;

/// The addresses of the STUN socket grid. `ips[1]` / `ports[1]` are the alternates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunLayout {
    /// Primary IP, then the optional alternate IP.
    pub ips: Vec<IpAddr>,
    /// Primary port and alternate port.
    pub ports: [u16; 2],
}

impl StunLayout {
    fn addr(&self, ip: usize, port: usize) -> SocketAddr {
        SocketAddr::new(self.ips[ip], self.ports[port])
    }
}

/// Which cell of the grid to reply from, and the encoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Index into [`StunLayout::ips`].
    pub ip: usize,
    /// Index into [`StunLayout::ports`].
    pub port: usize,
    /// Encoded STUN message.
    pub bytes: Vec<u8>,
}

/// Why a datagram got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunIgnore {
    /// Not a STUN message (or a malformed one).
    #[error("not a STUN message")]
    Malformed,
    /// A STUN message that is not a Binding request.
    #[error("not a Binding request")]
    NotBindingRequest,
    /// A Binding request over its source's limit or the responder's total limit.
    #[error("over the answer rate limit")]
    RateLimited,
}

/// Answer rate limits of the STUN responder.
pub struct StunLimits {
    per_source: RateLimiter,
    /// One bucket (under a fixed key) for all sources together: spoofed requests naming
    /// many different victims each stay under the per-source limit.
    total: RateLimiter,
}

impl StunLimits {
    /// `rate`/`burst` answers per source (IPv4 address or IPv6 /64), `total_rate` answers
    /// per second over all sources (burst: one second's worth).
    pub fn new(rate: f64, burst: u32, total_rate: f64) -> Self {
        let total_burst = total_rate.clamp(1.0, f64::from(u32::MAX)) as u32;
        Self {
            per_source: RateLimiter::new(rate, burst),
            total: RateLimiter::new(total_rate, total_burst),
        }
    }

    /// Whether `src` may get one more answer now.
    pub fn allow(&self, src: IpAddr) -> bool {
        self.per_source.allow(src) && self.total.allow(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

/// Sans-IO handler: answers a datagram `msg` from `src` that arrived on cell
/// (`ip`, `port`). Never panics on any input.
pub fn handle(
    layout: &StunLayout,
    ip: usize,
    port: usize,
    src: SocketAddr,
    msg: &[u8],
) -> Result<Reply, StunIgnore> {
    if msg.len() < 20 || msg[0] & 0xC0 != 0 {
        return Err(StunIgnore::Malformed);
    }
    let classic = msg[4..8] != MAGIC_COOKIE.as_u32().to_be_bytes();
    let patched;
    let input = if classic {
        let mut m = msg.to_vec();
        m[4..8].copy_from_slice(&MAGIC_COOKIE.as_u32().to_be_bytes());
        patched = m;
        &patched[..]
    } else {
        msg
    };
    let decoder = MessageDecoderBuilder::default().build();
    let (req, _) = decoder.decode(input).map_err(|_| StunIgnore::Malformed)?;
    if req.method() != BINDING || req.class() != MessageClass::Request {
        return Err(StunIgnore::NotBindingRequest);
    }
    let flags = req
        .get::<ChangeRequest>()
        .and_then(|a| a.as_change_request().ok())
        .map(|c| c.flags())
        .unwrap_or_default();
    let has_alt_ip = layout.ips.len() > 1;
    let tid = *req.transaction_id();

    if flags.contains(ChangeRequestFlags::ChangeIp) && !has_alt_ip {
        // RFC 5780 §6.1: without an alternate address we cannot honour change-IP and must
        // say so rather than answer from the same IP, which would fake endpoint-independent
        // filtering.
        let mut unknown = UnknownAttributes::default();
        unknown.add(CHANGE_REQUEST);
        let code =
            stun_rs::ErrorCode::new(420, "Unknown Attribute").map_err(|_| StunIgnore::Malformed)?;
        let reply = StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
            .with_transaction_id(tid)
            .with_attribute(ErrorCodeAttr::new(code))
            .with_attribute(unknown)
            .build();
        return encode(&reply, classic, msg, ip, port);
    }
    let ri = if flags.contains(ChangeRequestFlags::ChangeIp) {
        ip ^ 1
    } else {
        ip
    };
    let rp = if flags.contains(ChangeRequestFlags::ChangePort) {
        port ^ 1
    } else {
        port
    };
    let origin = layout.addr(ri, rp);
    let other = layout.addr(if has_alt_ip { ip ^ 1 } else { ip }, port ^ 1);
    let b =
        StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse).with_transaction_id(tid);
    // RFC 3489 clients only know MAPPED-ADDRESS; RFC 5389 clients must use
    // XOR-MAPPED-ADDRESS. Sending both would only enlarge a reflected answer.
    let b = if classic {
        b.with_attribute(MappedAddress::from(src))
    } else {
        b.with_attribute(XorMappedAddress::from(src))
    };
    // RESPONSE-ORIGIN only tells a client where an answer came from, which matters when
    // it asked for an answer from another address; for a plain request it would only
    // enlarge a reflected answer (IPv6: from 3.4x to 4.6x the request).
    let b = if req.get::<ChangeRequest>().is_some() {
        b.with_attribute(ResponseOrigin::from(origin))
    } else {
        b
    };
    let m = b.with_attribute(OtherAddress::from(other)).build();
    encode(&m, classic, msg, ri, rp)
}

fn encode(
    m: &stun_rs::StunMessage,
    classic: bool,
    request: &[u8],
    ip: usize,
    port: usize,
) -> Result<Reply, StunIgnore> {
    let mut buf = [0u8; 512];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, m)
        .map_err(|_| StunIgnore::Malformed)?;
    let mut bytes = buf[..n].to_vec();
    if classic {
        bytes[4..8].copy_from_slice(&request[4..8]);
        rename_attrs(&mut bytes);
    }
    Ok(Reply { ip, port, bytes })
}

/// Renames RFC 5780 attribute types to their RFC 3489 ancestors in an encoded message.
fn rename_attrs(bytes: &mut [u8]) {
    let mut off = 20;
    while off + 4 <= bytes.len() {
        let ty = u16::from_be_bytes([bytes[off], bytes[off + 1]]);
        let len = u16::from_be_bytes([bytes[off + 2], bytes[off + 3]]) as usize;
        let new = match ty {
            RESPONSE_ORIGIN => SOURCE_ADDRESS,
            OTHER_ADDRESS => CHANGED_ADDRESS,
            t => t,
        };
        bytes[off..off + 2].copy_from_slice(&new.to_be_bytes());
        off += 4 + len.div_ceil(4) * 4;
    }
}

/// Bound STUN sockets, indexed `[ip][port]`.
pub struct StunSockets {
    /// Addresses actually bound (ports resolved when 0 was requested).
    pub layout: StunLayout,
    sockets: Vec<[Arc<UdpSocket>; 2]>,
}

impl StunSockets {
    /// Binds the grid. A requested port of 0 takes an ephemeral port, the same one on both
    /// IPs so the grid stays rectangular.
    pub async fn bind(ips: &[IpAddr], ports: [u16; 2]) -> std::io::Result<Self> {
        let mut resolved = ports;
        let mut sockets = Vec::new();
        for ip in ips {
            let a = UdpSocket::bind(SocketAddr::new(*ip, resolved[0])).await?;
            resolved[0] = a.local_addr()?.port();
            let b = UdpSocket::bind(SocketAddr::new(*ip, resolved[1])).await?;
            resolved[1] = b.local_addr()?.port();
            sockets.push([Arc::new(a), Arc::new(b)]);
        }
        Ok(Self {
            layout: StunLayout {
                ips: ips.to_vec(),
                ports: resolved,
            },
            sockets,
        })
    }

    /// All bound addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        (0..self.sockets.len())
            .flat_map(|i| [0, 1].map(|p| self.layout.addr(i, p)))
            .collect()
    }

    /// Serves every socket until `cancel` fires.
    pub fn spawn(
        self,
        metrics: Arc<Metrics>,
        limits: StunLimits,
        cancel: CancellationToken,
    ) -> tokio::task::JoinSet<()> {
        let mut set = tokio::task::JoinSet::new();
        let grid = Arc::new(self.sockets);
        let layout = Arc::new(self.layout);
        let limits = Arc::new(limits);
        for i in 0..grid.len() {
            for p in 0..2 {
                let (grid, layout, metrics, limits, cancel) = (
                    grid.clone(),
                    layout.clone(),
                    metrics.clone(),
                    limits.clone(),
                    cancel.clone(),
                );
                set.spawn(async move {
                    let sock = grid[i][p].clone();
                    let mut buf = vec![0u8; 2048];
                    loop {
                        let (n, src) = tokio::select! {
                            _ = cancel.cancelled() => return,
                            r = sock.recv_from(&mut buf) => match r {
                                Ok(x) => x,
                                // ICMP-induced errors on UDP are per-datagram; keep serving.
                                Err(_) => continue,
                            },
                        };
                        // Limited after parsing so only datagrams we would answer spend
                        // tokens; parsing is cheap next to the send.
                        match handle(&layout, i, p, src, &buf[..n]) {
                            Ok(_) if !limits.allow(src.ip()) => {
                                metrics.stun_ignored(StunIgnore::RateLimited);
                            }
                            Ok(r) => {
                                metrics.stun_request(i != r.ip, p != r.port);
                                if let Err(e) = grid[r.ip][r.port].send_to(&r.bytes, src).await {
                                    tracing::debug!(%src, error = %e, "STUN reply failed");
                                }
                            }
                            Err(e) => metrics.stun_ignored(e),
                        }
                    }
                });
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_source_and_in_total() {
        let ip = |i: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i));
        // Per source: burst 2. In total: one second's worth (at least 1).
        let l = StunLimits::new(0.001, 2, 3.0);
        assert!(l.allow(ip(1)));
        assert!(l.allow(ip(1)));
        assert!(!l.allow(ip(1)), "source over its burst");
        assert!(l.allow(ip(2)));
        assert!(!l.allow(ip(3)), "total budget of 3 spent");
    }
}
