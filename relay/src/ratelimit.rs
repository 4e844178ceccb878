//! Per-source token buckets (registration attempts, STUN requests).
//!
//! A "source" is an IPv4 address or an IPv6 /64: one IPv6 host usually owns a whole /64,
//! so keying by full address would give it 2^64 independent budgets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

/// Bounds the number of tracked addresses so a spray of source IPs cannot grow memory
/// without limit; when full, buckets that have refilled completely are forgotten.
const MAX_TRACKED: usize = 65_536;

/// The key under which `ip` is limited: IPv4 (also IPv4-mapped IPv6) as is, IPv6
/// truncated to its /64 prefix.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by [`source_key`].
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// `rate` registrations per second sustained, `burst` at once.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: rate.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`'s source; false when the source is over its limit (or
    /// the table is full of sources that are all still limited).
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = source_key(ip);
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if map.len() >= MAX_TRACKED {
                return false;
            }
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(2.0, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        assert!((0..3).all(|_| rl.allow_at(ip, t)));
        assert!(!rl.allow_at(ip, t));
        assert!(rl.allow_at(other, t), "limits are per address");
        assert!(rl.allow_at(ip, t + Duration::from_millis(500)));
        assert!(!rl.allow_at(ip, t + Duration::from_millis(500)));
    }

    #[test]
    fn ipv6_sources_are_limited_per_64() {
        let rl = RateLimiter::new(0.0, 1);
        let t = Instant::now();
        assert!(rl.allow_at("2001:db8:1:2::1".parse().unwrap(), t));
        assert!(!rl.allow_at("2001:db8:1:2:ffff::7".parse().unwrap(), t));
        assert!(rl.allow_at("2001:db8:1:3::1".parse().unwrap(), t));
        // An IPv4-mapped address is the IPv4 source.
        assert!(rl.allow_at("192.0.2.1".parse().unwrap(), t));
        assert!(!rl.allow_at("::ffff:192.0.2.1".parse().unwrap(), t));
    }
}
