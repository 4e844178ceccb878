//! STUN responder checked with a stun-rs client over loopback (RFC 5389 / 5780).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use stun_rs::attributes::discovery::{
    ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin,
};
use stun_rs::attributes::stun::{ErrorCode, MappedAddress, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessage, StunMessageBuilder,
};
use tokio::net::UdpSocket;
use wirekube_relay::{Metrics, Relay};

struct Answer {
    from: SocketAddr,
    msg: StunMessage,
}

async fn binding(sock: &UdpSocket, to: SocketAddr, change: Option<ChangeRequest>) -> Answer {
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request);
    if let Some(c) = change {
        b = b.with_attribute(c);
    }
    let req = b.build();
    let mut buf = [0u8; 256];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &req)
        .unwrap();
    sock.send_to(&buf[..n], to).await.unwrap();
    let mut rb = [0u8; 1024];
    let (n, from) = within("STUN response", sock.recv_from(&mut rb))
        .await
        .unwrap();
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(&rb[..n])
        .unwrap();
    assert_eq!(msg.transaction_id(), req.transaction_id());
    Answer { from, msg }
}

fn addr_of<T>(m: &StunMessage, f: impl Fn(&stun_rs::StunAttribute) -> SocketAddr) -> SocketAddr
where
    T: stun_rs::attributes::StunAttributeType,
{
    f(m.get::<T>()
        .unwrap_or_else(|| panic!("missing attribute {}", std::any::type_name::<T>())))
}

#[tokio::test]
async fn rfc5780_binding_and_change_request() {
    let relay = start().await;
    let [p0, p1, a0, a1] = relay.stun_addrs[..] else {
        panic!("4 STUN sockets")
    };
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();

    let r = binding(&sock, p0, None).await;
    assert_eq!(r.msg.class(), MessageClass::SuccessResponse);
    assert_eq!(r.from, p0);
    assert_eq!(
        addr_of::<XorMappedAddress>(&r.msg, |a| *a
            .as_xor_mapped_address()
            .unwrap()
            .socket_address()),
        me
    );
    // RFC 5389 clients get XOR-MAPPED-ADDRESS only (smaller reflected answers).
    assert!(r.msg.get::<MappedAddress>().is_none());
    // RESPONSE-ORIGIN only answers requests with CHANGE-REQUEST (below).
    assert!(r.msg.get::<ResponseOrigin>().is_none());
    assert_eq!(
        addr_of::<OtherAddress>(&r.msg, |a| *a.as_other_address().unwrap().socket_address()),
        a1
    );

    use ChangeRequestFlags::*;
    for (flags, want) in [
        (ChangeRequest::new(Some(ChangePort.into())), p1),
        (ChangeRequest::new(Some(ChangeIp.into())), a0),
        (ChangeRequest::new(Some(ChangeIp | ChangePort)), a1),
    ] {
        let r = binding(&sock, p0, Some(flags)).await;
        assert_eq!(r.from, want, "reply source for {flags:?}");
        assert_eq!(
            addr_of::<ResponseOrigin>(&r.msg, |a| *a
                .as_response_origin()
                .unwrap()
                .socket_address()),
            want
        );
    }
    // A request to the alternate cell names the primary as OTHER-ADDRESS.
    let r = binding(&sock, a1, None).await;
    assert_eq!(r.from, a1);
    assert_eq!(
        addr_of::<OtherAddress>(&r.msg, |a| *a.as_other_address().unwrap().socket_address()),
        p0
    );
    let m = relay.metrics();
    assert_eq!(Metrics::count(&m.stun_requests, "change", "ip_port"), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn change_ip_without_alternate_ip_is_an_error_420() {
    let mut cfg = config();
    cfg.stun.as_mut().unwrap().alt_ip = None;
    let relay = Relay::start(cfg).await.unwrap();
    assert_eq!(relay.stun_addrs.len(), 2);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = binding(
        &sock,
        relay.stun_addrs[0],
        Some(ChangeRequest::new(Some(
            ChangeRequestFlags::ChangeIp.into(),
        ))),
    )
    .await;
    assert_eq!(r.msg.class(), MessageClass::ErrorResponse);
    let code = r
        .msg
        .get::<ErrorCode>()
        .unwrap()
        .as_error_code()
        .unwrap()
        .error_code()
        .error_code();
    assert_eq!(code, 420);
    // Change-port alone still works, and OTHER-ADDRESS points at the other port.
    let r = binding(
        &sock,
        relay.stun_addrs[0],
        Some(ChangeRequest::new(Some(
            ChangeRequestFlags::ChangePort.into(),
        ))),
    )
    .await;
    assert_eq!(r.from, relay.stun_addrs[1]);
    relay.shutdown().await;
}

#[tokio::test]
async fn garbage_is_ignored_and_counted() {
    let relay = start().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p0 = relay.stun_addrs[0];
    sock.send_to(b"definitely not stun", p0).await.unwrap();
    sock.send_to(&[0u8; 20], p0).await.unwrap();
    // A valid Binding *response* sent to us is not answered either.
    let resp = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse).build();
    let mut buf = [0u8; 64];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &resp)
        .unwrap();
    sock.send_to(&buf[..n], p0).await.unwrap();
    let m = relay.metrics().clone();
    wait_for("garbage counted", || {
        Metrics::count(&m.stun_ignored, "reason", "malformed")
            + Metrics::count(&m.stun_ignored, "reason", "not_binding_request")
            == 3
    })
    .await;
    // Still serving afterwards, and nothing was sent back for the garbage.
    let r = binding(&sock, p0, None).await;
    assert_eq!(r.msg.class(), MessageClass::SuccessResponse);
    let mut rb = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(50), sock.recv_from(&mut rb))
            .await
            .is_err()
    );
    relay.shutdown().await;
}

