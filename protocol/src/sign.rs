//! Node identity keys and signed messages.
//!
//! A signature covers `DOMAIN || 0x00 || postcard(body)`, where the domain names the message
//! kind and protocol version. Verification re-encodes the decoded body (postcard is
//! deterministic for these types) and uses ed25519 `verify_strict`, which rejects small-order
//! keys and malleable signatures.

use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// A message kind that can be signed.
pub trait Signable: Serialize {
    /// Domain separation tag, unique per message kind and protocol version.
    const DOMAIN: &'static str;
}

/// Why a signature could not be made or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signer field is not a valid ed25519 public key.
    #[error("signer {0:?} is not a valid ed25519 public key")]
    BadKey(NodeId),
    /// The signature does not verify for this body and signer.
    #[error("signature by {0:?} does not verify")]
    Invalid(NodeId),
    /// The message was signed by someone other than the party it names.
    #[error("message names {expected:?} but was signed by {actual:?}")]
    WrongSigner {
        /// Who should have signed.
        expected: NodeId,
        /// Who did.
        actual: NodeId,
    },
    /// The body could not be encoded (a bug in a wire type, never caused by input).
    #[error("cannot encode message body: {0}")]
    Encode(String),
}

/// An ed25519 signature, 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..6]))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            // Two 32-byte halves: serde implements arrays only up to 32 elements.
            let (a, b) = self.0.split_at(32);
            let mut lo = [0u8; 32];
            let mut hi = [0u8; 32];
            lo.copy_from_slice(a);
            hi.copy_from_slice(b);
            (lo, hi).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = [0u8; 64];
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let bytes = hex::decode(&s).map_err(serde::de::Error::custom)?;
            if bytes.len() != 64 {
                return Err(serde::de::Error::custom("signature must be 64 bytes"));
            }
            out.copy_from_slice(&bytes);
        } else {
            let (lo, hi) = <([u8; 32], [u8; 32])>::deserialize(d)?;
            out[..32].copy_from_slice(&lo);
            out[32..].copy_from_slice(&hi);
        }
        Ok(Self(out))
    }
}

/// A node's signing identity (ed25519). The same key is the node's libp2p identity.
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({:?})", self.node_id())
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            key: SigningKey::from_bytes(&self.key.to_bytes()),
        }
    }
}

impl Identity {
    /// An identity from 32 secret bytes (the ed25519 seed).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The 32 secret bytes, for persisting the key.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// This node's id (its public key).
    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// Signs raw bytes under a domain tag.
    pub fn sign_raw(&self, domain: &str, msg: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.key.sign(&domain_bytes(domain, msg)).to_bytes())
    }
}

fn domain_bytes(domain: &str, msg: &[u8]) -> Vec<u8> {
    // A capacity hint only: saturating is as good as exact.
    let mut v = Vec::with_capacity(domain.len().saturating_add(1).saturating_add(msg.len()));
    v.extend_from_slice(domain.as_bytes());
    v.push(0);
    v.extend_from_slice(msg);
    v
}

/// Verifies a signature by `signer` over `msg` under a domain tag.
pub fn verify_raw(
    signer: &NodeId,
    domain: &str,
    msg: &[u8],
    sig: &Signature,
) -> Result<(), SignatureError> {
    let key = VerifyingKey::from_bytes(&signer.0).map_err(|_| SignatureError::BadKey(*signer))?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
    key.verify_strict(&domain_bytes(domain, msg), &sig)
        .map_err(|_| SignatureError::Invalid(*signer))
}

fn encode_body<T: Serialize>(body: &T) -> Result<Vec<u8>, SignatureError> {
    postcard::to_allocvec(body).map_err(|e| SignatureError::Encode(e.to_string()))
}

/// A message body with its signer and signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The signed content.
    pub body: T,
    /// Who signed it.
    pub signer: NodeId,
    /// Signature over the domain tag and the body's encoding.
    pub signature: Signature,
}

impl<T: Signable> Signed<T> {
    /// Signs `body` with `identity`.
    pub fn sign(body: T, identity: &Identity) -> Result<Self, SignatureError> {
        let bytes = encode_body(&body)?;
        let signature = identity.sign_raw(T::DOMAIN, &bytes);
        Ok(Self {
            body,
            signer: identity.node_id(),
            signature,
        })
    }

    /// Checks the signature; returns the body on success.
    pub fn verify(&self) -> Result<&T, SignatureError> {
        let bytes = encode_body(&self.body)?;
        verify_raw(&self.signer, T::DOMAIN, &bytes, &self.signature)?;
        Ok(&self.body)
    }

