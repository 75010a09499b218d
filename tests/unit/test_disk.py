"""Tests for novalxcdriver.disk, with loop devices, mkfs.ext4 and mount
mocked."""

import os
from unittest import mock

import fixtures

from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import ids
from tests.unit import base as unit_base

GiB = 1024 ** 3
LOOP = '/dev/loop7'


class _Base(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        # Shell metacharacters and a space: argv must carry them as is.
        self.tmp = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                'a b;$(x)')
        os.mkdir(self.tmp)
        self.image = os.path.join(self.tmp, 'root.img')
        self.mountpoint = os.path.join(self.tmp, 'root')
        self.disk = disk.Disk(self.image, self.mountpoint)

        self.lxc = self.patch('novalxcdriver.disk.lxc', autospec=True)
        self.loop = self.patch('novalxcdriver.disk.loop', autospec=True)
        # What happened to mounts, in order.
        self.events = []
        self.mount = self.patch('novalxcdriver.disk.mount', autospec=True)
        self.mounted = set()
        self.mount.mountpoints.side_effect = lambda: set(self.mounted)
        self.mount.disk_image.side_effect = self._ext4
        # mkfs is mocked: the image holds no superblock to read.
        self.fs = self.patch('novalxcdriver.disk.Disk.filesystem',
                             autospec=True, return_value='ext4')
        self.chown = self.patch('os.chown', autospec=True)
        self.throttle = self.patch('novalxcdriver.disk.throttle',
                                   autospec=True)

    def _ext4(self, path, target, fstype):
        # The daemon attaches path to a loop device (autoclear) and mounts
        # it, in one call.
        self.events.append(('mount', path, target, fstype))
        # A fresh ext4 filesystem holds lost+found.
        self.mounted.add(target)
        os.mkdir(os.path.join(target, 'lost+found'))
        return LOOP

    def assert_nothing_left(self):
        """A failed mount_disk leaves nothing for nova-compute to undo."""
        self.assertFalse(self.disk.is_mounted())
        self.assertEqual([], self.loop.mock_calls)
        self.throttle.clear.assert_not_called()


class CreateTest(_Base):

    def test_sparse_image_of_exact_size(self):
        self.disk.create(2, 1000, 2000)
        st = os.stat(self.image)
        self.assertEqual(2 * GiB, st.st_size)
        # Sparse: (almost) nothing allocated.
        self.assertLess(st.st_blocks * 512, 1024 * 1024)

    def test_mkfs_argv(self):
        self.disk.create(1, 1000, 2000)
        self.lxc.execute.assert_called_once()
        call = self.lxc.execute.call_args
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

    def test_btrfs_mkfs_argv(self):
        self.fs.return_value = 'btrfs'
        self.disk.create(1, 1000, 2000, fs='btrfs')
        self.lxc.execute.assert_called_once_with('mkfs.btrfs', '-q', '-f',
                                                 self.image)
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint, 'btrfs')
        # btrfs has no lost+found; its top level is the container root's.
        self.chown.assert_called_once_with(self.mountpoint, 1000, 2000)

    def test_unknown_filesystem_refused_before_anything(self):
        self.assertRaises(ValueError, self.disk.create, 1, 0, 0, fs='xfs')
        self.assertFalse(os.path.exists(self.image))
        self.lxc.execute.assert_not_called()

    def test_formatted_then_loop_mounted(self):
        self.lxc.execute.side_effect = (
            lambda *a, **k: self.events.append(('mkfs',)))
        self.disk.create(1, 1000, 2000)
        self.assertEqual([('mkfs',),
                          ('mount', self.image, self.mountpoint, 'ext4')],
                         self.events)

    def test_mountpoint_owned_by_uid_gid(self):
        self.disk.create(1, 1000, 2000)
        self.chown.assert_called_once_with(self.mountpoint, 1000, 2000)
        self.assertEqual(0o755, os.stat(self.mountpoint).st_mode & 0o777)
        self.assertEqual([], os.listdir(self.mountpoint))

    def test_chown_after_mount(self):
        # Owning the directory below the mount would not show in it.
        def chown(path, uid, gid):
            self.assertIn(path, self.mounted)
        self.chown.side_effect = chown
        self.disk.create(1, 0, 0)
        self.chown.assert_called_once_with(self.mountpoint, 0, 0)

    def test_existing_mountpoint_accepted(self):
        os.mkdir(self.mountpoint)
        self.disk.create(1, 0, 0)
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint, 'ext4')

    def test_existing_image_refused(self):
        with open(self.image, 'wb') as f:
            f.write(b'someone else')
        self.assertRaises(FileExistsError, self.disk.create, 1, 0, 0)
        with open(self.image, 'rb') as f:
            self.assertEqual(b'someone else', f.read())
        self.lxc.execute.assert_not_called()
        self.mount.disk_image.assert_not_called()

    def test_mkfs_failure_mounts_nothing(self):
        self.lxc.execute.side_effect = exception.CommandFailed(
            cmd='mkfs.ext4', exit_code=1, stderr='bad')
        self.assertRaises(exception.CommandFailed, self.disk.create, 1, 0,
                          0)
        self.mount.disk_image.assert_not_called()
        self.chown.assert_not_called()

    def test_nothing_left_when_mount_fails(self):
        self.mount.disk_image.side_effect = exception.MountFailed(
            what='ext4 ' + LOOP, target=self.mountpoint, reason='EINVAL')
        self.assertRaises(exception.MountFailed, self.disk.create, 1, 0, 0)
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint, 'ext4')
        # The daemon's loop device had autoclear set: it went at once.
        self.assert_nothing_left()
        self.assertFalse(os.path.exists(self.disk.io_baseline_path))
        self.chown.assert_not_called()


