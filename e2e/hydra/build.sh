#!/usr/bin/env bash
# Builds ory/hydra, the real OAuth2 authorization server ferry's oauth2 tests
# run against, from its published Go module (the `tool` in go.mod here) with
# the Go toolchain on this machine (no downloaded binaries). SQLite is built
# in, which needs cgo and a C compiler: each test's server keeps its state in
# memory (DSN=memory) and leaves nothing behind.
# The output goes to a cache directory keyed by the inputs, so a second run
# (and a second CI run on the same machine) skips the build entirely.
#
# Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v go >/dev/null || { echo "hydra/build.sh: the Go toolchain is required (go not on PATH)" >&2; exit 1; }

key=$(cat "$here/build.sh" "$here"/go.{mod,sum} | sha256sum | cut -c1-16)
cache=${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}
bin="$cache/hydra-$key/bin"

if [ -x "$bin/hydra" ]; then
  echo "$bin"
  exit 0
fi

# Checked only when there is something to build: go's own message for a
# missing compiler names neither cgo nor why it is needed.
cc=$(cd "$here" && go env CC)
command -v "${cc%% *}" >/dev/null || {
  echo "hydra/build.sh: a C compiler is required for hydra's SQLite (cgo): '$cc' is not on PATH (apt-get install gcc, or set CC)" >&2
  exit 1
}

hydra_version=$(cd "$here" && go list -m -f '{{.Version}}' github.com/ory/hydra/v2)
# What hydra's own release build sets; without it hydra reports "master".
ldflags="-s -w -X github.com/ory/hydra/v2/driver/config.Version=$hydra_version"
ldflags+=" -X github.com/ory/hydra/v2/driver/config.Date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ldflags+=" -X github.com/ory/hydra/v2/driver/config.Commit=published-module"

mkdir -p "$bin.partial"
echo "building hydra $hydra_version (a cold build takes a minute or two)" >&2
# sqlite_omit_load_extension: no loading of native SQLite extensions.
(cd "$here" && CGO_ENABLED=1 go build -tags sqlite,sqlite_omit_load_extension -trimpath \
  -ldflags "$ldflags" -o "$bin.partial/hydra" github.com/ory/hydra/v2)

rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "$bin"
