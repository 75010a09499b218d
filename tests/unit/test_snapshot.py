"""Tests for novalxcdriver.snapshot, with disks, mounts and commands mocked.

The storage_admin daemon's entry points (privsep.disks: subvolumes,
freezing) are mocked; their checks are tests/unit/test_privsep_disks.py.
"""

import io
import os
from unittest import mock

import fixtures

from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import rootfs
from novalxcdriver import snapshot
from tests.unit import base as unit_base

IDMAP = ids.Idmap(uid_start=165536, gid_start=265536, size=65536)
IMAGE_ID = '5a5a5a5a-0000-4000-8000-000000000001'


class _Base(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        tmp = self.useFixture(fixtures.TempDir()).path
        self.root = rootfs.Rootfs(os.path.join(tmp, 'state'), 4)
        os.makedirs(self.root.upper)
        os.makedirs(self.root.lower)
        self.container_dir = os.path.join(tmp, 'lxc', 'instance-1')
        os.makedirs(self.container_dir)
        self.mounted = set()
        self.mount = self.patch('novalxcdriver.snapshot.mount',
                                autospec=True)
        self.mount.mountpoints.side_effect = lambda: set(self.mounted)
        self.disks = self.patch('novalxcdriver.snapshot.disks',
                                autospec=True)
        self.lxc = self.patch('novalxcdriver.snapshot.lxc', autospec=True)
        self.durable = self.patch('novalxcdriver.snapshot.durable',
                                  autospec=True)
        self.durable.write.side_effect = self._write
        self.fs = self.patch('novalxcdriver.disk.Disk.filesystem',
                             autospec=True, return_value='btrfs')
        self.order = mock.Mock()
        for name, m in (('syncfs', self.disks.sync_filesystem),
                        ('snap', self.disks.snapshot_subvolume),
                        ('freeze', self.disks.freeze),
                        ('thaw', self.disks.thaw),
                        ('copy', self.disks.copy_layer),
                        ('cg_freeze', self.lxc.freeze),
                        ('cg_unfreeze', self.lxc.unfreeze),
                        ('overlay', self.mount.overlay_readonly)):
            self.order.attach_mock(m, name)
        self.snap = snapshot.Snapshot(self.root, IDMAP, IMAGE_ID,
                                      self.container_dir)
        self.addCleanup(snapshot._RUNNING.clear)

    @staticmethod
    def _write(path, data, *args, **kwargs):
        with open(path, 'w') as f:
            f.write(data)

    def calls(self):
        return [c[0] for c in self.order.mock_calls]


class TakeTest(_Base):

    def test_btrfs_syncfs_then_snapshot_then_view(self):
        self.mounted.add(self.root.root_disk.mountpoint)
        self.snap.take('RUNNING')
        self.assertEqual(['syncfs', 'snap', 'overlay'], self.calls())
        self.disks.snapshot_subvolume.assert_called_once_with(
            self.root.root_disk.mountpoint, '.snapshot-' + IMAGE_ID)
        self.mount.overlay_readonly.assert_called_once_with(
            [self.snap.subvolume + '/upper', self.root.lower],
            self.snap.merged)
        self.assertEqual(0o700, os.stat(self.snap.stage).st_mode & 0o777)
        self.assertEqual('btrfs', self.snap.method)
        self.assertIsNotNone(self.snap.stall)
        self.assertIn(self.snap, snapshot._RUNNING[self.root.path])

    def test_ext4_running_frozen_only_for_the_copy(self):
        self.mounted.add(self.root.root_disk.mountpoint)
        self.fs.return_value = 'ext4'
        self.snap.take('RUNNING')
        self.assertEqual(['freeze', 'copy', 'thaw', 'overlay'],
                         self.calls())
        self.disks.copy_layer.assert_called_once_with(
            self.root.upper, os.path.join(self.snap.stage, 'upper'))
        self.mount.overlay_readonly.assert_called_once_with(
            [os.path.join(self.snap.stage, 'upper'), self.root.lower],
            self.snap.merged)

    def test_thawed_when_the_copy_fails(self):
        self.mounted.add(self.root.root_disk.mountpoint)
        self.fs.return_value = 'ext4'
        self.disks.copy_layer.side_effect = exception.CommandFailed(
            cmd='cp', exit_code=1, stderr='No space left on device')
        self.assertRaises(exception.CommandFailed, self.snap.take, 'RUNNING')
        self.assertEqual(['freeze', 'copy', 'thaw'],
                         self.calls()[:3])
        self.assertFalse(os.path.exists(self.snap.stage))
        self.assertNotIn(self.root.path, snapshot._RUNNING)

    def test_unbounded_root_cgroup_frozen_with_a_marker(self):
        marker = os.path.join(self.container_dir, snapshot.FROZEN_MARKER)

        def freeze(name, lxc_path):
            self.assertTrue(os.path.exists(marker))
            self.assertEqual(('instance-1', os.path.dirname(
                self.container_dir)), (name, lxc_path))
        self.lxc.freeze.side_effect = freeze
        self.snap.take('RUNNING')
        self.assertEqual(['cg_freeze', 'copy', 'cg_unfreeze', 'overlay'],
                         self.calls())
        self.assertFalse(os.path.exists(marker))
        self.assertEqual('cgroup-freezer', self.snap.method)

    def test_stopped_or_paused_read_in_place(self):
        for state in ('STOPPED', 'FROZEN'):
            snap = snapshot.Snapshot(self.root, IDMAP, IMAGE_ID + state,
                                     self.container_dir)
            snap.take(state)
            self.mount.overlay_readonly.assert_called_with(
                [self.root.upper, self.root.lower], snap.merged)
            self.assertEqual(0.0, snap.stall)
        self.assertEqual(['overlay', 'overlay'], self.calls())

    def test_failed_view_leaves_nothing(self):
        self.mounted.add(self.root.root_disk.mountpoint)
        self.mount.overlay_readonly.side_effect = exception.MountFailed(
            what='overlay', target='x', reason='EINVAL')
        self.assertRaises(exception.MountFailed, self.snap.take, 'RUNNING')
        self.assertFalse(os.path.exists(self.snap.stage))
        self.disks.delete_subvolume.assert_called_once_with(
            self.root.root_disk.mountpoint, '.snapshot-' + IMAGE_ID)

    def test_existing_stage_is_never_reused(self):
        os.mkdir(self.snap.stage)
        self.assertRaises(FileExistsError, self.snap.take, 'RUNNING')
        self.assertTrue(os.path.isdir(self.snap.stage))
        self.disks.snapshot_subvolume.assert_not_called()


class _Proc:
    def __init__(self, code, stdout=b''):
        self.code = code
        self.stdout = io.BytesIO(stdout)
        self.killed = False

    def wait(self):
        return self.code

    def poll(self):
        return self.code

    def kill(self):
        self.killed = True


class StreamTest(_Base):

    def setUp(self):
        super().setUp()
        self.snap.take('STOPPED')
        self.procs = []

    def _popen(self, codes, output=b'zstd bytes'):
        def popen(idmap, argv, cwd, stdin=None, stdout=None, stderr=None,
                  background=False):
            self.assertEqual(IDMAP, idmap)
            self.assertEqual(self.snap.merged, cwd)
            # The containers' own work comes first.
            self.assertTrue(background)
            if self.procs:
                # Each reads the one before.
                self.assertIs(self.procs[-1].stdout, stdin)
            proc = _Proc(codes[len(self.procs)],
                         output if argv[0] == 'zstd' else b'')
            proc.argv = argv
            self.procs.append(proc)
            return proc
        self.lxc.userns_popen.side_effect = popen

    def test_find_tar_zstd_in_the_containers_view(self):
        self._popen([0, 0, 0])
        data = self.snap.stream()
        out = b''.join(iter(data))
        self.assertEqual(b'zstd bytes', out)
        find, tar, zstd = [p.argv for p in self.procs]
        self.assertEqual('zstd', zstd[0])
        self.assertIn('--check', zstd)
        self.assertEqual('find', find[0])
        # /dev's contents, devices and sockets never go in.
        self.assertIn('./dev/*', find)
        for kind in ('b', 'c', 's'):
            self.assertIn(['!', '-type', kind],
                          [find[i:i + 3] for i in range(len(find))])
        for flag in ('--numeric-owner', '--xattrs', '--format=posix',
                     '--no-recursion', '--null', '--files-from=-'):
            self.assertIn(flag, tar)
        self.assertEqual(len(out), data.bytes)

    def test_failed_tar_fails_the_read_at_the_end(self):
        self._popen([0, 2, 0])
        data = self.snap.stream()
        with self.assertRaisesRegex(exception.SnapshotFailed,
                                    'tar exited 2'):
            while data.read(65536):
                pass

    def test_cancel_kills_the_readers(self):
        self._popen([None, None, None])
        self.snap.stream()
        snapshot.cancel_all(self.root.path)
        self.assertEqual([True] * 3, [p.killed for p in self.procs])


class RecoverTest(_Base):

    def test_nothing_to_do(self):
        self.assertEqual([], snapshot.recover(self.root, self.container_dir))
        self.disks.thaw.assert_not_called()

    def test_btrfs_leftovers_removed(self):
        mnt = self.root.root_disk.mountpoint
        self.mounted.update({mnt, self.snap.merged})
        os.makedirs(self.snap.merged)
        os.mkdir(os.path.join(mnt, '.snapshot-x'))
        # Not a snapshot's: the container's own upper layer stays.
        removed = snapshot.recover(self.root, self.container_dir)
        self.mount.unmount_tree.assert_called_once_with(self.snap.stage)
        self.disks.delete_subvolume.assert_called_once_with(mnt,
                                                            '.snapshot-x')
        self.assertIn(self.snap.stage, removed)
        self.assertFalse(os.path.exists(self.snap.stage))
        self.assertTrue(os.path.isdir(self.root.upper))
        self.disks.thaw.assert_not_called()

    def test_ext4_thawed_when_a_stage_is_left(self):
        self.mounted.add(self.root.root_disk.mountpoint)
        self.fs.return_value = 'ext4'
        os.makedirs(self.snap.stage)
        snapshot.recover(self.root, self.container_dir)
        self.disks.thaw.assert_called_once_with(
            self.root.root_disk.mountpoint)
        self.disks.delete_subvolume.assert_not_called()

    def test_a_live_snapshot_is_left_alone(self):
        # Another driver process on the same state is taking it.
        mnt = self.root.root_disk.mountpoint
        self.mounted.update({mnt, self.snap.merged})
        self.fs.return_value = 'ext4'
        os.makedirs(self.snap.merged)
        open(os.path.join(self.container_dir, snapshot.FROZEN_MARKER),
             'w').close()
        held = snapshot._lock(self.snap.stage)
        self.assertEqual([], snapshot.recover(self.root, self.container_dir))
        self.assertTrue(os.path.isdir(self.snap.merged))
        self.mount.unmount_tree.assert_not_called()
        self.disks.thaw.assert_not_called()
        self.lxc.unfreeze.assert_not_called()
        self.disks.delete_subvolume.assert_not_called()
        # Once its process is gone (the lock with it), it is removed.
        os.close(held)
        self.assertIn(self.snap.stage,
                      snapshot.recover(self.root, self.container_dir))

    def test_cgroup_freeze_undone(self):
        marker = os.path.join(self.container_dir, snapshot.FROZEN_MARKER)
        open(marker, 'w').close()
        removed = snapshot.recover(self.root, self.container_dir)
        self.lxc.unfreeze.assert_called_once_with(
            'instance-1', os.path.dirname(self.container_dir))
        self.assertEqual([marker], removed)
        self.assertFalse(os.path.exists(marker))


class ImageMetadataTest(unit_base.TestCase):

    def test_formats_and_properties(self):
        instance = mock.Mock(project_id='p1', os_type='linux')
        meta = snapshot.image_metadata(instance, 'snap', 'x86_64')
        self.assertEqual({
            'name': 'snap', 'disk_format': 'raw', 'container_format': 'bare',
            'properties': {'image_location': 'snapshot',
                           'image_state': 'available', 'owner_id': 'p1',
                           'hypervisor_type': 'lxc',
                           'hw_architecture': 'x86_64', 'os_type': 'linux'},
        }, meta)
