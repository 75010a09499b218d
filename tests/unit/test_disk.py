"""Tests for novalxcdriver.disk, the nova-side model of a disk.

What the storage_admin daemon does (privsep.disks: making, growing the
image; privsep.ownership: its top directory) is mocked, as are mounts and
loop devices; the daemon's side is tests/unit/test_privsep_disks.py.
"""

import logging
import os
from unittest import mock

import fixtures

from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import ids
from tests.unit import base as unit_base

LOOP = '/dev/loop7'
OWNER = ids.Idmap(100000, 100000, 65536)


class _Base(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        # A root's directory below a driver root, as rootfs.py lays out.
        root_dir = os.path.join(self.tmp, 'rootfs', '3')
        os.makedirs(root_dir)
        self.image = os.path.join(root_dir, 'root.img')
        self.mountpoint = os.path.join(root_dir, 'root')
        self.disk = disk.Disk(self.image, self.mountpoint)
        # Mount points: the storage_admin daemon's, in this process.
        self.rootdirs = self.useFixture(unit_base.RootDirsInProcess(
            self.tmp, mounts=lambda: self.mounted))

        # The daemon's side: the image made, grown, its root given.
        self.disks = self.patch('novalxcdriver.disk.disks', autospec=True)
        self.disks.create_image.side_effect = self._create_image
        # Read from the image's superblock by the daemon; none here.
        self.disks.image_filesystem.return_value = 'ext4'
        self.ownership = self.patch('novalxcdriver.disk.ownership',
                                    autospec=True)
        self.loop = self.patch('novalxcdriver.disk.loop', autospec=True)
        # What happened to mounts, in order.
        self.events = []
        self.mount = self.patch('novalxcdriver.disk.mount', autospec=True)
        self.mounted = set()
        self.mount.mountpoints.side_effect = lambda: set(self.mounted)
        unit_base.mounts_by_name(self.mount)
        self.mount.disk_image.side_effect = self._mount_disk
        # What a mounted disk's top mount is: ext4 from a loop device.
        self.mount.top.side_effect = lambda point: (
            ('ext4', LOOP) if point in self.mounted else None)
        # The daemon's calls, in order.
        self.calls = mock.Mock()
        self.calls.attach_mock(self.disks.create_image, 'create_image')
        self.calls.attach_mock(self.mount.disk_image, 'disk_image')
        self.calls.attach_mock(self.ownership.give_disk_root,
                               'give_disk_root')

    def _create_image(self, path, size_gb, fs, templates):
        open(path, 'xb').close()

    def _mount_disk(self, path, target):
        # The daemon reads its filesystem, attaches path to a loop device
        # (autoclear) and mounts it, in one call.
        self.events.append(('mount', path, target))
        self.mounted.add(target)
        return LOOP

    def assert_nothing_left(self):
        """A failed mount_disk leaves nothing for nova-compute to undo."""
        self.assertFalse(self.disk.is_mounted())
        self.assertEqual([], self.loop.mock_calls)


class CreateTest(_Base):

    def test_made_then_mounted_then_its_root_given(self):
        self.disk.create(1, OWNER)
        self.assertEqual(
            [mock.call.create_image(self.image, 1, 'ext4', None),
             mock.call.disk_image(self.image, self.mountpoint),
             mock.call.give_disk_root(self.mountpoint,
                                      [100000, 100000, 65536])],
            self.calls.mock_calls)
        self.assertTrue(self.disk.is_mounted())

    def test_no_owner_leaves_the_root_host_root_s(self):
        # A root disk's top directory holds upper/ and work/.
        self.disk.create(2)
        self.ownership.give_disk_root.assert_called_once_with(
            self.mountpoint, None)
        self.disks.create_image.assert_called_once_with(self.image, 2,
                                                        'ext4', None)

    def test_btrfs_from_the_templates(self):
        templates = os.path.join(self.tmp, 'disk-templates')
        d = disk.Disk(self.image, self.mountpoint, templates)
        d.create(3, OWNER, fs='btrfs')
        self.disks.create_image.assert_called_once_with(self.image, 3,
                                                        'btrfs', templates)
        # The daemon mounts what the new image holds: nova-compute
        # never reads the image.
        self.mount.disk_image.assert_called_once_with(self.image,
                                                      self.mountpoint)
        self.disks.image_filesystem.assert_not_called()

    def test_root_given_after_the_mount(self):
        # Owning the directory below the mount would not show in it.
        def give(path, idmap):
            self.assertIn(path, self.mounted)
        self.ownership.give_disk_root.side_effect = give
        self.disk.create(1, OWNER)
        self.ownership.give_disk_root.assert_called_once()

    def test_mountpoint_made_0755(self):
        self.disk.create(1)
        self.assertEqual(0o755, os.stat(self.mountpoint).st_mode & 0o777)

    def test_existing_mountpoint_accepted(self):
        os.mkdir(self.mountpoint)
        self.disk.create(1)
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint)

    def test_failures_to_make_the_image_mount_nothing(self):
        for error in (FileExistsError(17, 'File exists'),
                      exception.CommandFailed(cmd='mkfs.ext4', exit_code=1,
                                              stderr='bad'),
                      exception.PrivilegedCallRefused(
                          call='create_image', reason='filesystem \'xfs\'')):
            self.disks.create_image.side_effect = error
            self.assertRaises(type(error), self.disk.create, 1, OWNER,
                              fs='xfs')
        self.mount.disk_image.assert_not_called()
        self.ownership.give_disk_root.assert_not_called()

    def test_nothing_left_when_mount_fails(self):
        self.mount.disk_image.side_effect = exception.MountFailed(
            what='ext4 ' + LOOP, target=self.mountpoint, reason='EINVAL')
        self.assertRaises(exception.MountFailed, self.disk.create, 1, OWNER)
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint)
        # The daemon's loop device had autoclear set: it went at once.
        self.assert_nothing_left()
        self.ownership.give_disk_root.assert_not_called()

    def test_failure_to_give_the_root_raised(self):
        self.ownership.give_disk_root.side_effect = (
            exception.PrivilegedCallRefused(call='give_disk_root',
                                            reason='not a mount point'))
        self.assertRaises(exception.PrivilegedCallRefused, self.disk.create,
                          1, OWNER)