class MountTest(_Base):

    def test_mounts_when_not_mounted(self):
        # As after a host reboot: image and mount point, no mount.
        os.mkdir(self.mountpoint)
        self.disk.mount()
        self.assertEqual([('mount', self.image, self.mountpoint, 'ext4')],
                         self.events)
        self.assertTrue(self.disk.is_mounted())

    def test_noop_when_mounted(self):
        self.mounted.add(self.mountpoint)
        self.disk.mount()
        self.mount.disk_image.assert_not_called()
        self.throttle.clear.assert_not_called()

    def test_other_mounts_do_not_count(self):
        self.mounted.update({self.tmp, self.mountpoint + '/x',
                             self.mountpoint + '2'})
        self.assertFalse(self.disk.is_mounted())
        os.mkdir(self.mountpoint)
        self.disk.mount()
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint, 'ext4')

    def test_nothing_left_when_mount_fails(self):
        self.mount.disk_image.side_effect = exception.MountFailed(
            what='ext4', target=self.mountpoint, reason='EBUSY')
        self.assertRaises(exception.MountFailed, self.disk.mount)
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint, 'ext4')
        self.assert_nothing_left()


class StillAttachedTest(_Base):
    """An image some loop device still holds is never mounted again."""

    def setUp(self):
        super().setUp()
        os.mkdir(self.mountpoint)
        self.sleep = self.patch('time.sleep')
        self.held = self.patch('novalxcdriver.disk.loop_devices_of')

    def test_waits_for_the_old_device_to_go(self):
        self.held.side_effect = [['/dev/loop9'], ['/dev/loop9'], []]
        self.disk.mount()
        self.assertEqual(2, self.sleep.call_count)
        self.held.assert_called_with(self.image)
        self.assertEqual([('mount', self.image, self.mountpoint, 'ext4')],
                         self.events)

    def test_refused_while_still_held(self):
        self.held.return_value = ['/dev/loop9']
        with mock.patch.object(disk, 'ATTACHED_TIMEOUT', 0):
            e = self.assertRaises(exception.MountFailed, self.disk.mount)
        self.assertIn('/dev/loop9', str(e))
        self.assertIn('mounting it twice would corrupt it', str(e))
        self.assertEqual([], self.events)
        self.mount.disk_image.assert_not_called()

    def test_a_new_image_is_not_checked(self):
        self.disk.create(1, 1000, 1000)
        self.held.assert_not_called()


