#!/usr/bin/env bash
# Builds the Debian package: the release binary, its man pages and completions (generated
# by the binary, scripts/deb-assets.sh), the system unit node/debian/crank-node.service, then
# `cargo deb --no-build`. Needs cargo-deb (`cargo install --locked cargo-deb`).
# The .deb lands in $CARGO_TARGET_DIR/debian/ (default target/debian/).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --locked --release -p crank-node
scripts/deb-assets.sh "$target/release/crank-node" "$target/release/deb"
cargo deb --locked --no-build -p crank-node "$@"
