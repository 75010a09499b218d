"""Real root filesystem tarballs for functional tests.

busybox: built here in a second from Debian's busybox-static; with dhcp,
eth0 (if any) gets its address by DHCP at boot (the all-in-one cloud's).
debian: a debootstrapped Debian 12 (systemd) root, built once per machine
(about a minute) and cached under CACHE_DIR; ifupdown configures its eth0
by DHCP.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile

CACHE_DIR = os.environ.get('NOVALXC_TEST_CACHE',
                           '/var/cache/novalxcdriver-test')
BUSYBOX = '/bin/busybox'
DEBIAN_MIRROR = os.environ.get('NOVALXC_DEBIAN_MIRROR',
                               'http://deb.debian.org/debian')

# A shell on /dev/console: what a serial console client gets.
_INITTAB = b"""::sysinit:/bin/mount -t tmpfs tmpfs /run
::sysinit:/bin/echo novalxc busybox booted
::respawn:-/bin/sh
::shutdown:/bin/echo novalxc busybox halting
"""
_APPLETS = ('sh', 'ls', 'cat', 'echo', 'sleep', 'mount', 'id', 'ps',
            'touch', 'rm', 'hostname', 'poweroff', 'reboot', 'halt', 'dd',
            'head', 'grep', 'true', 'free', 'nproc', 'df', 'uptime', 'mkdir',
            'seq', 'yes', 'sync', 'wc', 'tail', 'kill', 'cut', 'env', 'stat',
            'mknod', 'chmod', 'ln', 'cp', 'mv', 'sed', 'tr', 'timeout')

# DHCP at boot: udhcpc(8) runs /etc/udhcpc.script (busybox ships none) and
# forks to the background once bound (or after its last try), renewing.
_NET_APPLETS = ('ip', 'udhcpc', 'ping', 'wget', 'nc')
_INITTAB_DHCP = _INITTAB.replace(
    b'::sysinit:/bin/echo',
    b'::sysinit:/etc/init.d/dhcp\n::sysinit:/bin/echo', 1)
_DHCP_INIT = b"""#!/bin/sh
# eth0 by DHCP, if the container has an eth0.
ip link show eth0 >/dev/null 2>&1 || exit 0
exec udhcpc -i eth0 -s /etc/udhcpc.script -b -t 5 -T 2 \\
    -O staticroutes -O mtu
"""
_UDHCPC_SCRIPT = b"""#!/bin/sh
# udhcpc(8) calls this with deconfig, bound, renew, leasefail or nak.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    # RFC 3442: classless routes (OVN's include 169.254.169.254, the
    # metadata service) replace the router option.
    if [ -n "$staticroutes" ]; then
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            if [ "$2" = 0.0.0.0 ]; then
                ip route replace "$1" dev "$interface"
            else
                ip route replace "$1" via "$2" dev "$interface"
            fi
            shift 2
        done
    elif [ -n "$router" ]; then
        set -- $router
        ip route replace default via "$1" dev "$interface"
    fi
    ;;
esac
exit 0
"""


def busybox_tarball(path, dhcp=False):
    """Write a gzip rootfs tarball of a busybox system to path.

    :param dhcp: configure eth0 by DHCP at boot, and add the ip, udhcpc,
        ping, wget and nc applets.
    """
    with tarfile.open(path, 'w:gz') as tar:
        def add_dir(name, mode=0o755):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        def add_file(name, data, mode=0o644):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, _BytesReader(data))

        def add_link(name, target):
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)

        for d in ('bin', 'sbin', 'etc', 'proc', 'sys', 'dev', 'run', 'root',
                  'var', 'mnt'):
            add_dir(d)
        add_dir('tmp', 0o1777)
        with open(BUSYBOX, 'rb') as f:
            add_file('bin/busybox', f.read(), 0o755)
        for applet in _APPLETS + (_NET_APPLETS if dhcp else ()):
            add_link('bin/' + applet, 'busybox')
        add_link('sbin/init', '/bin/busybox')
        if dhcp:
            add_dir('etc/init.d')
            add_file('etc/init.d/dhcp', _DHCP_INIT, 0o755)
            add_file('etc/udhcpc.script', _UDHCPC_SCRIPT, 0o755)
        add_file('etc/inittab', _INITTAB_DHCP if dhcp else _INITTAB)
        add_file('etc/passwd', b'root:x:0:0:root:/root:/bin/sh\n')
        add_file('etc/group', b'root:x:0:\n')
    return path


class _BytesReader:
    def __init__(self, data):
        self._data = data
        self._pos = 0

    def read(self, size=-1):
        if size < 0:
            size = len(self._data) - self._pos
        chunk = self._data[self._pos:self._pos + size]
        self._pos += len(chunk)
        return chunk


# procps: free, uptime and ps read /proc (which lxcfs virtualises);
# isc-dhcp-client: ifupdown's dhcp method; wget: fetch metadata from
# 169.254.169.254.
# libcap2-bin: getcap/setcap, for the snapshot tests' file capability.
DEBIAN_PACKAGES = ('systemd-sysv,iproute2,ifupdown,isc-dhcp-client,procps,'
                   'wget,libcap2-bin')
# eth0 by DHCP through ifupdown (in a container without eth0, the
# networking service fails: systemd says degraded). Not systemd-networkd:
# with /sys mounted read-write it waits for udev, which containers lack.
_DEBIAN_FILES = {
    'etc/network/interfaces': b"""\
