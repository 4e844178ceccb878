//! `tokio-util` codec adapter over the sans-IO [`Frame`] functions.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{DecodeError, EncodeError, Frame};

/// Error from a framed relay stream.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer sent bytes that are not a frame.
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// We tried to send a frame that exceeds a limit.
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Codec for `tokio_util::codec::Framed` on a relay TCP stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(Frame::decode(src)?)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(item.encode(dst)?)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(item.encode(dst)?)
    }
}
