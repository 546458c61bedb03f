#!/usr/bin/env bash
# Installs what the tests need (first time) and runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# Contracts: no breaking change against the previous commit (when there is one).
if git rev-parse -q --verify HEAD~1 >/dev/null 2>&1; then
  node_modules/.bin/buf breaking --against '.git#ref=HEAD~1'
fi
exec .venv/bin/python -m pytest "$@"
