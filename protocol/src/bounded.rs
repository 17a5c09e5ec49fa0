//! Size checks made while decoding, before anything is allocated.
//!
//! Every vector and string of a wire type decodes through [`seq`] or [`text`] (by
//! `#[serde(deserialize_with = …)]`), which refuse a declared length above the field's
//! maximum before allocating for it. Why not serde's own visitors: its `Vec` visitor
//! preallocates from the declared length (up to 1 MiB) and then grows by doubling with no
//! upper bound, so a frame of many tiny elements of a large type (an empty tensor is 4 bytes
//! on the wire and 80 in memory) made a 6 MB frame take 268 MB.
//!
//! Postcard reports a sequence's declared length as its size hint only when that many bytes
//! remain in the input (each element takes at least one byte); otherwise the hint is absent.
//! [`seq`] therefore preallocates exactly the declared length when the input can hold it,
//! nothing when it cannot, and never grows past the field's maximum. Strings are already
//! checked against the remaining input by postcard; [`text`] adds the maximum.
//!
//! The maxima are hard wire limits, above anything a node's configurable
//! [`Limits`](crate::validate::Limits) accept, so validation still gives its own, more
//! precise errors for values between the two.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{Deserialize, Error, SeqAccess, Visitor};

use crate::codec::{DEFAULT_MAX_FRAME, MAX_ADVERT_FRAME};

/// Longest text field on the wire (names, accounts, addresses, explanations), bytes.
pub const MAX_TEXT: usize = 4 * 1024;
/// Most tensors in one input or output list.
pub const MAX_TENSORS: usize = 256;
/// Most dimensions of a tensor shape on the wire (validation allows fewer, see
/// [`MAX_RANK`](crate::tensor::MAX_RANK)).
pub const MAX_DIMS: usize = 64;
/// Most elements of one tensor, or bytes of one model chunk: what fits in a frame.
pub const MAX_ELEMENTS: usize = DEFAULT_MAX_FRAME;
/// Most GPU adapters in an advert.
pub const MAX_GPUS: usize = 16;
/// Most self-benchmarks in an advert (one per execution path, with room to grow).
pub const MAX_BENCHES: usize = 8;
/// Most dialable addresses in an advert.
pub const MAX_ADDRS: usize = 32;
/// Most models in an advert: as many ids as an advert frame can hold.
pub const MAX_MODELS: usize = MAX_ADVERT_FRAME / 32;
/// Most receipts one settlement notice lists.
pub const MAX_PAID_RECEIPTS: usize = 65_536;

/// Decodes a vector of at most `MAX` elements, allocating only for a length the input can
/// hold.
pub(crate) fn seq<'de, const MAX: usize, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(SeqVisitor::<MAX, T>(PhantomData))
}

struct SeqVisitor<const MAX: usize, T>(PhantomData<T>);

impl<'de, const MAX: usize, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<MAX, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {MAX} elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // A hint is the exact declared length, present only when the input can hold it.
        let declared = seq.size_hint();
        if let Some(n) = declared
            && n > MAX
        {
            return Err(A::Error::invalid_length(n, &self));
        }
        let mut out = Vec::with_capacity(declared.unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            if out.len() >= MAX {
                // Only reachable without a hint (self-describing formats): stop at the limit.
                return Err(A::Error::invalid_length(out.len().saturating_add(1), &self));
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// Decodes a vector of at most `MAX` strings of at most [`MAX_TEXT`] bytes each.
pub(crate) fn texts<'de, const MAX: usize, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    let texts = seq::<MAX, D, Text>(d)?;
    // Same layout, so this reuses the allocation.
    Ok(texts.into_iter().map(|t| t.0).collect())
}

/// A string decoded through [`text`], as a sequence element.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(d).map(Self)
    }
}

/// Decodes a string of at most [`MAX_TEXT`] bytes.
pub(crate) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_string(TextVisitor)
}

struct TextVisitor;

impl TextVisitor {
    fn check<E: Error>(&self, len: usize) -> Result<(), E> {
        if len > MAX_TEXT {
            return Err(E::invalid_length(len, self));
        }
        Ok(())
    }
}

impl Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string of at most {MAX_TEXT} bytes")
    }

    fn visit_str<E: Error>(self, s: &str) -> Result<String, E> {
        self.check(s.len())?;
        Ok(s.to_owned())
    }

    fn visit_string<E: Error>(self, s: String) -> Result<String, E> {
        self.check(s.len())?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Small {
        #[serde(deserialize_with = "seq::<3, _, _>")]
        items: Vec<u64>,
        #[serde(deserialize_with = "text")]
        name: String,
    }

    #[test]
    fn within_the_maximum_round_trips() {
        let v = Small {
            items: vec![1, 2, 3],
            name: "x".repeat(MAX_TEXT),
        };
        let bytes = postcard::to_allocvec(&v).unwrap();
        assert_eq!(postcard::from_bytes::<Small>(&bytes).unwrap(), v);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<Small>(&json).unwrap(), v);
    }

    #[test]
    fn over_the_maximum_is_refused() {
        let v = Small {
            items: vec![1, 2, 3, 4],
            name: String::new(),
        };
        let bytes = postcard::to_allocvec(&v).unwrap();
        let e = postcard::from_bytes::<Small>(&bytes).unwrap_err();
        assert!(matches!(e, postcard::Error::SerdeDeCustom), "{e:?}");
        let json = serde_json::to_string(&v).unwrap();
        let e = serde_json::from_str::<Small>(&json).unwrap_err();
        assert!(e.to_string().contains("at most 3"), "{e}");
        let v = Small {
            items: vec![],
            name: "x".repeat(MAX_TEXT + 1),
        };
        let bytes = postcard::to_allocvec(&v).unwrap();
        assert!(postcard::from_bytes::<Small>(&bytes).is_err());
    }

    #[test]
    fn a_length_the_input_cannot_hold_is_refused_without_allocating_it() {
        // Declares u32::MAX elements with three bytes behind it.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3];
        #[derive(Debug, serde::Deserialize)]
        struct Big {
            #[serde(deserialize_with = "seq::<{ usize::MAX }, _, _>")]
            _items: Vec<u64>,
        }
        assert!(postcard::from_bytes::<Big>(&bytes).is_err());
    }
}
