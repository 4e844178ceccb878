//! Helpers shared by the relay integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use wirekube_relay::{Relay, RelayConfig, StunConfig, TokenSource};
use wirekube_relay_client::{RelayClient, RelayClientConfig, RelayReceiver};
use wirekube_relay_proto::{
    Frame, FrameCodec, PROTOCOL_VERSION, PrivateKey, PublicKey, client_auth,
};

pub const TOKEN: &[u8] = b"mesh-token";
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn config() -> RelayConfig {
    let mut c = RelayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        TokenSource::Static(TOKEN.to_vec()),
    );
    // Every test client comes from 127.0.0.1; keep the per-IP limit out of the way.
    c.registration_rate = 10_000.0;
    c.registration_burst = 10_000;
    c.stun = Some(StunConfig {
        ip: "127.0.0.1".parse().unwrap(),
        port: 0,
        alt_port: 0,
        alt_ip: Some("127.0.0.2".parse().unwrap()),
    });
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    c
}

pub async fn start() -> Relay {
    Relay::start(config()).await.expect("relay starts")
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub async fn client(relay: &Relay) -> (RelayClient, RelayReceiver, PrivateKey) {
    client_with(relay.tcp_addr, TOKEN).await
}

pub async fn client_with(
    addr: SocketAddr,
    token: &[u8],
) -> (RelayClient, RelayReceiver, PrivateKey) {
    let key = PrivateKey::generate();
    let mut cfg = RelayClientConfig::new(addr.to_string(), key.clone(), token.to_vec());
    cfg.min_backoff = Duration::from_millis(20);
    cfg.max_backoff = Duration::from_millis(200);
    let (c, rx) = RelayClient::start(cfg);
    (c, rx, key)
}

pub async fn connected(relay: &Relay) -> (RelayClient, RelayReceiver, PrivateKey) {
    let (c, rx, k) = client(relay).await;
    assert!(
        c.wait_connected(DEADLINE).await,
        "client connects: {:?}",
        c.state()
    );
    wait_for("registration", || relay.is_registered(&k.public_key())).await;
    (c, rx, k)
}

/// A hand-driven protocol connection for misbehaving-client tests.
pub struct Raw(pub Framed<TcpStream, FrameCodec>);

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw(Framed::new(
            TcpStream::connect(addr).await.unwrap(),
            FrameCodec,
        ))
    }

    pub async fn send(&mut self, f: Frame) {
        self.0.send(f).await.unwrap();
    }

    pub async fn recv(&mut self) -> Option<Frame> {
        within("frame from relay", self.0.next())
            .await
            .map(|r| r.unwrap())
    }

    /// Sends Hello for `key` and returns the challenge.
    pub async fn hello(&mut self, key: PublicKey) -> ([u8; 32], [u8; 32]) {
        self.send(Frame::Hello {
            version: PROTOCOL_VERSION,
            key,
        })
        .await;
        match self.recv().await {
            Some(Frame::Challenge { ephemeral, nonce }) => (ephemeral, nonce),
            other => panic!("expected challenge, got {other:?}"),
        }
    }

    /// Full honest handshake; returns the Auth frame that was sent.
    pub async fn login(addr: SocketAddr, key: &PrivateKey) -> (Raw, Frame) {
        let mut r = Raw::connect(addr).await;
        let (e, n) = r.hello(key.public_key()).await;
        let auth = client_auth(key, &e, &n, TOKEN).unwrap();
        r.send(auth.clone()).await;
        assert_eq!(r.recv().await, Some(Frame::AuthOk));
        (r, auth)
    }

    /// Expects an Error frame with `code`, then the connection closing.
    pub async fn expect_refused(&mut self, code: wirekube_relay_proto::ErrorCode) {
        match self.recv().await {
            Some(Frame::Error { code: c, .. }) => assert_eq!(c, code),
            other => panic!("expected error {code:?}, got {other:?}"),
        }
        assert!(
            self.0.next().await.is_none(),
            "connection closes after the error"
        );
    }
}

/// Minimal HTTP/1.1 GET without pulling in an HTTP client.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    within("http response", s.read_to_string(&mut out))
        .await
        .unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}
