#!/usr/bin/env bash
# Idempotent setup on a fresh Linux machine with Python 3.11:
#   - a virtual environment in .venv with requirements.txt (the pinned set) installed and
#     this project installed editable into it (the `h2a` command, `import h2a` anywhere);
#   - with --browser: Debian's chromium for the browser tests (needs root / apt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x .venv/bin/h2a ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  # --no-deps: requirements.txt above is the pinned set; this only links the package in.
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: no apt-get; install Chromium at /usr/bin/chromium for the browser tests" >&2
  fi
fi