class DeviceTest(_Base):

    def test_the_mount_source_block_device(self):
        # btrfs: st_dev of the mount point is an anonymous device.
        self.mount.source.return_value = LOOP
        st = mock.Mock(st_rdev=os.makedev(7, 3), st_dev=os.makedev(0, 49))
        with mock.patch('os.stat', return_value=st) as stat:
            self.assertEqual('7:3', self.disk.device())
        stat.assert_called_once_with(LOOP)
        self.mount.source.assert_called_once_with(self.mountpoint)

    def test_st_dev_when_the_source_is_no_device(self):
        self.mount.source.return_value = 'overlay'
        os.mkdir(self.mountpoint)
        dev = os.stat(self.mountpoint).st_dev
        self.assertEqual('%d:%d' % (os.major(dev), os.minor(dev)),
                         self.disk.device())


class IoBaselineTest(_Base):
    """Each mount saves its loop device's counters for diagnostics."""

    COUNTERS = '  10 0 80 1 20 0 160 2 0 3 3 0 0 0 0 0 0\n'

    def setUp(self):
        super().setUp()
        self.sys = os.path.join(self.tmp, 'sys-dev-block')
        self.patch('novalxcdriver.disk.SYS_DEV_BLOCK', self.sys)
        real_stat = os.stat
        devices = {LOOP: os.makedev(7, 7), '/dev/loop3': os.makedev(7, 3)}

        def stat(path, *args, **kwargs):
            if path in devices:
                return mock.Mock(st_rdev=devices[path])
            return real_stat(path, *args, **kwargs)
        self.patch('os.stat', side_effect=stat)
        for number, counters in (('7:7', self.COUNTERS),
                                 ('7:3', '  1 2 3 4 5 6 7 8\n')):
            os.makedirs(os.path.join(self.sys, number))
            with open(os.path.join(self.sys, number, 'stat'), 'w') as f:
                f.write(counters)
        os.mkdir(self.mountpoint)
        self.throttle.clear.side_effect = (
            lambda number: self.events.append(('clear', number)))

    def baseline(self):
        with open(self.disk.io_baseline_path) as f:
            return f.read()

    def test_saved_after_the_mount(self):
        def mount_disk(path, target, fstype):
            # The device is only known once the daemon attached it.
            self.assertFalse(os.path.exists(self.disk.io_baseline_path))
            self.mounted.add(target)
            return LOOP
        self.mount.disk_image.side_effect = mount_disk
        self.disk.mount()
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint, 'ext4')
        self.assertEqual('7:7 ' + self.COUNTERS, self.baseline())
        self.assertEqual(self.image + '.iostat', self.disk.io_baseline_path)

    def test_of_the_device_the_mount_attached(self):
        self.mount.disk_image.side_effect = None
        self.mount.disk_image.return_value = '/dev/loop3'
        self.disk.mount()
        self.assertEqual('7:3   1 2 3 4 5 6 7 8\n', self.baseline())
        self.throttle.clear.assert_called_once_with('7:3')

    def test_earlier_throttles_cleared_after_the_mount(self):
        # The loop device may have served another instance's disk; the
        # container starts after the mount.
        self.disk.mount()
        self.assertEqual([('mount', self.image, self.mountpoint, 'ext4'),
                          ('clear', '7:7')], self.events)
        self.throttle.clear.assert_called_once_with('7:7')

    def test_replaces_an_earlier_attachment(self):
        with open(self.disk.io_baseline_path, 'w') as f:
            f.write('7:3 1 2 3 4 5 6 7 8\n')
        self.disk.mount()
        self.assertTrue(self.baseline().startswith('7:7 '))

    def test_failure_leaves_no_baseline_and_mounts(self):
        with open(self.disk.io_baseline_path, 'w') as f:
            f.write('7:3 1 2 3 4 5 6 7 8\n')
        os.unlink(os.path.join(self.sys, '7:7', 'stat'))
        self.disk.mount()
        self.assertFalse(os.path.exists(self.disk.io_baseline_path))
        self.assertTrue(self.disk.is_mounted())
        self.throttle.clear.assert_called_once_with('7:7')

    def test_failed_mount_saves_nothing_clears_nothing(self):
        self.mount.disk_image.side_effect = exception.LoopFailed(
            path=self.image, reason='no free loop device')
        self.assertRaises(exception.LoopFailed, self.disk.mount)
        self.assertFalse(os.path.exists(self.disk.io_baseline_path))
        self.throttle.clear.assert_not_called()


