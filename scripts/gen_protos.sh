#!/usr/bin/env bash
# Regenerates the Python gRPC stubs (with .pyi type stubs) in voicebus/v1/ from proto/.
#   scripts/gen_protos.sh                  write them
#   scripts/gen_protos.sh --check          fail when the committed stubs differ from proto/
#   scripts/gen_protos.sh --all [--check]  the same for every language: Python, then the
#                                          clients' stubs (scripts/gen_clients.sh: TypeScript, Go)
set -euo pipefail
cd "$(dirname "$0")/.."
check="" all=""
for arg in "$@"; do
  case "$arg" in
    --check) check="--check" ;;
    --all) all="--all" ;;
    *) echo "usage: scripts/gen_protos.sh [--all] [--check]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"  # protoc-gen-mypy lives beside the interpreter
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$PY" -m grpc_tools.protoc -I proto \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/voicebus/v1/*.proto
if [ -n "$check" ]; then
  if ! diff -r -q -x __init__.py -x __pycache__ "$out/voicebus/v1" voicebus/v1; then
    echo "Generated stubs differ from proto/: run scripts/gen_protos.sh and commit." >&2
    exit 1
  fi
  echo "stubs match proto/"
else
  find voicebus/v1 -name '*_pb2*' -delete
  cp "$out"/voicebus/v1/* voicebus/v1/
  echo "wrote $(ls voicebus/v1 | grep -c _pb2) files to voicebus/v1/"
fi
[ -z "$all" ] || scripts/gen_clients.sh ${check:+"$check"}
