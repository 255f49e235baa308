#!/usr/bin/env bash
# Builds and runs Quiver's fuzz targets: cargo-fuzz with libFuzzer on the nightly toolchain
# (installed with `cargo install cargo-fuzz` when missing). Seeds are in fuzz/seeds/<target>;
# the corpus grows in target/fuzz-corpus (outside the repository's tracked files).
#
#   fuzz/run.sh                         every target for FUZZ_SECONDS (default 60) each
#   fuzz/run.sh config 600              one target for 10 minutes
#   FUZZ_RUNS=1000000 fuzz/run.sh       a fixed number of executions per target
#
# Exits non-zero on the first crash; libFuzzer leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

targets=(decode_events definitions config)
if [[ $# -ge 1 ]]; then targets=("$1"); fi
seconds=${2:-${FUZZ_SECONDS:-60}}

say() { echo "fuzz: $*" >&2; }
die() { echo "fuzz: error: $*" >&2; exit 1; }
source ../deploy/local/installing.sh
install_cargo_fuzz() {
    cargo +nightly fuzz --version >/dev/null 2>&1 && return 0
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked || die "installing cargo-fuzz: cargo install failed"
}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    with_lock ../target/cargo-fuzz-install.lock cargo-fuzz install_cargo_fuzz
fi

work=../target/fuzz-corpus
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    if [[ -n "${FUZZ_RUNS:-}" ]]; then limit="-runs=$FUZZ_RUNS"; else limit="-max_total_time=$seconds"; fi
    echo "fuzz: $t ($limit)"
    status=0
    cargo +nightly fuzz run --sanitizer none "$t" "$work/$t" "seeds/$t" -- \
        "$limit" -max_len=16384 -print_final_stats=1 >"$work/$t.log" 2>&1 || status=$?
    runs=$(grep -m1 '^stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}')
    if [[ $status -ne 0 ]]; then
        tail -40 "$work/$t.log"
        echo "fuzz: $t FAILED after ${runs:-?} executions (log: target/fuzz-corpus/$t.log)"
        exit 1
    fi
    echo "fuzz: $t ok, ${runs:-?} executions, no crash"
done
