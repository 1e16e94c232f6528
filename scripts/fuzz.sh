#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (or the ones named) for a fixed time and prints one
# markdown row per target for RELIABILITY.md: executions, executions per second, peak memory,
# and whether it found a crash, a timeout or an out-of-memory.
#
#   scripts/fuzz.sh [TARGET...]      GROKFORGE_FUZZ_RUNS executions each (default 10,000,000),
#                                    stopping at GROKFORGE_FUZZ_TARGET_SECONDS (default 3600)
#                                    whichever comes first; GROKFORGE_FUZZ_JOBS targets at a time
#                                    (default: cores); GROKFORGE_FUZZ_SANITIZER address (default)
#                                    or none (no sanitizer: 8-23x the executions a second here;
#                                    our parsers are safe Rust, so a panic, an overflow, a hang or
#                                    unbounded memory is what is looked for)
#
# Needs the nightly toolchain; installs cargo-fuzz (crates.io) when missing. The working corpus
# grows under ~/.cache/grokforge/fuzz-corpus/<target> (kept between runs, never committed); the
# committed seeds of fuzz/seeds/<target> are read, not written. A finding lands in
# fuzz/artifacts/<target>/: fix it, then move the input to fuzz/regressions/<target>/, which
# tests/fuzz_corpora.rs replays in make test. Runs at the lowest CPU priority.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${GROKFORGE_FUZZ_RUNS:-10000000}
seconds=${GROKFORGE_FUZZ_TARGET_SECONDS:-3600}
jobs=${GROKFORGE_FUZZ_JOBS:-$(nproc)}
sanitizer=${GROKFORGE_FUZZ_SANITIZER:-address}
corpus_root=${GROKFORGE_FUZZ_CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/grokforge/fuzz-corpus}
# Its own target dir: sanitizer builds share nothing with the main build.
export CARGO_TARGET_DIR=${GROKFORGE_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/grokforge/fuzz-target}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

# One build for all targets (the sanitizer, debug assertions, optimised; cargo-fuzz 0.13
# strips dead code, so the tensor backend no target reaches is not generated whole).
build_flags="--fuzz-dir fuzz -O --debug-assertions --sanitizer $sanitizer"
# shellcheck disable=SC2086 # the flags are words
if [[ $# -gt 0 ]]; then
  for target in "${targets[@]}"; do nice -n 19 cargo +nightly fuzz build $build_flags "$target" >&2; done
else
  nice -n 19 cargo +nightly fuzz build $build_flags >&2
fi

logs=$(mktemp -d)
run_one() {
  local target=$1
  mkdir -p "$corpus_root/$target" "fuzz/artifacts/$target"
  local status=0
  # -rss_limit_mb: a target that holds more than 2 GiB is an out-of-memory finding;
  # -timeout: one input taking over 10 s is a timeout finding; -max_len grows with the seeds.
  # shellcheck disable=SC2086
  nice -n 19 cargo +nightly fuzz run $build_flags "$target" \
    "$corpus_root/$target" "fuzz/seeds/$target" -- \
    -runs="$runs" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" >"$logs/$target.log" 2>&1 || status=$?
  echo "$status" >"$logs/$target.status"
}
export -f run_one
export runs seconds corpus_root logs build_flags
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}'

echo "| target | executions | per second | peak RSS | corpus | result |"
echo "|---|---:|---:|---:|---:|---|"
failed=0
for target in "${targets[@]}"; do
  log="$logs/$target.log"
  executed=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  rss=$(grep -ao 'stat::peak_rss_mb: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
  per_second=$(grep -ao 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
  entries=$(find "$corpus_root/$target" -type f | wc -l)
  status=$(cat "$logs/$target.status")
  if [[ $status == 0 ]]; then
    result="0 crashes, 0 timeouts, 0 OOMs"
  else
    failed=1
    finding=$(grep -Eo 'SUMMARY: [^ ]+|ERROR: libFuzzer: [a-z-]+' "$log" | head -1 || true)
    result="**${finding:-exit $status}**: $(ls "fuzz/artifacts/$target" | head -1)"
  fi
  printf '| %s | %s | %s | %s MB | %s | %s |\n' "$target" "$executed" "$per_second" "$rss" "$entries" "$result"
done
echo "logs: $logs" >&2
exit $failed
