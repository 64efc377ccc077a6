#!/usr/bin/env bash
# Builds the aarch64 (64-bit ARM, Debian 12 / glibc >= 2.34) install bundle of edged on any machine:
# everything a Raspberry Pi class device needs, without reaching PyPI from the device.
#
# usage: cross/bundle.sh [OUT_DIR]      (default: build/cross) -> OUT_DIR/edged-aarch64.tar.gz
#
# Inside the tarball (one top-level directory, edged-aarch64/):
#   wheels/      edged's own wheel and the aarch64 wheels of every dependency (cp311), plus the
#                systemd-python source (it has no wheels; install.sh builds it on the device)
#   functions/   the committed .wasm modules and the classify model with its labels
#   config/      the example config; systemd/ the units; README.md; MANIFEST (sha256 of every file)
#   install.sh   cross/install.sh, the same installer `make install` runs from the source tree
#
# The TFLite runtime in the bundle is tflite-runtime 2.14 (with numpy < 2): its aarch64 wheel is the one
# verified under emulation (cross/emulated_test.sh); ai-edge-litert crashed creating an interpreter there.
# Compiled Wasm modules are not in the bundle: the device compiles each module once into its own cache.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/build/cross}
py=${PYTHON:-$repo/.venv/bin/python}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/edged-aarch64
mkdir -p "$root/wheels" "$root/functions" "$out"

# The dependency list is pyproject's, with the tflite extra: one source of truth for versions.
mapfile -t deps < <("$py" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for dep in project["dependencies"] + project["optional-dependencies"]["tflite"]:
    if not dep.startswith("systemd-python"):
        print(dep)
PY
)
systemd_dep=$("$py" -c 'import sys, tomllib; print(next(d for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"] if d.startswith("systemd-python")))' "$repo/pyproject.toml")

echo "bundle.sh: edged wheel"
"$py" -m pip wheel -q --no-deps -w "$root/wheels" "$repo" >/dev/null
echo "bundle.sh: aarch64 wheels for ${deps[*]}"
"$py" -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform any \
    -d "$root/wheels" "${deps[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "bundle.sh: $systemd_dep (source)"
"$py" -m pip download -q --no-binary=:all: --no-deps -d "$root/wheels" "$systemd_dep" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

for fn in "$repo"/functions/*/; do
    name=$(basename "$fn")
    compgen -G "$fn*.wasm" >/dev/null || continue
    mkdir -p "$root/functions/$name"
    cp "$fn"*.wasm "$root/functions/$name/"
done
mkdir -p "$root/functions/classify/model"
cp "$repo/functions/classify/model/efficientnet_lite0.tflite" "$repo/functions/classify/model/labels.txt" \
    "$repo/functions/classify/model/PROVENANCE.md" "$root/functions/classify/model/"
mkdir -p "$root/config" "$root/systemd"
cp "$repo/config/edged.example.toml" "$root/config/"
cp "$repo"/systemd/*.service "$root/systemd/"
cp "$repo/README.md" "$root/"
cp "$repo/cross/install.sh" "$root/install.sh"
(cd "$root" && find . -type f ! -name MANIFEST -print0 | sort -z | xargs -0 sha256sum > MANIFEST)

tar -C "$stage" -czf "$out/edged-aarch64.tar.gz" edged-aarch64
echo "bundle.sh: $out/edged-aarch64.tar.gz ($(du -h "$out/edged-aarch64.tar.gz" | cut -f1), $(ls "$root/wheels" | wc -l) wheels and sources)"
