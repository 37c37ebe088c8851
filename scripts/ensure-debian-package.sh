#!/usr/bin/env bash
# usage: scripts/ensure-debian-package.sh BINARY PACKAGE [SERVICE]
#
# Make sure BINARY exists; if not, install Debian's PACKAGE (as root only).
# The tests run their own throwaway processes (e.g. tests/broker.py starts
# private RabbitMQ nodes on free ports), so the package's own service must not
# be left running: it is kept from starting during the install (policy-rc.d
# answering 101, Debian's standard switch) and then stopped and disabled.
# That only ever happens right after this script installed the package, so a
# service that was running before (say a system RabbitMQ already listening on
# 5672) is never touched: if BINARY exists this script does nothing at all.
set -euo pipefail

bin=${1:?usage: $0 BINARY PACKAGE [SERVICE]}
pkg=${2:?usage: $0 BINARY PACKAGE [SERVICE]}
service=${3:-}

if [ -x "$bin" ]; then
    exit 0
fi

install_cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkg"
if [ "$(id -u)" != 0 ]; then
    echo "error: $bin is missing. Install Debian's '$pkg' package as root:" >&2
    echo "    sudo sh -c '$install_cmd'" >&2
    [ -z "$service" ] || echo "and stop its service if you do not want it: sudo systemctl disable --now $service" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "error: $bin is missing and this is not a Debian/Ubuntu system (no apt-get): install $pkg" >&2
    exit 1
fi

systemd_running() { [ -d /run/systemd/system ]; }

service_active() {
    if systemd_running; then
        systemctl is-active --quiet "$1"
    elif [ -x "/etc/init.d/$1" ]; then
        "/etc/init.d/$1" status >/dev/null 2>&1
    else
        return 1
    fi
}

# Forbid service starts during the install, and put back whatever was there.
policy=/usr/sbin/policy-rc.d
saved_policy=
if [ -e "$policy" ]; then
    saved_policy=$(mktemp)
    cp -p "$policy" "$saved_policy"
fi
restore_policy() {
    if [ -n "$saved_policy" ]; then
        cp -p "$saved_policy" "$policy" && rm -f "$saved_policy"
    else
        rm -f "$policy"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# installed temporarily by %s\nexit 101\n' "$0" >"$policy"
chmod 755 "$policy"

echo "== $bin is missing: installing Debian package $pkg"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$pkg"

if [ -n "$service" ]; then
    # The package was not installed before, so its service was not running
    # before: stop it in case it started anyway, and keep it from starting at boot.
    if systemd_running; then
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    else
        if service_active "$service"; then
            echo "== stopping the $service service that the install started"
            "/etc/init.d/$service" stop || true
        fi
        if command -v update-rc.d >/dev/null && [ -x "/etc/init.d/$service" ]; then
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    fi
    if service_active "$service"; then
        echo "warning: the $service service is still running" >&2
    else
        echo "== $service service left stopped and disabled (the tests start their own)"
    fi
fi

if [ ! -x "$bin" ]; then
    echo "error: installed $pkg but $bin is still missing" >&2
    exit 1
fi
echo "== ok: $bin"
