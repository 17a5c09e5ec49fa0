//! Identifiers: node ids (ed25519 public keys) and blake3 content ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Error parsing a 32-byte id from hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex characters for a 32-byte id, got {got:?}")]
pub struct IdParseError {
    /// The text that did not parse (cut to 80 characters).
    pub got: String,
}

macro_rules! id32 {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        ///
        /// On the wire it is 32 raw bytes; in human-readable formats (JSON) it is hex.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    Ok(Self(<[u8; 32]>::deserialize(d)?))
                }
            }
        }

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lower-case hex of all 32 bytes.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex characters, for logs and tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || IdParseError { got: s.chars().take(80).collect() };
                let bytes = hex::decode(s.trim()).map_err(|_| err())?;
                let arr: [u8; 32] = bytes.try_into().map_err(|_| err())?;
                Ok(Self(arr))
            }
        }
    };
}

id32!(
    /// A node's identity: its ed25519 public key. The libp2p peer id is derived from it.
    NodeId
);
id32!(
    /// A blake3 hash of some bytes (an input, an output, a receipt batch).
    ContentHash
);
id32!(
    /// A model's content id: the blake3 hash of its ONNX bytes.
    ModelId
);
id32!(
    /// A task's id, chosen by the requester (blake3 over requester, nonce and content).
    TaskId
);

impl ContentHash {
    /// The blake3 hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl ModelId {
    /// The content id of a model's bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The Kademlia provider key under which holders of this model register.
    pub fn provider_key(&self) -> Vec<u8> {
        format!("/crank/model/{}", self.to_hex()).into_bytes()
    }
}

impl TaskId {
    /// Derives a task id from the requester, a fresh nonce and what the task runs on.
    pub fn derive(
        requester: &NodeId,
        nonce: &[u8; 16],
        model: &ModelId,
        input: &ContentHash,
    ) -> Self {
        let mut h = blake3::Hasher::new_derive_key("crank-node 1 task id");
        h.update(&requester.0);
        h.update(nonce);
        h.update(&model.0);
        h.update(&input.0);
        Self(*h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_short_form() {
        let id = ModelId::of(b"model bytes");
        let parsed: ModelId = id.to_hex().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(id.short().len(), 8);
        assert!(id.to_hex().starts_with(&id.short()));
    }

    #[test]
    fn bad_hex_is_an_error_not_a_panic() {
        assert!("zz".parse::<NodeId>().is_err());
        assert!("00".parse::<NodeId>().is_err());
        assert!("".parse::<TaskId>().is_err());
    }

    #[test]
    fn task_ids_depend_on_every_input() {
        let r = NodeId([1; 32]);
        let m = ModelId([2; 32]);
        let i = ContentHash([3; 32]);
        let a = TaskId::derive(&r, &[0; 16], &m, &i);
        assert_ne!(a, TaskId::derive(&r, &[1; 16], &m, &i));
        assert_ne!(a, TaskId::derive(&NodeId([9; 32]), &[0; 16], &m, &i));
        assert_ne!(a, TaskId::derive(&r, &[0; 16], &ModelId([9; 32]), &i));
        assert_ne!(a, TaskId::derive(&r, &[0; 16], &m, &ContentHash([9; 32])));
    }
}
