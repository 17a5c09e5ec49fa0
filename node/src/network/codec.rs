//! The task protocol's stream codec: an unsigned-varint length prefix, then one
//! [`crank_protocol::codec`] frame.
//!
//! A frame that is oversize or does not decode is handed up as [`Frame::Invalid`] rather than
//! as an I/O error, so the event loop can answer the peer with a clear protocol error, log
//! who sent it and count it against the peer, instead of silently resetting the stream.

use std::io;

use crank_protocol::codec::{self, CodecError};
use crank_protocol::{Request, Response};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// The protocol name of the task flow.
pub const TASK_PROTOCOL: StreamProtocol = StreamProtocol::new("/crank/task/1");

/// A decoded frame, or why it could not be decoded.
#[derive(Debug)]
pub enum Frame<T> {
    /// A well-formed message.
    Valid(T),
    /// The frame was refused; the stream itself was fine.
    Invalid(CodecError),
}

/// Length-prefixed postcard frames with a size limit per direction.
#[derive(Debug, Clone, Copy)]
pub struct TaskCodec {
    /// Largest request frame accepted, bytes.
    pub max_request: usize,
    /// Largest response frame accepted, bytes.
    pub max_response: usize,
}

impl Default for TaskCodec {
    fn default() -> Self {
        Self {
            max_request: codec::DEFAULT_MAX_FRAME,
            max_response: codec::DEFAULT_MAX_FRAME,
        }
    }
}

async fn read_varint<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<usize> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        value |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return usize::try_from(value).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "length prefix overflows")
            });
        }
        if shift >= 56 {
            break;
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "length prefix too long",
    ))
}

async fn read_frame<T, M>(io: &mut T, max: usize) -> io::Result<Frame<M>>
where
    T: AsyncRead + Unpin + Send,
    M: serde::de::DeserializeOwned + serde::Serialize,
{
    let len = read_varint(io).await?;
    if len > max {
        // Don't read the body: answering is enough, and the stream is closed afterwards.
        return Ok(Frame::Invalid(CodecError::TooLarge { len, limit: max }));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(match codec::decode::<M>(&buf, max) {
        Ok(m) => Frame::Valid(m),
        Err(e) => Frame::Invalid(e),
    })
}

async fn write_frame<T, M>(io: &mut T, msg: &Frame<M>) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: serde::Serialize,
{
    let Frame::Valid(msg) = msg else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to send an invalid frame",
        ));
    };
    let bytes = codec::encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut prefix = unsigned_varint_bytes(bytes.len());
    prefix.extend_from_slice(&bytes);
    io.write_all(&prefix).await?;
    io.flush().await
}

fn unsigned_varint_bytes(mut n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

impl libp2p::request_response::Codec for TaskCodec {
    type Protocol = StreamProtocol;
    type Request = Frame<Request>;
    type Response = Frame<Response>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request).await
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crank_protocol::{FetchModel, ModelId};
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    fn req() -> Request {
        Request::FetchModel(FetchModel {
            model: ModelId([3; 32]),
            offset: 0,
            max_len: 10,
            award: None,
        })
    }

    #[tokio::test]
    async fn round_trip_through_a_stream() {
        let mut codec = TaskCodec::default();
        let mut buf = Cursor::new(Vec::new());
        codec
            .write_request(&TASK_PROTOCOL, &mut buf, Frame::Valid(req()))
            .await
            .unwrap();
        buf.set_position(0);
        match codec.read_request(&TASK_PROTOCOL, &mut buf).await.unwrap() {
            Frame::Valid(r) => assert_eq!(r, req()),
            Frame::Invalid(e) => panic!("unexpected {e}"),
        }
    }

    #[tokio::test]
    async fn oversize_and_garbage_become_invalid_frames() {
        let mut codec = TaskCodec {
            max_request: 16,
            max_response: 16,
        };
        let mut big = unsigned_varint_bytes(1_000_000);
        big.extend_from_slice(&[0; 32]);
        let got = codec
            .read_request(&TASK_PROTOCOL, &mut Cursor::new(big))
            .await
            .unwrap();
        assert!(matches!(
            got,
            Frame::Invalid(CodecError::TooLarge {
                len: 1_000_000,
                limit: 16
            })
        ));

        let mut garbage = unsigned_varint_bytes(4);
        garbage.extend_from_slice(&[crank_protocol::codec::WIRE_VERSION, 250, 251, 252]);
        let got = codec
            .read_request(&TASK_PROTOCOL, &mut Cursor::new(garbage))
            .await
            .unwrap();
        assert!(matches!(got, Frame::Invalid(CodecError::Malformed(_))));
    }

    #[tokio::test]
    async fn truncated_stream_is_an_io_error() {
        let mut codec = TaskCodec::default();
        let mut short = unsigned_varint_bytes(100);
        short.extend_from_slice(&[1, 2, 3]);
        assert!(
            codec
                .read_request(&TASK_PROTOCOL, &mut Cursor::new(short))
                .await
                .is_err()
        );
        let endless = vec![0xffu8; 20];
        assert!(
            codec
                .read_request(&TASK_PROTOCOL, &mut Cursor::new(endless))
                .await
                .is_err()
        );
    }
}
