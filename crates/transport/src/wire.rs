//! One framed message each way on a QUIC bidirectional stream.

use qkv_proto::Error;
use qkv_proto::frame::{self, LEN_BYTES};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Read one frame, refusing it before allocating when it is over `frame_bytes_max`.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream, frame_bytes_max: usize) -> Result<T, Error> {
    let len = read_len(recv, frame_bytes_max).await?;
    read_body(recv, len).await
}

/// Read a frame's length prefix, refusing a frame over `frame_bytes_max`.
pub async fn read_len(recv: &mut quinn::RecvStream, frame_bytes_max: usize) -> Result<usize, Error> {
    let mut prefix = [0u8; LEN_BYTES];
    recv.read_exact(&mut prefix).await.map_err(|e| Error::Unreachable(format!("reading frame: {e}")))?;
    frame::decode_len(prefix, frame_bytes_max)
}

/// Read and decode a frame body of `len` bytes (after [`read_len`]).
pub async fn read_body<T: DeserializeOwned>(recv: &mut quinn::RecvStream, len: usize) -> Result<T, Error> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| Error::Unreachable(format!("reading frame: {e}")))?;
    frame::decode_body(&body)
}

/// Write one frame and finish the sending side.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
    frame_bytes_max: usize,
) -> Result<(), Error> {
    let bytes = frame::encode(msg, frame_bytes_max)?;
    send.write_all(&bytes).await.map_err(|e| Error::Unreachable(format!("writing frame: {e}")))?;
    send.finish().map_err(|e| Error::Unreachable(format!("finishing stream: {e}")))?;
    Ok(())
}
