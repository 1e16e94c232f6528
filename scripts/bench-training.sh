#!/usr/bin/env bash
# Runs the training-core benchmarks (training-core/benches) in release, in order:
#
#   1. throughput, tch:  grokforge on LibTorch vs PyTorch eager (same torch 2.9.0, same threads),
#                        and the GrokFast EMA / MA overhead per step;
#   2. throughput, flex: the pure-Rust backend on the same sizes (no PyTorch: step 1 has it);
#      and, when asked for (`--only ...,ndarray`), burn's other pure-Rust backend, ndarray,
#      with the flex stage's rounds and filters, for the choice between the two;
#   3. grokking:         steps and wall time to 95 % validation accuracy, five configs × seeds
#                        (the Grokfast paper's table: --paper-table);
#
# then merges the results into $OUT/summary.md, the body of BENCHMARKS.md's "Training core"
# section. Every run's full output is kept in $OUT.
#
# THE MACHINE MUST BE IDLE. Nothing else may run while this does: not a build, not a test, not
# another engineer's job. Both benches are timed against wall clocks and PyTorch runs in turn with
# grokforge, so any other load skews the ratios. The script builds everything first, then waits
# for the load average to settle before each stage (--no-wait skips that).
#
#   scripts/bench-training.sh [options]
#
#     --out DIR             where results go (default target/bench-training/<date-time>)
#     --steps N             timed steps per throughput measurement (default 60)
#     --warmup N            untimed steps before them (default 10; MA: at least its window)
#     --batches LIST        throughput batch sizes (default 256,512,1024,2048,full)
#     --threads LIST        throughput thread counts (default 1,<logical CPUs>)
#     --rounds N            times the tch + PyTorch sweep runs; its tables give medians and
#                           spreads, MA is measured in the first round only (default 3)
#     --flex-rounds N       the same for the flex (and ndarray) sweep (default 1)
#     --filters LIST        filters the tch sweep measures (default none,ema,ma; MA in the
#                           first round only)
#     --ma-window N         MA window in the throughput bench (default 100, the paper's)
#     --pytorch-filters L   filters PyTorch runs too (default none; ema,ma add the paper's code)
#     --flex-filters LIST   filters the flex (and ndarray) run measures (default none)
#     --seeds LIST          grokking seeds (default 0,1,2,3,4)
#     --baseline-cap N      grokking step cap of the three baselines (default 20000)
#     --grokfast-cap N      grokking step cap of EMA / MA (default 5000)
#     --configs LIST        grokking configs (default ema,ma,baseline,baseline-wd005,baseline-wd01:
#                           the filters, the paper's baseline with wd 0, the fair baselines with
#                           the filters' own weight decay)
#     --paper-table         the paper's table: only the grokking stage, every config, seeds 0-4
#                           (the same as --only grokking with the defaults above; combine with
#                           --baseline-cap to state a budget)
#     --only STAGES         stages to run, of tch,flex,ndarray,grokking (default tch,flex,grokking)
#     --estimate            print the runtime estimate and exit
#     --no-wait             do not wait for the load average to drop before each stage
#     --profile NAME        cargo profile (default: cargo bench's, optimised); `dev` only to
#                           smoke-test this script with tiny settings, never for numbers
#
# The runtime estimate is printed before anything runs. It comes from the step rates measured on
# a 2-core Xeon @ 2.5 GHz on 2026-11-28 (LibTorch about 0.15 ms per example and step on one
# thread, 0.08 ms on two, 6 ms fixed per step) and flex at 0.4× tch (BENCHMARKS.md, "Pure-Rust
# backends"). Compile time (several minutes per feature set) comes on top.
set -euo pipefail

cd "$(dirname "$0")/.."

out=""
steps=60
warmup=10
batches="256,512,1024,2048,full"
cpus="$(nproc)"
threads="1,$cpus"
rounds=3
flex_rounds=1
[[ "$cpus" == 1 ]] && threads=1
ma_window=100
filters=none,ema,ma
pytorch_filters=none
flex_filters=none
seeds=0,1,2,3,4
baseline_cap=20000
grokfast_cap=5000
configs=ema,ma,baseline,baseline-wd005,baseline-wd01
only=tch,flex,grokking
estimate_only=0
wait_idle=1
profile=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --batches) batches="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --flex-rounds) flex_rounds="$2"; shift 2 ;;
    --filters) filters="$2"; shift 2 ;;
    --ma-window) ma_window="$2"; shift 2 ;;
    --pytorch-filters) pytorch_filters="$2"; shift 2 ;;
    --flex-filters) flex_filters="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --baseline-cap) baseline_cap="$2"; shift 2 ;;
    --grokfast-cap) grokfast_cap="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --paper-table) only=grokking; shift ;;
    --estimate) estimate_only=1; shift ;;
    --no-wait) wait_idle=0; shift ;;
    --profile) profile=(--profile "$2"); shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-training: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

