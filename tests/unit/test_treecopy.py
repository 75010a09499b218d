"""treecopy.copy_tree: a disk image's partition copied into a rootfs."""

import os
import socket
import stat

import fixtures

from novalxcdriver import refusal
from novalxcdriver import treecopy
from tests.unit import base

MiB = 1 << 20
GiB = 1 << 30
# security.capability v2 of cap_net_raw=ep, as setcap(8) writes it.
CAP_NET_RAW_V2 = bytes.fromhex('0100000200200000000000000000000000000000')


class CopyTreeTest(base.TestCase):
    """copy_tree run as host root here (the child runs it confined)."""

    def setUp(self):
        super().setUp()
        tmp = self.useFixture(fixtures.TempDir()).path
        self.src = os.path.join(tmp, 'src')
        self.dest = os.path.join(tmp, 'dest')
        os.mkdir(self.src)
        os.mkdir(self.dest)

    def file(self, rel, data=b'x', mode=0o644):
        path = os.path.join(self.src, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def copy(self, max_bytes=GiB):
        return treecopy.copy_tree(self.src, self.dest, max_bytes)[0]

    def test_files_modes_links_times(self):
        self.file('bin/busybox', b'elf' * 100, 0o4755)
        os.symlink('/bin/busybox', os.path.join(self.src, 'init'))
        os.symlink('../../etc/shadow', os.path.join(self.src, 'bin/up'))
        os.link(os.path.join(self.src, 'bin/busybox'),
                os.path.join(self.src, 'bin/sh'))
        os.mkfifo(os.path.join(self.src, 'fifo'), 0o600)
        os.makedirs(os.path.join(self.src, 'tmp'))
        os.chmod(os.path.join(self.src, 'tmp'), 0o1777)
        os.utime(os.path.join(self.src, 'bin/busybox'), (1, 1000000))
        os.utime(os.path.join(self.src, 'bin'), (1, 2000000))
        os.chmod(self.src, 0o755)

        self.assertEqual(300, self.copy())

        busybox = os.lstat(os.path.join(self.dest, 'bin/busybox'))
        self.assertEqual(0o104755, busybox.st_mode)
        self.assertEqual(1000000, busybox.st_mtime)
        self.assertEqual(os.getuid(), busybox.st_uid)
        self.assertEqual(busybox.st_ino,
                         os.lstat(os.path.join(self.dest, 'bin/sh')).st_ino)
        self.assertEqual('/bin/busybox',
                         os.readlink(os.path.join(self.dest, 'init')))
        self.assertEqual('../../etc/shadow',
                         os.readlink(os.path.join(self.dest, 'bin/up')))
        self.assertTrue(stat.S_ISFIFO(
            os.lstat(os.path.join(self.dest, 'fifo')).st_mode))
        self.assertEqual(0o41777, os.lstat(
            os.path.join(self.dest, 'tmp')).st_mode)
        self.assertEqual(2000000,
                         os.lstat(os.path.join(self.dest, 'bin')).st_mtime)
        self.assertEqual(0o40755, os.lstat(self.dest).st_mode)

    def test_sparse_file_stays_sparse(self):
        path = self.file('big', b'')
        with open(path, 'r+b') as f:
            f.seek(64 * MiB)
            f.write(b'end')
            f.seek(0)
            f.write(b'start')
        self.assertEqual(64 * MiB + 3, self.copy())
        copied = os.path.join(self.dest, 'big')
        st = os.stat(copied)
        self.assertEqual(64 * MiB + 3, st.st_size)
        self.assertLess(st.st_blocks * 512, MiB)
        with open(copied, 'rb') as f:
            self.assertEqual(b'start', f.read(5))
            f.seek(64 * MiB)
            self.assertEqual(b'end', f.read())

    def test_xattrs_kept_trusted_ones_skipped(self):
        path = self.file('f')
        try:
            os.setxattr(path, 'user.novalxc', b'v')
        except OSError:
            self.skipTest('no user xattrs on this filesystem')
        root = os.geteuid() == 0
        if root:
            os.setxattr(path, 'trusted.overlay.opaque', b'y')
            os.setxattr(path, 'trusted.other', b'z')
            os.setxattr(path, 'security.capability', CAP_NET_RAW_V2)
        self.copy()
        copied = os.path.join(self.dest, 'f')
        self.assertEqual(b'v', os.getxattr(copied, 'user.novalxc'))
        if root:
            self.assertEqual(CAP_NET_RAW_V2,
                             os.getxattr(copied, 'security.capability'))
            self.assertNotIn('trusted.overlay.opaque', os.listxattr(copied))
            self.assertNotIn('trusted.other', os.listxattr(copied))

    def test_sockets_skipped(self):
        self.file('keep')
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        sock.bind(os.path.join(self.src, 'sock'))
        self.assertEqual((1, 1), treecopy.copy_tree(self.src, self.dest,
                                                    GiB))
        self.assertEqual(['keep'], os.listdir(self.dest))

    def test_device_nodes_skipped(self):
        if os.geteuid() != 0:
            self.skipTest('mknod needs root')
        os.mknod(os.path.join(self.src, 'whiteout'), 0o600 | stat.S_IFCHR,
                 os.makedev(0, 0))
        os.mknod(os.path.join(self.src, 'sda'), 0o600 | stat.S_IFBLK,
                 os.makedev(8, 0))
        self.copy()
        self.assertEqual([], os.listdir(self.dest))

    def test_over_the_limit_refused(self):
        self.file('a', b'x' * 600)
        self.file('b', b'x' * 600)
        e = self.assertRaises(refusal.DiskImageRefused, self.copy, 1000)
        self.assertIn('exceed the limit of 1000 bytes', str(e))

    def test_entry_names_leading_out_refused(self):
        # Only a crafted filesystem returns such names from readdir.
        self.file('etc/passwd')
        real = os.scandir

        class Entry:
            def __init__(self, name, path):
                self.name, self.path = name, path

        def scandir(path):
            entries = list(real(path))
            if path == self.src:
                entries.append(Entry('../escape', os.path.join(path,
                                                               'etc')))
            return _Scan(entries)

        self.patch('novalxcdriver.treecopy.os.scandir', side_effect=scandir)
        e = self.assertRaises(refusal.DiskImageRefused, self.copy)
        self.assertIn("entry named '../escape'", str(e))
        self.assertFalse(os.path.exists(os.path.join(
            os.path.dirname(self.dest), 'escape')))

    def test_hard_links_count_once(self):
        self.file('a', b'x' * 600)
        os.link(os.path.join(self.src, 'a'), os.path.join(self.src, 'b'))
        self.assertEqual(600, self.copy(1000))


class _Scan(list):
    """os.scandir's iterator: a context manager."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def test_unreadable_source_file_refuses_the_image(self):
        # Confined, a file only an owner beyond 0..65535 may read gives
        # EACCES: the image is refused, naming it.
        self.file('etc/shadow', b'x', 0o600)
        real = os.open

        def open_(path, flags, *args, **kw):
            if os.fsdecode(path).endswith('etc/shadow') and \
                    os.fsdecode(path).startswith(self.src):
                raise PermissionError(13, 'Permission denied', path)
            return real(path, flags, *args, **kw)

        self.patch('novalxcdriver.treecopy.os.open', side_effect=open_)
        e = self.assertRaises(refusal.DiskImageRefused, self.copy)
        self.assertIn('etc/shadow cannot be read: its owner is beyond',
                      str(e))

    def test_unwritable_destination_is_the_hosts_error(self):
        self.file('etc/motd')
        real = os.open

        def open_(path, flags, *args, **kw):
            if os.fsdecode(path).startswith(self.dest + '/'):
                raise PermissionError(13, 'Permission denied', path)
            return real(path, flags, *args, **kw)

        self.patch('novalxcdriver.treecopy.os.open', side_effect=open_)
        e = self.assertRaises(PermissionError, self.copy)
        self.assertNotIsInstance(e, refusal.DiskImageRefused)
