"""privsep.disks: making, growing, snapshotting and freezing disks.

Entry points run here in-process (client mode off) against a temporary
driver root, with the tools (command.execute), the ioctls, the mount
table (mount.source) and the loop devices' sysfs mocked: what is asserted
is what each refuses before touching anything, the files it makes, the
argv of the tools it runs and the structures the ioctls are given.
Through a real daemon, with real filesystems: tests/functional/
test_disk_templates.py and test_snapshot.py.
"""

import ctypes
import errno
import io
import os
import socket
import struct
import subprocess
from unittest import mock

import fixtures

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver.privsep import disks
from tests.unit import base

CONF = conf.CONF
GiB = 1024 ** 3
LOOP = '/dev/loop7'
BACKING = '/sys/block/loop7/loop/backing_file'
# Superblock signatures (kernel fs/ext4/ext4.h, fs/btrfs/accessors.h).
EXT4_MAGIC = (0x438, b'\x53\xef')
BTRFS_MAGIC = (0x10040, b'_BHRfS_M')


def _ioc(direction, kind, number, size):
    # include/uapi/asm-generic/ioctl.h
    return direction << 30 | size << 16 | kind << 8 | number


def _mode(path):
    return os.stat(path).st_mode & 0o7777


def _data(path):
    """[(offset, bytes)] of each data extent of path (lseek(2))."""
    found = []
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while True:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    return found
                raise
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            found.append((start, os.pread(fd, offset - start, start)))
    finally:
        os.close(fd)


class _Base(base.TestCase):
    """A driver root holding an image, mounted (as mocked) from LOOP."""

    def setUp(self):
        super().setUp()
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        # Shell metacharacters and a space: argv must carry them as is.
        self.root = os.path.join(self.tmp, 'state a b;$(x)')
        os.mkdir(self.root)
        self.cfg = self.storage_admin_here(os.path.join(self.tmp, 'lxc'),
                                           self.root)

        self.image = os.path.join(self.root, 'root.img')
        self.mountpoint = os.path.join(self.root, 'root')
        os.mkdir(self.mountpoint)
        self.templates = os.path.join(self.root, 'disk-templates')
        # Not a driver root: what is refused must stay as it is.
        self.outside = os.path.join(self.tmp, 'outside')
        os.mkdir(self.outside)

        self.execute = self.patch('novalxcdriver.privsep.disks.command',
                                  autospec=True).execute
        self.execute.return_value = ('', '')
        # Never the kernel's: a real FIFREEZE would freeze the host's own
        # filesystem that the temporary directory is on.
        self.ioctls = []
        self.reflinks = False
        self.ioctl = self.patch('fcntl.ioctl', side_effect=self._ioctl)
        self.set_capacity = self.patch(
            'novalxcdriver.privsep.storage.loop_set_capacity')
        # The mount table and the loop devices' backing files.
        self.sources = {self.mountpoint: LOOP}
        self.patch('novalxcdriver.mount.source',
                   side_effect=lambda point: self.sources.get(point))
        self.sysfs = {BACKING: self.image + '\n'}
        for module in ('storage', 'disks'):
            self.patch('novalxcdriver.privsep.%s.open' % module,
                       new=self._open, create=True)
        # Tools, the loop device's capacity and ioctls, in order.
        self.steps = mock.Mock()
        self.steps.attach_mock(self.execute, 'execute')
        self.steps.attach_mock(self.set_capacity, 'set_capacity')

    def _open(self, path, *args, **kwargs):
        if isinstance(path, str) and path.startswith('/sys/'):
            if path not in self.sysfs:
                raise FileNotFoundError(errno.ENOENT, 'No such file', path)
            return io.StringIO(self.sysfs[path])
        return open(path, *args, **kwargs)

    def _ioctl(self, fd, request, arg=0, mutate=True):
        fds = base.open_fds()
        self.ioctls.append((fds[fd], request,
                            bytes(arg) if isinstance(arg, bytearray)
                            else arg, fds))
        self.steps.ioctl(fds[fd], request)
        if request == disks._FICLONE and not self.reflinks:
            raise OSError(errno.EOPNOTSUPP, 'Operation not supported')
        return 0

    def make_image(self, path=None, size=GiB, magic=EXT4_MAGIC):
        path = path or self.image
        with open(path, 'wb') as f:
            f.truncate(size)
            f.seek(magic[0])
            f.write(magic[1])
        return path

    def tree(self):
        """Every path under the temporary directory, as it is."""
        return base.tree_state(self.tmp)

    def refused(self, fn, *args, match=None):
        """fn(*args) is refused and touches nothing; the message."""
        before = self.tree()
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, *args)
        if match is not None:
            self.assertIn(match, str(e))
        self.assertEqual(before, self.tree())
        self.execute.assert_not_called()
        self.set_capacity.assert_not_called()
        self.assertEqual([], self.ioctls)
        return str(e)