stage() { [[ ",$only," == *",$1,"* ]]; }

# Seconds, from the cost model described at the top. Prints "tch flex grokking_expected
# grokking_worst" (grokking expected: baselines run to their cap, Grokfast stops at ~1500 steps).
estimate() {
  awk -v batches="$batches" -v threads="$threads" -v steps="$steps" -v warmup="$warmup" \
    -v window="$ma_window"  -v tf="$filters" -v pf="$pytorch_filters" -v ff="$flex_filters" -v seeds="$seeds" \
    -v bcap="$baseline_cap" -v gcap="$grokfast_cap" -v configs="$configs" -v cpus="$cpus" \
    -v rounds="$rounds" -v frounds="$flex_rounds" '
    function per_sample(t) { return 0.000151 / (t ^ 0.9) }
    function step_s(b, t) { return 0.006 + per_sample(t) * b }
    function steps_for(f,   w) {
      w = (warmup < 1 ? 1 : warmup)
      if (f == "ma") return (w > window ? w : window) + int((steps + window - 1) / window) * window
      return w + steps
    }
    function filter_steps(list,   n, a, i, s) {
      n = split(list, a, ","); s = 0
      for (i = 1; i <= n; i++) s += steps_for(a[i]) * (a[i] == "ma" ? 3 : 1)  # the paper`s MA sums its window
      return s
    }
    BEGIN {
      nb = split(batches, b, ","); nt = split(threads, t, ",")
      tch = 0; flex = 0
      # Rounds after the first leave MA out.
      nt2 = split(tf, tfl, ","); ours = 0
      for (i = 1; i <= nt2; i++) ours += (tfl[i] == "ma" ? 1 : rounds) * steps_for(tfl[i])
      torch = rounds * filter_steps(pf); fx = 0
      nf = split(ff, fl, ","); for (i = 1; i <= nf; i++) fx += steps_for(fl[i])
      for (i = 1; i <= nt; i++) for (j = 1; j <= nb; j++) {
        rows = (b[j] == "full") ? 4705 : b[j]
        s = step_s(rows, t[i])
        tch += (ours + torch) * s + 3 * rounds  # + process start-ups
        flex += frounds * (fx * s * 2.5 + 1)
      }
      ns = split(seeds, sd, ","); nc = split(configs, cf, ",")
      g = step_s(512, cpus) * 1.33           # + one validation of 4705 rows per 10-step epoch
      expected = 0; worst = 0
      for (i = 1; i <= nc; i++) {
        grok = (cf[i] == "ema" || cf[i] == "ma")
        cap = grok ? gcap : bcap
        expected += ns * g * (grok ? (cap < 1500 ? cap : 1500) : cap)
        worst += ns * g * cap
      }
      printf "%d %d %d %d\n", tch, flex, expected, worst
    }'
}

human() { awk -v s="$1" 'BEGIN { if (s >= 3600) printf "%.1f h", s / 3600; else printf "%.0f min", s / 60 }'; }

read -r est_tch est_flex est_grok est_grok_worst < <(estimate)
total=0
echo "bench-training: estimated runtime on a 2-core 2.5 GHz Xeon (idle), compile time not included:"
if stage tch; then echo "  throughput tch + PyTorch: $(human "$est_tch")"; total=$((total + est_tch)); fi
if stage flex; then echo "  throughput flex:          $(human "$est_flex")"; total=$((total + est_flex)); fi
if stage ndarray; then echo "  throughput ndarray:       $(human "$est_flex") (as flex; a guess)"; total=$((total + est_flex)); fi
if stage grokking; then
  echo "  grokking:                 $(human "$est_grok") expected (baselines to their cap of $baseline_cap steps), at most $(human "$est_grok_worst")"
  total=$((total + est_grok))
fi
echo "  total:                    $(human "$total") expected"
[[ "$estimate_only" == 1 ]] && exit 0

out="${out:-target/bench-training/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
echo "bench-training: results go to $out"

