//! One client connection: handshake, then a reader (this task) and a writer task
//! (`pump`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Decoder, Encoder, Framed};
use wirekube_relay_proto::handshake::{Authenticated, Refusal as HandshakeRefusal};
use wirekube_relay_proto::{
    CodecError, DecodeError, ErrorCode, Frame, FrameCodec, LEN_PREFIX, MAX_TOKEN_LEN, PublicKey,
    ServerHandshake,
};

use crate::admission::Ticket;
use crate::outbox::Chunk;
use crate::pump::{Reader, write_loop};
use crate::shared::{Peer, Shared};

/// Longest frame a client may send before it authenticated: an Auth frame with the
/// longest token (Hello is shorter). Checked before buffering, so an unauthenticated
/// connection never makes us reserve a maximum-size (64 KiB) frame.
const MAX_HANDSHAKE_FRAME: usize = 1 + 32 + MAX_TOKEN_LEN;

/// [`FrameCodec`] with the length limit of the handshake.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HandshakeCodec;

impl Decoder for HandshakeCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if let Some(p) = src.get(..LEN_PREFIX) {
            let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            if len > MAX_HANDSHAKE_FRAME {
                return Err(DecodeError::FrameTooLarge {
                    len,
                    max: MAX_HANDSHAKE_FRAME,
                }
                .into());
            }
        }
        FrameCodec.decode(src)
    }
}

impl Encoder<Frame> for HandshakeCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        FrameCodec.encode(item, dst)
    }
}

/// How long we keep reading (and discarding) after sending an Error frame, so the peer
/// receives it instead of a TCP reset caused by unread data in our receive buffer.
const LINGER: Duration = Duration::from_millis(500);

struct Refusal {
    /// Error frame to send; `None` when the peer is already gone.
    code: Option<ErrorCode>,
    /// Metric label.
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            reason,
            message: message.into(),
        }
    }

    fn silent(reason: &'static str) -> Self {
        Self {
            code: None,
            reason,
            message: String::new(),
        }
    }

    fn from_stream(e: CodecError) -> Self {
        match e {
            CodecError::Decode(d) => {
                Self::new(ErrorCode::MalformedFrame, "malformed", d.to_string())
            }
            _ => Self::silent("io"),
        }
    }
}

impl From<HandshakeRefusal> for Refusal {
    fn from(r: HandshakeRefusal) -> Self {
        Refusal::new(r.code(), r.reason(), r.to_string())
    }
}

