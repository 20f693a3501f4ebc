#!/usr/bin/env bash
# Sets up .venv and runs the test suite. The default suite (CI's too) skips tests marked `slow`; with
# VIDEOGPT_TESTS=all the slow ones run as well. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
if [ "${VIDEOGPT_TESTS:-}" = "all" ]; then
  marker=()
else
  marker=(-m "not slow")
fi
.venv/bin/python -m pytest "${marker[@]}" "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "ERROR: pytest collected no tests" >&2
  exit 1
fi
exit $rc
