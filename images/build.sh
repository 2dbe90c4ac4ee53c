#!/usr/bin/env bash
# The one definition of every image ferry builds: its three images and the
# images the end-to-end tests and the demo run beside them. Each image is a
# single layer on an empty base (what `FROM scratch` gives), written as an
# OCI image archive, with nothing pulled from any registry:
#
#   ferry-operator, ferry-webhook, ferry-sidecar
#       the static release binary as /<name>, Debian's CA bundle, an
#       /etc/passwd naming uid 65532 "nonroot"; runs as 65532:65532.
#   pause      the pod sandbox's process (a static Go program built with the
#              control plane), as 65535.
#   busybox    Debian's busybox-static with its applets linked in /bin, for
#              tests' and the demo's app containers, as 65532.
#   psql       the demo's app: busybox as above (a shell to read the DSN
#              file) and Debian's psql (postgresql-client) as /bin/psql with
#              every shared library `ldd` lists, the dynamic loader
#              included, at the paths it lists them; as 65532.
#
# `make images` loads the archives into docker or podman; the e2e harness
# imports them into its containerd (`ctr -n k8s.io images import`).
#
# Usage: images/build.sh OUT_DIR IMAGE...   (prints one archive path a line)
# Inputs (environment):
#   FERRY_BIN_DIR     directory holding the static ferry-* binaries (ferry images)
#   PAUSE_BIN         the pause binary (pause image)
#   BUSYBOX_BIN       a static busybox (default /bin/busybox; busybox and psql images)
#   PSQL_BIN          Debian's psql binary, not its pg_wrapper script (default:
#                     the newest /usr/lib/postgresql/*/bin/psql; psql image)
#   IMAGE_REPOSITORY  repository of ferry's images (default ghcr.io/ferry-dev)
#   IMAGE_TAG         their tag (default: the workspace version)
#   TEST_REPOSITORY   repository of pause, busybox and psql (default ferry.local)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -ge 2 ]] || { echo "usage: $0 OUT_DIR IMAGE..." >&2; exit 2; }
out=$1
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)

repository=${IMAGE_REPOSITORY:-ghcr.io/ferry-dev}
tag=${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -1)}
test_repository=${TEST_REPOSITORY:-ferry.local}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
epoch=${SOURCE_DATE_EPOCH:-0}