class DetachLoopsTest(_Base):

    def setUp(self):
        super().setUp()
        self.sys_block = os.path.join(self.tmp, 'sys-block')
        self.patch('novalxcdriver.disk.SYS_BLOCK', self.sys_block)
        # loop0: ours, left by a crash; loop1: ours, autoclear (mounted,
        # or being cleared); loop2: another file; sda: not a loop device.
        for name, backing, autoclear in (
                ('loop0', self.image, '0'), ('loop1', self.image, '1'),
                ('loop2', self.image + '.other', '0')):
            os.makedirs(os.path.join(self.sys_block, name, 'loop'))
            for key, value in (('backing_file', backing + '\n'),
                               ('autoclear', autoclear + '\n')):
                with open(os.path.join(self.sys_block, name, 'loop',
                                       key), 'w') as f:
                    f.write(value)
        os.makedirs(os.path.join(self.sys_block, 'sda'))
        open(self.image, 'w').close()

    def test_only_leftovers_without_autoclear_detached(self):
        self.disk.detach_loops()
        self.loop.detach.assert_called_once_with('/dev/loop0')

    def test_device_gone_meanwhile_is_fine(self):
        self.loop.detach.side_effect = exception.LoopFailed(
            path='/dev/loop0', reason='No such device or address')
        self.disk.detach_loops()

    def test_loop_devices_of(self):
        self.assertEqual(['/dev/loop0', '/dev/loop1'],
                         disk.loop_devices_of(self.image))
        self.assertEqual(['/dev/loop1'],
                         disk.loop_devices_of(self.image, autoclear=True))


class FilesystemTest(unit_base.TestCase):
    """Disk.filesystem reads real superblock signatures."""

    def setUp(self):
        super().setUp()
        self.image = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                  'root.img')
        self.disk = disk.Disk(self.image, self.image + '.mnt')

    def _write(self, offset, data, size=128 * 1024):
        with open(self.image, 'wb') as f:
            f.truncate(size)
            f.seek(offset)
            f.write(data)

    def test_btrfs(self):
        self._write(0x10040, b'_BHRfS_M')
        self.assertEqual('btrfs', self.disk.filesystem())

    def test_ext4(self):
        self._write(1080, b'\x53\xef')
        self.assertEqual('ext4', self.disk.filesystem())

    def test_neither_is_unreadable(self):
        self._write(0, b'\x00')
        self.assertRaises(exception.DiskUnreadable, self.disk.filesystem)

    def test_missing_image_is_unreadable(self):
        self.assertRaises(exception.DiskUnreadable, self.disk.filesystem)

    def test_mount_refuses_an_unknown_disk(self):
        self._write(0, b'\x00')
        mnt = self.patch('novalxcdriver.disk.mount', autospec=True)
        mnt.mountpoints.return_value = set()
        self.assertRaises(exception.DiskUnreadable, self.disk.mount)
        mnt.disk_image.assert_not_called()


DISK_IDMAP = ids.Idmap(296608, 296608, 65536)
IDMAP = ids.Idmap(100000, 100000, 65536)