    /// Checks the signature and that the signer is `expected`.
    pub fn verify_by(&self, expected: &NodeId) -> Result<&T, SignatureError> {
        if &self.signer != expected {
            return Err(SignatureError::WrongSigner {
                expected: *expected,
                actual: self.signer,
            });
        }
        self.verify()
    }
}

/// A signed message counter-signed by a second party (a receipt accepted by the requester).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterSigned<T> {
    /// The first party's signed message.
    pub inner: Signed<T>,
    /// Who counter-signed.
    pub countersigner: NodeId,
    /// Signature over the domain tag and the encoding of `inner` (signature included).
    pub countersignature: Signature,
}

impl<T: Signable> CounterSigned<T> {
    fn domain() -> String {
        format!("crank/1/countersign/{}", T::DOMAIN)
    }

    /// Counter-signs an already verified message.
    pub fn countersign(inner: Signed<T>, identity: &Identity) -> Result<Self, SignatureError> {
        let bytes = encode_body(&inner)?;
        let countersignature = identity.sign_raw(&Self::domain(), &bytes);
        Ok(Self {
            inner,
            countersigner: identity.node_id(),
            countersignature,
        })
    }

    /// Checks both signatures; returns the body on success.
    pub fn verify(&self) -> Result<&T, SignatureError> {
        self.inner.verify()?;
        let bytes = encode_body(&self.inner)?;
        verify_raw(
            &self.countersigner,
            &Self::domain(),
            &bytes,
            &self.countersignature,
        )?;
        Ok(&self.inner.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note(String);
    impl Signable for Note {
        const DOMAIN: &'static str = "crank/1/test-note";
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Other(String);
    impl Signable for Other {
        const DOMAIN: &'static str = "crank/1/test-other";
    }

    fn id(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    #[test]
    fn sign_then_verify() {
        let s = Signed::sign(Note("hi".into()), &id(1)).unwrap();
        assert_eq!(s.verify().unwrap(), &Note("hi".into()));
        assert!(s.verify_by(&id(1).node_id()).is_ok());
    }

    #[test]
    fn tampered_body_fails() {
        let mut s = Signed::sign(Note("hi".into()), &id(1)).unwrap();
        s.body.0.push('!');
        assert_eq!(s.verify(), Err(SignatureError::Invalid(id(1).node_id())));
    }

    #[test]
    fn wrong_signer_fails() {
        let mut s = Signed::sign(Note("hi".into()), &id(1)).unwrap();
        s.signer = id(2).node_id();
        assert!(s.verify().is_err());
        let s = Signed::sign(Note("hi".into()), &id(1)).unwrap();
        assert!(matches!(
            s.verify_by(&id(2).node_id()),
            Err(SignatureError::WrongSigner { .. })
        ));
    }

    #[test]
    fn signature_does_not_transfer_between_kinds() {
        let s = Signed::sign(Note("hi".into()), &id(1)).unwrap();
        let forged = Signed {
            body: Other("hi".into()),
            signer: s.signer,
            signature: s.signature,
        };
        assert!(forged.verify().is_err());
    }

    #[test]
    fn countersignature_covers_the_inner_signature() {
        let s = Signed::sign(Note("hi".into()), &id(1)).unwrap();
        let c = CounterSigned::countersign(s, &id(2)).unwrap();
        assert!(c.verify().is_ok());
        let mut bad = c.clone();
        bad.inner.signature.0[0] ^= 1;
        assert!(bad.verify().is_err());
        let mut bad = c;
        bad.countersigner = id(3).node_id();
        assert!(bad.verify().is_err());
    }

    #[test]
    fn invalid_public_key_is_an_error() {
        let s = Signed::sign(Note("hi".into()), &id(1)).unwrap();
        // Find a 32-byte string that is not a valid compressed Edwards point.
        let bad = (0u8..=255)
            .map(|b| {
                let mut k = [0xffu8; 32];
                k[0] = b;
                NodeId(k)
            })
            .find(|k| VerifyingKey::from_bytes(&k.0).is_err())
            .unwrap();
        let forged = Signed { signer: bad, ..s };
        assert!(forged.verify().is_err());
    }

    #[test]
    fn signature_json_is_hex_and_round_trips() {
        let s = Signed::sign(Note("hi".into()), &id(1)).unwrap();
        let bin = postcard::to_allocvec(&s).unwrap();
        let back: Signed<Note> = postcard::from_bytes(&bin).unwrap();
        assert_eq!(back, s);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(&hex::encode(s.signature.0)));
        let back: Signed<Note> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