# novalxcdriver test image: eth0 by DHCP.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
""",
}


# A cloud image as distributions make them: cloud-init configures the
# hostname, the users' SSH keys and the network from Nova (config drive
# or metadata service), sshd lets them in; curl, as Tempest's scenarios
# use it. python3-cffi-backend: a
# dependency debootstrap's resolver misses (it is a virtual package's
# provider).
DEBIAN_CLOUD_PACKAGES = DEBIAN_PACKAGES + (
    ',cloud-init,openssh-server,sudo,curl,python3-cffi-backend')
_DEBIAN_CLOUD_FILES = {
    'etc/network/interfaces': b"""\
# cloud-init writes eth0's configuration into interfaces.d.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
""",
    # No DMI in a container: the driver names the platform in PID 1's
    # environment (ds-identify reads it); the list keeps cloud-init from
    # probing clouds that cannot be.
    'etc/cloud/cloud.cfg.d/90-novalxc.cfg': b"""\
datasource_list: [ConfigDrive, OpenStack, None]
# The hostname resolves (sudo complains otherwise), as in Debian's
# own cloud images.
manage_etc_hosts: true
""",
}
# Made at first boot by cloud-init (ssh_deletekeys): never shared.
_DEBIAN_CLOUD_REMOVE = ('etc/ssh/ssh_host_*',)


def _debian_path(prefix, packages, files):
    key = hashlib.sha256(repr((packages, sorted(files.items()))).encode())
    return os.path.join(CACHE_DIR,
                        '%s-%s.tar.zst' % (prefix, key.hexdigest()[:8]))


def debian_tarball_path():
    """Where debian_tarball() caches it: named after what goes in."""
    return _debian_path('debian-bookworm', DEBIAN_PACKAGES, _DEBIAN_FILES)


def debian_cloud_tarball_path():
    """Where debian_cloud_tarball() caches it."""
    return _debian_path('debian-bookworm-cloud', DEBIAN_CLOUD_PACKAGES,
                        _DEBIAN_CLOUD_FILES)


def debian_tarball():
    """Path of a cached zstd rootfs tarball of Debian 12 with systemd."""
    return _debian(debian_tarball_path(), DEBIAN_PACKAGES, _DEBIAN_FILES)


def debian_cloud_tarball():
    """Path of a cached zstd rootfs tarball of a Debian 12 cloud image.

    cloud-init, openssh-server and sudo besides debian_tarball()'s
    packages; the user's key goes to cloud-init's default user, debian.
    """
    return _debian(debian_cloud_tarball_path(), DEBIAN_CLOUD_PACKAGES,
                   _DEBIAN_CLOUD_FILES, _DEBIAN_CLOUD_REMOVE)


def _debian(path, packages, files, remove=()):
    if os.path.exists(path):
        return path
    os.makedirs(CACHE_DIR, exist_ok=True)
    work = tempfile.mkdtemp(dir=CACHE_DIR, prefix='.debootstrap-')
    try:
        root = os.path.join(work, 'root')
        subprocess.run(
            ['debootstrap', '--variant=minbase',
             '--include=' + packages, 'bookworm', root,
             DEBIAN_MIRROR], check=True, stdout=subprocess.DEVNULL)
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(root, name)),
                        exist_ok=True)
            with open(os.path.join(root, name), 'wb') as f:
                f.write(data)
        for pattern in remove:
            for found in glob.glob(os.path.join(root, pattern)):
                os.unlink(found)
        tmp = os.path.join(work, 'rootfs.tar.zst')
        # /dev is LXC's to populate (lxc.autodev); devices are refused.
        subprocess.run(
            ['tar', '--numeric-owner', '--xattrs', '--xattrs-include=*',
             '--exclude=./dev/*', '--exclude=./proc/*', '--exclude=./sys/*',
             '--zstd', '-cf', tmp, '-C', root, '.'], check=True)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