class MountShiftTest(_Base):

    def setUp(self):
        super().setUp()
        self.shift_mount = self.patch('novalxcdriver.disk.shift_mount',
                                      autospec=True)
        os.mkdir(self.mountpoint)

    def test_mounts_then_shifts(self):
        calls = mock.Mock()
        calls.attach_mock(self.mount.disk_image, 'disk_image')
        calls.attach_mock(self.shift_mount, 'shift_mount')
        self.disk.mount((DISK_IDMAP, IDMAP))
        self.assertEqual(
            [mock.call.disk_image(self.image, self.mountpoint, 'ext4'),
             mock.call.shift_mount(self.mountpoint, DISK_IDMAP, IDMAP)],
            calls.mock_calls)

    def test_shifts_a_disk_already_mounted(self):
        # After a crash between the mount and its shift.
        self.mounted.add(self.mountpoint)
        self.disk.mount((DISK_IDMAP, IDMAP))
        self.mount.disk_image.assert_not_called()
        self.shift_mount.assert_called_once_with(self.mountpoint, DISK_IDMAP,
                                                 IDMAP)

    def test_no_shift_by_default(self):
        self.disk.mount()
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint, 'ext4')
        self.shift_mount.assert_not_called()

    def test_mount_point_made_for_an_image_alone(self):
        # A migration brings the image, not its mount point.
        os.rmdir(self.mountpoint)
        self.disk.mount()
        self.assertTrue(os.path.isdir(self.mountpoint))
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint, 'ext4')


class GrowTest(_Base):

    def setUp(self):
        super().setUp()
        with open(self.image, 'wb') as f:
            f.truncate(1 * GiB)
        os.mkdir(self.mountpoint)
        self.mounted.add(self.mountpoint)
        self.mount.source.return_value = LOOP
        # The loop device's capacity and the tools, in order.
        self.steps = mock.Mock()
        self.steps.attach_mock(self.loop.set_capacity, 'set_capacity')
        self.steps.attach_mock(self.lxc.execute, 'execute')

    def test_ext4_grown_online(self):
        self.disk.grow(3)
        st = os.stat(self.image)
        self.assertEqual(3 * GiB, st.st_size)
        # Still sparse.
        self.assertLess(st.st_blocks * 512, 1024 * 1024)
        self.mount.source.assert_called_once_with(self.mountpoint)
        self.assertEqual(
            [mock.call.set_capacity(LOOP),
             mock.call.execute('resize2fs', LOOP)],
            self.steps.mock_calls)

    def test_btrfs_grown_online(self):
        self.fs.return_value = 'btrfs'
        self.disk.grow(2)
        self.assertEqual(2 * GiB, os.path.getsize(self.image))
        self.assertEqual(
            [mock.call.set_capacity(LOOP),
             mock.call.execute('btrfs', 'filesystem', 'resize', 'max',
                               self.mountpoint)],
            self.steps.mock_calls)

    def test_file_grown_before_the_loop_device_learns_it(self):
        def check(device):
            self.assertEqual(2 * GiB, os.path.getsize(self.image))
        self.loop.set_capacity.side_effect = check
        self.disk.grow(2)
        self.loop.set_capacity.assert_called_once_with(LOOP)

    def test_as_large_left_alone(self):
        self.disk.grow(1)
        self.assertEqual(1 * GiB, os.path.getsize(self.image))
        self.assertEqual([], self.steps.mock_calls)

    def test_never_shrinks(self):
        with open(self.image, 'wb') as f:
            f.truncate(4 * GiB)
        self.disk.grow(2)
        self.assertEqual(4 * GiB, os.path.getsize(self.image))
        self.assertEqual([], self.steps.mock_calls)

    def test_tool_failure_raised(self):
        self.lxc.execute.side_effect = exception.CommandFailed(
            cmd='resize2fs', exit_code=1, stderr='no')
        self.assertRaises(exception.CommandFailed, self.disk.grow, 2)

    def test_unmounted_ext4_checked_then_grown_offline(self):
        # No CAP_SYS_RESOURCE needed: no EXT4_IOC_RESIZE_FS.
        self.mounted.clear()
        self.disk.grow(2)
        self.assertEqual(2 * GiB, os.path.getsize(self.image))
        self.assertEqual(
            [mock.call.execute('e2fsck', '-f', '-p', self.image,
                               check_exit_code=[0, 1]),
             mock.call.execute('resize2fs', self.image)],
            self.steps.mock_calls)

    def test_unmounted_btrfs_refused_untouched(self):
        self.mounted.clear()
        self.fs.return_value = 'btrfs'
        self.assertRaises(exception.DiskUnreadable, self.disk.grow, 2)
        self.assertEqual(1 * GiB, os.path.getsize(self.image))
        self.assertEqual([], self.steps.mock_calls)


