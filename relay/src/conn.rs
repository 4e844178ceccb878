//! One client connection: handshake, then a reader (this task) and a writer task.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::{Framed, FramedRead};
use tokio_util::sync::CancellationToken;
use wirekube_relay_proto::{
    CodecError, ErrorCode, Frame, FrameCodec, PROTOCOL_VERSION, PublicKey, ServerChallenge,
};

use crate::shared::{Peer, Shared};

/// Stop filling a write batch beyond this many bytes so one busy sender cannot
/// monopolise the writer's buffer.
const BATCH_BYTES: usize = 256 * 1024;
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
pub(crate) async fn refuse(
    mut framed: Framed<TcpStream, FrameCodec>,
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

async fn handshake(
    framed: &mut Framed<TcpStream, FrameCodec>,
    ip: IpAddr,
    shared: &Shared,
) -> Result<PublicKey, Refusal> {
    let key = match framed.next().await {
        None => return Err(Refusal::silent("closed")),
        Some(Err(e)) => return Err(Refusal::from_stream(e)),
        Some(Ok(Frame::Hello { version, key })) => {
            if version != PROTOCOL_VERSION {
                return Err(Refusal::new(
                    ErrorCode::UnsupportedVersion,
                    "version",
                    format!("relay speaks version {PROTOCOL_VERSION}, client sent {version}"),
                ));
            }
            key
        }
        Some(Ok(_)) => {
            return Err(Refusal::new(
                ErrorCode::ProtocolViolation,
                "protocol",
                "expected Hello",
            ));
        }
    };
    // Checked before any crypto so a flood from one address costs us little.
    if !shared.limiter.allow(ip) {
        return Err(Refusal::new(
            ErrorCode::RateLimited,
            "rate_limited",
            "too many registrations",
        ));
    }
    let challenge = ServerChallenge::new();
    if framed.send(challenge.frame()).await.is_err() {
        return Err(Refusal::silent("io"));
    }
    let (mac, token) = match framed.next().await {
        None => return Err(Refusal::silent("closed")),
        Some(Err(e)) => return Err(Refusal::from_stream(e)),
        Some(Ok(Frame::Auth { mac, token })) => (mac, token),
        Some(Ok(Frame::Data { .. })) => {
            return Err(Refusal::new(
                ErrorCode::ProtocolViolation,
                "protocol",
                "data before auth",
            ));
        }
        Some(Ok(_)) => {
            return Err(Refusal::new(
                ErrorCode::ProtocolViolation,
                "protocol",
                "expected Auth",
            ));
        }
    };
    if !shared.tokens.matches(&token) {
        return Err(Refusal::new(
            ErrorCode::BadToken,
            "bad_token",
            "mesh token rejected",
        ));
    }
    if challenge.verify(&key, &mac, &token).is_err() {
        return Err(Refusal::new(
            ErrorCode::BadProof,
            "bad_proof",
            "key possession proof failed",
        ));
    }
    Ok(key)
}

/// Serves one accepted connection to completion.
pub(crate) async fn serve(stream: TcpStream, addr: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // Detects peers that vanished without FIN while idle (their node died).
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
    let mut framed = Framed::new(stream, FrameCodec);

    let hs = tokio::select! {
        r = timeout(shared.cfg.auth_timeout, handshake(&mut framed, addr.ip(), &shared)) => r,
        _ = shared.shutdown.cancelled() => Ok(Err(Refusal::new(ErrorCode::ShuttingDown, "shutdown", "relay shutting down"))),
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
    // AuthOk goes out before registration so the client never sees Data before it.
    match timeout(shared.cfg.write_timeout, framed.send(Frame::AuthOk)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    shared.metrics.auth_ok.inc();
    let parts = framed.into_parts();
    let (rd, wr) = parts.io.into_split();
    let mut reader = FramedRead::new(rd, FrameCodec);
    reader.read_buffer_mut().extend_from_slice(&parts.read_buf);

    let (tx, rx) = mpsc::channel(shared.cfg.queue_depth.max(1));
    let kick = shared.shutdown.child_token();
    let id = shared.register(
        key,
        Peer {
            id: 0,
            tx: tx.clone(),
            kick: kick.clone(),
        },
    );
    tracing::debug!(%addr, %key, "client registered");
    let writer = tokio::spawn(write_loop(wr, rx, kick.clone(), shared.clone()));

    let (reason, error) = read_loop(&mut reader, key, &tx, &kick, &shared).await;
    let (reason, error) = if reason == "kicked" {
        if shared.shutdown.is_cancelled() {
            (
                "shutdown",
                Some(Frame::error(ErrorCode::ShuttingDown, "relay shutting down")),
            )
        } else if tx.is_closed() {
            // The writer closes its queue before kicking us when the socket write fails.
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
    let sent_error = match error {
        Some(f) => shared.enqueue(&tx, f).is_ok(),
        None => false,
    };
    drop(tx);
    let _ = writer.await;
    if sent_error {
        linger(reader.get_mut()).await;
    }
    shared.metrics.disconnect(reason);
    tracing::debug!(%addr, %key, reason, "client disconnected");
}

/// Returns the disconnect reason and an optional Error frame to send.
async fn read_loop(
    reader: &mut FramedRead<OwnedReadHalf, FrameCodec>,
    me: PublicKey,
    tx: &mpsc::Sender<Frame>,
    kick: &CancellationToken,
    shared: &Shared,
) -> (&'static str, Option<Frame>) {
    loop {
        let f = tokio::select! {
            _ = kick.cancelled() => return ("kicked", None),
            f = reader.next() => f,
        };
        match f {
            None => return ("closed", None),
            Some(Ok(Frame::Data { key, payload })) => shared.forward(me, key, payload),
            Some(Ok(Frame::Ping(v))) => {
                let _ = shared.enqueue(tx, Frame::Pong(v));
            }
            Some(Ok(Frame::Pong(_))) => {}
            Some(Ok(other)) => {
                let msg = format!("unexpected {} after auth", frame_name(&other));
                return (
                    "protocol",
                    Some(Frame::error(ErrorCode::ProtocolViolation, msg)),
                );
            }
            Some(Err(CodecError::Decode(e))) => {
                return (
                    "malformed",
                    Some(Frame::error(ErrorCode::MalformedFrame, e.to_string())),
                );
            }
            Some(Err(_)) => return ("io", None),
        }
    }
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

/// Drains the queue into the socket, batching everything already queued into one write.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Frame>,
    kick: CancellationToken,
    shared: Arc<Shared>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let m = &shared.metrics;
    let mut failed = false;
    'outer: while let Some(first) = rx.recv().await {
        let (mut frames, mut bytes, mut closing) = (0u64, 0u64, false);
        let mut next = Some(first);
        while let Some(f) = next.take() {
            m.queue_depth.dec();
            match &f {
                Frame::Data { payload, .. } => {
                    frames += 1;
                    bytes += payload.len() as u64;
                }
                Frame::Error { .. } => closing = true,
                _ => {}
            }
            // Frames built by the relay are within protocol limits.
            let _ = f.encode(&mut buf);
            if closing || buf.len() >= BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        match timeout(shared.cfg.write_timeout, wr.write_all(&buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                failed = true;
                m.drop_n("write_failed", frames);
                break 'outer;
            }
        }
        buf.clear();
        m.forwarded_frames.inc_by(frames);
        m.forwarded_bytes.inc_by(bytes);
        if closing {
            break;
        }
    }
    // Stop producers first, then account for what they had queued.
    rx.close();
    while let Ok(f) = rx.try_recv() {
        m.queue_depth.dec();
        if matches!(f, Frame::Data { .. }) {
            m.dropped("connection_closed");
        }
    }
    // Wake the reader so a stalled or finished client releases its slot now.
    kick.cancel();
    if !failed {
        let _ = timeout(Duration::from_secs(1), wr.shutdown()).await;
    }
}
