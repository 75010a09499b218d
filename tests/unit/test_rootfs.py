"""Tests for novalxcdriver.rootfs, with disks, mounts and chown mocked.

privsep.ownership's entry points run in this process (chown mocked), so
that what they make is asserted with the calls that make it.
"""

import errno
import os
from unittest import mock

import fixtures

from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import mount as real_mount
from novalxcdriver.privsep import replacement
from novalxcdriver.privsep import rootdirs
from novalxcdriver import rootfs
from tests.unit import base as unit_base

IDMAP = ids.Idmap(uid_start=165536, gid_start=265536, size=65536)
IMAGE_ROOTFS = '/images/x/rootfs'


class _Base(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        # syncfs(2) runs in the storage_admin daemon.
        self.sync_filesystem = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.disks.sync_filesystem')).mock
        self.state_path = self.useFixture(fixtures.TempDir()).path
        self.root = rootfs.Rootfs(self.state_path, 3)
        self.top = os.path.join(self.state_path, 'rootfs', '3')

        self.mounted = set()
        self.mount = self.patch('novalxcdriver.rootfs.mount', autospec=True)
        self.mount.mountpoints.side_effect = lambda: set(self.mounted)
        unit_base.mounts_by_name(self.mount)
        # Disk.device stats the source: a device node every host has (a
        # fresh machine has /dev/loop0 to loop7 only).
        self.mount.table.side_effect = lambda: [
            real_mount.Mount('/', p, 'btrfs', '/dev/null')
            for p in sorted(self.mounted)]
        self.disk_create = self.patch('novalxcdriver.disk.Disk.create',
                                      autospec=True,
                                      side_effect=self._disk_create)
        # A new root's disks and mounts: privsep.rootdirs.create_root
        # runs here (RootDirsInProcess), its steps' syscalls mocked.
        self.create_image = self.patch(
            'novalxcdriver.privsep.disks.create_image',
            side_effect=lambda path, *a: open(path, 'x').close())
        self.mount_disk = self.patch(
            'novalxcdriver.privsep.storage.mount_disk',
            side_effect=lambda path, target: self.mounted.add(target))
        self.patch('novalxcdriver.privsep.storage.is_mount_root',
                   side_effect=lambda p: p in self.mounted)
        self.idmapped_bind = self.patch(
            'novalxcdriver.privsep.storage.idmapped_bind')
        self.overlay = self.patch('novalxcdriver.privsep.storage.overlay')
        self.disk_mount = self.patch('novalxcdriver.disk.Disk.mount',
                                     autospec=True)
        self.own = self.useFixture(
            unit_base.OwnershipInProcess(self.state_path))
        # Its directories: the storage_admin daemon's, in this process.
        self.rootdirs = self.useFixture(unit_base.RootDirsInProcess(
            self.state_path, mounts=lambda: self.mounted))
        self.chown = self.own.chown
        self.throttle = self.patch('novalxcdriver.rootfs.throttle',
                                   autospec=True)

    def _disk_create(self, d, size_gb, owner=None, fs='ext4'):
        # What the real one leaves: an image file, a mounted directory.
        open(d.image_path, 'x').close()
        os.makedirs(d.mountpoint)
        self.mounted.add(d.mountpoint)


class LayoutTest(_Base):

    def test_paths(self):
        self.assertEqual(self.top, self.root.path)
        self.assertEqual(self.top + '/lower', self.root.lower)
        self.assertEqual(self.top + '/merged', self.root.merged)
        self.assertEqual(self.top + '/root/upper', self.root.upper)
        self.assertEqual(self.top + '/root/work', self.root.work)
        self.assertIsInstance(self.root.root_disk, disk.Disk)
        self.assertEqual(self.top + '/root.img',
                         self.root.root_disk.image_path)
        self.assertEqual(self.top + '/root', self.root.root_disk.mountpoint)
        self.assertEqual(self.top + '/ephemeral.img',
                         self.root.ephemeral_disk.image_path)
        self.assertEqual(self.top + '/ephemeral',
                         self.root.ephemeral_disk.mountpoint)


class CreateTest(_Base):

    def assert_upper_and_work_owned(self):
        for d in (self.root.upper, self.root.work):
            self.assertTrue(os.path.isdir(d), d)
            self.assertEqual(0o755, os.stat(d).st_mode & 0o777)
        # Made by the storage_admin daemon, given the container's root.
        self.assertEqual(
            [mock.call(self.root.upper, IDMAP.fields()),
             mock.call(self.root.work, IDMAP.fields())],
            self.own.make_owned_dir.call_args_list)
        self.assertEqual(
            [mock.call(self.root.upper, IDMAP.uid_start, IDMAP.gid_start,
                       follow_symlinks=False),
             mock.call(self.root.work, IDMAP.uid_start, IDMAP.gid_start,
                       follow_symlinks=False)],
            [c for c in self.chown.call_args_list
             if c.args[0] in (self.root.upper, self.root.work)])

    def assert_overlay_mounted(self):
        self.idmapped_bind.assert_called_once_with(
            IMAGE_ROOTFS, self.root.lower, IDMAP.fields())
        self.overlay.assert_called_once_with(
            self.root.lower, self.root.upper, self.root.work,
            self.root.merged)

    def assert_disks(self, *made):
        """made: (disk.Disk, size_gb, fs, owner Idmap or None) in order."""
        templates = os.path.join(self.state_path, disk.TEMPLATES)
        self.assertEqual(
            [mock.call(d.image_path, gb, fs, templates)
             for d, gb, fs, _ in made],
            self.create_image.call_args_list)
        self.assertEqual(
            [mock.call(d.image_path, d.mountpoint) for d, *_ in made],
            self.mount_disk.call_args_list)
        self.assertEqual(
            [mock.call(d.mountpoint, o.fields() if o else None)
             for d, _, _, o in made],
            self.own.give_disk_root.call_args_list)
        for d, *_ in made:
            self.assertTrue(os.path.isfile(d.image_path))
            self.assertIn(d.mountpoint, self.mounted)
        # The steps ran in the daemon, in one call (one round trip).
        self.rootdirs.create_root.assert_called_once()
        self.disk_create.assert_not_called()

    def test_without_disks(self):
        self.root.create(IMAGE_ROOTFS, IDMAP)
        self.assert_disks()
        self.assertEqual(0o711, os.stat(self.top).st_mode & 0o777)
        for d in (self.root.lower, self.root.merged,
                  self.root.root_disk.mountpoint):
            self.assertEqual(0o755, os.stat(d).st_mode & 0o777, d)
        self.assertEqual(self.top + '/root/upper', self.root.upper)
        self.assertEqual(self.top + '/root/work', self.root.work)
        self.assert_upper_and_work_owned()
        self.assertFalse(os.path.exists(self.root.root_disk.image_path))
        self.assertFalse(os.path.exists(
            self.root.ephemeral_disk.mountpoint))
        self.assertFalse(self.root.has_ephemeral())
        self.disk_mount.assert_not_called()
        self.own.write_etc_file.assert_not_called()
        self.assert_overlay_mounted()

    def test_root_disk(self):
        def give_disk_root(mountpoint, idmap):
            # upper and work go on the disk: it comes first.
            self.assertFalse(os.path.exists(self.root.upper))
        self.own.give_disk_root.side_effect = give_disk_root
        self.root.create(IMAGE_ROOTFS, IDMAP, root_gb=2)
        # The disk's root is the host's; upper and work the container's.
        self.assert_disks((self.root.root_disk, 2, 'ext4', None))
        self.assert_upper_and_work_owned()
        self.assertFalse(self.root.has_ephemeral())
        self.assert_overlay_mounted()

    def test_root_disk_filesystem_passed_on(self):
        self.root.create(IMAGE_ROOTFS, IDMAP, root_gb=2, root_fs='btrfs')
        self.assert_disks((self.root.root_disk, 2, 'btrfs', None))

    def test_ephemeral_disk(self):
        self.root.create(IMAGE_ROOTFS, IDMAP, ephemeral_gb=3)
        self.assert_disks((self.root.ephemeral_disk, 3, 'ext4', IDMAP))
        self.assertTrue(self.root.has_ephemeral())
        self.assert_upper_and_work_owned()
        self.assert_overlay_mounted()

    def test_both_disks(self):
        self.root.create(IMAGE_ROOTFS, IDMAP, root_gb=2, ephemeral_gb=3,
                         root_fs='btrfs')
        self.assert_disks((self.root.root_disk, 2, 'btrfs', None),
                          (self.root.ephemeral_disk, 3, 'ext4', IDMAP))
        self.assert_upper_and_work_owned()
        # The disks are new and mounted, the layers' directories new: the
        # mount table (every container's mounts) is not read.
        self.disk_mount.assert_not_called()
        self.mount.mountpoints.assert_not_called()
        self.assert_overlay_mounted()

    def test_hostname_written_into_the_mounted_root(self):
        def overlay(lower, upper, work, merged):
            os.makedirs(os.path.join(merged, 'etc'))
        self.overlay.side_effect = overlay
        self.root.create(IMAGE_ROOTFS, IDMAP, root_gb=1, hostname='web-1')
        self.own.write_etc_file.assert_called_once_with(
            self.root.merged, 'hostname', 'web-1\n', IDMAP.fields())
        with open(os.path.join(self.root.merged, 'etc', 'hostname')) as f:
            self.assertEqual('web-1\n', f.read())

    def test_an_image_without_etc_is_left_as_it_is(self):
        self.root.create(IMAGE_ROOTFS, IDMAP, hostname='web-1')
        self.own.write_etc_file.assert_called_once()
        self.assertEqual([], os.listdir(self.root.merged))

    def test_existing_root_refused(self):
        os.makedirs(os.path.join(self.top, 'root', 'upper'))
        self.assertRaises(exception.RootfsExists, self.root.create,
                          IMAGE_ROOTFS, IDMAP, root_gb=1)
        # Nothing was touched: no disk, no mount, its files left.
        self.create_image.assert_not_called()
        self.mount_disk.assert_not_called()
        self.overlay.assert_not_called()
        self.assertEqual(['upper'], os.listdir(os.path.join(self.top,
                                                            'root')))

    def test_disk_failure_propagates(self):
        self.create_image.side_effect = exception.CommandFailed(
            cmd='mkfs.ext4', exit_code=1, stderr='no')
        self.assertRaises(exception.CommandFailed, self.root.create,
                          IMAGE_ROOTFS, IDMAP, root_gb=1)
        self.mount_disk.assert_not_called()
        self.own.make_owned_dir.assert_not_called()
        self.overlay.assert_not_called()

    def test_a_late_failure_leaves_what_was_made_to_destroy(self):
        self.overlay.side_effect = exception.MountFailed(
            what='overlay', target=self.root.merged, reason='EINVAL')
        self.assertRaises(exception.MountFailed, self.root.create,
                          IMAGE_ROOTFS, IDMAP, root_gb=1, hostname='web-1')
        # The steps before it ran; none after. The caller destroys.
        self.assertIn(self.root.root_disk.mountpoint, self.mounted)
        self.assert_upper_and_work_owned()
        self.idmapped_bind.assert_called_once()
        self.own.write_etc_file.assert_not_called()
        self.assertTrue(os.path.isfile(self.root.root_disk.image_path))

    def test_a_bad_plan_is_refused_before_anything_is_made(self):
        for args in (
                ([['img', 'mnt', 1, 'ext4', None]], ['l', 'u', 'w', 'm'],
                 []),
                ([['img', 'mnt', 1, 'ext4', None, 'yes']],
                 ['l', 'u', 'w', 'm'], []),
                ([], ['l', 'u', 'w'], []),
                ([], ['l', 'u', 'w', 'm'], [['hostname']]),
                ('disks', ['l', 'u', 'w', 'm'], [])):
            disks, layers, etc_files = args
            self.assertRaises(
                exception.PrivilegedCallRefused, rootdirs.create_root,
                self.root.path, False, disks, layers, IMAGE_ROOTFS,
                IDMAP.fields(), etc_files)
        self.assertFalse(os.path.exists(self.top))
        self.rootdirs.make_root.assert_not_called()


class MountTest(_Base):

    def make(self, **kwargs):
        self.root.create(IMAGE_ROOTFS, IDMAP, **kwargs)
        self.mount.reset_mock()
        self.disk_mount.reset_mock()

    def test_remounts_everything_after_reboot(self):
        self.make(root_gb=2, ephemeral_gb=3)
        self.mounted.clear()
        self.root.mount(IMAGE_ROOTFS, IDMAP)
        self.assertEqual([mock.call(self.root.root_disk, None),
                          mock.call(self.root.ephemeral_disk, None)],
                         self.disk_mount.call_args_list)
        self.mount.idmapped_bind.assert_called_once_with(
            IMAGE_ROOTFS, self.root.lower, IDMAP)
        self.mount.overlay.assert_called_once_with(
            self.root.lower, self.root.upper, self.root.work,
            self.root.merged)

    def test_disks_only_when_they_exist(self):
        self.make()
        self.mounted.clear()
        self.root.mount(IMAGE_ROOTFS, IDMAP)
        self.disk_mount.assert_not_called()
        self.mount.overlay.assert_called_once()

    def test_mounted_left_alone(self):
        self.make()
        self.mounted.update({self.root.lower, self.root.merged})
        self.root.mount(IMAGE_ROOTFS, IDMAP)
        self.mount.idmapped_bind.assert_not_called()
        self.mount.overlay.assert_not_called()


class DestroyTest(_Base):

    def setUp(self):
        super().setUp()
        self.root.create(IMAGE_ROOTFS, IDMAP, root_gb=2, ephemeral_gb=3)
        with open(os.path.join(self.root.upper, 'file'), 'w') as f:
            f.write('written by the container')

    def test_deletes_when_nothing_stays_mounted(self):
        self.mount.unmount_tree.side_effect = (
            lambda top, points: self.mounted.clear())
        self.assertEqual({self.root.ephemeral_disk.mountpoint,
                          self.root.root_disk.mountpoint}, self.mounted)
        self.root.destroy()
        self.mount.unmount_tree.assert_called_once_with(
            self.top, sorted([self.root.ephemeral_disk.mountpoint,
                              self.root.root_disk.mountpoint]))
        self.assertFalse(os.path.lexists(self.top))
        self.assertFalse(self.root.exists())
        # Idempotent.
        self.root.destroy()
        self.mount.unmount_tree.assert_called_once()

    def test_one_mount_table_and_one_loop_scan_per_destroy(self):
        # Both grow with the containers on the host; the disks share them.
        self.mount.unmount_tree.side_effect = (
            lambda top, points: self.mounted.clear())
        leftovers = self.patch('novalxcdriver.disk.leftover_loops',
                               return_value={})
        scan = self.patch('novalxcdriver.disk.loop_devices_of')
        device = self.patch('novalxcdriver.disk.Disk.device', autospec=True,
                            return_value='7:1')
        self.root.destroy()
        self.mount.table.assert_called_once_with()
        self.mount.mountpoints.assert_not_called()
        leftovers.assert_called_once_with()
        scan.assert_not_called()
        tables = {id(c.args[1]) for c in device.call_args_list}
        self.assertEqual(2, device.call_count)
        self.assertEqual(1, len(tables))

    def test_disk_throttles_cleared_before_the_unmount(self):
        self.patch('novalxcdriver.disk.Disk.device', autospec=True,
                   side_effect=lambda d, mounts=None: {
                       self.root.root_disk.mountpoint: '7:1',
                       self.root.ephemeral_disk.mountpoint: '7:2',
                   }[d.mountpoint])
        self.assertEqual(['7:1', '7:2'], self.root.disk_devices())

        def unmount_tree(top, points):
            self.assertEqual([mock.call('7:1'), mock.call('7:2')],
                             self.throttle.clear.call_args_list)
            self.mounted.clear()
        self.mount.unmount_tree.side_effect = unmount_tree
        self.root.destroy()
        self.assertEqual(self.top,
                         self.mount.unmount_tree.call_args.args[0])
        self.assertEqual([], self.root.disk_devices())

    def test_refuses_while_something_stays_mounted(self):
        for stuck in (self.root.root_disk.mountpoint, self.root.merged,
                      self.top):
            self.mounted = {stuck}
            e = self.assertRaises(exception.MountFailed, self.root.destroy)
            self.assertIn(stuck, str(e))
            self.assertTrue(os.path.exists(
                os.path.join(self.root.upper, 'file')))
            self.assertTrue(os.path.exists(self.root.root_disk.image_path))

    def test_other_roots_mounts_do_not_count(self):
        self.mounted = {self.top + '0', self.top + '0/merged',
                        os.path.dirname(self.top)}
        self.root.destroy()
        self.assertFalse(os.path.lexists(self.top))


class UnmountForCopyTest(_Base):
    """hand_over's unmount: each mounted disk synced first."""

    def setUp(self):
        super().setUp()
        self.root.create(IMAGE_ROOTFS, IDMAP, root_gb=2, ephemeral_gb=3)
        self.patch('novalxcdriver.disk.Disk.is_mounted', autospec=True,
                   side_effect=lambda d: d.mountpoint in self.mounted)
        self.patch('novalxcdriver.disk.leftover_loops', return_value={})
        self.events = []
        self.sync_filesystem.side_effect = lambda path: self.events.append(
            ('sync', path, path in self.mounted))

        def unmount(top, points):
            self.events.append(('unmount', top))
            self.mounted.clear()
        self.mount.unmount_tree.side_effect = unmount
        # Another mount namespace keeps holding the images.
        self.held = self.patch('novalxcdriver.disk.loop_devices_of',
                               return_value=['/dev/loop9'])

    def test_synced_while_mounted_then_unmounted(self):
        rd, ed = self.root.root_disk, self.root.ephemeral_disk
        self.root.unmount_for_copy()
        self.assertEqual([('sync', rd.mountpoint, True),
                          ('sync', ed.mountpoint, True),
                          ('unmount', self.top)], self.events)
        # A holder that stays (a daemon run through ip netns exec) does
        # not stop the copy: what it keeps alive is clean.
        self.held.assert_not_called()

    def test_unmounted_disks_are_not_synced(self):
        os.unlink(self.root.ephemeral_disk.image_path)
        self.mounted.clear()
        self.root.unmount_for_copy()
        self.sync_filesystem.assert_not_called()
        self.assertEqual([('unmount', self.top)], self.events)

    def test_a_failed_sync_unmounts_nothing(self):
        self.sync_filesystem.side_effect = OSError(errno.EIO, 'I/O error')
        self.assertRaises(OSError, self.root.unmount_for_copy)
        self.mount.unmount_tree.assert_not_called()


class ExistingIdsTest(_Base):

    def test_ids(self):
        self.assertEqual(set(), rootfs.existing_ids(self.state_path))
        for name in ('3', '12', 'tmp', '7x'):
            os.makedirs(os.path.join(self.state_path, 'rootfs', name))
        self.assertEqual({3, 12}, rootfs.existing_ids(self.state_path))


class WriteEtcFileTest(_Base):
    """write_etc_file stays inside the root whatever the image's links.

    The storage_admin daemon writes it (ownership.write_etc_file, its own
    tests in test_privsep_ownership); here, in this process.
    """

    IDMAP = ids.Idmap(uid_start=165536, gid_start=265536, size=65536)

    def setUp(self):
        super().setUp()
        self.fchown = self.own.fchown
        self.log = self.patch_object(rootfs, 'LOG')
        os.makedirs(self.root.merged)
        self.outside = self.useFixture(fixtures.TempDir()).path

    def assert_written_by_the_daemon(self):
        self.own.write_etc_file.assert_called_once_with(
            self.root.merged, 'hostname', 'web-1\n', [165536, 265536, 65536])

    def test_writes_hostname_owned_by_container_root(self):
        os.mkdir(os.path.join(self.root.merged, 'etc'))
        with open(os.path.join(self.root.merged, 'etc', 'hostname'),
                  'w') as f:
            f.write('vm\n')
        self.root.write_etc_file('hostname', 'web-1\n', self.IDMAP)
        self.assert_written_by_the_daemon()
        path = os.path.join(self.root.merged, 'etc', 'hostname')
        with open(path) as f:
            self.assertEqual('web-1\n', f.read())
        self.assertEqual(0o644, os.stat(path).st_mode & 0o777)
        self.fchown.assert_called_once_with(mock.ANY, 165536, 265536)
        self.log.info.assert_not_called()

    def test_absolute_etc_link_resolves_inside_the_root(self):
        # /etc -> /srv/etc in the image: the host's /srv is never touched.
        os.makedirs(os.path.join(self.root.merged, 'srv', 'etc'))
        os.symlink('/srv/etc', os.path.join(self.root.merged, 'etc'))
        self.root.write_etc_file('hostname', 'web-1\n', self.IDMAP)
        self.assertTrue(os.path.exists(os.path.join(
            self.root.merged, 'srv', 'etc', 'hostname')))

    def test_file_link_pointing_out_is_replaced_not_followed(self):
        victim = os.path.join(self.outside, 'victim')
        with open(victim, 'w') as f:
            f.write('keep')
        os.mkdir(os.path.join(self.root.merged, 'etc'))
        os.symlink(victim, os.path.join(self.root.merged, 'etc',
                                        'hostname'))
        self.root.write_etc_file('hostname', 'web-1\n', self.IDMAP)
        with open(victim) as f:
            self.assertEqual('keep', f.read())
        path = os.path.join(self.root.merged, 'etc', 'hostname')
        self.assertFalse(os.path.islink(path))

    def test_no_etc_or_directory_in_the_way_is_left_alone(self):
        self.root.write_etc_file('hostname', 'web-1\n', self.IDMAP)
        self.assertFalse(os.path.exists(os.path.join(self.root.merged,
                                                     'etc')))
        self.assertEqual(('No /etc in the root of container ID %d; %s not '
                          'written', 3, 'hostname'),
                         self.log.info.call_args.args)
        os.makedirs(os.path.join(self.root.merged, 'etc', 'hostname'))
        self.root.write_etc_file('hostname', 'web-1\n', self.IDMAP)
        self.assertTrue(os.path.isdir(os.path.join(self.root.merged, 'etc',
                                                   'hostname')))
        self.assertEqual(('/etc/%s is a directory in the root of container '
                          'ID %d; left as it is', 'hostname', 3),
                         self.log.info.call_args.args)
        self.fchown.assert_not_called()
        self.assertEqual(2, self.own.write_etc_file.call_count)


class Crash(Exception):
    """A crash of the process at one step."""


class ReplacementTest(_Base):
    """Nova's rebuild: the root's own layers replaced in place."""

    REPLACEMENT = rootfs.Replacement(
        image_id='b2c3d4e5-0000-4000-8000-000000000002', hostname='web-2',
        ephemeral_gb=3, config_drive=True)

    def setUp(self):
        super().setUp()
        self.detach_loops = self.patch('novalxcdriver.disk.Disk.detach_loops',
                                       autospec=True)
        self.disk_create.side_effect = self._new_disk

    def _new_disk(self, d, size_gb, owner=None):
        # Disk.create: a new image file (opened 'xb'), mounted.
        with open(d.image_path, 'x') as f:
            f.write('new disk')
        os.makedirs(d.mountpoint, exist_ok=True)

    def make_old(self, root=None):
        """A root as a running container leaves it, and a staged drive."""
        root = root or self.root
        os.makedirs(root.path)
        for d in (root.lower, root.merged):
            os.mkdir(d)
        for d in (root.upper, root.work):
            os.makedirs(d)
            with open(os.path.join(d, 'old'), 'w') as f:
                f.write('written by the container')
        os.makedirs(os.path.join(root.work, 'work'))
        with open(root.ephemeral_disk.image_path, 'w') as f:
            f.write('old disk')
        os.mkdir(root.ephemeral_disk.mountpoint)
        os.makedirs(os.path.join(root.config_drive, 'openstack'))
        with open(os.path.join(root.config_drive, 'old'), 'w') as f:
            f.write('old password')
        root.stage_config_drive(self._write_drive)
        return root

    @staticmethod
    def _write_drive(path):
        os.mkdir(path)
        with open(os.path.join(path, 'new'), 'w') as f:
            f.write('new password')

    def assert_replaced(self, root, ephemeral='new disk', drive=('new',)):
        for d in (root.upper, root.work):
            self.assertEqual([], os.listdir(d), d)
        for d in (root.upper, root.work):
            self.assertIn(mock.call(d, IDMAP.fields()),
                          self.own.make_owned_dir.call_args_list)
            self.assertIn(mock.call(d, IDMAP.uid_start, IDMAP.gid_start,
                                    follow_symlinks=False),
                          self.chown.call_args_list)
        with open(root.ephemeral_disk.image_path) as f:
            self.assertEqual(ephemeral, f.read())
        if drive is None:
            self.assertFalse(os.path.lexists(root.config_drive))
        else:
            self.assertEqual(sorted(drive), sorted(os.listdir(
                root.config_drive)))
        # Nothing set aside or staged is left.
        leftovers = [
            os.path.join(top, name)
            for top in (root.path, root.root_disk.mountpoint)
            for name in os.listdir(top)
            if name.endswith(('.rebuild-old', '.rebuild-new',
                              '.rebuild-tmp'))]
        self.assertEqual([], leftovers)

    def test_record_round_trip_and_absence(self):
        self.make_old()
        self.assertIsNone(self.root.replacement())
        self.root.begin_replacement(self.REPLACEMENT)
        self.assertEqual(self.REPLACEMENT, self.root.replacement())
        # Not secret, and nova-compute reads it.
        self.assertEqual(0o644, os.stat(os.path.join(
            self.top, 'replacing.json')).st_mode & 0o777)

    def test_torn_record_is_a_clear_fault(self):
        self.make_old()
        self.root.begin_replacement(self.REPLACEMENT)
        path = os.path.join(self.top, 'replacing.json')
        for text in ('', '{"image_id": "x"', '[1]', '{"image_id": 1, '
                     '"hostname": "h", "ephemeral_gb": 0, '
                     '"config_drive": false}'):
            with open(path, 'w') as f:
                f.write(text)
            e = self.assertRaises(exception.ReplacementUnreadable,
                                  self.root.replacement)
            self.assertIn(path, str(e))
            self.assertIn('openstack server rebuild', str(e))

    def test_begin_unmounts_then_records_and_touches_no_layer(self):
        self.make_old()

        def unmount_tree(point):
            self.assertIsNone(self.root.replacement())
        self.mount.unmount_tree.side_effect = unmount_tree
        self.root.begin_replacement(self.REPLACEMENT)
        self.assertEqual(
            [mock.call(self.root.merged), mock.call(self.root.lower),
             mock.call(self.root.ephemeral_disk.mountpoint)],
            self.mount.unmount_tree.call_args_list)
        self.assertTrue(os.path.exists(os.path.join(self.root.upper,
                                                    'old')))
        with open(self.root.ephemeral_disk.image_path) as f:
            self.assertEqual('old disk', f.read())
        self.assertEqual(['new'], os.listdir(
            self.root.config_drive + '.rebuild-new'))

    def test_begin_keeping_ephemeral_leaves_it_mounted(self):
        self.make_old()
        self.root.begin_replacement(rootfs.Replacement(
            image_id='x', hostname='h', ephemeral_gb=0, config_drive=True))
        self.assertEqual(
            [mock.call(self.root.merged), mock.call(self.root.lower)],
            self.mount.unmount_tree.call_args_list)

    def test_busy_mount_records_nothing(self):
        self.make_old()
        self.mount.unmount_tree.side_effect = exception.MountBusy(
            target=self.root.merged, holders='pid 7 (sh)')
        self.assertRaises(exception.MountBusy, self.root.begin_replacement,
                          self.REPLACEMENT)
        self.assertIsNone(self.root.replacement())

    def test_stale_staged_drive_not_swapped_in_when_none_is_wanted(self):
        # A rebuild that failed before its commit staged one.
        root = self.make_old()
        replacement = rootfs.Replacement(image_id='x', hostname='h')
        root.begin_replacement(replacement)
        root.replace_layers(IDMAP)
        self.assert_replaced(root, ephemeral='old disk', drive=None)

    def test_replace_layers(self):
        root = self.make_old()
        root.begin_replacement(self.REPLACEMENT)
        root.replace_layers(IDMAP)
        self.assert_replaced(root)
        self.disk_create.assert_called_once_with(
            root.ephemeral_disk, 3, IDMAP)
        self.detach_loops.assert_called_once_with(root.ephemeral_disk)
        # The record stays until end_replacement.
        self.assertEqual(self.REPLACEMENT, root.replacement())
        root.end_replacement()
        self.assertIsNone(root.replacement())
        root.end_replacement()

    def test_replace_layers_mounts_the_root_disk_first(self):
        root = self.make_old()
        open(root.root_disk.image_path, 'w').close()
        root.begin_replacement(self.REPLACEMENT)

        def mount(d, shift=None):
            # upper/ and work/ are on it: nothing touched before.
            self.assertTrue(os.path.exists(os.path.join(root.upper, 'old')))
        self.disk_mount.side_effect = mount
        root.replace_layers(IDMAP)
        self.assertEqual(mock.call(root.root_disk, None),
                         self.disk_mount.call_args_list[0])
        self.assert_replaced(root)

    def test_replace_layers_without_record_does_nothing(self):
        root = self.make_old()
        root.replace_layers(IDMAP)
        self.assertTrue(os.path.exists(os.path.join(root.upper, 'old')))
        self.disk_create.assert_not_called()
        self.mount.unmount_tree.assert_not_called()

    def test_unstage(self):
        root = self.make_old()
        root.unstage()
        self.assertEqual(['old', 'openstack'],
                         sorted(os.listdir(root.path + '/config-drive')))
        self.assertFalse(os.path.lexists(root.config_drive + '.rebuild-new'))

    def test_staging_cut_short_leaves_nothing_staged(self):
        root = self.make_old()
        root.unstage()

        def write(path):
            os.mkdir(path)
            raise Crash()
        self.assertRaises(Crash, root.stage_config_drive, write)
        self.assertFalse(os.path.lexists(root.config_drive + '.rebuild-new'))
        # The next staging clears the partial one.
        root.stage_config_drive(self._write_drive)
        self.assertEqual(['new'], os.listdir(
            root.config_drive + '.rebuild-new'))

    def test_crash_at_every_step_is_finished_by_the_next_run(self):
        # Each file system step of replace_layers in turn fails as a
        # crash would; a second run must reach the same end.
        real = {name: getattr(os, name) for name in ('rename', 'mkdir',
                                                     'unlink')}
        real_rmtree = replacement.shutil.rmtree
        step = 0
        while True:
            root = self.make_old(rootfs.Rootfs(self.state_path, 100 + step))
            root.begin_replacement(self.REPLACEMENT)
            calls = []

            def crashing(fn):
                def call(*args, **kwargs):
                    calls.append(fn)
                    if len(calls) == step + 1:
                        raise Crash()
                    return fn(*args, **kwargs)
                return call
            with mock.patch.multiple(
                    os, **{n: crashing(f) for n, f in real.items()}), \
                    mock.patch.object(replacement.shutil, 'rmtree',
                                      crashing(real_rmtree)), \
                    mock.patch.object(self.disk_create, 'side_effect',
                                      crashing(self._new_disk)):
                try:
                    root.replace_layers(IDMAP)
                    crashed = False
                except Crash:
                    crashed = True
            root.replace_layers(IDMAP)
            self.assert_replaced(root)
            if not crashed:
                break
            step += 1
        # Every step of every layer was cut short once.
        self.assertGreater(step, 12)

    def test_replace_layers_of_disks_a_migration_brought(self):
        shift_mount = self.patch('novalxcdriver.disk.shift_mount',
                                 autospec=True)
        root = self.make_old()
        open(root.root_disk.image_path, 'w').close()
        root.begin_replacement(self.REPLACEMENT)
        root.replace_layers(IDMAP, DISK_IDMAP)
        self.assert_replaced(root)
        self.assertEqual(mock.call(root.root_disk, SHIFT),
                         self.disk_mount.call_args_list[0])
        # The new ephemeral disk is owned on disk as its siblings are,
        # and shown in the container's idmap.
        d, size_gb, owner = self.disk_create.call_args.args
        self.assertEqual((root.ephemeral_disk.image_path, 3, DISK_IDMAP),
                         (d.image_path, size_gb, owner))
        shift_mount.assert_called_once_with(root.ephemeral_disk.mountpoint,
                                            DISK_IDMAP, IDMAP)

    def test_replace_layers_shifts_a_root_without_disk(self):
        shift_mount = self.patch('novalxcdriver.disk.shift_mount',
                                 autospec=True)
        root = self.make_old()
        root.begin_replacement(self.REPLACEMENT)
        root.replace_layers(IDMAP, DISK_IDMAP)
        self.assert_replaced(root)
        self.assertEqual(
            [mock.call(root.root_disk.mountpoint, DISK_IDMAP, IDMAP),
             mock.call(root.ephemeral_disk.mountpoint, DISK_IDMAP, IDMAP)],
            shift_mount.call_args_list)


DISK_IDMAP = ids.Idmap(uid_start=362144, gid_start=462144, size=65536)
SHIFT = (DISK_IDMAP, IDMAP)


class ShiftedMountTest(_Base):
    """mount with the disks' idmap of a migration: each disk shifted."""

    def setUp(self):
        super().setUp()
        self.shift_mount = self.patch('novalxcdriver.disk.shift_mount',
                                      autospec=True)

    def make(self, **kwargs):
        self.root.create(IMAGE_ROOTFS, IDMAP, **kwargs)
        self.mounted.clear()
        self.mount.reset_mock()
        self.disk_mount.reset_mock()

    def test_each_disk_shifted(self):
        self.make(root_gb=2, ephemeral_gb=3)
        self.root.mount(IMAGE_ROOTFS, IDMAP, DISK_IDMAP)
        self.assertEqual([mock.call(self.root.root_disk, SHIFT),
                          mock.call(self.root.ephemeral_disk, SHIFT)],
                         self.disk_mount.call_args_list)
        self.shift_mount.assert_not_called()
        # The lower layer is the image in the container's own idmap.
        self.mount.idmapped_bind.assert_called_once_with(
            IMAGE_ROOTFS, self.root.lower, IDMAP)
        self.mount.overlay.assert_called_once()

    def test_root_directory_without_disk_shifted(self):
        self.make()
        self.root.mount(IMAGE_ROOTFS, IDMAP, DISK_IDMAP)
        self.shift_mount.assert_called_once_with(
            self.root.root_disk.mountpoint, DISK_IDMAP, IDMAP)
        self.disk_mount.assert_not_called()

    def test_own_idmap_or_none_no_shift(self):
        self.make(root_gb=2)
        for disk_idmap in (None, IDMAP,
                           ids.Idmap(IDMAP.uid_start, IDMAP.gid_start,
                                     IDMAP.size)):
            self.disk_mount.reset_mock()
            self.root.mount(IMAGE_ROOTFS, IDMAP, disk_idmap)
            self.disk_mount.assert_called_once_with(self.root.root_disk,
                                                    None)
        self.shift_mount.assert_not_called()


class ReceiveTest(_Base):
    """receive: the root made from the disks a migration copies here."""

    def setUp(self):
        super().setUp()
        self.grow = self.patch('novalxcdriver.disk.Disk.grow', autospec=True)
        self.root_mount = self.patch('novalxcdriver.rootfs.Rootfs.mount',
                                     autospec=True)
        # Default disks: btrfs root, ext4 ephemeral.
        self.fs = {'root.img': 'btrfs', 'ephemeral.img': 'ext4'}
        self.patch('novalxcdriver.disk.Disk.filesystem', autospec=True,
                   side_effect=lambda d: self.fs[
                       os.path.basename(d.image_path)])
        self.fetched = []

    def fetch(self, *names):
        def fetch(dest_dir):
            self.fetched.append(dest_dir)
            for name in names:
                path = os.path.join(dest_dir, name)
                if name == 'root':
                    os.makedirs(os.path.join(path, 'upper'))
                    os.makedirs(os.path.join(path, 'work'))
                else:
                    open(path, 'w').close()
        return fetch

    def receive(self, fetch, root_gb=2, ephemeral_gb=0):
        self.root.receive(fetch, IMAGE_ROOTFS, IDMAP, DISK_IDMAP, root_gb,
                          ephemeral_gb)

    def test_disks_fetched_mounted_shifted_and_grown(self):
        calls = mock.Mock()
        calls.attach_mock(self.root_mount, 'mount')
        calls.attach_mock(self.grow, 'grow')
        self.receive(self.fetch('root.img', 'ephemeral.img'), root_gb=2,
                     ephemeral_gb=3)
        self.assertEqual([self.root.path], self.fetched)
        for d in (self.root.lower, self.root.merged,
                  self.root.root_disk.mountpoint):
            self.assertTrue(os.path.isdir(d), d)
        # ext4 grows unmounted, btrfs mounted.
        self.assertEqual(
            [mock.call.grow(self.root.ephemeral_disk, 3),
             mock.call.mount(self.root, IMAGE_ROOTFS, IDMAP, DISK_IDMAP),
             mock.call.grow(self.root.root_disk, 2)],
            calls.mock_calls)
        self.disk_create.assert_not_called()

    def test_ext4_root_grown_before_the_mount(self):
        self.fs['root.img'] = 'ext4'
        calls = mock.Mock()
        calls.attach_mock(self.root_mount, 'mount')
        calls.attach_mock(self.grow, 'grow')
        self.receive(self.fetch('root.img'), root_gb=2)
        self.assertEqual(
            [mock.call.grow(self.root.root_disk, 2),
             mock.call.mount(self.root, IMAGE_ROOTFS, IDMAP, DISK_IDMAP)],
            calls.mock_calls)

    def test_new_ephemeral_disk_owned_in_the_disks_idmap(self):
        self.receive(self.fetch('root.img'), root_gb=2, ephemeral_gb=3)
        self.disk_create.assert_called_once()
        d, size_gb, owner = self.disk_create.call_args.args[:3]
        self.assertEqual((self.root.ephemeral_disk.image_path, 3,
                          DISK_IDMAP), (d.image_path, size_gb, owner))

    def test_root_directory_without_disk(self):
        self.receive(self.fetch('root'), root_gb=0)
        self.root_mount.assert_called_once_with(self.root, IMAGE_ROOTFS,
                                                IDMAP, DISK_IDMAP)
        self.grow.assert_not_called()
        self.disk_create.assert_not_called()

    def test_no_root_disk_brought(self):
        e = self.assertRaises(exception.DiskUnreadable, self.receive,
                              self.fetch('root'), root_gb=2)
        self.assertIn('root.img', str(e))
        self.root_mount.assert_not_called()

    def test_no_root_directory_brought(self):
        self.assertRaises(exception.DiskUnreadable, self.receive,
                          self.fetch(), root_gb=0)
        self.root_mount.assert_not_called()

    def test_existing_root_untouched(self):
        os.makedirs(self.root.path)
        marker = os.path.join(self.root.path, 'theirs')
        open(marker, 'w').close()
        self.assertRaises(exception.RootfsExists, self.receive,
                          self.fetch('root.img'))
        self.assertEqual([], self.fetched)
        self.assertEqual(['theirs'], os.listdir(self.root.path))

    def test_fetch_failure_raised(self):
        def fail(dest_dir):
            raise exception.CommandFailed(cmd='rsync', exit_code=23,
                                          stderr='partial')
        self.assertRaises(exception.CommandFailed, self.receive, fail)
        self.root_mount.assert_not_called()
        self.grow.assert_not_called()
