#!/usr/bin/env bash
# Regenerates the client stubs from proto/ for every language with a clients/<language>/buf.gen.yaml
# (TypeScript, Go), with buf from npm and local plugins only (works offline).
#   scripts/gen_clients.sh            write them (each template's out folder is replaced whole)
#   scripts/gen_clients.sh --check    fail when the committed stubs differ from proto/
# Plugins: clients/typescript's protoc-gen-es (npm ci there), Debian's protoc-gen-go and
# protoc-gen-go-grpc; scripts/setup.sh --test installs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-write}
BUF=node_modules/.bin/buf
[ -x "$BUF" ] || { echo "gen_clients: $BUF is missing: run scripts/setup.sh --test" >&2; exit 1; }

# Each plugin named `local:` in a template must be there before anything is generated.
require_plugins() {
  local template=$1 plugin
  for plugin in $(sed -n 's/^ *- local: *//p' "$template"); do
    command -v "$plugin" >/dev/null 2>&1 || [ -x "$plugin" ] || {
      echo "gen_clients: $plugin (for $template) is missing: run scripts/setup.sh --test" >&2
      exit 1
    }
  done
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
drifted=()
for template in clients/*/buf.gen.yaml; do
  require_plugins "$template"
  "$BUF" generate --template "$template" -o "$out"
  for stubs in $(sed -n 's/^ *out: *//p' "$template" | sort -u); do
    if [ "$mode" = "--check" ]; then
      diff -r -q "$out/$stubs" "$stubs" >&2 || drifted+=("$stubs")
    else
      rm -rf "$stubs"
      mkdir -p "$(dirname "$stubs")"
      cp -r "$out/$stubs" "$stubs"
      echo "wrote $(find "$stubs" -type f | wc -l) files to $stubs/"
    fi
  done
done
if [ "$mode" = "--check" ]; then
  if [ ${#drifted[@]} -gt 0 ]; then
    echo "Generated client stubs differ from proto/ in ${drifted[*]}: run scripts/gen_clients.sh and commit." >&2
    exit 1
  fi
  echo "client stubs match proto/"
fi
