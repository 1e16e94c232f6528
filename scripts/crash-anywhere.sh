#!/usr/bin/env bash
# Crash at any point (RELIABILITY.md): kills a node at GROKFORGE_CRASH_RUNS (default 20) moments
# of a job drawn at random — during the steps, in a checkpoint write, between a checkpoint's
# rename and its directory sync, between a model's files and its registry row, between the end of
# the run and the registry, or from outside after a random delay — and checks after each that the
# restarted node resumes the job to the weights of an uninterrupted run. The seed is printed;
# GROKFORGE_CRASH_SEED=<seed> replays the same moments.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/libtorch-env.sh)"
export GROKFORGE_CRASH_RUNS=${GROKFORGE_CRASH_RUNS:-20}
exec cargo nextest run --test crash --no-capture \
  -E 'test(a_node_killed_at_any_point_resumes_to_the_uninterrupted_weights)'
