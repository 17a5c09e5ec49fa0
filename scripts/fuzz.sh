#!/usr/bin/env bash
# Runs each fuzz target for a fixed time and prints the executions each one made (from
# libFuzzer's final stats). Usage:
#
#   scripts/fuzz.sh [SECONDS] [GROUP|TARGET ...]
#   scripts/fuzz.sh --seeds      # rewrite the committed seed corpus from real messages
#
# SECONDS per target (default 60). Groups: network (the task protocol and gossip decoders),
# payments (settlement manifests, Stellar envelopes, ledger records), model (the ONNX model
# loader; builds tract, so it is slow to build the first time), all (the default).
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only
# flags, and `-s none` fuzzes without a sanitizer (the code under test has no unsafe).
# Builds go to their own target dir so the workspace's stays untouched. New inputs go to a
# scratch corpus; the committed seeds in fuzz/corpus/<target>/ are only read. A crash
# leaves its input in $CRANK_FUZZ_WORK/<target>/artifacts/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}

export PATH="/var/tmp/crank-tools/bin:$PATH"
export CARGO_TARGET_DIR="${CRANK_FUZZ_TARGET_DIR:-/var/tmp/crank-fuzz-target}"
export RUSTC_BOOTSTRAP=1
work="${CRANK_FUZZ_WORK:-/var/tmp/crank-fuzz-work}"

if [ "$secs" != "--seeds" ]; then
  shift || true
  [ $# -gt 0 ] || set -- all
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked --root /var/tmp/crank-tools" >&2
  exit 2
fi

if [ "${1:-}" = "--seeds" ]; then
  (cd fuzz && cargo fuzz build -s none --features payments make_seeds)
  "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/make_seeds" "$PWD"
  exit 0
fi

network=(decode_request decode_response decode_advert decode_signed)
payments=(payout_manifest decode_envelope decode_ledger_record)
model=(load_model)

targets=()
for arg in "$@"; do
  case "$arg" in
    network) targets+=("${network[@]}") ;;
    payments) targets+=("${payments[@]}") ;;
    model) targets+=("${model[@]}") ;;
    all) targets+=("${network[@]}" "${payments[@]}" "${model[@]}") ;;
    *) targets+=("$arg") ;;
  esac
done

features_of() {
  case " ${payments[*]} " in *" $1 "*) echo payments; return ;; esac
  case " ${model[*]} " in *" $1 "*) echo model; return ;; esac
  echo ""
}

failed=()
summary=()
for t in "${targets[@]}"; do
  features=$(features_of "$t")
  flags=(-s none)
  [ -n "$features" ] && flags+=(--features "$features")
  echo "== fuzz $t (${secs} s)"
  (cd fuzz && cargo fuzz build "${flags[@]}" "$t")
  rm -rf "${work:?}/$t"
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts" "fuzz/corpus/$t"
  log="$work/$t/log"
  # Scratch corpus first (libFuzzer writes there), the committed seeds second (read only).
  if (cd fuzz && cargo fuzz run "${flags[@]}" "$t" "$work/$t/corpus" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$work/$t/artifacts/") >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    tail -n 40 "$log" >&2
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  line=$(printf '%-22s %-6s %12s execs %9s execs/s' "$t" "$status" "${execs:-?}" "${rate:-?}")
  echo "$line"
  summary+=("$line")
done

echo "== fuzz summary (${secs} s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (inputs in $work/<target>/artifacts/)" >&2
  exit 1
fi