class ShiftMountTest(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        self.mount = self.patch('novalxcdriver.disk.mount', autospec=True)
        self.mount.is_idmapped.return_value = False

    def test_equal_idmaps_no_op(self):
        disk.shift_mount('/r/root', IDMAP, ids.Idmap(100000, 100000, 65536))
        self.mount.idmapped_over.assert_not_called()

    def test_already_idmapped_no_op(self):
        # A second shift would map the ids twice.
        self.mount.is_idmapped.return_value = True
        disk.shift_mount('/r/root', DISK_IDMAP, IDMAP)
        self.mount.is_idmapped.assert_called_once_with('/r/root')
        self.mount.idmapped_over.assert_not_called()

    def test_stacks_an_idmapped_mount(self):
        disk.shift_mount('/r/root', DISK_IDMAP, IDMAP)
        self.mount.is_idmapped.assert_called_once_with('/r/root')
        # The daemon makes the user namespace from the two idmaps.
        self.mount.idmapped_over.assert_called_once_with('/r/root',
                                                         DISK_IDMAP, IDMAP)


class TemplateTest(_Base):
    """New btrfs disks copied from a template formatted once per size."""

    def setUp(self):
        super().setUp()
        self.templates = os.path.join(self.tmp, 'templates')
        self.disk = disk.Disk(self.image, self.mountpoint, self.templates)
        self.lxc.execute.side_effect = self._mkfs
        self.patch_object(disk, 'BTRFS_TEMP_FSID', self.tmp)

    def _mkfs(self, *argv, **kwargs):
        # A superblock near the start, metadata far in: the rest a hole.
        with open(argv[-1], 'r+b') as f:
            f.seek(1024)
            f.write(b'super')
            f.seek(GiB // 2)
            f.write(b'meta')
        return '', ''

    def template(self, fs='btrfs', size_gb=1):
        return os.path.join(self.templates, '%s-%dG.img' % (fs, size_gb))

    def test_formatted_once_then_copied(self):
        self.fs.return_value = 'btrfs'
        self.disk.create(1, 1000, 2000, fs='btrfs')
        other = disk.Disk(os.path.join(self.tmp, 'other.img'),
                          os.path.join(self.tmp, 'other'), self.templates)
        other.create(1, 0, 0, fs='btrfs')
        # One mkfs, of the template (not of either disk).
        self.lxc.execute.assert_called_once()
        self.assertTrue(self.lxc.execute.call_args.args[-1].startswith(
            os.path.join(self.templates, '.btrfs-1G.img.')))
        self.assertEqual(['btrfs-1G.img'], os.listdir(self.templates))
        with open(self.template(), 'rb') as f:
            template = f.read()
        for path in (self.image, other.image_path):
            with open(path, 'rb') as f:
                self.assertEqual(template, f.read())
            st = os.stat(path)
            self.assertEqual(GiB, st.st_size)
            self.assertLess(st.st_blocks * 512, 1024 * 1024)
        self.assertEqual(
            [mock.call(self.image, self.mountpoint, 'btrfs'),
             mock.call(other.image_path, other.mountpoint, 'btrfs')],
            self.mount.disk_image.call_args_list)

    def test_one_template_per_size_ext4_formatted_each(self):
        for name, size_gb, fs in (('a', 1, 'btrfs'), ('b', 2, 'btrfs'),
                                  ('c', 1, 'btrfs'), ('d', 1, 'ext4')):
            disk.Disk(os.path.join(self.tmp, name + '.img'),
                      os.path.join(self.tmp, name), self.templates).create(
                          size_gb, 0, 0, fs=fs)
        self.assertEqual(['btrfs-1G.img', 'btrfs-2G.img'],
                         sorted(os.listdir(self.templates)))
        self.assertEqual(
            [('mkfs.btrfs', 'template'), ('mkfs.btrfs', 'template'),
             ('mkfs.ext4', os.path.join(self.tmp, 'd.img'))],
            [(c.args[0], 'template' if c.args[-1].startswith(
                self.templates) else c.args[-1])
             for c in self.lxc.execute.call_args_list])

    def test_btrfs_formatted_each_time_without_temp_fsid(self):
        # An older kernel would mount a clone as the mounted original.
        self.patch_object(disk, 'BTRFS_TEMP_FSID',
                          os.path.join(self.tmp, 'nope'))
        self.disk.create(1, 0, 0, fs='btrfs')
        self.lxc.execute.assert_called_once()
        self.assertEqual(self.image, self.lxc.execute.call_args.args[-1])
        self.assertFalse(os.path.exists(self.templates))

    def test_failed_mkfs_leaves_no_template_and_no_disk(self):
        self.lxc.execute.side_effect = exception.CommandFailed(
            cmd='mkfs.ext4', exit_code=1, stderr='No space left on device')
        self.assertRaises(exception.CommandFailed, self.disk.create, 1, 0,
                          0, fs='btrfs')
        self.assertEqual([], os.listdir(self.templates))
        self.assertFalse(os.path.exists(self.image))
        self.mount.disk_image.assert_not_called()

    def test_existing_image_refused_and_kept(self):
        with open(self.image, 'wb') as f:
            f.write(b'someone else')
        self.assertRaises(FileExistsError, self.disk.create, 1, 0, 0,
                          fs='btrfs')
        with open(self.image, 'rb') as f:
            self.assertEqual(b'someone else', f.read())
        self.mount.disk_image.assert_not_called()

    def test_failed_copy_leaves_no_disk(self):
        self.patch('os.copy_file_range',
                   side_effect=OSError(28, 'No space left on device'))
        self.patch('fcntl.ioctl', side_effect=OSError(95, 'EOPNOTSUPP'))
        self.assertRaises(OSError, self.disk.create, 1, 0, 0, fs='btrfs')
        self.assertFalse(os.path.exists(self.image))
        self.assertTrue(os.path.exists(self.template()))
        self.mount.disk_image.assert_not_called()

    def test_crash_leftovers_removed_templates_kept(self):
        # Killed during the template's mkfs: its temporary name is left.
        def killed(*argv, **kwargs):
            raise KeyboardInterrupt()
        self.lxc.execute.side_effect = killed
        self.patch('os.unlink')
        self.assertRaises(KeyboardInterrupt, self.disk.create, 2, 0, 0,
                          fs='btrfs')
        [leftover] = os.listdir(self.templates)
        self.assertTrue(leftover.startswith('.btrfs-2G.img.'))
        self.useFixture(fixtures.MockPatch('os.unlink', os.remove))
        for name in ('btrfs-1G.img', 'notes', '.hidden'):
            open(os.path.join(self.templates, name), 'w').close()
        self.assertEqual([os.path.join(self.templates, leftover)],
                         disk.remove_template_leftovers(self.templates))
        self.assertEqual(['.hidden', 'btrfs-1G.img', 'notes'],
                         sorted(os.listdir(self.templates)))
        self.assertEqual([], disk.remove_template_leftovers(
            os.path.join(self.tmp, 'none')))
