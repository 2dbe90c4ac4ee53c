#!/usr/bin/env bash
# Builds the real control plane ferry's e2e tests run against — etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl — the real
# node's kubelet, kube-proxy and CoreDNS, the pods' pause program, and helm,
# all from their published Go modules with the Go toolchain on this machine
# (no downloaded binaries).
# Outputs go to a cache directory keyed by the inputs, so a second run (and a
# second CI run on the same machine) skips the build entirely.
#
# Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v go >/dev/null || { echo "build.sh: the Go toolchain is required (go not on PATH)" >&2; exit 1; }
module_version() { (cd "$here/$1" && go list -m -f '{{.Version}}' "$2"); }
kube_version=$(module_version kube k8s.io/kubernetes)
etcd_version=$(module_version etcd go.etcd.io/etcd/server/v3)
coredns_version=$(module_version coredns github.com/coredns/coredns)
helm_version=v3.21.4

key=$(cat "$here/build.sh" "$here"/kube/go.{mod,sum} "$here"/etcd/go.{mod,sum} "$here/etcd/main.go" \
  "$here"/coredns/go.{mod,sum} \
  "$here"/pause/{go.mod,main.go} | sha256sum | cut -c1-16)
cache=${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}
bin="$cache/controlplane-$key/bin"

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/kubectl" ] \
    && [ -x "$bin/kube-scheduler" ] && [ -x "$bin/kubelet" ] && [ -x "$bin/kube-proxy" ] \
    && [ -x "$bin/coredns" ] && [ -x "$bin/pause" ] \
    && [ -x "$bin/etcd" ] && [ -x "$bin/helm" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin.partial"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath"

# The version variables Kubernetes' own build (hack/lib/version.sh) sets;
# without them the binaries report v0.0.0-master.
minor=${kube_version#v1.}; minor=${minor%%.*}
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitCommit=published-module -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

echo "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy $kube_version (a cold build takes many minutes)" >&2
(cd "$here/kube" && go build -ldflags "$ldflags" -o "$bin.partial/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy)

# The cluster DNS of the node with a pod network (it runs as a process there).
echo "building coredns $coredns_version" >&2
(cd "$here/coredns" && go build -ldflags "-s -w" -o "$bin.partial/coredns" github.com/coredns/coredns)

# The process of every pod's sandbox (the pause image), static like the rest.
(cd "$here/pause" && go build -ldflags "-s -w" -o "$bin.partial/pause" .)

echo "building etcd $etcd_version" >&2
(cd "$here/etcd" && go build -ldflags "-s -w" -o "$bin.partial/etcd" .)

echo "building helm $helm_version" >&2
GOBIN="$bin.partial" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
  "helm.sh/helm/v3/cmd/helm@$helm_version"

rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "$bin"