async fn linger<R: AsyncRead + Unpin>(r: &mut R) {
    let _ = timeout(LINGER, async {
        let mut b = [0u8; 4096];
        while let Ok(n) = r.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Sends an Error frame on a connection that never authenticated, then closes it.
pub(crate) async fn refuse<C: Encoder<Frame>>(
    mut framed: Framed<TcpStream, C>,
    code: ErrorCode,
    message: String,
) {
    let _ = timeout(
        Duration::from_secs(1),
        framed.send(Frame::error(code, message)),
    )
    .await;
    let mut stream = framed.into_inner();
    let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
    linger(&mut stream).await;
}

/// Drives the protocol's handshake ([`ServerHandshake`]) over the connection, adding the
/// relay's own policy: the first-frame deadline, the per-source rate limit (after the Hello,
/// before any crypto) and the replay memory.
async fn handshake(
    framed: &mut Framed<TcpStream, HandshakeCodec>,
    ip: IpAddr,
    shared: &Shared,
) -> Result<PublicKey, Refusal> {
    let mut hs = ServerHandshake::new();
    // Most of a connection's life before auth is spent waiting for its first frame, so
    // that wait gets its own short deadline (the whole handshake keeps auth_timeout).
    let first = timeout(shared.cfg.first_frame_timeout, framed.next())
        .await
        .map_err(|_| {
            Refusal::new(
                ErrorCode::AuthTimeout,
                "hello_timeout",
                "no Hello before the first-frame deadline",
            )
        })?;
    hs.hello(next_frame(first)?).map_err(Refusal::from)?;
    // Checked before any crypto so a flood from one address costs us little.
    if !shared.limiter.allow(ip) {
        return Err(Refusal::new(
            ErrorCode::RateLimited,
            "rate_limited",
            "too many registrations",
        ));
    }
    let challenge = hs.challenge().ok_or(Refusal::silent("protocol"))?;
    if framed.send(challenge).await.is_err() {
        return Err(Refusal::silent("io"));
    }
    let auth = next_frame(framed.next().await)?;
    match hs.auth(auth, |token| shared.tokens.matches(token)) {
        Ok(Authenticated { key, mac }) => {
            shared.replays.remember(mac);
            Ok(key)
        }
        Err(HandshakeRefusal::BadProof { mac }) if shared.replays.seen(&mac) => Err(Refusal::new(
            ErrorCode::Replayed,
            "replay",
            "replayed authentication",
        )),
        Err(r) => Err(r.into()),
    }
}

/// A frame read during the handshake, or why there is none.
fn next_frame(read: Option<Result<Frame, CodecError>>) -> Result<Frame, Refusal> {
    match read {
        None => Err(Refusal::silent("closed")),
        Some(Err(e)) => Err(Refusal::from_stream(e)),
        Some(Ok(f)) => Ok(f),
    }
}

/// Serves one accepted connection to completion.
pub(crate) async fn serve(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut ticket: Ticket,
) {
    let _ = stream.set_nodelay(true);
    // Detects peers that vanished without FIN while idle (their node died).
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
    let mut framed = Framed::new(stream, HandshakeCodec);

    let hs = tokio::select! {
        r = timeout(shared.cfg.auth_timeout, handshake(&mut framed, addr.ip(), &shared)) => r,
        _ = shared.shutdown.cancelled() => Ok(Err(Refusal::new(ErrorCode::ShuttingDown, "shutdown", "relay shutting down"))),
        // Closed without an Error frame or linger: evictions happen at flood rates.
        _ = ticket.evicted().cancelled() => Ok(Err(Refusal::silent("evicted"))),
    };
    let key = match hs {
        Ok(Ok(k)) => k,
        Ok(Err(r)) => {
            shared.metrics.auth_failure(r.reason);
            tracing::debug!(%addr, reason = r.reason, "handshake refused");
            if let Some(code) = r.code {
                refuse(framed, code, r.message).await;
            }
            return;
        }
        Err(_) => {
            shared.metrics.auth_failure("timeout");
            refuse(
                framed,
                ErrorCode::AuthTimeout,
                "authentication deadline exceeded".into(),
            )
            .await;
            return;
        }
    };
    ticket.authenticated();
    // AuthOk goes out before registration so the client never sees Data before it.
    match timeout(shared.cfg.write_timeout, framed.send(Frame::AuthOk)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    shared.metrics.auth_ok.inc();
    let parts = framed.into_parts();
    let (mut rd, wr) = parts.io.into_split();
    let mut buf = parts.read_buf;

    let outbox = shared.outbox();
    let kick = shared.shutdown.child_token();
    let id = shared.register(
        key,
        Peer {
            id: 0,
            outbox: outbox.clone(),
            kick: kick.clone(),
        },
    );
    tracing::debug!(%addr, %key, "client registered");
    let writer = tokio::spawn(write_loop(wr, outbox.clone(), kick.clone(), shared.clone()));

    let (reason, error) = Reader::new(key, &outbox, &kick, &shared)
        .run(&mut rd, &mut buf)
        .await;
    let (reason, error) = if reason == "kicked" {
        if shared.shutdown.is_cancelled() {
            (
                "shutdown",
                Some(Frame::error(ErrorCode::ShuttingDown, "relay shutting down")),
            )
        } else if outbox.failed() {
            // The writer kicks us when the socket write fails.
            ("write_failed", None)
        } else {
            (
                "replaced",
                Some(Frame::error(
                    ErrorCode::Replaced,
                    "key registered by a newer connection",
                )),
            )
        }
    } else {
        (reason, error)
    };
    shared.deregister(&key, id);
    let last = error
        .and_then(|f| f.to_bytes().ok())
        .map(|b| Chunk::control(b, true));
    let sent_error = outbox.close_with(last);
    let _ = writer.await;
    if sent_error {
        linger(&mut rd).await;
    }
    shared.metrics.disconnect(reason);
    tracing::debug!(%addr, %key, reason, "client disconnected");
}
