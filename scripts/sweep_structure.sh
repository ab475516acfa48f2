#!/usr/bin/env bash
# The structure study (configs/experiments/structure.yaml: 15 points x 3 seeds, cifar_fc4
# 64-128-256, ~3.5-5.5 min of one core per run): two lanes in parallel (one core each, niced),
# seed 0 of every point first, then seed 1, then seed 2, so partial results cover every point.
# Resumable: re-running skips finished runs (results/structure.jsonl) and resumes interrupted
# ones from their run folders; both lanes append to the same results file (locked appends)
# and never share a point. After both lanes: the packed-engine latency of every point (needs
# a quiet machine; ~1 minute) and the figure. Run from the repository root:
#     bash scripts/sweep_structure.sh
#     HBNN=".venv/bin/python -m hbnn.cli" PY=.venv/bin/python bash scripts/sweep_structure.sh
#     BENCH=0 bash scripts/sweep_structure.sh      # training only
set -uo pipefail
HBNN=${HBNN:-".venv/bin/python -m hbnn.cli"}
PY=${PY:-".venv/bin/python"}
NICE=${NICE:-19}
# lane A ~ lane B in estimated minutes per seed (about 33 each)
A=(--only fp --only w1a1 --only w2a2 --only w1 --only w1.4_channel_error
   --only w1.4a1.4_channel_key --only w1.4a1.4_channel_error)
B=(--only w1.4a1.4 --only w2 --only w1.4 --only w1.4_channel_key --only w1.4_block64_key
   --only w1.4_block64_error --only w1.4a1.4_block64_key --only w1.4a1.4_block64_error)
lane() {
  for seed in 0 1 2; do
    # shellcheck disable=SC2086
    nice -n "$NICE" $HBNN sweep structure --threads 1 --seeds "$seed" "$@" \
      || echo "sweep structure (seed $seed, $*) failed (exit $?)" >&2
  done
}
lane "${A[@]}" &
lane "${B[@]}" &
wait
if [ "${BENCH:-1}" != 0 ]; then
  # shellcheck disable=SC2086
  $PY -m benchmarks.bench_structure --threads "$(nproc)" && $PY -m research plot structure
fi
