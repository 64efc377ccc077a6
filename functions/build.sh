#!/usr/bin/env bash
# Builds edged's function crates for wasm32-wasi and copies the modules out. This is what makes the
# committed functions/*/*.wasm files.
#
# usage: functions/build.sh [OUT_DIR [CRATE...]]
#   OUT_DIR           where the .wasm files go; "" or nothing: next to each crate's sources (the
#                     committed artifacts)
#   CRATE...          build only these crates (directory names under functions/); default: all
#   CARGO_TARGET_DIR  cargo's build directory; default: build/functions-target in the repository
#   CARGO, RUSTC      the toolchain; default: Debian's /usr/bin/cargo and /usr/bin/rustc, which have
#                     the wasm32-wasi std (a rustup toolchain may not)
#
# Offline only: crates come from Debian's librust-*-dev packages in /usr/share/cargo/registry
# (cargo-config.toml), never from crates.io. Debian packages needed: rustc cargo libstd-rust-dev-wasm32
# librust-image-dev (`make setup` installs them).
set -euo pipefail

functions_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$functions_dir")
out_dir=${1:-}
only=("${@:2}")
target_dir=${CARGO_TARGET_DIR:-$repo_dir/build/functions-target}
cargo=${CARGO:-/usr/bin/cargo}
export RUSTC=${RUSTC:-/usr/bin/rustc}
# Source paths end up in panic messages; without this the modules would differ by checkout location.
export RUSTFLAGS="--remap-path-prefix=$functions_dir=functions"

if [[ ! -x $cargo || ! -x $RUSTC ]]; then
    echo "build.sh: $cargo or $RUSTC missing; install rustc cargo libstd-rust-dev-wasm32 librust-image-dev" >&2
    exit 1
fi
if [[ ! -d $("$RUSTC" --print sysroot)/lib/rustlib/wasm32-wasi ]]; then
    echo "build.sh: $RUSTC has no wasm32-wasi std; install libstd-rust-dev-wasm32" >&2
    exit 1
fi

# build CRATE MODULE...: builds functions/CRATE and copies its MODULEs (file names in cargo's
# wasm32-wasi/release directory) to OUT_DIR, or into functions/CRATE.
build() {
    local crate=$1
    shift
    if ((${#only[@]})) && [[ " ${only[*]} " != *" $crate "* ]]; then
        return 0
    fi
    "$cargo" build --release --offline --target wasm32-wasi \
        --config "$functions_dir/cargo-config.toml" \
        --manifest-path "$functions_dir/$crate/Cargo.toml" \
        --target-dir "$target_dir"
    local dest=${out_dir:-$functions_dir/$crate}
    mkdir -p "$dest"
    local module
    for module in "$@"; do
        install -m 644 "$target_dir/wasm32-wasi/release/$module" "$dest/$module"
        echo "build.sh: $dest/$module ($(stat -c %s "$dest/$module") bytes)"
    done
}

# One line per function crate.
build grayscale grayscale.wasm grayscale-cmd.wasm
build classify classify.wasm
