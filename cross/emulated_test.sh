#!/usr/bin/env bash
# The aarch64 test: installs the bundle (cross/bundle.sh) into an emulated Debian 12 arm64 userland and
# runs there the tests whose outcome depends on the CPU: the Wasm sandbox (pooling allocator, epochs,
# traps, memory limits, the raw call path), WASI-NN on tflite-runtime, frame decoding, the malloc pin,
# and classify and grayscale end to end, through the installed `edged`, not the source tree.
#
# usage: cross/emulated_test.sh        (as root; `make cross-test`)
#
# Needs: Debian packages qemu-user-static and debootstrap (installed when missing), a binfmt_misc
# entry for qemu-aarch64 (registered here when missing), and deb.debian.org plus PyPI for the first run.
# The arm64 root filesystem is kept in build/cross/ (~2.5 min to make, then reused); a run takes about
# 4 minutes on a 2-CPU x86_64 machine, most of it emulated TFLite (~5 s per classify call).
#
# Left out under emulation: test_500_calls_keep_the_interpreters_loaded_once (500 classify calls would
# take ~45 minutes) and the two build_sh tests (the Rust toolchain is a host tool, not a device one).
# Models are preloaded there (TESTS_PRELOAD_MODELS=1): allocated on first use, as by default, the first
# classify call would pay the interpreter's allocation (seconds under qemu) within its 5 s timeout.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${CROSS_WORK:-$repo/build/cross}
rootfs=$work/rootfs-bookworm-arm64
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
py=${PYTHON:-$repo/.venv/bin/python}
tests=(tests/test_frames.py tests/test_rawcall.py tests/test_pool.py tests/test_nn.py tests/test_sandbox.py
       tests/test_malloc.py tests/test_grayscale.py tests/test_classify.py)
deselect="not build_sh and not test_500_calls"

if [[ $(id -u) != 0 ]]; then
    echo "emulated_test.sh: needs root (binfmt_misc, debootstrap, chroot)" >&2
    exit 1
fi
missing=()
for p in qemu-user-static debootstrap; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# Run arm64 binaries through qemu: the F flag opens the interpreter now, so it also works in the chroot.
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf
fi

mkdir -p "$work"
if [[ ! -e $rootfs/.edged-rootfs ]]; then
    echo "emulated_test.sh: making the arm64 Debian 12 root filesystem in $rootfs"
    rm -rf "$rootfs"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
        "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    # What install.sh needs to build systemd-python on the device.
    chroot "$rootfs" /bin/bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends gcc python3-dev libsystemd-dev pkg-config" >"$work/apt.log" 2>&1 \
        || { tail -20 "$work/apt.log" >&2; exit 1; }
    touch "$rootfs/.edged-rootfs"
fi

"$repo/cross/bundle.sh" "$work"

# A fresh test tree each run: the bundle installed under a prefix, test-only wheels, the tests and the
# committed modules and models they load. No edged/ sources: the tests import the installed package.
test_dir=$rootfs/tmp/edged-test
rm -rf "$test_dir"
mkdir -p "$test_dir/repo/functions"
tar -C "$test_dir" -xzf "$work/edged-aarch64.tar.gz"
"$py" -m pip download -q --isolated --only-binary=:all: --platform any --python-version 3.11 \
    -d "$test_dir/testwheels" "pytest>=8" "pytest-asyncio>=0.23" "pytest-timeout>=2.3"
cp -r "$repo/tests" "$repo/pyproject.toml" "$test_dir/repo/"
for fn in "$repo"/functions/*/; do
    compgen -G "$fn*.wasm" >/dev/null || continue
    mkdir -p "$test_dir/repo/functions/$(basename "$fn")"
    cp "$fn"*.wasm "$test_dir/repo/functions/$(basename "$fn")/"
done
cp -r "$repo/functions/classify/model" "$test_dir/repo/functions/classify/"

mount -t proc proc "$rootfs/proc"
trap 'umount "$rootfs/proc"' EXIT
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 /bin/bash -c "
    set -euo pipefail
    cd /tmp/edged-test/edged-aarch64 && DESTDIR=/tmp/edged-test/root ./install.sh
    venv=/tmp/edged-test/root/opt/edged/.venv
    \$venv/bin/pip install -q --isolated --no-index --find-links /tmp/edged-test/testwheels \
        pytest pytest-asyncio pytest-timeout
    echo \"emulated_test.sh: \$(\$venv/bin/python -c 'import platform, wasmtime, importlib.metadata as m; \
print(platform.machine(), platform.python_version(), \"wasmtime\", m.version(\"wasmtime\"), \
\"tflite-runtime\", m.version(\"tflite-runtime\"))')\"
    cd /tmp/edged-test/repo
    # Emulated TFLite allocates an interpreter in seconds: preload the models (tests/configs.py).
    TESTS_PRELOAD_MODELS=1 timeout 2400 \$venv/bin/python -m pytest -q -p no:cacheprovider ${tests[*]} -k '$deselect'
"
