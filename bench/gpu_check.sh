#!/usr/bin/env bash
# One command that measures H2A's GPU path (under 10 minutes on one H100/H200), or with
# --smoke the same steps on CPU at toy sizes (CI). See bench/gpu_check.py for the steps.
#
#   bash bench/gpu_check.sh [--smoke] [--out DIR] [--keep] [--budget SECONDS]
#
# Prints one table (check | setting | figure | unit | status), writes DIR/gpu_check.json,
# DIR/gpu_check.md and DIR/logs/; exits non-zero when any row failed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
cd "$repo"
exec "$python" "$repo/bench/gpu_check.py" "$@"
