#!/usr/bin/env bash
# Repeat the 2-process torchrun (gloo, CPU) run of tests/train/test_train_distributed.py N
# times, on the same fabricated miniature Fashion-MNIST, with both cores busy; report each
# exit code and keep each run's output (workers' lines prefixed [default<rank>]) in
# OUT/run<i>.log. This is how a worker abort at interpreter exit ("terminate called
# without an active exception", ~12% of loaded runs) was found; hbnn.cli.exit_process and
# the teardown in hbnn.train fixed it (0 of 50). The race depends on timing, so a clean
# run is evidence, not proof.
#   usage: scripts/ddp_stress.sh [N=10] [OUT=/tmp/hbnn-ddp-stress]
set -uo pipefail
n=${1:-10}
out=${2:-/tmp/hbnn-ddp-stress}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
PYTHONPATH=tests/train "$python" -c "import sys; from pathlib import Path; from conftest import fabricate_fashion_mnist; fabricate_fashion_mnist(Path(sys.argv[1]))" "$out/data"
yes > /dev/null & hog1=$!
yes > /dev/null & hog2=$!
trap 'kill $hog1 $hog2 2>/dev/null' EXIT
failed=0
for i in $(seq 1 "$n"); do
  rm -rf "$out/run$i"
  OMP_NUM_THREADS=1 "$python" -m torch.distributed.run --standalone --nproc_per_node 2 --tee 3 \
    -m hbnn.cli train --data-dir "$out/data" --out "$out/run$i" --epochs 1 --batch-size 32 -q \
    --set "model.kwargs={widths: [8, 16, 16]}" --set run.tensorboard=false --set dist.timeout_s=60 \
    --set "quant={default: {weight: {bits: 1.4}}}" --set train.checkpoint_every_steps=2 > "$out/run$i.log" 2>&1
  rc=$?
  [ "$rc" -ne 0 ] && failed=$((failed + 1))
  echo "run $i: exit $rc"
done
echo "$failed of $n runs failed; logs in $out"
[ "$failed" -eq 0 ]
