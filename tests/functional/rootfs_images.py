"""Real root filesystem tarballs for functional tests.

busybox: built here in a second from Debian's busybox-static; with dhcp,
eth0 (if any) gets its address by DHCP at boot (the all-in-one cloud's).
debian: a debootstrapped Debian 12 (systemd) root, built once per machine
(about a minute) and cached under CACHE_DIR; ifupdown configures its eth0
by DHCP.
"""

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

_INITTAB = b"""::sysinit:/bin/mount -t tmpfs tmpfs /run
::sysinit:/bin/echo novalxc busybox booted
::respawn:/bin/sleep 86400
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


def debian_tarball_path():
    """Where debian_tarball() caches it: named after what goes in."""
    key = hashlib.sha256(repr((DEBIAN_PACKAGES,
                               sorted(_DEBIAN_FILES.items()))).encode())
    return os.path.join(CACHE_DIR,
                        'debian-bookworm-%s.tar.zst' % key.hexdigest()[:8])


def debian_tarball():
    """Path of a cached zstd rootfs tarball of Debian 12 with systemd."""
    path = debian_tarball_path()
    if os.path.exists(path):
        return path
    os.makedirs(CACHE_DIR, exist_ok=True)
    work = tempfile.mkdtemp(dir=CACHE_DIR, prefix='.debootstrap-')
    try:
        root = os.path.join(work, 'root')
        subprocess.run(
            ['debootstrap', '--variant=minbase',
             '--include=' + DEBIAN_PACKAGES, 'bookworm', root,
             DEBIAN_MIRROR], check=True, stdout=subprocess.DEVNULL)
        for name, data in _DEBIAN_FILES.items():
            os.makedirs(os.path.dirname(os.path.join(root, name)),
                        exist_ok=True)
            with open(os.path.join(root, name), 'wb') as f:
                f.write(data)
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


# -- disk images (diskimage.py) ---------------------------------------------

# What disk_image() adds to the root, checked after the boot: an owner, a
# setuid mode, a file capability and a user xattr must survive.
MARK_FILE = 'usr/local/bin/novalxc-mark'
MARK_LINK = 'usr/local/bin/novalxc-mark-link'
MARK_UID, MARK_GID, MARK_MODE = 1234, 5678, 0o4750
MARK_CAPABILITY = 'cap_net_raw=ep'
MARK_XATTR = ('user.novalxc', b'disk-image')
_MiB = 1024 * 1024


def _run(*argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def disk_image(tarball, path, fmt='qcow2', label='gpt'):
    """Write a disk image of tarball's root to path, as a cloud image is.

    Partition 1 is a small ext4 "/boot" (a kernel file, no /sbin/init),
    partition 2 the root, filled by mkfs.ext4 -d (no mount), with
    MARK_FILE (owner, setuid mode, capability, xattr) and its hard link
    MARK_LINK added.

    :param fmt: 'qcow2' or 'raw'.
    :param label: 'gpt' or 'dos' (sfdisk(8) label).
    :returns: path.
    """
    work = tempfile.mkdtemp(dir=os.path.dirname(path), prefix='.disk-')
    try:
        root = os.path.join(work, 'root')
        os.mkdir(root)
        _run('tar', '--numeric-owner', '--xattrs', '--xattrs-include=*',
             '-xpf', tarball, '-C', root)
        mark = os.path.join(root, MARK_FILE)
        os.makedirs(os.path.dirname(mark), exist_ok=True)
        shutil.copyfile(BUSYBOX, mark)
        os.chown(mark, MARK_UID, MARK_GID)
        os.chmod(mark, MARK_MODE)
        _run('setcap', MARK_CAPABILITY, mark)
        os.setxattr(mark, *MARK_XATTR)
        os.link(mark, os.path.join(root, MARK_LINK))
        boot = os.path.join(work, 'boot')
        os.mkdir(boot)
        with open(os.path.join(boot, 'vmlinuz'), 'wb') as f:
            f.write(b'not a kernel')
        used = int(subprocess.run(['du', '-sb', root], check=True,
                                  capture_output=True,
                                  text=True).stdout.split()[0])
        root_mib = used * 13 // 10 // _MiB + 16
        boot_mib = 4
        filesystems = []
        for name, mib in (('boot', boot_mib), ('root', root_mib)):
            image = os.path.join(work, name + '.ext4')
            _run('mkfs.ext4', '-q', '-F', '-d', os.path.join(work, name),
                 '-E', 'root_owner=0:0', image, '%dM' % mib)
            filesystems.append((image, mib))
        raw = os.path.join(work, 'disk.raw')
        with open(raw, 'wb') as f:
            f.truncate((2 + boot_mib + root_mib + 1) * _MiB)
        subprocess.run(['sfdisk', '-q', raw], check=True, text=True,
                       input='label: %s\nstart=1MiB, size=%dMiB\n'
                             'size=%dMiB\n' % (label, boot_mib, root_mib),
                       stdout=subprocess.DEVNULL)
        offset = _MiB
        with open(raw, 'r+b') as out:
            for image, mib in filesystems:
                with open(image, 'rb') as src:
                    out.seek(offset)
                    shutil.copyfileobj(src, out, _MiB)
                offset += mib * _MiB
        if fmt == 'qcow2':
            _run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                 path)
        else:
            os.rename(raw, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def qcow2_with_backing_file(path, backing):
    """A qcow2 whose backing file is the host file backing (hostile)."""
    _run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
         backing, path)
    return path
