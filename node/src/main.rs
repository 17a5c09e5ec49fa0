//! The `crank-node` binary.
fn main() {}
