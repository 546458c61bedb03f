#!/usr/bin/env bash
# Installs everything (first time) and starts the whole stack: http://127.0.0.1:8000/
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/voicebus up
