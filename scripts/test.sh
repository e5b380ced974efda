#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine (Python 3 and Node/npm),
# then runs it. Extra arguments go to pytest. pytest's "no tests ran" (exit 5) fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,dev]'
if [ -x scripts/install-interop-agents.sh ]; then
    scripts/install-interop-agents.sh
fi
exec .venv/bin/python -m pytest "$@"