die() { echo "images/build.sh: $*" >&2; exit 1; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Writes the OCI archive of one image: $1 reference, $2 rootfs directory,
# $3 user, $4 entrypoint as a JSON array; prints the archive's path.
oci_archive() {
  local ref=$1 rootfs=$2 user=$3 entrypoint=$4
  local name=${ref##*/}
  name=${name%%:*}
  local layout
  layout=$(mktemp -d "$out/.layout-$name.XXXXXX")
  mkdir -p "$layout/blobs/sha256"

  # A reproducible layer: sorted, root-owned, timestamps at $epoch.
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$layout/layer.tar" .
  local diff_id
  diff_id=$(sha256 "$layout/layer.tar")
  gzip -n -9 "$layout/layer.tar"
  local layer_digest layer_size
  layer_digest=$(sha256 "$layout/layer.tar.gz")
  layer_size=$(size "$layout/layer.tar.gz")
  mv "$layout/layer.tar.gz" "$layout/blobs/sha256/$layer_digest"

  printf '{"architecture":"amd64","os":"linux","config":{"User":"%s","Entrypoint":%s,"Env":["PATH=/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"images/build.sh"}]}' \
    "$user" "$entrypoint" "$diff_id" >"$layout/config.json"
  local config_digest config_size
  config_digest=$(sha256 "$layout/config.json")
  config_size=$(size "$layout/config.json")
  mv "$layout/config.json" "$layout/blobs/sha256/$config_digest"

  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$layout/manifest.json"
  local manifest_digest manifest_size
  manifest_digest=$(sha256 "$layout/manifest.json")
  manifest_size=$(size "$layout/manifest.json")
  mv "$layout/manifest.json" "$layout/blobs/sha256/$manifest_digest"

  # containerd names the image by io.containerd.image.name; docker and
  # podman read org.opencontainers.image.ref.name.
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$ref" "$ref" >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

  local archive="$out/$name.oci.tar"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C "$layout" -cf "$archive.partial" oci-layout index.json blobs
  mv "$archive.partial" "$archive"
  rm -rf "$layout"
  echo "$archive"
}

# A root filesystem with /etc/passwd, /etc/group and the CA bundle.
base_rootfs() {
  local rootfs
  rootfs=$(mktemp -d "$out/.rootfs.XXXXXX")
  # mktemp's 0700 would be the mode of the image's / (the layer's ./).
  chmod 0755 "$rootfs"
  mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
  chmod 1777 "$rootfs/tmp"
  [[ -r $ca_bundle ]] || die "no CA bundle at $ca_bundle (install Debian's ca-certificates, or set CA_BUNDLE)"
  install -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\nnobody:x:65534:\n' >"$rootfs/etc/group"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
  echo "$rootfs"
}

# Debian's static busybox as /bin/busybox, each applet a link to it.
install_busybox() {
  local rootfs=$1 busybox=${BUSYBOX_BIN:-/bin/busybox} applet
  [[ -x $busybox ]] || die "$busybox is missing (install Debian's busybox-static)"
  mkdir -p "$rootfs/bin"
  install -m 0755 "$busybox" "$rootfs/bin/busybox"
  for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$rootfs/bin/$applet"
  done
}

# Debian's psql as /bin/psql, and each library ldd resolves for it (the
# loader too) copied to the path ldd names, where the loader looks first.
install_psql() {
  local rootfs=$1 psql=${PSQL_BIN:-} libraries library
  if [[ -z $psql ]]; then
    psql=$(compgen -G '/usr/lib/postgresql/*/bin/psql' | sort -V | tail -1) ||
      die "psql is missing (install Debian's postgresql-client, or set PSQL_BIN)"
  fi
  [[ -x $psql ]] || die "$psql is missing (install Debian's postgresql-client, or set PSQL_BIN)"
  libraries=$(ldd "$psql") || die "ldd $psql failed: is it a dynamic executable?"
  ! grep -q 'not found' <<<"$libraries" || die "ldd $psql: $(grep 'not found' <<<"$libraries")"
  install -m 0755 "$psql" "$rootfs/bin/psql"
  # "libpq.so.5 => /lib/.../libpq.so.5 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)";
  # linux-vdso names no file.
  for library in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libraries"); do
    mkdir -p "$rootfs$(dirname "$library")"
    install -m 0755 "$(readlink -f "$library")" "$rootfs$library"
  done
  [[ -n $(compgen -G "$rootfs/lib*/ld-linux*") ]] || die "ldd $psql named no dynamic loader"
}

build_image() {
  local image=$1 rootfs
  rootfs=$(base_rootfs)
  case $image in
    ferry-operator | ferry-webhook | ferry-sidecar)
      local binary="${FERRY_BIN_DIR:?FERRY_BIN_DIR must name the directory of the static ferry binaries}/$image"
      [[ -x $binary ]] || die "$binary is missing (build the static release binaries first: make images-check)"
      file -b "$binary" | grep -Eq 'static(-pie)? linked|statically linked' ||
        die "$binary is not statically linked; an image on an empty base cannot run it"
      install -m 0755 "$binary" "$rootfs/$image"
      oci_archive "$repository/$image:$tag" "$rootfs" 65532:65532 "[\"/$image\"]"
      ;;
    pause)
      [[ -x ${PAUSE_BIN:-} ]] || die "PAUSE_BIN must name the pause binary (e2e/controlplane/build.sh builds it)"
      install -m 0755 "$PAUSE_BIN" "$rootfs/pause"
      oci_archive "$test_repository/pause:1" "$rootfs" 65535:65535 '["/pause"]'
      ;;
    busybox)
      install_busybox "$rootfs"
      oci_archive "$test_repository/busybox:1" "$rootfs" 65532:65532 '["/bin/sh"]'
      ;;
    psql)
      install_busybox "$rootfs"
      install_psql "$rootfs"
      oci_archive "$test_repository/psql:1" "$rootfs" 65532:65532 '["/bin/psql"]'
      ;;
    *) die "unknown image $image (ferry-operator, ferry-webhook, ferry-sidecar, pause, busybox, psql)" ;;
  esac
  rm -rf "$rootfs"
}

for image in "$@"; do
  build_image "$image"
done
