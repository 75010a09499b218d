"""Real root filesystem tarballs for functional tests.

busybox: built here in a second from Debian's busybox-static.
debian: a debootstrapped Debian 12 (systemd) root, built once per machine
(about a minute) and cached under CACHE_DIR.
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


def busybox_tarball(path):
    """Write a gzip rootfs tarball of a busybox system to path."""
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
        for applet in _APPLETS:
            add_link('bin/' + applet, 'busybox')
        add_link('sbin/init', '/bin/busybox')
        add_file('etc/inittab', _INITTAB)
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


# procps: free, uptime and ps read /proc (which lxcfs virtualises).
DEBIAN_PACKAGES = 'systemd-sysv,iproute2,ifupdown,procps'


def debian_tarball():
    """Path of a cached zstd rootfs tarball of Debian 12 with systemd."""
    key = hashlib.sha256(DEBIAN_PACKAGES.encode()).hexdigest()[:8]
    path = os.path.join(CACHE_DIR, 'debian-bookworm-%s.tar.zst' % key)
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
