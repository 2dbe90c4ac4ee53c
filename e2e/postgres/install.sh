#!/usr/bin/env bash
# Installs PostgreSQL's server binaries from Debian's packages when they are
# missing. Tests and the demo start their own server from them (a private
# temporary data directory on a loopback port); nothing here starts one.
set -euo pipefail

if compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || [[ -n "${FERRY_POSTGRES_BIN:-}" ]]; then
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
echo "installing PostgreSQL from Debian's packages (tests and the demo run a private server)" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null
