#!/usr/bin/env bash
# The training-length study (converged scale): every long_* and mid_* experiment, in two
# lanes that run in parallel (one core each, niced so interactive work keeps priority).
# Resumable: re-running skips finished runs (results/<experiment>.jsonl) and resumes
# interrupted ones from their run folders. Run from the repository root:
#     bash scripts/sweep_long.sh            # both lanes, waits for both
#     HBNN=".venv/bin/python -m hbnn.cli" bash scripts/sweep_long.sh
# Lane order puts the claim (ii) and (v) points first, so partial results are useful.
set -uo pipefail
HBNN=${HBNN:-".venv/bin/python -m hbnn.cli"}
NICE=${NICE:-19}
lane() {
  for step in "$@"; do
    # shellcheck disable=SC2086
    nice -n "$NICE" $HBNN sweep $step --threads 1 || echo "sweep $step failed (exit $?)" >&2
  done
}
lane "long_table1 --only w2a2 --only w1.4a1.4" "mid_table1" "long_table1" "long_mix --only m80-0-20" &
lane "long_fig2b --only w2 --only w1.4_mo" "mid_fig2b" "long_fig2b" "long_mix --only m60-40-0" \
  "long_mix --only m70-20-10" &
wait