class _Create(_Base):

    def setUp(self):
        super().setUp()
        self.execute.side_effect = self._mkfs

    def _mkfs(self, *argv, **kwargs):
        if argv[0] == 'fallocate':
            # The real tool, on the test's own file.
            subprocess.run(argv, check=True)
            return '', ''
        # A superblock near the start, metadata far in: the rest a hole,
        # but for the MiB of zeros mkfs.btrfs writes over old signatures.
        with open(argv[-1], 'r+b') as f:
            if argv[0] == 'mkfs.btrfs':
                f.write(bytes(1024 * 1024))
            f.seek(1024)
            f.write(b'super')
            f.seek(GiB // 2)
            f.write(b'meta')
        return '', ''


class CreateImageTest(_Create):

    def setUp(self):
        super().setUp()
        # Kernels without temp-fsid: every disk formatted on its own.
        self.patch_object(disks, 'BTRFS_TEMP_FSID',
                          os.path.join(self.tmp, 'nope'))

    def test_sparse_image_of_exact_size_root_s_alone(self):
        disks.create_image(self.image, 2, 'ext4', None)
        st = os.stat(self.image)
        self.assertEqual(2 * GiB, st.st_size)
        # Sparse: (almost) nothing allocated.
        self.assertLess(st.st_blocks * 512, 1024 * 1024)
        self.assertEqual(0o600, st.st_mode & 0o7777)
        self.assertEqual(os.geteuid(), st.st_uid)

    def test_a_failed_open_is_what_is_raised(self):
        # Nothing was made, so nothing is removed, and the open's own
        # error comes back rather than a cleanup's.
        real_open = os.open

        def full(path, *args, **kwargs):
            if path == self.image:
                raise OSError(errno.ENOSPC, 'No space left on device', path)
            return real_open(path, *args, **kwargs)
        self.patch('os.open', side_effect=full)
        e = self.assertRaises(OSError, disks.create_image, self.image, 1,
                              'ext4', None)
        self.assertEqual(errno.ENOSPC, e.errno)
        self.execute.assert_not_called()

    def test_made_before_mkfs(self):
        def mkfs(*argv, **kwargs):
            self.assertEqual(GiB, os.path.getsize(argv[-1]))
        self.execute.side_effect = mkfs
        disks.create_image(self.image, 1, 'ext4', None)
        self.execute.assert_called_once()

    def test_mkfs_ext4_argv(self):
        disks.create_image(self.image, 1, 'ext4', None)
        self.execute.assert_called_once()
        call = self.execute.call_args
        argv = list(call.args)
        self.assertEqual('mkfs.ext4', argv[0])
        # The image path is one argument, unquoted: no shell.
        self.assertEqual(self.image, argv[-1])
        self.assertNotIn('shell', call.kwargs)
        for arg in argv:
            self.assertIsInstance(arg, str)
        self.assertIn('-F', argv)
        # No blocks reserved for root.
        self.assertEqual('0', argv[argv.index('-m') + 1])
        options = argv[argv.index('-E') + 1].split(',')
        self.assertIn('lazy_itable_init=1', options)
        self.assertIn('lazy_journal_init=1', options)

    def test_mkfs_btrfs_argv(self):
        disks.create_image(self.image, 1, 'btrfs', None)
        self.execute.assert_called_once_with('mkfs.btrfs', '-q', '-f',
                                             self.image)

    def test_failed_mkfs_leaves_no_image(self):
        for fs in ('ext4', 'btrfs'):
            self.execute.side_effect = exception.CommandFailed(
                cmd='mkfs.' + fs, exit_code=1,
                stderr='No space left on device')
            self.assertRaises(exception.CommandFailed, disks.create_image,
                              self.image, 1, fs, None)
            self.assertFalse(os.path.exists(self.image))

    def test_existing_image_refused_and_kept(self):
        with open(self.image, 'wb') as f:
            f.write(b'someone else')
        for fs in ('ext4', 'btrfs'):
            self.assertRaises(FileExistsError, disks.create_image,
                              self.image, 1, fs, None)
        with open(self.image, 'rb') as f:
            self.assertEqual(b'someone else', f.read())
        self.execute.assert_not_called()

    def test_files_made_with_umask_022_whatever_the_daemon_s(self):
        # oslo.privsep's daemon runs with umask 0.
        self.addCleanup(os.umask, os.umask(0))
        self.patch_object(disks, 'BTRFS_TEMP_FSID', self.root)
        umasks = []

        def mkfs(*argv, **kwargs):
            # mkfs, the daemon's child, inherits it.
            umasks.append(base.process_umask())
            return self._mkfs(*argv)
        self.execute.side_effect = mkfs
        # The templates' parent is made too, with the default mode.
        parent = os.path.join(self.root, 'new')
        templates = os.path.join(parent, 'disk-templates')
        disks.create_image(self.image, 1, 'btrfs', templates)
        os.umask(0)
        other = os.path.join(self.root, 'other.img')
        disks.create_image(other, 1, 'ext4', templates)
        # mkfs.btrfs and fallocate of the template, mkfs.ext4.
        self.assertEqual([0o022] * 3, umasks)
        self.assertEqual(0o755, _mode(parent))
        self.assertEqual(0o700, _mode(templates))
        for path in (self.image, other,
                     os.path.join(templates, 'btrfs-1G.img')):
            self.assertEqual(0o600, _mode(path))


class TemplateTest(_Create):
    """New btrfs disks copied from a template formatted once per size."""

    def setUp(self):
        super().setUp()
        # temp-fsid: copies of one template mount side by side.
        self.patch_object(disks, 'BTRFS_TEMP_FSID', self.root)

    def template(self, fs='btrfs', size_gb=1):
        return os.path.join(self.templates, '%s-%dG.img' % (fs, size_gb))

    def test_formatted_once_then_copied(self):
        other = os.path.join(self.root, 'other.img')
        disks.create_image(self.image, 1, 'btrfs', self.templates)
        disks.create_image(other, 1, 'btrfs', self.templates)
        # One mkfs, of the template under its temporary name, whose zeros
        # then become holes.
        self.assertEqual(['mkfs.btrfs', 'fallocate'],
                         [c.args[0] for c in self.execute.call_args_list])
        self.assertEqual(['--dig-holes'], [
            a for a in self.execute.call_args.args if a.startswith('-')])
        for c in self.execute.call_args_list:
            self.assertTrue(c.args[-1].startswith(
                os.path.join(self.templates, '.btrfs-1G.img.')))
        self.assertEqual(['btrfs-1G.img'], os.listdir(self.templates))
        template = _data(self.template())
        self.assertEqual([b'super', b'meta'],
                         [data.strip(b'\0') for _, data in template])
        # Only the blocks holding data are left: no MiB of zeros.
        self.assertLessEqual(sum(len(data) for _, data in template),
                             2 * 64 * 1024)
        for path in (self.image, other):
            # The same data at the same offsets, holes where it has them.
            self.assertEqual(template, _data(path))
            st = os.stat(path)
            self.assertEqual(GiB, st.st_size)
            self.assertLess(st.st_blocks * 512, 1024 * 1024)
            self.assertEqual(0o600, st.st_mode & 0o7777)
        self.assertEqual(0o600, _mode(self.template()))
        self.assertEqual(0o700, _mode(self.templates))

    def test_renamed_into_place_once_formatted(self):
        def mkfs(*argv, **kwargs):
            # A reader never sees a template mkfs has not finished.
            self.assertFalse(os.path.exists(self.template()))
            return self._mkfs(*argv)
        self.execute.side_effect = mkfs
        disks.create_image(self.image, 1, 'btrfs', self.templates)
        self.assertTrue(os.path.exists(self.template()))

    def test_reflinked_when_the_filesystem_can(self):
        self.reflinks = True
        copy_file_range = self.patch('os.copy_file_range')
        disks.create_image(self.image, 1, 'btrfs', self.templates)
        [(dest, request, source_fd, fds)] = self.ioctls
        self.assertEqual(disks._FICLONE, request)
        self.assertEqual((self.image, self.template()),
                         (dest, fds[source_fd]))
        copy_file_range.assert_not_called()

    def test_one_template_per_size_ext4_formatted_each(self):
        for name, size_gb, fs in (('a', 1, 'btrfs'), ('b', 2, 'btrfs'),
                                  ('c', 1, 'btrfs'), ('d', 1, 'ext4')):
            disks.create_image(os.path.join(self.root, name + '.img'),
                               size_gb, fs, self.templates)
        self.assertEqual(['btrfs-1G.img', 'btrfs-2G.img'],
                         sorted(os.listdir(self.templates)))
        self.assertEqual(
            [('mkfs.btrfs', 'template'), ('fallocate', 'template'),
             ('mkfs.btrfs', 'template'), ('fallocate', 'template'),
             ('mkfs.ext4', os.path.join(self.root, 'd.img'))],
            [(c.args[0], 'template' if c.args[-1].startswith(
                self.templates) else c.args[-1])
             for c in self.execute.call_args_list])
        self.assertEqual(2 * GiB, os.path.getsize(
            os.path.join(self.root, 'b.img')))

    def test_btrfs_formatted_each_time_without_temp_fsid(self):
        # An older kernel would mount a clone as the mounted original.
        self.patch_object(disks, 'BTRFS_TEMP_FSID',
                          os.path.join(self.tmp, 'nope'))
        disks.create_image(self.image, 1, 'btrfs', self.templates)
        self.execute.assert_called_once_with('mkfs.btrfs', '-q', '-f',
                                             self.image)
        self.assertFalse(os.path.exists(self.templates))

    def test_from_template(self):
        self.assertTrue(disks.from_template('btrfs'))
        self.assertFalse(disks.from_template('ext4'))
        self.patch_object(disks, 'BTRFS_TEMP_FSID',
                          os.path.join(self.tmp, 'nope'))
        self.assertFalse(disks.from_template('btrfs'))

    def test_failed_mkfs_leaves_no_template_and_no_image(self):
        self.execute.side_effect = exception.CommandFailed(
            cmd='mkfs.btrfs', exit_code=1, stderr='No space left on device')
        self.assertRaises(exception.CommandFailed, disks.create_image,
                          self.image, 1, 'btrfs', self.templates)
        self.assertEqual([], os.listdir(self.templates))
        self.assertFalse(os.path.exists(self.image))

    def test_existing_image_refused_and_kept(self):
        with open(self.image, 'wb') as f:
            f.write(b'someone else')
        self.assertRaises(FileExistsError, disks.create_image, self.image,
                          1, 'btrfs', self.templates)
        with open(self.image, 'rb') as f:
            self.assertEqual(b'someone else', f.read())

    def test_failed_copy_leaves_no_image(self):
        self.patch('os.copy_file_range',
                   side_effect=OSError(errno.ENOSPC, 'No space left'))
        self.assertRaises(OSError, disks.create_image, self.image, 1,
                          'btrfs', self.templates)
        self.assertFalse(os.path.exists(self.image))
        self.assertTrue(os.path.exists(self.template()))

    def test_a_symlinked_template_is_not_copied(self):
        # Whatever it points to, the host's file or device, stays out of
        # the image.
        os.makedirs(self.templates)
        secret = os.path.join(self.outside, 'secret')
        with open(secret, 'wb') as f:
            f.write(b'host data')
        os.symlink(secret, self.template())
        self.assertRaises(OSError, disks.create_image, self.image, 1,
                          'btrfs', self.templates)
        self.assertFalse(os.path.exists(self.image))
        with open(secret, 'rb') as f:
            self.assertEqual(b'host data', f.read())

    def test_an_existing_image_kept_whatever_the_copy_s_failure(self):
        # The template cannot be opened (a socket: ENXIO): the image in
        # the way was not made by this call, and stays.
        os.makedirs(self.templates)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(self.template())
        with open(self.image, 'wb') as f:
            f.write(b'someone else')
        self.assertRaises(OSError, disks.create_image, self.image, 1,
                          'btrfs', self.templates)
        with open(self.image, 'rb') as f:
            self.assertEqual(b'someone else', f.read())

    def test_a_fifo_template_does_not_hold_the_daemon(self):
        # Opened without blocking, then refused as no regular file.
        os.makedirs(self.templates)
        os.mkfifo(self.template())
        e = self.assertRaises(OSError, disks.create_image, self.image, 1,
                              'btrfs', self.templates)
        self.assertEqual(errno.EINVAL, e.errno)
        self.assertFalse(os.path.exists(self.image))

    def test_crash_leftovers_removed_templates_kept(self):
        # Killed during the template's mkfs: its temporary name is left.
        def killed(*argv, **kwargs):
            raise KeyboardInterrupt()
        self.execute.side_effect = killed
        with mock.patch('os.unlink'):
            self.assertRaises(KeyboardInterrupt, disks.create_image,
                              self.image, 2, 'btrfs', self.templates)
        [leftover] = os.listdir(self.templates)
        self.assertTrue(leftover.startswith('.btrfs-2G.img.'))
        for name in ('btrfs-1G.img', 'notes', '.hidden', '.btrfs-1G.img',
                     '.xfs-1G.img.abc'):
            open(os.path.join(self.templates, name), 'w').close()
        self.assertEqual([os.path.join(self.templates, leftover)],
                         disks.remove_template_leftovers(self.templates))
        self.assertEqual(['.btrfs-1G.img', '.hidden', '.xfs-1G.img.abc',
                          'btrfs-1G.img', 'notes'],
                         sorted(os.listdir(self.templates)))
        self.assertEqual([], disks.remove_template_leftovers(
            os.path.join(self.root, 'none')))


class GrowTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_image()

    def test_ext4_grown_online(self):
        self.assertTrue(disks.grow(self.image, 3, self.mountpoint))
        st = os.stat(self.image)
        self.assertEqual(3 * GiB, st.st_size)
        # Still sparse.
        self.assertLess(st.st_blocks * 512, 1024 * 1024)
        self.assertEqual(
            [mock.call.set_capacity(LOOP),
             mock.call.execute('resize2fs', LOOP)],
            self.steps.mock_calls)

    def test_btrfs_grown_online(self):
        self.make_image(magic=BTRFS_MAGIC)
        self.assertTrue(disks.grow(self.image, 2, self.mountpoint))
        self.assertEqual(2 * GiB, os.path.getsize(self.image))
        self.assertEqual(
            [mock.call.set_capacity(LOOP),
             mock.call.execute('btrfs', 'filesystem', 'resize', 'max',
                               self.mountpoint)],
            self.steps.mock_calls)

    def test_file_grown_before_the_loop_device_learns_it(self):
        def check(device):
            self.assertEqual(2 * GiB, os.path.getsize(self.image))
        self.set_capacity.side_effect = check
        disks.grow(self.image, 2, self.mountpoint)
        self.set_capacity.assert_called_once_with(LOOP)

    def test_as_large_left_alone(self):
        for mountpoint in (self.mountpoint, None):
            self.assertFalse(disks.grow(self.image, 1, mountpoint))
        self.assertEqual(GiB, os.path.getsize(self.image))
        self.assertEqual([], self.steps.mock_calls)

    def test_never_shrinks(self):
        self.make_image(size=4 * GiB)
        for mountpoint in (self.mountpoint, None):
            self.assertFalse(disks.grow(self.image, 2, mountpoint))
        self.assertEqual(4 * GiB, os.path.getsize(self.image))
        self.assertEqual([], self.steps.mock_calls)

    def test_tool_failure_raised(self):
        self.execute.side_effect = exception.CommandFailed(
            cmd='resize2fs', exit_code=1, stderr='no')
        for mountpoint in (self.mountpoint, None):
            self.make_image()
            self.assertRaises(exception.CommandFailed, disks.grow,
                              self.image, 2, mountpoint)
            # The file is larger, the filesystem as it was.
            self.assertEqual(2 * GiB, os.path.getsize(self.image))

    def test_loop_failure_raised_before_the_filesystem_grows(self):
        self.set_capacity.side_effect = exception.LoopFailed(
            path=LOOP, reason='No such device')
        self.assertRaises(exception.LoopFailed, disks.grow, self.image, 2,
                          self.mountpoint)
        self.execute.assert_not_called()

    def test_unmounted_ext4_checked_then_grown_offline(self):
        # No CAP_SYS_RESOURCE needed: no EXT4_IOC_RESIZE_FS.
        self.assertTrue(disks.grow(self.image, 2, None))
        self.assertEqual(2 * GiB, os.path.getsize(self.image))
        self.assertEqual(
            [mock.call.execute('e2fsck', '-f', '-p', self.image,
                               check_exit_code=[0, 1]),
             mock.call.execute('resize2fs', self.image)],
            self.steps.mock_calls)

    def test_unmounted_btrfs_refused_untouched(self):
        self.make_image(magic=BTRFS_MAGIC)
        self.assertRaises(exception.DiskUnreadable, disks.grow, self.image,
                          2, None)
        self.assertEqual(GiB, os.path.getsize(self.image))
        self.assertEqual([], self.steps.mock_calls)

    def test_unknown_filesystem_untouched(self):
        self.make_image(magic=(0, b'\0'))
        for mountpoint in (self.mountpoint, None):
            self.assertRaises(exception.DiskUnreadable, disks.grow,
                              self.image, 2, mountpoint)
        self.assertEqual(GiB, os.path.getsize(self.image))
        self.assertEqual([], self.steps.mock_calls)


class FilesystemOfTest(_Base):
    """The superblock's signature says which filesystem an image holds."""

    def test_btrfs(self):
        self.make_image(size=128 * 1024, magic=BTRFS_MAGIC)
        self.assertEqual('btrfs', disks.image_filesystem(self.image))

    def test_ext4(self):
        self.make_image(size=128 * 1024, magic=EXT4_MAGIC)
        self.assertEqual('ext4', disks.image_filesystem(self.image))

    def test_neither_is_unreadable(self):
        for magic in ((0, b'\0'), (0x438 + 1, EXT4_MAGIC[1]),
                      (0x10000, BTRFS_MAGIC[1])):
            self.make_image(size=128 * 1024, magic=magic)
            self.assertRaises(exception.DiskUnreadable,
                              disks.image_filesystem, self.image)

    def test_missing_image_is_unreadable(self):
        self.assertRaises(exception.DiskUnreadable, disks.image_filesystem,
                          self.image)

    def test_a_fifo_is_unreadable_at_once(self):
        # Opened without blocking: a planted FIFO holds no daemon thread.
        os.mkfifo(self.image)
        e = self.assertRaises(exception.DiskUnreadable,
                              disks.image_filesystem, self.image)
        self.assertIn('not a regular file', str(e))

    def test_outside_the_roots_refused(self):
        outside = os.path.join(self.outside, 'x.img')
        with open(outside, 'wb') as f:
            f.write(b'\0' * 0x440)
        self.assertRaises(exception.PrivilegedCallRefused,
                          disks.image_filesystem, outside)


class SubvolumeTest(_Base):

    def test_snapshot_struct(self):
        disks.snapshot_subvolume(self.mountpoint, '.snapshot-1')
        [(path, request, args, fds)] = self.ioctls
        self.assertEqual(self.mountpoint, path)
        self.assertEqual(disks._BTRFS_IOC_SNAP_CREATE_V2, request)
        # struct btrfs_ioctl_vol_args_v2 (include/uapi/linux/btrfs.h).
        self.assertEqual(4096, len(args))
        fd, transid, flags = struct.unpack_from('=qQQ', args)
        # The source: the disk's top-level subvolume itself...
        self.assertEqual(self.mountpoint, fds[fd])
        self.assertEqual(0, transid)
        # ...snapshotted read-only (BTRFS_SUBVOL_RDONLY).
        self.assertEqual(1 << 1, flags)
        self.assertEqual(b'\0' * 32, args[24:56])
        # name[4040] after the 32-byte union.
        self.assertEqual(b'.snapshot-1', args[56:67])
        self.assertEqual(b'\0' * (4096 - 67), args[67:])
        self.assertNotIn(self.mountpoint, base.open_fds().values())

    def test_snapshot_failure_raised(self):
        self.ioctl.side_effect = OSError(errno.ENOTTY, 'not btrfs')
        self.assertRaises(OSError, disks.snapshot_subvolume,
                          self.mountpoint, '.snapshot-1')
        self.assertNotIn(self.mountpoint, base.open_fds().values())

    def test_delete_struct(self):
        self.assertTrue(disks.delete_subvolume(self.mountpoint,
                                               '.snapshot-1'))
        [(path, request, args, _fds)] = self.ioctls
        self.assertEqual(self.mountpoint, path)
        self.assertEqual(disks._BTRFS_IOC_SNAP_DESTROY, request)
        # struct btrfs_ioctl_vol_args: fd (unused), then name[4088].
        self.assertEqual(4096, len(args))
        self.assertEqual((0,), struct.unpack_from('=q', args))
        self.assertEqual(b'.snapshot-1', args[8:19])
        self.assertEqual(b'\0' * (4096 - 19), args[19:])
        self.assertNotIn(self.mountpoint, base.open_fds().values())

    def test_delete_of_no_such_subvolume(self):
        self.ioctl.side_effect = FileNotFoundError(errno.ENOENT, 'gone')
        self.assertFalse(disks.delete_subvolume(self.mountpoint, 'x'))
        self.ioctl.side_effect = OSError(errno.EPERM, 'no')
        self.assertRaises(OSError, disks.delete_subvolume, self.mountpoint,
                          'x')

    def test_names_of_255_bytes(self):
        for name in ('x' * 255, '\u00e9' * 127, '.snapshot-\u00e9 $(x)'):
            disks.snapshot_subvolume(self.mountpoint, name)
            disks.delete_subvolume(self.mountpoint, name)
        encoded = '.snapshot-\u00e9 $(x)'.encode()
        self.assertEqual(encoded, self.ioctls[-2][2][56:56 + len(encoded)])
        self.assertEqual(encoded, self.ioctls[-1][2][8:8 + len(encoded)])

    def test_ioctl_numbers_as_the_kernel_computes_them(self):
        # _IOW = 1, _IOWR = 3; sizes of the structs and of an int.
        self.assertEqual(_ioc(1, 0x94, 23, 4096),
                         disks._BTRFS_IOC_SNAP_CREATE_V2)
        self.assertEqual(_ioc(1, 0x94, 15, 4096),
                         disks._BTRFS_IOC_SNAP_DESTROY)
        self.assertEqual(_ioc(3, ord('X'), 119, 4), disks._FIFREEZE)
        self.assertEqual(_ioc(3, ord('X'), 120, 4), disks._FITHAW)
        self.assertEqual(_ioc(1, 0x94, 9, 4), disks._FICLONE)


class FreezeTest(_Base):

    def test_freeze(self):
        disks.freeze(self.mountpoint)
        self.assertEqual([(self.mountpoint, disks._FIFREEZE, 0)],
                         [i[:3] for i in self.ioctls])
        self.assertNotIn(self.mountpoint, base.open_fds().values())

    def test_freeze_failure_raised(self):
        self.ioctl.side_effect = OSError(errno.EBUSY, 'frozen already')
        self.assertRaises(OSError, disks.freeze, self.mountpoint)
        self.assertNotIn(self.mountpoint, base.open_fds().values())

    def test_thaw(self):
        self.assertTrue(disks.thaw(self.mountpoint))
        self.assertEqual([(self.mountpoint, disks._FITHAW, 0)],
                         [i[:3] for i in self.ioctls])

    def test_thaw_of_what_is_not_frozen(self):
        self.ioctl.side_effect = OSError(errno.EINVAL, 'not frozen')
        self.assertFalse(disks.thaw(self.mountpoint))
        self.ioctl.side_effect = OSError(errno.EPERM, 'no')
        self.assertRaises(OSError, disks.thaw, self.mountpoint)
        self.assertNotIn(self.mountpoint, base.open_fds().values())


class PointInTimeTest(_Base):
    """sync_filesystem and copy_layer."""

    def test_syncfs_of_the_path_s_filesystem(self):
        synced = []

        def syncfs(fd):
            synced.append(os.readlink('/proc/self/fd/%d' % fd))
            return 0
        self.patch_object(disks._libc, 'syncfs', side_effect=syncfs)
        disks.sync_filesystem(self.mountpoint)
        self.assertEqual([self.mountpoint], synced)
        self.assertNotIn(self.mountpoint, base.open_fds().values())

    def test_syncfs_failure_raised_with_its_errno(self):
        # The real call, then a failing one (ctypes' errno set by hand).
        disks.sync_filesystem(self.mountpoint)

        def failing(fd):
            ctypes.set_errno(errno.EIO)
            return -1
        self.patch_object(disks._libc, 'syncfs', side_effect=failing)
        e = self.assertRaises(OSError, disks.sync_filesystem,
                              self.mountpoint)
        self.assertEqual(errno.EIO, e.errno)

    def test_syncfs_outside_the_roots_refused(self):
        syncfs = self.patch_object(disks._libc, 'syncfs')
        for path in (self.outside, '/', self.root + '/../outside'):
            self.assertRaises(exception.PrivilegedCallRefused,
                              disks.sync_filesystem, path)
        syncfs.assert_not_called()

    def test_copy_argv_and_umask(self):
        umasks = []

        def cp(*argv, **kwargs):
            umasks.append(os.umask(0))
            os.umask(umasks[-1])
            return '', ''
        self.execute.side_effect = cp
        os.umask(0)
        self.addCleanup(os.umask, 0o022)
        dest = os.path.join(self.root, 'stage', 'upper')
        disks.copy_layer(self.mountpoint, dest)
        # -T: dest is the copy, never a directory copied into.
        self.execute.assert_called_once_with(
            'cp', '-a', '--reflink=auto', '-T', '--', self.mountpoint, dest)
        self.assertEqual([0o022], umasks)

    def test_copy_onto_something_refused(self):
        # What is in the way is not copied into.
        dest = os.path.join(self.root, 'upper-copy')
        os.mkdir(dest)
        self.assertRaises(FileExistsError, disks.copy_layer,
                          self.mountpoint, dest)
        link = os.path.join(self.root, 'upper-link')
        os.symlink(self.outside, link)
        self.assertRaises(exception.PrivilegedCallRefused, disks.copy_layer,
                          self.mountpoint, link)
        for source, dest in ((self.outside, self.root + '/c'),
                             (self.mountpoint, self.outside + '/c')):
            self.assertRaises(exception.PrivilegedCallRefused,
                              disks.copy_layer, source, dest)
        self.execute.assert_not_called()


class ChecksTest(_Base):
    """What each entry point refuses, before touching anything."""

    def setUp(self):
        super().setUp()
        self.patch_object(disks, 'BTRFS_TEMP_FSID', self.root)
        self.make_image()
        self.make_image(os.path.join(self.outside, 'x.img'))
        # A crash leftover's name, outside the roots.
        open(os.path.join(self.outside, '.btrfs-1G.img.abc'), 'w').close()
        os.symlink(self.outside, os.path.join(self.root, 'link'))

    def on_mounts(self, mountpoint):
        """Each entry point acting on the disk mounted at mountpoint."""
        return ((disks.freeze, (mountpoint,)),
                (disks.thaw, (mountpoint,)),
                (disks.snapshot_subvolume, (mountpoint, 'snap')),
                (disks.delete_subvolume, (mountpoint, 'snap')),
                (disks.grow, (self.image, 2, mountpoint)))

    def on_paths(self, path):
        """Each entry point given path as a file or directory."""
        return ((disks.create_image, (path, 1, 'ext4', None)),
                (disks.create_image, (path, 1, 'btrfs', self.templates)),
                (disks.create_image, (self.image + '2', 1, 'btrfs', path)),
                (disks.grow, (path, 2, None)),
                (disks.remove_template_leftovers, (path,))) + \
            self.on_mounts(path)

    def test_what_passes_reaches_the_kernel(self):
        # The refusals below differ from this in one value each.
        for fn, args in self.on_mounts(self.mountpoint):
            fn(*args)
        self.assertEqual(
            [disks._FIFREEZE, disks._FITHAW, disks._BTRFS_IOC_SNAP_CREATE_V2,
             disks._BTRFS_IOC_SNAP_DESTROY],
            [i[1] for i in self.ioctls])
        self.set_capacity.assert_called_once_with(LOOP)
        disks.create_image(self.image + '2', 1, 'btrfs', self.templates)
        self.assertTrue(os.path.exists(self.image + '2'))

    def test_paths_outside_the_roots(self):
        for path in (os.path.join(self.outside, 'x.img'), self.outside,
                     os.path.join(self.tmp, 'x.img'), self.tmp, self.root,
                     '/proc/self/root' + self.image):
            for fn, args in self.on_paths(path):
                self.refused(fn, *args)

    def test_paths_not_normalized_or_relative(self):
        for path in (self.root + '/../outside/x.img',
                     self.root + '/./root.img', self.root + '//root.img',
                     self.image + '/', 'root.img', self.image + '\0',
                     os.fsencode(self.image), 7):
            for fn, args in self.on_paths(path):
                self.refused(fn, *args,
                             match='not an absolute normalized path')
        # None only where it does not mean "no templates" or "unmounted".
        for fn, args in ((disks.create_image, (None, 1, 'ext4', None)),
                         (disks.grow, (None, 2, None)),
                         (disks.remove_template_leftovers, (None,)),
                         (disks.freeze, (None,)), (disks.thaw, (None,)),
                         (disks.snapshot_subvolume, (None, 'snap')),
                         (disks.delete_subvolume, (None, 'snap'))):
            self.refused(fn, *args, match='not an absolute normalized path')

    def test_symlink_below_a_root(self):
        link = os.path.join(self.root, 'link')
        self.sources[link] = LOOP
        for path in (os.path.join(link, 'x.img'), link):
            for fn, args in self.on_paths(path):
                self.refused(fn, *args, match='goes through a symlink')

    def test_sizes_not_whole_gib_in_range(self):
        for size in (0, -1, 1.5, 2.0, True, False, disks.MAX_DISK_GB + 1,
                     1 << 64, '1', None):
            for fn, args in ((disks.create_image,
                              (self.image + '2', size, 'ext4', None)),
                             (disks.create_image,
                              (self.image + '2', size, 'btrfs',
                               self.templates)),
                             (disks.grow, (self.image, size, None)),
                             (disks.grow, (self.image, size,
                                           self.mountpoint))):
                self.refused(fn, *args, match='whole number of GiB')
        # The bounds themselves pass.
        disks._check_gb('grow', 1)
        disks._check_gb('grow', disks.MAX_DISK_GB)

    def test_unknown_filesystems(self):
        for fs in ('xfs', 'vfat', 'ext3', 'ext4 ', 'EXT4', '', None,
                   ['ext4']):
            for templates in (None, self.templates):
                self.refused(disks.create_image, self.image + '2', 1, fs,
                             templates, match='is not one of')

    def test_bad_subvolume_names(self):
        for name in ('', '.', '..', 'a/b', '/a', 'a/', 'a\0b',
                     'x' * 256, '\u00e9' * 128, None, b'x', 5):
            for fn in (disks.snapshot_subvolume, disks.delete_subvolume):
                self.refused(fn, self.mountpoint, name,
                             match='subvolume name')

    def test_not_a_mount_point(self):
        self.sources.clear()
        for fn, args in self.on_mounts(self.mountpoint):
            self.refused(fn, *args, match='is not a mount point')

    def test_mount_source_not_a_loop_device(self):
        # The host's own filesystem or another kind of mount.
        for source in ('/dev/sda', '/dev/loop7p1', '/dev/loop7/../sda',
                       'loop7', 'tmpfs', 'overlay'):
            self.sources[self.mountpoint] = source
            for fn, args in self.on_mounts(self.mountpoint):
                self.refused(fn, *args, match='is not a loop device')

    def test_loop_device_backed_outside_the_roots(self):
        for backing in (os.path.join(self.outside, 'x.img'), '/etc/shadow',
                        os.path.join(self.root, 'link', 'x.img')):
            self.sysfs[BACKING] = backing + '\n'
            for fn, args in self.on_mounts(self.mountpoint):
                self.refused(fn, *args, match=backing)

    def test_unattached_loop_device(self):
        # Detached meanwhile: what callers expect, not a refusal.
        del self.sysfs[BACKING]
        before = self.tree()
        for fn, args in self.on_mounts(self.mountpoint):
            self.assertRaises(exception.LoopFailed, fn, *args)
        self.assertEqual(before, self.tree())
        self.assertEqual([], self.ioctls)
        self.execute.assert_not_called()

    def test_grow_on_another_image_s_mount(self):
        other = self.make_image(os.path.join(self.root, 'other.img'))
        self.sysfs[BACKING] = other + '\n'
        self.refused(disks.grow, self.image, 2, self.mountpoint,
                     match='%s is not mounted on %s' % (self.image,
                                                        self.mountpoint))
        # Nor the image whose mount it is, under another name.
        self.sysfs[BACKING] = self.image + '\n'
        self.refused(disks.grow, other, 2, self.mountpoint,
                     match='is not mounted on')

    def test_templates_outside_the_roots_leave_the_image_unmade(self):
        for templates in (self.outside, os.path.join(self.root, 'link')):
            for fs in ('btrfs', 'ext4'):
                self.refused(disks.create_image, self.image + '2', 1, fs,
                             templates)
        self.assertFalse(os.path.exists(self.image + '2'))

    def test_leftovers_outside_the_roots_stay(self):
        for directory in (self.outside, os.path.join(self.root, 'link')):
            self.refused(disks.remove_template_leftovers, directory)
        self.assertIn('.btrfs-1G.img.abc', os.listdir(self.outside))
