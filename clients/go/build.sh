#!/usr/bin/env bash
# Builds the Go client with Debian's Go and its packaged gRPC and protobuf libraries
# (golang-google-grpc-dev, golang-google-protobuf-dev in /usr/share/gocode): GOPATH mode,
# no go.mod, no module download. This folder is linked into a temporary GOPATH as
# voicebus/clients/go, the import path of the generated stubs (see buf.gen.yaml).
#   clients/go/build.sh [OUTPUT]     default: clients/go/bin/talk
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
output=$(realpath -m "${1:-$here/bin/talk}")
command -v go >/dev/null || { echo "build.sh: go is not installed (run scripts/setup.sh --test)" >&2; exit 1; }
[ -d /usr/share/gocode/src/google.golang.org/grpc ] \
  || { echo "build.sh: Debian's golang-google-grpc-dev is missing (run scripts/setup.sh --test)" >&2; exit 1; }
gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/voicebus/clients"
ln -s "$here" "$gopath/src/voicebus/clients/go"
mkdir -p "$(dirname "$output")"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS="" \
  go build -o "$output" voicebus/clients/go/talk
