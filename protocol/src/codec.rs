//! The versioned wire codec: one version byte, then postcard.
//!
//! Postcard has a stable, documented format but no field tags, so the version byte is what
//! lets a future node refuse (rather than misread) a frame it does not understand. Decoding
//! is bounded by the input: no length is allocated for before the input could hold it and
//! every vector and string has a wire maximum (see [`crate::bounded`]); trailing bytes and
//! non-canonical encodings are errors, so one message has exactly one frame.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The wire format version this crate reads and writes.
///
/// Version 2 changed the signed call for bids, bid, award and receipt (nonce, payer account,
/// bids that bind the work) and split the result into a receipt and signed outputs.
/// Version 3 added the `onnxruntime` execution path (bids, receipts), the models a worker
/// cannot serve (adverts), the decline that says so and the dispute of outputs that do not
/// fit the model (appended, so stored disputes still decode); receipts keep version 2's
/// layout, so stored ones verify and settle unchanged. Every later change to a signed or stored type
/// bumps it again.
pub const WIRE_VERSION: u8 = 3;

/// Default limit for task-protocol frames: inputs and model chunks fit well inside it.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// Default limit for an advert frame on gossipsub.
pub const MAX_ADVERT_FRAME: usize = 64 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame is larger than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Frame size.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// The frame is empty.
    #[error("empty frame")]
    Empty,
    /// The frame is from a protocol version this node does not speak.
    #[error("wire version {got} is not supported (this node speaks version {WIRE_VERSION}); {}", upgrade_hint(*got))]
    UnsupportedVersion {
        /// The version byte received.
        got: u8,
    },
    /// The body does not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Bytes remain after the message.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// The body decodes, but not from its one canonical encoding (for example an overlong
    /// varint): refused, so that one message has exactly one frame and a captured message
    /// cannot be re-encoded into "new" ones.
    #[error("the frame is not the canonical encoding of its message")]
    NonCanonical,
    /// The message could not be encoded (a bug in a wire type).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Who must upgrade, said plainly, for an error a person reads in a log.
fn upgrade_hint(got: u8) -> &'static str {
    if got < WIRE_VERSION {
        "the peer runs an older crank-node and must upgrade"
    } else {
        "the peer runs a newer crank-node: upgrade this node"
    }
}

/// Encodes a message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![WIRE_VERSION];
    postcard::to_io(msg, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a frame of at most `max_len` bytes. The frame must be the message's canonical
/// encoding: the decoded message is encoded again and compared byte for byte.
pub fn decode<T: DeserializeOwned + Serialize>(
    frame: &[u8],
    max_len: usize,
) -> Result<T, CodecError> {
    if frame.len() > max_len {
        return Err(CodecError::TooLarge {
            len: frame.len(),
            limit: max_len,
        });
    }
    let (&version, body) = frame.split_first().ok_or(CodecError::Empty)?;
    if version != WIRE_VERSION {
        return Err(CodecError::UnsupportedVersion { got: version });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    // Re-encode into a comparison rather than a buffer: the check allocates nothing.
    let mut same = Compare {
        rest: body,
        differs: false,
    };
    let written = postcard::to_io(&value, &mut same).map(drop);
    match written {
        Ok(()) if same.rest.is_empty() => Ok(value),
        Ok(()) => Err(CodecError::NonCanonical),
        Err(_) if same.differs => Err(CodecError::NonCanonical),
        Err(e) => Err(CodecError::Encode(e.to_string())),
    }
}

/// A writer that checks the bytes written against `rest`, consuming it as they match, and
/// fails at the first byte that differs.
struct Compare<'a> {
    rest: &'a [u8],
    differs: bool,
}

impl std::io::Write for Compare<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.rest.strip_prefix(buf) {
            Some(rest) => {
                self.rest = rest;
                Ok(buf.len())
            }
            None => {
                self.differs = true;
                Err(std::io::ErrorKind::InvalidData.into())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ModelId;
    use crate::messages::{FetchModel, Request};

    fn sample() -> Request {
        Request::FetchModel(FetchModel {
            model: ModelId([7; 32]),
            offset: 5,
            max_len: 1024,
            award: None,
        })
    }

    #[test]
    fn round_trip() {
        let f = encode(&sample()).unwrap();
        assert_eq!(f[0], WIRE_VERSION);
        assert_eq!(decode::<Request>(&f, 1024).unwrap(), sample());
    }

    #[test]
    fn rejects_oversize_empty_version_trailing() {
        let f = encode(&sample()).unwrap();
        assert!(matches!(
            decode::<Request>(&f, 3),
            Err(CodecError::TooLarge { .. })
        ));
        assert_eq!(decode::<Request>(&[], 10), Err(CodecError::Empty));
        let mut newer = f.clone();
        newer[0] = WIRE_VERSION + 1;
        let err = decode::<Request>(&newer, 1024).unwrap_err();
        assert_eq!(
            err,
            CodecError::UnsupportedVersion {
                got: WIRE_VERSION + 1
            }
        );
        assert!(err.to_string().contains("upgrade this node"), "{err}");
        let mut older = f.clone();
        older[0] = 1;
        let err = decode::<Request>(&older, 1024).unwrap_err();
        assert!(err.to_string().contains("must upgrade"), "{err}");
        let mut long = f.clone();
        long.push(0);
        assert_eq!(
            decode::<Request>(&long, 1024),
            Err(CodecError::TrailingBytes(1))
        );
        assert!(matches!(
            decode::<Request>(&f[..f.len() - 1], 1024),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn overlong_varints_are_not_canonical() {
        // Variant 8 (GetAdvert) written as a two-byte varint: decodes, but is not the
        // message's one encoding. The fuzz target found the same in wire version 1.
        let frame = [WIRE_VERSION, 0x88, 0x00];
        assert_eq!(
            decode::<Request>(&frame, 1024),
            Err(CodecError::NonCanonical)
        );
        let canonical = encode(&Request::GetAdvert).unwrap();
        assert_eq!(decode::<Request>(&canonical, 1024), Ok(Request::GetAdvert));
    }

    #[test]
    fn fuzz_input_01_86_00_is_refused() {
        // Found by the `decode_request` fuzz target in wire version 1, whose variant 6 was
        // GetAdvert: postcard accepts the overlong varint 0x86 0x00 for 6, so the frame
        // decoded and re-encoded as [1, 6], and the round-trip assertion failed. Postcard
        // still accepts it (the same shape today is variant 8, GetAdvert)...
        assert_eq!(
            postcard::from_bytes::<Request>(&[0x88, 0x00]),
            Ok(Request::GetAdvert)
        );
        // ...so the canonical check refuses it, and a version 1 frame is refused outright.
        assert_eq!(
            decode::<Request>(&[WIRE_VERSION, 0x88, 0x00], 1024),
            Err(CodecError::NonCanonical)
        );
        assert_eq!(
            decode::<Request>(&[0x01, 0x86, 0x00], 1024),
            Err(CodecError::UnsupportedVersion { got: 1 })
        );
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate_wildly() {
        // Variant 3 = Result; then a claimed vector length near u32::MAX with no data behind it.
        let frame = [WIRE_VERSION, 3, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<Request>(&frame, 1024).is_err());
    }
}
