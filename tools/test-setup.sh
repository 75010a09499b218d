#!/usr/bin/env bash
# Prepare a Debian 12 host to run novalxcdriver's tests (as root): LXC and
# uidmap tools, debootstrap and busybox for test images, qemu-img and sfdisk
# for disk image tests (qcow2, partitioned raw), lxcfs, gcc for the
# hardening suite's static helper, subordinate id ranges for root, and tox.
# Idempotent.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "run as root: the functional tests start real LXC containers" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    lxc uidmap debootstrap busybox-static lxcfs zstd xz-utils bzip2 \
    libarchive13 \
    btrfs-progs qemu-utils fdisk rsync openssh-client openssh-server \
    attr ca-certificates git iproute2 ethtool openvswitch-switch \
    gcc libc6-dev sudo acl >/dev/null

# tox -e functional-unprivileged calls the driver as this user, its privsep
# daemons through sudo (tests/unprivileged.py).
id -u novalxc-test >/dev/null 2>&1 || \
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin novalxc-test

# Unprivileged containers take their uid/gid ranges from root's subordinate
# ranges (subuid(5)); without one, newuidmap refuses every mapping.
for f in /etc/subuid /etc/subgid; do
    touch "$f"
    grep -qE '^(root|0):' "$f" || echo 'root:100000:1000000000' >> "$f"
done

# Each systemd container takes inotify instances counted against host root;
# at Debian's default of 128 only about 25 can boot at once.
if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 8192 ]; then
    echo 8192 > /proc/sys/fs/inotify/max_user_instances
fi

python3 -m pip install -q --upgrade 'tox>=4'
