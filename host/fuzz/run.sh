#!/usr/bin/env bash
# Runs every fuzz target (or those named) for FUZZ_SECONDS each, starting
# from the committed seeds and the corpus earlier runs grew (kept outside
# the repository, beside the build). Prints, per target, how many inputs
# ran and the corpus size; on a crash, the input and how to replay it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frames envelope jwt placeholders json)
work="${CARGO_TARGET_DIR:-$PWD/../target}/fuzz"
mkdir -p "$work"
# cargo-fuzz passes nightly-only flags; RUSTC_BOOTSTRAP lets the stable
# toolchain take them. No sanitizer: the targets are safe Rust, and what is
# looked for is panics, failed checks and hangs, which libFuzzer catches as
# it is (at about twice the speed of a build under AddressSanitizer).
export RUSTC_BOOTSTRAP=1
cargo fuzz build --sanitizer none
status=0
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    log="$work/$target.log"
    mkdir -p "$corpus"
    if cargo fuzz run --sanitizer none "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        size=$(find "$corpus" -type f | wc -l)
        echo "fuzz $target: ${runs} inputs in ${seconds} s, no failure; corpus of ${size}"
    else
        status=1
        echo "fuzz $target: FAILED; the end of its log ($log):"
        tail -40 "$log"
    fi
done
exit $status
