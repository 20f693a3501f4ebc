#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv from pyproject.toml, pinned by
# requirements-lock.txt. Idempotent: does nothing when the pins have not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"videogpt_jax needs Python 3.11, found {sys.version.split()[0]}"'
stamp=.venv/.installed
want=$(cat pyproject.toml requirements-lock.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating .venv with $("$PYTHON" --version) and installing the pinned dependency set..."
[ -d .venv ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c requirements-lock.txt -e '.[test,torch]'
echo "$want" > "$stamp"
echo "[setup] done."