class MountTest(_Base):

    def test_mounts_when_not_mounted(self):
        # As after a host reboot: image and mount point, no mount.
        os.mkdir(self.mountpoint)
        self.disk.mount()
        self.assertEqual([('mount', self.image, self.mountpoint)],
                         self.events)
        self.assertTrue(self.disk.is_mounted())

    def test_mount_point_made_by_the_daemon_only_when_missing(self):
        # A remount finds it: no round trip.
        os.mkdir(self.mountpoint)
        self.disk.mount()
        self.rootdirs.make_mountpoint.assert_not_called()
        # A migration brought the image alone.
        self.mounted.clear()
        os.rmdir(self.mountpoint)
        self.disk.mount()
        self.rootdirs.make_mountpoint.assert_called_once_with(
            self.mountpoint)
        self.assertTrue(os.path.isdir(self.mountpoint))

    def test_noop_when_mounted(self):
        self.mounted.add(self.mountpoint)
        self.disk.mount()
        self.mount.disk_image.assert_not_called()
        self.assertEqual([], self.calls.mock_calls)

    def test_other_mounts_do_not_count(self):
        self.mounted.update({self.tmp, self.mountpoint + '/x',
                             self.mountpoint + '2'})
        self.assertFalse(self.disk.is_mounted())
        os.mkdir(self.mountpoint)
        self.disk.mount()
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint)

    def test_nothing_left_when_mount_fails(self):
        self.mount.disk_image.side_effect = exception.MountFailed(
            what='ext4', target=self.mountpoint, reason='EBUSY')
        self.assertRaises(exception.MountFailed, self.disk.mount)
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint)
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
        self.assertEqual([('mount', self.image, self.mountpoint)],
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
        self.disk.create(1, OWNER)
        self.held.assert_not_called()


class DeviceTest(_Base):

    def test_the_mount_source_block_device(self):
        # btrfs: st_dev of the mount point is an anonymous device.
        self.mount.source.return_value = LOOP
        st = mock.Mock(st_rdev=os.makedev(7, 3), st_dev=os.makedev(0, 49))
        with mock.patch('os.stat', return_value=st) as stat:
            self.assertEqual('7:3', self.disk.device())
        stat.assert_called_once_with(LOOP)
        self.mount.source.assert_called_once_with(self.mountpoint, None)

    def test_st_dev_when_the_source_is_no_device(self):
        self.mount.source.return_value = 'overlay'
        os.mkdir(self.mountpoint)
        dev = os.stat(self.mountpoint).st_dev
        self.assertEqual('%d:%d' % (os.major(dev), os.minor(dev)),
                         self.disk.device())


class IoBaselineTest(_Base):
    """What the daemon does at each mount besides mounting.

    It clears the loop device's root blkio throttles and saves its I/O
    baseline (privsep.storage.mount_disk; test_privsep_storage.py):
    nova-compute makes no other call.
    """

    def test_one_privileged_call_per_mount(self):
        os.mkdir(self.mountpoint)
        self.disk.mount()
        self.assertEqual([mock.call.disk_image(self.image, self.mountpoint)],
                         self.calls.mock_calls)

    def test_baseline_beside_the_image(self):
        # Where diagnostics reads what the daemon saved.
        self.assertEqual(self.image + '.iostat', self.disk.io_baseline_path)


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

    def test_leftovers_scanned_before_not_scanned_again(self):
        scan = self.patch('novalxcdriver.disk._loop_devices')
        self.disk.detach_loops({self.image: ['/dev/loop5'],
                                self.image + '.other': ['/dev/loop6']})
        self.loop.detach.assert_called_once_with('/dev/loop5')
        scan.assert_not_called()

    def test_leftover_loops_by_backing_file(self):
        self.assertEqual({self.image: ['/dev/loop0'],
                          self.image + '.other': ['/dev/loop2']},
                         disk.leftover_loops())

    def test_loop_devices_of(self):
        self.assertEqual(['/dev/loop0', '/dev/loop1'],
                         disk.loop_devices_of(self.image))
        self.assertEqual(['/dev/loop1'],
                         disk.loop_devices_of(self.image, autoclear=True))
        self.assertEqual(['/dev/loop0'],
                         disk.loop_devices_of(self.image, autoclear=False))

    def test_found_through_a_symlinked_root(self):
        # sysfs names the resolved file; the driver root may be a link
        # (the functional suite's symlinked-root remount mounted an image
        # a second time while a cloned namespace still held it).
        link = os.path.join(self.tmp, 'link')
        os.symlink(os.path.dirname(self.image), link)
        image = os.path.join(link, 'root.img')
        self.assertEqual(['/dev/loop0', '/dev/loop1'],
                         disk.loop_devices_of(image))
        held = disk.Disk(image, os.path.join(link, 'root'))
        with mock.patch.object(disk, 'ATTACHED_TIMEOUT', 0):
            e = self.assertRaises(exception.MountFailed, held.mount)
        self.assertIn('/dev/loop0, /dev/loop1', str(e))
        self.mount.disk_image.assert_not_called()

    def test_a_loop_device_without_its_flag_or_file_is_skipped(self):
        os.unlink(os.path.join(self.sys_block, 'loop1', 'loop', 'autoclear'))
        os.unlink(os.path.join(self.sys_block, 'loop0', 'loop',
                               'backing_file'))
        self.assertEqual([], disk.loop_devices_of(self.image))


class FilesystemTest(_Base):

    def test_unmounted_read_from_the_image_s_superblock(self):
        self.disks.image_filesystem.return_value = 'btrfs'
        self.assertEqual('btrfs', self.disk.filesystem())
        self.disks.image_filesystem.assert_called_once_with(self.image)

    def test_mounted_from_the_mount_table(self):
        self.mounted.add(self.mountpoint)
        self.mount.top.side_effect = lambda point: ('btrfs', LOOP)
        self.assertEqual('btrfs', self.disk.filesystem())
        self.disks.image_filesystem.assert_not_called()

    def test_a_mount_of_no_loop_device_is_not_the_disk(self):
        # A root without a disk shifted by a migration: an idmapped bind
        # of the host's own filesystem on the mount point.
        self.mount.top.side_effect = lambda point: ('ext4', '/dev/sda1')
        self.disks.image_filesystem.return_value = 'btrfs'
        self.assertEqual('btrfs', self.disk.filesystem())
        self.disks.image_filesystem.assert_called_once_with(self.image)

    def test_mount_refuses_an_unknown_disk(self):
        self.mount.disk_image.side_effect = exception.DiskUnreadable(
            path=self.image, reason='no btrfs or ext4 superblock')
        self.assertRaises(exception.DiskUnreadable, self.disk.mount)
        self.assertFalse(self.disk.is_mounted())


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
            [mock.call.disk_image(self.image, self.mountpoint),
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
            self.image, self.mountpoint)
        self.shift_mount.assert_not_called()

    def test_mount_point_made_for_an_image_alone(self):
        # A migration brings the image, not its mount point.
        os.rmdir(self.mountpoint)
        self.disk.mount()
        self.assertTrue(os.path.isdir(self.mountpoint))
        self.mount.disk_image.assert_called_once_with(
            self.image, self.mountpoint)


class GrowTest(_Base):

    def setUp(self):
        super().setUp()
        os.mkdir(self.mountpoint)
        self.log = self.useFixture(fixtures.FakeLogger(
            name='novalxcdriver.disk', level=logging.INFO))

    def test_online_when_mounted(self):
        self.mounted.add(self.mountpoint)
        self.disks.grow.return_value = True
        self.disk.grow(3)
        # The daemon checks that this is the image's own mount.
        self.disks.grow.assert_called_once_with(self.image, 3,
                                                self.mountpoint)
        self.assertIn('Grew %s to 3 GiB' % self.image, self.log.output)

    def test_offline_when_not_mounted(self):
        # Other mounts, even below the mount point, do not count.
        self.mounted.update({self.mountpoint + '/x', self.tmp})
        self.disks.grow.return_value = True
        self.disk.grow(2)
        self.disks.grow.assert_called_once_with(self.image, 2, None)
        self.assertIn('Grew %s to 2 GiB' % self.image, self.log.output)

    def test_as_large_already_is_not_logged(self):
        self.disks.grow.return_value = False
        self.disk.grow(1)
        self.disks.grow.assert_called_once_with(self.image, 1, None)
        self.assertNotIn('Grew', self.log.output)

    def test_failures_raised_not_logged(self):
        for error in (exception.CommandFailed(cmd='resize2fs', exit_code=1,
                                              stderr='no'),
                      exception.DiskUnreadable(
                          path=self.image,
                          reason='a btrfs disk grows only mounted'),
                      exception.LoopFailed(path=LOOP, reason='ENXIO')):
            self.disks.grow.side_effect = error
            self.assertRaises(type(error), self.disk.grow, 2)
        self.assertNotIn('Grew', self.log.output)


class RemoveTemplateLeftoversTest(_Base):

    def test_the_daemon_removes_them_each_logged(self):
        log = self.useFixture(fixtures.FakeLogger(
            name='novalxcdriver.disk', level=logging.INFO))
        templates = os.path.join(self.tmp, 'disk-templates')
        leftovers = [os.path.join(templates, '.btrfs-1G.img.abc'),
                     os.path.join(templates, '.ext4-2G.img.def')]
        self.disks.remove_template_leftovers.return_value = leftovers
        self.assertEqual(leftovers, disk.remove_template_leftovers(templates))
        self.disks.remove_template_leftovers.assert_called_once_with(
            templates)
        for path in leftovers:
            self.assertIn('Removed %s' % path, log.output)


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
