#!/usr/bin/env bash
# Alternate an older commit's library and this checkout's N times on one command, e.g.
#   N=3 bash scripts/ab_libraries.sh 3e00a9a scripts/ab_engine.py conv --channels 16
# The old commit is checked out as a git worktree in a temp folder and imported through
# PYTHONPATH with its own kernel cache (HBNN_CACHE_DIR), so both builds stay cached.
set -euo pipefail
old=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
tree=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git -C "$root" worktree add -f --detach "$tree" "$old" -q
for _ in $(seq "${N:-3}"); do
  echo -n "old $old: "; (cd "$root" && PYTHONPATH="$tree/src:$root" HBNN_CACHE_DIR="$tree/.kcache" "$py" "$@")
  echo -n "new: "; (cd "$root" && PYTHONPATH="$root/src:$root" "$py" "$@")
done
