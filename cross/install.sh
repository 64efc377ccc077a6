#!/usr/bin/env bash
# Installs edged on a 64-bit ARM (aarch64) Debian 12 device from the unpacked bundle, without network.
# Run as root from the bundle directory (cross/bundle.sh makes it):
#
#   tar xzf edged-aarch64.tar.gz && cd edged-aarch64 && ./install.sh
#
# Needs the Debian packages python3 python3-venv, and to build systemd-python (it has no wheels):
# gcc python3-dev libsystemd-dev pkg-config. Lays out what systemd/edged.service and
# config/edged.example.toml expect:
#   /opt/edged/.venv                 edged and its dependencies, from wheels/ only (--no-index)
#   /usr/lib/edged/functions         the .wasm modules and the classify model
#   /etc/edged/edged.toml            the example config, unless one is there already
#   /etc/systemd/system/*.service    the units (then: systemctl daemon-reload && systemctl enable --now edged)
# PREFIX (default /) puts all of that under another root, e.g. for a test.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=${PREFIX:-}
arch=$(uname -m)
if [[ $arch != aarch64 ]]; then
    echo "install.sh: this bundle is for aarch64, not $arch" >&2
    exit 1
fi
(cd "$here" && sha256sum --quiet -c MANIFEST) || { echo "install.sh: MANIFEST does not match the files" >&2; exit 1; }
missing=()
for p in python3 python3-venv gcc python3-dev libsystemd-dev pkg-config; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install.sh: install these Debian packages first: ${missing[*]}" >&2
    exit 1
fi

venv=$prefix/opt/edged/.venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q --isolated --no-index --find-links "$here/wheels" "$(ls "$here"/wheels/edged-*.whl)[tflite]"
mkdir -p "$prefix/usr/lib/edged" "$prefix/etc/edged" "$prefix/etc/systemd/system"
rm -rf "$prefix/usr/lib/edged/functions"
cp -r "$here/functions" "$prefix/usr/lib/edged/functions"
[[ -e $prefix/etc/edged/edged.toml ]] || cp "$here/config/edged.example.toml" "$prefix/etc/edged/edged.toml"
cp "$here"/systemd/*.service "$prefix/etc/systemd/system/"
echo "install.sh: edged $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("edged"))') in $venv"
