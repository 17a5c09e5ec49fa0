#!/usr/bin/env bash
# Generates the Debian package's man pages and shell completions from the binary itself
# (`crank-node man`, `crank-node completions`), so they always match its flags.
# Usage: scripts/deb-assets.sh BINARY OUT_DIR   (scripts/deb.sh passes the release binary)
set -euo pipefail
bin=$1
out=$2
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$bin" man --out-dir "$out/man"
"$bin" completions bash >"$out/completions/crank-node.bash"
"$bin" completions zsh >"$out/completions/_crank-node"
"$bin" completions fish >"$out/completions/crank-node.fish"