eval "$(scripts/libtorch-env.sh)"
scripts/torch-python.sh
export LD_LIBRARY_PATH="${LIBTORCH_LIB:-$LIBTORCH}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
crate=grokforge-training-core

# Build everything before timing anything: a compile next to a measurement spoils it.
echo "bench-training: building the benches (${profile[*]:-release})"
if stage tch || stage grokking; then cargo bench "${profile[@]}" -p "$crate" --benches --no-run; fi
for backend in flex ndarray; do
  if stage "$backend"; then
    cargo bench "${profile[@]}" -p "$crate" --no-default-features --features "$backend" --bench throughput --no-run
  fi
done

# Waits (up to 10 minutes) until the 1-minute load average is below 0.3: the compile just
# finished, or another job is still running.
settle() {
  [[ "$wait_idle" == 1 && -r /proc/loadavg ]] || return 0
  local waited=0 load
  while load=$(cut -d' ' -f1 /proc/loadavg); awk -v l="$load" 'BEGIN { exit !(l >= 0.3) }'; do
    if (( waited >= 600 )); then
      echo "bench-training: load average still $load after 10 minutes; is something else running?" >&2
      echo "bench-training: refusing to time on a busy machine (--no-wait overrides)" >&2
      exit 1
    fi
    (( waited % 60 == 0 )) && echo "bench-training: waiting for the machine to settle (load average $load)"
    sleep 10
    waited=$((waited + 10))
  done
}

throughput_env=(
  GROKFORGE_BENCH_STEPS="$steps" GROKFORGE_BENCH_WARMUP="$warmup"
  GROKFORGE_BENCH_BATCHES="$batches" GROKFORGE_BENCH_THREADS="$threads"
  GROKFORGE_BENCH_MA_WINDOW="$ma_window"
)
started=$(date +%s)

if stage tch; then
  settle
  echo "bench-training: throughput, tch vs PyTorch"
  env "${throughput_env[@]}" GROKFORGE_BENCH_PYTORCH=required GROKFORGE_BENCH_ROUNDS="$rounds" \
    GROKFORGE_BENCH_FILTERS="$filters" \
    GROKFORGE_BENCH_PYTORCH_FILTERS="$pytorch_filters" \
    cargo bench "${profile[@]}" -p "$crate" --bench throughput | tee "$out/throughput-tch.txt"
fi

# The pure-Rust backends, each with the flex stage's rounds and filters.
for backend in flex ndarray; do
  stage "$backend" || continue
  settle
  echo "bench-training: throughput, $backend"
  env "${throughput_env[@]}" GROKFORGE_BENCH_PYTORCH=off GROKFORGE_BENCH_FILTERS="$flex_filters" \
    GROKFORGE_BENCH_ROUNDS="$flex_rounds" \
    cargo bench "${profile[@]}" -p "$crate" --no-default-features --features "$backend" --bench throughput \
    | tee "$out/throughput-$backend.txt"
done

if stage grokking; then
  settle
  echo "bench-training: grokking"
  env GROKFORGE_BENCH_SEEDS="$seeds" GROKFORGE_BENCH_CONFIGS="$configs" \
    GROKFORGE_BENCH_BASELINE_CAP="$baseline_cap" GROKFORGE_BENCH_GROKFAST_CAP="$grokfast_cap" \
    cargo bench "${profile[@]}" -p "$crate" --bench grokking | tee "$out/grokking.txt"
fi

{
  echo "<!-- scripts/bench-training.sh $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)') -->"
  shopt -s nullglob
  throughput=("$out"/throughput-*.txt)
  if (( ${#throughput[@]} )); then
    # Standard library only: any python 3 does, the LibTorch virtualenv's included.
    python="$(command -v python3 || echo "$(cd "$LIBTORCH/../../../.." && pwd)/bin/python")"
    "$python" training-core/benches/throughput_table.py "${throughput[@]}"
  fi
  if [[ -f "$out/throughput-tch.txt" ]]; then
    echo
    echo "#### tch vs PyTorch, paired within each round (the bench's own tables)"
    sed -n '/^Medians over/,$p' "$out/throughput-tch.txt" | sed 's/^## /##### /'
  fi
  if [[ -f "$out/grokking.txt" ]]; then
    echo
    # The grokking bench prints its own Markdown summary, from its "## Steps to" heading on.
    sed -n '/^## Steps to/,$p' "$out/grokking.txt" | sed 's/^## /### /'
  fi
} >"$out/summary.md"

echo "bench-training: done in $(human $(( $(date +%s) - started ))); summary in $out/summary.md"
