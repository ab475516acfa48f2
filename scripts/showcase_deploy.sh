#!/usr/bin/env bash
# Deploy check on the showcase's trained runs (after `make run`): export each binarized run
# to the packed format (and ONNX), then evaluate the packed model on the whole
# Fashion-MNIST test set against the training-time model. Writes the JSON reports that
# docs/deploy.md quotes into results/showcase/.
#   usage: scripts/showcase_deploy.sh [RUNS_DIR=runs/showcase] [OUT_DIR=results/showcase]
set -euo pipefail
runs=${1:-runs/showcase}
out=${2:-results/showcase}
hbnn=${HBNN:-.venv/bin/hbnn}
mkdir -p "$out"
for run in w1a1 w2a2 w1.4a1.4; do
  "$hbnn" export "$runs/$run" --which last --out "$runs/$run.hbnn" --onnx "$runs/$run.onnx" --json > "$out/export_$run.json"
  "$hbnn" infer "$runs/$run.hbnn" --compare "$runs/$run" --which last --json > "$out/packed_eval_$run.json"
  echo "$run: $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in d if k in ('top1', 'mismatches', 'max_abs_logit_diff', 'compare')})" "$out/packed_eval_$run.json")"
done
