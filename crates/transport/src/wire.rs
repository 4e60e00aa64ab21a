//! One framed message each way on a QUIC bidirectional stream.

use qkv_proto::frame::{self, LEN_BYTES};
use serde::de::DeserializeOwned;

/// Why a frame could not be read or written.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// The stream or its connection ended, was reset or stopped.
    #[error("stream ended: {0}")]
    Stream(String),
    /// The frame is over the limit (refused before anything was allocated or sent).
    #[error("frame of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The bytes are not a frame of this protocol: empty, another version, or a body
    /// that does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl From<qkv_proto::Error> for FrameError {
    /// The framing functions of `qkv_proto::frame` say what went wrong as wire errors.
    fn from(e: qkv_proto::Error) -> Self {
        match e {
            qkv_proto::Error::TooLarge { size, max, .. } => FrameError::TooLarge { size, max },
            qkv_proto::Error::BadRequest(m) => FrameError::Malformed(m),
            other => FrameError::Malformed(other.to_string()),
        }
    }
}

impl From<FrameError> for qkv_proto::Error {
    /// What the other side is told about a frame it sent.
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Stream(m) => qkv_proto::Error::Unreachable(m),
            FrameError::TooLarge { size, max } => qkv_proto::Error::TooLarge { what: "frame".into(), size, max },
            FrameError::Malformed(m) => qkv_proto::Error::BadRequest(m),
        }
    }
}

/// Read one frame, refusing it before allocating when it is over `frame_bytes_max`.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    frame_bytes_max: usize,
) -> Result<T, FrameError> {
    let len = read_len(recv, frame_bytes_max).await?;
    read_body(recv, len).await
}

/// Read a frame's length prefix, refusing a frame over `frame_bytes_max`.
pub async fn read_len(recv: &mut quinn::RecvStream, frame_bytes_max: usize) -> Result<usize, FrameError> {
    let mut prefix = [0u8; LEN_BYTES];
    recv.read_exact(&mut prefix).await.map_err(|e| FrameError::Stream(format!("reading a frame: {e}")))?;
    Ok(frame::decode_len(prefix, frame_bytes_max)?)
}

/// Read and decode a frame body of `len` bytes (after [`read_len`]).
pub async fn read_body<T: DeserializeOwned>(recv: &mut quinn::RecvStream, len: usize) -> Result<T, FrameError> {
    Ok(frame::decode_body(&read_bytes(recv, len).await?)?)
}

/// Read a frame body of `len` bytes (after [`read_len`]), undecoded.
pub async fn read_bytes(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| FrameError::Stream(format!("reading a frame: {e}")))?;
    Ok(body)
}

/// Write one frame and finish the sending side.
pub async fn write_frame<T: frame::Message>(
    send: &mut quinn::SendStream,
    msg: &T,
    frame_bytes_max: usize,
) -> Result<(), FrameError> {
    let bytes = frame::encode(msg, frame_bytes_max)?;
    send.write_all(&bytes).await.map_err(|e| FrameError::Stream(format!("writing a frame: {e}")))?;
    send.finish().map_err(|e| FrameError::Stream(format!("finishing a stream: {e}")))?;
    Ok(())
}
