//! The hostile-peer suite: each attack a stranger on the mesh (or a local user) can make on a
//! node, made for real against in-process nodes over libp2p, with what must still hold after it.

mod api;
mod memory;
mod models;
mod network;
mod store;
