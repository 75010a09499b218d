"""Tests for novalxcdriver.rootfs, with disks, mounts and chown mocked."""

import os
from unittest import mock

import fixtures

from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import rootfs
from tests.unit import base as unit_base

IDMAP = ids.Idmap(uid_start=165536, gid_start=265536, size=65536)
IMAGE_ROOTFS = '/images/x/rootfs'
USERNS_FD = 42


class _Base(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        self.state_path = self.useFixture(fixtures.TempDir()).path
        self.root = rootfs.Rootfs(self.state_path, 3)
        self.top = os.path.join(self.state_path, 'rootfs', '3')

        self.mounted = set()
        self.mount = self.patch('novalxcdriver.rootfs.mount', autospec=True)
        self.mount.mountpoints.side_effect = lambda: set(self.mounted)
        self.lxc = self.patch('novalxcdriver.rootfs.lxc', autospec=True)
        userns = mock.MagicMock()
        userns.__enter__.return_value = USERNS_FD
        self.lxc.user_namespace.return_value = userns
        self.disk_create = self.patch('novalxcdriver.disk.Disk.create',
                                      autospec=True,
                                      side_effect=self._disk_create)
        self.disk_mount = self.patch('novalxcdriver.disk.Disk.mount',
                                     autospec=True)
        self.chown = self.patch('os.chown', autospec=True)
        self.throttle = self.patch('novalxcdriver.rootfs.throttle',
                                   autospec=True)

    def _disk_create(self, d, size_gb, uid, gid, fs='ext4'):
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
        self.assertEqual(
            [mock.call(self.root.upper, IDMAP.uid_start, IDMAP.gid_start),
             mock.call(self.root.work, IDMAP.uid_start, IDMAP.gid_start)],
            [c for c in self.chown.call_args_list
             if c.args[0] in (self.root.upper, self.root.work)])

    def assert_overlay_mounted(self):
        self.lxc.user_namespace.assert_called_once_with(IDMAP)
        self.mount.idmapped_bind.assert_called_once_with(
            IMAGE_ROOTFS, self.root.lower, USERNS_FD)
        self.mount.overlay.assert_called_once_with(
            self.root.lower, self.root.upper, self.root.work,
            self.root.merged)

    def test_without_disks(self):
        self.root.create(IMAGE_ROOTFS, IDMAP)
        self.disk_create.assert_not_called()
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
        self.assert_overlay_mounted()

    def test_root_disk(self):
        def create(d, size_gb, uid, gid, fs='ext4'):
            # upper and work go on the disk: it comes first.
            self.assertFalse(os.path.exists(self.root.upper))
            self._disk_create(d, size_gb, uid, gid)
        self.disk_create.side_effect = create
        self.root.create(IMAGE_ROOTFS, IDMAP, root_gb=2)
        # The disk's root is the host's; upper and work the container's.
        self.disk_create.assert_called_once_with(self.root.root_disk, 2, 0,
                                                 0, fs='ext4')
        self.assert_upper_and_work_owned()
        self.assertFalse(self.root.has_ephemeral())
        self.assert_overlay_mounted()

    def test_root_disk_filesystem_passed_on(self):
        self.root.create(IMAGE_ROOTFS, IDMAP, root_gb=2, root_fs='btrfs')
        self.disk_create.assert_called_once_with(self.root.root_disk, 2, 0,
                                                 0, fs='btrfs')

    def test_ephemeral_disk(self):
        self.root.create(IMAGE_ROOTFS, IDMAP, ephemeral_gb=3)
        self.disk_create.assert_called_once_with(
            self.root.ephemeral_disk, 3, IDMAP.uid_start, IDMAP.gid_start)
        self.assertTrue(self.root.has_ephemeral())
        self.assert_upper_and_work_owned()
        self.assert_overlay_mounted()

    def test_both_disks(self):
        self.root.create(IMAGE_ROOTFS, IDMAP, root_gb=2, ephemeral_gb=3)
        self.assertEqual([
            mock.call(self.root.root_disk, 2, 0, 0, fs='ext4'),
            mock.call(self.root.ephemeral_disk, 3, IDMAP.uid_start,
                      IDMAP.gid_start),
        ], self.disk_create.call_args_list)
        self.assert_upper_and_work_owned()

    def test_existing_root_refused(self):
        os.makedirs(os.path.join(self.top, 'root', 'upper'))
        self.assertRaises(exception.RootfsExists, self.root.create,
                          IMAGE_ROOTFS, IDMAP)
        self.disk_create.assert_not_called()
        self.mount.overlay.assert_not_called()

    def test_disk_failure_propagates(self):
        self.disk_create.side_effect = exception.CommandFailed(
            cmd='mkfs.ext4', exit_code=1, stderr='no')
        self.assertRaises(exception.CommandFailed, self.root.create,
                          IMAGE_ROOTFS, IDMAP, root_gb=1)
        self.mount.overlay.assert_not_called()


class MountTest(_Base):

    def make(self, **kwargs):
        self.root.create(IMAGE_ROOTFS, IDMAP, **kwargs)
        self.mount.reset_mock()
        self.lxc.reset_mock()
        self.disk_mount.reset_mock()

    def test_remounts_everything_after_reboot(self):
        self.make(root_gb=2, ephemeral_gb=3)
        self.mounted.clear()
        self.root.mount(IMAGE_ROOTFS, IDMAP)
        self.assertEqual([mock.call(self.root.root_disk),
                          mock.call(self.root.ephemeral_disk)],
                         self.disk_mount.call_args_list)
        self.mount.idmapped_bind.assert_called_once_with(
            IMAGE_ROOTFS, self.root.lower, USERNS_FD)
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
        self.lxc.user_namespace.assert_not_called()
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
            lambda top: self.mounted.clear())
        self.root.destroy()
        self.mount.unmount_tree.assert_called_once_with(self.top)
        self.assertFalse(os.path.lexists(self.top))
        self.assertFalse(self.root.exists())
        # Idempotent.
        self.root.destroy()
        self.mount.unmount_tree.assert_called_once_with(self.top)

    def test_disk_throttles_cleared_before_the_unmount(self):
        self.patch('novalxcdriver.disk.Disk.device', autospec=True,
                   side_effect=lambda d: {
                       self.root.root_disk.mountpoint: '7:1',
                       self.root.ephemeral_disk.mountpoint: '7:2',
                   }[d.mountpoint])
        self.assertEqual(['7:1', '7:2'], self.root.disk_devices())

        def unmount_tree(top):
            self.assertEqual([mock.call('7:1'), mock.call('7:2')],
                             self.throttle.clear.call_args_list)
            self.mounted.clear()
        self.mount.unmount_tree.side_effect = unmount_tree
        self.root.destroy()
        self.mount.unmount_tree.assert_called_once_with(self.top)
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


