#!/usr/bin/env bash
# Installs node-oidc-provider, the real OAuth2 authorization server ferry's
# token-exchange tests run against (hydra has no RFC 8693), with its
# dependencies pinned by package-lock.json, from the npm registry with the
# node and npm on this machine. No install scripts run (--ignore-scripts):
# the packages are plain JavaScript. server.mjs, the server's configuration
# and its token-exchange grant, is copied beside node_modules.
# The output goes to a cache directory keyed by the inputs, so a second run
# (and a second CI run on the same machine) installs nothing.
#
# Prints the install directory (holding server.mjs) on stdout; progress goes
# to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for tool in node npm; do
  command -v "$tool" >/dev/null || {
    echo "oidc-provider/install.sh: Node.js is required ($tool not on PATH; node 20.18 or later, with npm)" >&2
    exit 1
  }
done

key=$(cat "$here/install.sh" "$here"/package{,-lock}.json "$here/server.mjs" | sha256sum | cut -c1-16)
cache=${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}
dir="$cache/oidc-provider-$key"

# A directory is only ever moved into place whole, so one that looks
# complete is.
installed() { [ -f "$dir/node_modules/oidc-provider/package.json" ] && [ -f "$dir/server.mjs" ]; }

if installed; then
  echo "$dir"
  exit 0
fi

# oidc-provider 9 asks for node 22 and warns on 20, where it works (the
# tests run on 20.20); older nodes lack URL.parse, which it calls.
node -e '
  if (typeof URL.parse !== "function") {
    console.error(`oidc-provider/install.sh: node ${process.versions.node} is too old for oidc-provider 9 (no URL.parse); use node 20.18 or later`);
    process.exit(1);
  }'

mkdir -p "$cache"
partial=$(mktemp -d "$dir.partial.XXXXXX")
trap 'rm -rf "$partial"' EXIT
cp "$here"/package{,-lock}.json "$here/server.mjs" "$partial/"
echo "installing oidc-provider $(sed -n 's/.*"oidc-provider": "\(.*\)".*/\1/p' "$here/package.json") (npm ci)" >&2
(cd "$partial" && npm ci --ignore-scripts --no-audit --no-fund >&2)

# Another run may have finished first (and may be serving from it): its
# copy is as good as this one.
if ! installed; then
  rm -rf "$dir"
  mv -T "$partial" "$dir"
fi
echo "$dir"
