#!/usr/bin/env bash
# Installs (or removes) edged on a Debian 12 device, x86_64 or aarch64. One script for both ways in:
#   from the source tree:      make install            (cross/install.sh install)
#   from the aarch64 bundle:   ./install.sh            (cross/bundle.sh puts this script in the bundle)
# The bundle (a wheels/ directory beside this script) installs offline from its wheels and checks its
# MANIFEST; the source tree installs edged from itself and its dependencies from PyPI.
#
# usage: install.sh [install|uninstall] [--no-venv]
#
# What goes where (the paths systemd/edged.service and config/edged.example.toml use):
#   /opt/edged/.venv                 edged and its runtime dependencies only (extra: litert on x86_64,
#                                    tflite on aarch64; EDGED_EXTRA overrides), and /opt/edged/README.md
#   /usr/lib/edged/functions         the committed .wasm modules and the classify model
#   /etc/edged/edged.toml            the example config, unless a config is there already (never replaced)
#   /etc/edged/credentials/          an empty, root-only directory for the secrets the unit loads
#   /etc/systemd/system/*.service    the units, then `systemctl daemon-reload` when systemd is running
# uninstall removes the venv, the functions and the units, and keeps /etc/edged and the state.
#
# DESTDIR (or PREFIX, as the bundle had it) puts everything under another root, e.g. a scratch directory
# for a test; systemctl is then left alone. A venv is not relocatable: one made under DESTDIR runs from
# there. --no-venv lays out everything but the venv (the test of the layout uses it).
# Building the venv needs the Debian packages python3-venv, and for systemd-python (it has no wheels):
# gcc python3-dev libsystemd-dev pkg-config.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -d $here/wheels ]]; then
    root=$here            # the unpacked bundle
else
    root=$(dirname "$here")  # the source tree (this script is in cross/)
fi
dest=${DESTDIR:-${PREFIX:-}}
action=install
venv_wanted=1
for arg in "$@"; do
    case $arg in
        install|uninstall) action=$arg ;;
        --no-venv) venv_wanted=0 ;;
        *) echo "install.sh: unknown argument $arg (usage: install.sh [install|uninstall] [--no-venv])" >&2; exit 2 ;;
    esac
done
say() { echo "install.sh: $*"; }
systemd_running() { [[ -z $dest && -d /run/systemd/system ]]; }
units=$(cd "$root/systemd" && ls ./*.service | sed 's|^\./||')

if [[ $action == uninstall ]]; then
    if systemd_running; then
        # shellcheck disable=SC2086  # unit names have no spaces
        systemctl disable --now $units || true
    fi
    rm -rf "$dest/opt/edged" "$dest/usr/lib/edged"
    for unit in $units; do rm -f "$dest/etc/systemd/system/$unit"; done
    if systemd_running; then systemctl daemon-reload; else say "systemd is not running: no daemon-reload"; fi
    say "removed edged; kept $dest/etc/edged (config, credentials) and the state in /var/lib"
    exit 0
fi

if [[ $root == "$here" ]]; then
    (cd "$root" && sha256sum --quiet -c MANIFEST) || { echo "install.sh: MANIFEST does not match the files" >&2; exit 1; }
    arch=$(uname -m)
    if [[ $arch != aarch64 ]]; then
        echo "install.sh: this bundle is for aarch64, not $arch (on $arch: make install from the source tree)" >&2
        exit 1
    fi
fi

venv=$dest/opt/edged/.venv
if ((venv_wanted)); then
    missing=()
    for p in python3 python3-venv gcc python3-dev libsystemd-dev pkg-config; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "install.sh: install these Debian packages first: ${missing[*]}" >&2
        exit 1
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    if [[ $root == "$here" ]]; then
        "$venv/bin/pip" install -q --isolated --no-index --find-links "$root/wheels" \
            "$(ls "$root"/wheels/edged-*.whl)[${EDGED_EXTRA:-tflite}]"
    else
        default_extra=litert
        [[ $(uname -m) == aarch64 ]] && default_extra=tflite  # the runtime verified there (cross/README.md)
        "$venv/bin/pip" install -q --isolated "$root[${EDGED_EXTRA:-$default_extra}]"
    fi
fi

mkdir -p "$dest/opt/edged" "$dest/usr/lib/edged" "$dest/etc/edged" "$dest/etc/systemd/system"
install -m 0644 "$root/README.md" "$dest/opt/edged/README.md"
rm -rf "$dest/usr/lib/edged/functions"
for fn in "$root"/functions/*/; do
    compgen -G "$fn*.wasm" >/dev/null || continue
    name=$(basename "$fn")
    install -d "$dest/usr/lib/edged/functions/$name"
    install -m 0644 "$fn"*.wasm "$dest/usr/lib/edged/functions/$name/"
done
install -d "$dest/usr/lib/edged/functions/classify/model"
for f in efficientnet_lite0.tflite labels.txt PROVENANCE.md; do
    install -m 0644 "$root/functions/classify/model/$f" "$dest/usr/lib/edged/functions/classify/model/"
done
if [[ -e $dest/etc/edged/edged.toml ]]; then
    say "kept the existing $dest/etc/edged/edged.toml"
else
    install -m 0644 "$root/config/edged.example.toml" "$dest/etc/edged/edged.toml"
fi
install -d -m 0700 "$dest/etc/edged/credentials"
for unit in $units; do install -m 0644 "$root/systemd/$unit" "$dest/etc/systemd/system/$unit"; done
if systemd_running; then
    systemctl daemon-reload
    say "units installed; start with: systemctl enable --now edged"
else
    say "systemd is not running${dest:+ (DESTDIR install)}: no daemon-reload"
fi
if ((venv_wanted)); then
    say "edged $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("edged"))') in $venv"
else
    say "laid out under ${dest:-/} without the venv (--no-venv)"
fi
