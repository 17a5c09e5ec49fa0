//! Wire types of the crank-node mesh, their signatures and the versioned codec.
//!
//! Everything a node says to another node is defined here: the capability advert published on
//! gossipsub, and the task-flow messages carried by the request-response protocol (call for
//! bids, bid, decline, award, model chunks, result with a signed work receipt, counter-signed
//! receipt). This crate is pure: no sockets, clocks or disks. Time is passed in as
//! [`UnixMillis`], so every check is deterministic and fuzzable.
//!
//! # Layout
//!
//! - [`ids`]: node ids (ed25519 public keys) and blake3 content ids for models, inputs, outputs.
//! - [`sign`]: [`Identity`] (a node's signing key) and [`Signed<T>`], a body with a
//!   domain-separated ed25519 signature checked with `verify_strict`.
//! - [`tensor`]: the tensors that travel as task inputs and outputs.
//! - [`messages`]: the advert and the task-flow messages, with [`messages::Request`] and
//!   [`messages::Response`] as the two top-level frames of the task protocol.
//! - [`codec`]: version byte + postcard, with a size limit and no trailing bytes.
//! - [`bounded`]: the wire maxima of every vector and string, checked while decoding before
//!   anything is allocated for them.
//! - [`validate`]: structural and temporal checks applied after decoding and verifying.
//! - [`adverts`]: a pure table of the freshest verified advert per node.
//! - [`legacy`]: signed types of earlier wire versions, so stored receipts still verify.
//!
//! # Invariants
//!
//! - Decoding never panics: any byte string decodes to a value or a [`codec::CodecError`].
//! - **Decoding allocates in proportion to the frame**: no declared length is allocated for
//!   before the input could hold it, and no vector or string grows past its wire maximum.
//! - A signature covers a domain tag plus the exact postcard encoding of the body, so a
//!   signature for one message kind can never be replayed as another kind.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        // Sizes, times and prices come from peers: overflow is an error, never a wrap.
        clippy::arithmetic_side_effects
    )
)]

pub mod adverts;
pub mod bounded;
pub mod codec;
pub mod ids;
pub mod legacy;
pub mod messages;
pub mod sign;
pub mod tensor;
pub mod validate;

pub use ids::{ContentHash, ModelId, NodeId, TaskId};
pub use messages::*;
pub use sign::{CounterSigned, Identity, Signature, SignatureError, Signed};
pub use tensor::{NamedTensor, Tensor, TensorData, TensorError, Tolerance};

/// Milliseconds since the Unix epoch. Passed in by callers; this crate never reads a clock.
pub type UnixMillis = u64;

/// One XLM is 10,000,000 stroops; every price on the wire is in stroops.
pub const STROOPS_PER_XLM: u64 = 10_000_000;
