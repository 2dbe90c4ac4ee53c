#!/usr/bin/env bash
# Installs what the e2e harness's real node needs from Debian's packages
# when it is missing: containerd and runc (the container runtime the kubelet
# drives), the CNI plugins (loopback for pods off the host's network; the
# bridge for the node with a pod network), iptables and iproute2 (that
# node's kube-proxy rules and veth pair), busybox-static (the tests' app
# image), postgresql-client (the psql in the demo's app image) and
# ca-certificates (the CA bundle in ferry's images). The harness starts its own containerd with
# private directories and socket; nothing here starts or enables a service.
set -euo pipefail

# The images carry static musl builds of ferry's binaries. Added here, once,
# before any test runs: two test processes that each found the target
# missing raced in rustup's download directory and one failed.
target=x86_64-unknown-linux-musl
if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  echo "adding the Rust target $target (ferry's images are static musl builds)" >&2
  rustup target add "$target" >&2
fi

missing=()
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[[ -x /usr/lib/cni/loopback && -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] ||
  missing+=(containernetworking-plugins)
PATH=$PATH:/usr/sbin:/sbin command -v iptables-restore >/dev/null || missing+=(iptables)
PATH=$PATH:/usr/sbin:/sbin command -v ip >/dev/null || missing+=(iproute2)
[[ -x /bin/busybox ]] && file -b /bin/busybox | grep -q 'statically linked' || missing+=(busybox-static)
# psql itself, not Debian's pg_wrapper script in /usr/bin.
compgen -G '/usr/lib/postgresql/*/bin/psql' >/dev/null || missing+=(postgresql-client)
[[ -r /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
command -v file >/dev/null || missing+=(file)
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
echo "installing ${missing[*]} from Debian's packages (the e2e harness runs a private containerd and kubelet)" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's containerd package starts a system containerd where systemd runs;
# the harness never uses it (it has its own socket and directories).