/// RFC 3489 requests have no magic cookie: the reply echoes the full 16-byte ID and uses
/// the classic SOURCE-ADDRESS / CHANGED-ADDRESS attribute codes.
#[test]
fn classic_rfc3489_request() {
    let layout = wirekube_relay::stun::StunLayout {
        ips: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
        ports: [3478, 3479],
    };
    let mut req = vec![0x00, 0x01, 0x00, 0x08];
    req.extend_from_slice(&[0xAB; 16]);
    req.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 2]);
    let src: SocketAddr = "192.0.2.7:5000".parse().unwrap();
    let r = wirekube_relay::stun::handle(&layout, 0, 0, src, &req).unwrap();
    assert_eq!((r.ip, r.port), (0, 1));
    assert_eq!(&r.bytes[4..20], &[0xAB; 16]);
    let types: Vec<u16> = {
        let mut v = Vec::new();
        let mut off = 20;
        while off + 4 <= r.bytes.len() {
            v.push(u16::from_be_bytes([r.bytes[off], r.bytes[off + 1]]));
            off += 4
                + (u16::from_be_bytes([r.bytes[off + 2], r.bytes[off + 3]]) as usize).div_ceil(4)
                    * 4;
        }
        v
    };
    assert_eq!(types, vec![0x0001, 0x0004, 0x0005]);
}

fn minimal_binding_request() -> Vec<u8> {
    let req = StunMessageBuilder::new(BINDING, MessageClass::Request).build();
    let mut buf = [0u8; 64];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &req)
        .unwrap();
    buf[..n].to_vec()
}

/// A spoofed request makes us send the answer to the victim: the answer to a minimal
/// request must stay small (it was 88 bytes for 20, 4.4x, with SOFTWARE, both mapped
/// address attributes and RESPONSE-ORIGIN; 136 bytes, 6.8x, for an IPv6 source).
#[tokio::test]
async fn reflection_factor_is_small() {
    let relay = start().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req = minimal_binding_request();
    assert_eq!(req.len(), 20);
    sock.send_to(&req, relay.stun_addrs[0]).await.unwrap();
    let mut rb = [0u8; 1024];
    let (n, _) = within("STUN response", sock.recv_from(&mut rb))
        .await
        .unwrap();
    let factor = n as f64 / req.len() as f64;
    eprintln!(
        "IPv4 minimal Binding request: {} -> {n} bytes ({factor:.1}x)",
        req.len()
    );
    assert!(factor <= 2.5, "reflection factor {factor}");

    // IPv6 sources need 24-byte address attributes; measured sans-IO.
    let layout = wirekube_relay::stun::StunLayout {
        ips: vec![
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        ],
        ports: [3478, 3479],
    };
    let src: SocketAddr = "[2001:db8:9::7]:5000".parse().unwrap();
    let r = wirekube_relay::stun::handle(&layout, 0, 0, src, &req).unwrap();
    let factor6 = r.bytes.len() as f64 / req.len() as f64;
    eprintln!(
        "IPv6: {} -> {} bytes ({factor6:.1}x)",
        req.len(),
        r.bytes.len()
    );
    assert!(factor6 <= 3.5, "IPv6 reflection factor {factor6}");
    // With CHANGE-REQUEST the answer also carries RESPONSE-ORIGIN; the request is larger.
    let mut req = req;
    req[3] = 8;
    req.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 2]);
    let r = wirekube_relay::stun::handle(&layout, 0, 0, src, &req).unwrap();
    let factor6c = r.bytes.len() as f64 / req.len() as f64;
    eprintln!(
        "IPv6 with CHANGE-REQUEST: {} -> {} bytes ({factor6c:.1}x)",
        req.len(),
        r.bytes.len()
    );
    assert!(
        factor6c <= 3.5,
        "IPv6 change-request reflection factor {factor6c}"
    );
    relay.shutdown().await;
}

/// A source over its answer budget gets nothing back (the requests are counted), while
/// another source is still answered.
#[tokio::test]
async fn answers_are_rate_limited_per_source() {
    let mut cfg = config();
    cfg.stun_rate = 0.001;
    cfg.stun_burst = 5;
    let relay = Relay::start(cfg).await.unwrap();
    let p0 = relay.stun_addrs[0];
    let flooder = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let req = minimal_binding_request();
    for _ in 0..20 {
        flooder.send_to(&req, p0).await.unwrap();
    }
    let m = relay.metrics().clone();
    wait_for("over-limit requests counted", || {
        Metrics::count(&m.stun_ignored, "reason", "rate_limited") == 15
    })
    .await;
    // One task serves the socket in order and loopback delivery is immediate, so every
    // answer the flooder will ever get is already in its receive buffer.
    let mut answers = 0;
    let mut rb = [0u8; 1024];
    while flooder.try_recv_from(&mut rb).is_ok() {
        answers += 1;
    }
    assert_eq!(answers, 5, "only the burst is answered");
    let other = UdpSocket::bind("127.0.0.4:0").await.unwrap();
    let r = binding(&other, p0, None).await;
    assert_eq!(r.msg.class(), MessageClass::SuccessResponse);
    relay.shutdown().await;
}
