#!/usr/bin/env bash
# Checks what the images need without a container engine: each of ferry's
# three binaries builds for x86_64-unknown-linux-musl in release mode, is a
# statically linked executable (so it runs on distroless/static or scratch),
# and runs `--version`. Release builds on 2 cores take several minutes,
# which is why this is `make images-check` and not part of `make test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=x86_64-unknown-linux-musl
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target"
fi

# ring compiles a little C and assembly. Without a musl cross compiler
# (musl-tools' musl-gcc), the host gcc does: that code is freestanding,
# and Rust links the musl target against its own self-contained musl.
if ! command -v x86_64-linux-musl-gcc >/dev/null 2>&1; then
  if command -v musl-gcc >/dev/null 2>&1; then
    export CC_x86_64_unknown_linux_musl=musl-gcc
  else
    export CC_x86_64_unknown_linux_musl=gcc
  fi
fi

cargo build --release --locked --target "$target" \
  -p ferry-operator --bin ferry-operator \
  -p ferry-webhook --bin ferry-webhook \
  -p ferry-sidecar --bin ferry-sidecar

dir="${CARGO_TARGET_DIR:-target}/$target/release"
status=0
for bin in ferry-operator ferry-webhook ferry-sidecar; do
  path="$dir/$bin"
  kind=$(file -b "$path")
  linkage=$(ldd "$path" 2>&1 || true)
  version=$("$path" --version)
  size=$(du -h "$path" | cut -f1)
  if [[ $kind == *"statically linked"* || $kind == *"static-pie linked"* ]] &&
     [[ $linkage == *"not a dynamic executable"* || $linkage == *"statically linked"* ]] &&
     [[ $version == "$bin "* ]]; then
    echo "ok   $bin ($size): $version; $kind"
  else
    echo "FAIL $bin: file: $kind; ldd: $linkage; --version: $version" >&2
    status=1
  fi
done
exit $status
