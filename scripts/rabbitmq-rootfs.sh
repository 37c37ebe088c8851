#!/usr/bin/env bash
# usage: scripts/rabbitmq-rootfs.sh SUITE DIR
#
# Make sure DIR is a Debian SUITE root filesystem with that suite's
# rabbitmq-server in it (forky: RabbitMQ 4.3, trixie: 4.0, bookworm: 3.10),
# for running
# the tests against the RabbitMQ version the host does not package
# (tests/broker.py starts its nodes in it when WQD_TEST_RABBITMQ_ROOT=DIR).
# Prints DIR's absolute path. As root only; installs debootstrap if missing.
#
# DIR is a cache: kept as it is when complete, built when missing. A build
# goes into a temporary directory next to DIR that is renamed to DIR only once
# complete, so an interrupted build is never taken for a cache; what an
# interrupted build left behind is removed by the next one. The mirror is
# $DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

suite=${1:?usage: $0 SUITE DIR}
dir=${2:?usage: $0 SUITE DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
server=usr/lib/rabbitmq/bin/rabbitmq-server

mkdir -p "$(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
if [ -x "$dir/$server" ]; then
    echo "$dir"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: $dir is missing; building it (debootstrap) needs root" >&2
    exit 1
fi
bash "$(dirname "$0")/ensure-debian-package.sh" /usr/sbin/debootstrap debootstrap >&2

# One build at a time per DIR: a second caller waits, then finds the cache.
exec 9>"$dir.lock"
flock 9
if [ -x "$dir/$server" ]; then
    echo "$dir"
    exit 0
fi

# Unmount whatever is mounted under a directory (debootstrap mounts /proc and
# /sys in its target and may leave them behind when interrupted), deepest
# first, then delete it without crossing into another file system (never
# into the host's /proc or /dev, should an unmount have failed).
remove_tree() {
    local mounts
    mounts=$(awk -v d="$1" 'index($5, d "/") == 1 || $5 == d { print $5 }' /proc/self/mountinfo | sort -r)
    for mount in $mounts; do
        umount -l "$mount" || true
    done
    rm -rf --one-file-system "$1"
}

for stale in "$dir".build.*; do
    [ -e "$stale" ] && remove_tree "$stale"
done
[ -e "$dir" ] && remove_tree "$dir"  # incomplete: no rabbitmq-server in it

build=$(mktemp -d "$dir.build.XXXXXX")
trap 'remove_tree "$build"' EXIT
echo "== building a Debian $suite root filesystem with rabbitmq-server in $dir (from $mirror)" >&2
# An older debootstrap has no script for a newer suite (bookworm's knows no
# forky); sid's serves every suite after it.
script=/usr/share/debootstrap/scripts/$suite
[ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
debootstrap --variant=minbase --include=rabbitmq-server "$suite" "$build" "$mirror" "$script" >&2
if [ ! -x "$build/$server" ]; then
    echo "error: debootstrap finished but $server is missing in $build" >&2
    exit 1
fi
# forky's minbase has no /etc/hosts, and Erlang's distribution cannot
# resolve localhost (the node name's host) without one.
[ -e "$build/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$build/etc/hosts"
chroot "$build" dpkg-query -W rabbitmq-server erlang-base >&2
mv -T "$build" "$dir"
trap - EXIT
echo "== ok: $dir" >&2
echo "$dir"