class ExistingIdsTest(_Base):

    def test_ids(self):
        self.assertEqual(set(), rootfs.existing_ids(self.state_path))
        for name in ('3', '12', 'tmp', '7x'):
            os.makedirs(os.path.join(self.state_path, 'rootfs', name))
        self.assertEqual({3, 12}, rootfs.existing_ids(self.state_path))


class WriteEtcFileTest(_Base):
    """write_etc_file stays inside the root whatever the image's links."""

    IDMAP = ids.Idmap(uid_start=165536, gid_start=265536, size=65536)

    def setUp(self):
        super().setUp()
        self.fchown = self.patch('os.fchown', autospec=True)
        os.makedirs(self.root.merged)
        self.outside = self.useFixture(fixtures.TempDir()).path

    def test_writes_hostname_owned_by_container_root(self):
        os.mkdir(os.path.join(self.root.merged, 'etc'))
        with open(os.path.join(self.root.merged, 'etc', 'hostname'),
                  'w') as f:
            f.write('vm\n')
        self.root.write_etc_file('hostname', 'web-1\n', self.IDMAP)
        path = os.path.join(self.root.merged, 'etc', 'hostname')
        with open(path) as f:
            self.assertEqual('web-1\n', f.read())
        self.assertEqual(0o644, os.stat(path).st_mode & 0o777)
        self.fchown.assert_called_once_with(mock.ANY, 165536, 265536)

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
        os.makedirs(os.path.join(self.root.merged, 'etc', 'hostname'))
        self.root.write_etc_file('hostname', 'web-1\n', self.IDMAP)
        self.assertTrue(os.path.isdir(os.path.join(self.root.merged, 'etc',
                                                   'hostname')))
        self.fchown.assert_not_called()
