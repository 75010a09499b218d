"""Tests for novalxcdriver.snapshot, with disks, mounts and commands mocked.

The storage_admin daemon's entry points (privsep.disks: subvolumes,
freezing; privsep.snapshots: the stage and its readers) are mocked by
stand-ins that act on the temporary tree; their checks are
tests/unit/test_privsep_disks.py and test_privsep_snapshots.py.
"""

import fcntl
import os
from unittest import mock

import fixtures

from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver.privsep import snapshots
from novalxcdriver import rootfs
from novalxcdriver import snapshot
from novalxcdriver import spool
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
        self.patch('novalxcdriver.disk.Disk.is_mounted', autospec=True,
                   side_effect=lambda d: d.mountpoint in self.mounted)
        self.disks = self.patch('novalxcdriver.snapshot.disks',
                                autospec=True)
        self.lxc = self.patch('novalxcdriver.snapshot.lxc', autospec=True)
        unit_base.container_dirs(self.lxc)
        stages = self.useFixture(unit_base.SnapshotStages())
        self.live = stages.live
        self.daemon = mock.Mock()
        for name in ('stream', 'finish', 'cancel'):
            setattr(self.daemon, name, self.patch_object(
                snapshots, name, autospec=True))
        for name in ('make_stage', 'remove_stage', 'stages'):
            setattr(self.daemon, name, getattr(stages, name))
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
                        ('overlay', self.mount.overlay_readonly),
                        ('make_stage', self.daemon.make_stage),
                        ('remove_stage', self.daemon.remove_stage)):
            self.order.attach_mock(m, name)
        self.spool = os.path.join(tmp, 'state', 'spool')
        self.snap = snapshot.Snapshot(self.root, IDMAP, IMAGE_ID,
                                      self.container_dir, self.spool)
        self.addCleanup(snapshot._RUNNING.clear)

    def calls(self):
        return [c[0] for c in self.order.mock_calls]


class TakeTest(_Base):

    def test_btrfs_syncfs_then_snapshot_then_view(self):
        self.mounted.add(self.root.root_disk.mountpoint)
        self.snap.take('RUNNING')
        self.assertEqual(['make_stage', 'syncfs', 'snap', 'overlay'],
                         self.calls())
        self.daemon.make_stage.assert_called_once_with(self.snap.stage)
        self.assertEqual(os.path.join(self.root.path,
                                      'snapshot-' + IMAGE_ID),
                         self.snap.stage)
        self.disks.snapshot_subvolume.assert_called_once_with(
            self.root.root_disk.mountpoint, '.snapshot-' + IMAGE_ID)
        self.mount.overlay_readonly.assert_called_once_with(
            [self.snap.subvolume + '/upper', self.root.lower],
            self.snap.merged)
        self.assertEqual(os.path.join(self.snap.stage, 'merged'),
                         self.snap.merged)
        self.assertEqual('btrfs', self.snap.method)
        self.assertIsNotNone(self.snap.stall)
        self.assertIn(self.snap, snapshot._RUNNING[self.root.path])

    def test_ext4_running_frozen_only_for_the_copy(self):
        self.mounted.add(self.root.root_disk.mountpoint)
        self.fs.return_value = 'ext4'
        self.snap.take('RUNNING')
        self.assertEqual(['make_stage', 'freeze', 'copy', 'thaw',
                          'overlay'], self.calls())
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
        self.assertEqual(['make_stage', 'freeze', 'copy', 'thaw'],
                         self.calls()[:4])
        self.daemon.remove_stage.assert_called_once_with(self.snap.stage)
        self.assertFalse(os.path.exists(self.snap.stage))
        self.assertNotIn(self.root.path, snapshot._RUNNING)

    def test_unbounded_root_cgroup_frozen_with_a_marker(self):
        marker = os.path.join(self.container_dir, snapshot.FROZEN_MARKER)
        lxc_path = os.path.dirname(self.container_dir)

        def freeze(name, path):
            with open(marker) as f:
                self.assertEqual(IMAGE_ID, f.read())
            self.assertEqual(('instance-1', lxc_path), (name, path))
        self.lxc.freeze.side_effect = freeze
        self.snap.take('RUNNING')
        self.assertEqual(['make_stage', 'cg_freeze', 'copy', 'cg_unfreeze',
                          'overlay'], self.calls())
        self.lxc.set_marker.assert_called_once_with(
            'instance-1', lxc_path, 'snapshot-frozen', IMAGE_ID)
        self.lxc.clear_marker.assert_called_once_with(
            'instance-1', lxc_path, 'snapshot-frozen')
        self.assertFalse(os.path.exists(marker))
        self.assertEqual('cgroup-freezer', self.snap.method)

    def test_stopped_or_paused_read_in_place(self):
        for state in ('STOPPED', 'FROZEN'):
            snap = snapshot.Snapshot(self.root, IDMAP, IMAGE_ID + state,
                                     self.container_dir, self.spool)
            snap.take(state)
            self.mount.overlay_readonly.assert_called_with(
                [self.root.upper, self.root.lower], snap.merged)
            self.assertEqual(0.0, snap.stall)
        self.assertEqual(['make_stage', 'overlay'] * 2, self.calls())

    def test_failed_view_leaves_nothing(self):
        self.mounted.add(self.root.root_disk.mountpoint)
        self.mount.overlay_readonly.side_effect = exception.MountFailed(
            what='overlay', target='x', reason='EINVAL')
        self.assertRaises(exception.MountFailed, self.snap.take, 'RUNNING')
        self.assertFalse(os.path.exists(self.snap.stage))
        self.daemon.remove_stage.assert_called_once_with(self.snap.stage)
        self.disks.delete_subvolume.assert_called_once_with(
            self.root.root_disk.mountpoint, '.snapshot-' + IMAGE_ID)

    def test_existing_stage_is_never_reused(self):
        os.mkdir(self.snap.stage)
        self.assertRaises(FileExistsError, self.snap.take, 'RUNNING')
        self.assertTrue(os.path.isdir(self.snap.stage))
        self.disks.snapshot_subvolume.assert_not_called()
        self.daemon.remove_stage.assert_not_called()

    def test_an_image_id_that_is_no_name_is_refused_first(self):
        for bad in ('a/b', '..', '', 'x\n'):
            snap = snapshot.Snapshot(self.root, IDMAP, bad,
                                     self.container_dir, self.spool)
            self.assertRaises(ValueError, snap.take, 'RUNNING')
        self.daemon.make_stage.assert_not_called()


class StreamTest(_Base):

    def setUp(self):
        super().setUp()
        self.snap.take('STOPPED')
        self.fifos = []
        self.pipe_sizes = []
        self.daemon.finish.return_value = []

    def _stream(self, output):
        def stream(stage, idmap, fifo):
            self.assertEqual(self.snap.stage, stage)
            self.assertEqual([IDMAP.uid_start, IDMAP.gid_start,
                              IDMAP.size], idmap)
            self.fifos.append(fifo)
            # What zstd does: writes, then closes (the reader's EOF).
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            self.pipe_sizes.append(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
            os.write(fd, output)
            os.close(fd)
        self.daemon.stream.side_effect = stream

    def test_the_tarball_comes_through_a_fifo_of_the_spool(self):
        self._stream(b'zstd bytes')
        data = self.snap.stream()
        # Gone once both ends are open: no FIFO outlives its stream.
        self.assertEqual([], os.listdir(self.spool))
        out = b''.join(iter(data))
        self.assertEqual(b'zstd bytes', out)
        self.assertEqual(len(out), data.bytes)
        fifo, = self.fifos
        self.assertEqual(self.spool, os.path.dirname(fifo))
        self.assertRegex(os.path.basename(fifo),
                         r'^snapshot-%d-[0-9a-f]{32}\.fifo$' % os.getpid())
        self.assertTrue(snapshots.FIFO_RE.match(os.path.basename(fifo)))
        self.assertEqual(0o700, os.stat(self.spool).st_mode & 0o777)
        self.daemon.finish.assert_called_once_with(self.snap.stage)
        # zstd writes into a pipe of a mebibyte.
        self.assertEqual([spool.PIPE_BYTES], self.pipe_sizes)

    def test_failed_tar_fails_the_read_at_the_end(self):
        self._stream(b'partial')
        self.daemon.finish.return_value = ['tar exited 2: boom']
        data = self.snap.stream()
        with self.assertRaisesRegex(exception.SnapshotFailed,
                                    'tar exited 2: boom'):
            while data.read(65536):
                pass

    def test_a_refused_stream_leaves_no_fifo_and_no_fd(self):
        self.daemon.stream.side_effect = exception.PrivilegedCallRefused(
            call='stream', reason='no')
        before = len(os.listdir('/proc/self/fd'))
        self.assertRaises(exception.PrivilegedCallRefused, self.snap.stream)
        self.assertEqual(before, len(os.listdir('/proc/self/fd')))
        self.assertEqual([], os.listdir(self.spool))

    def test_cancel_kills_the_readers_once_they_run(self):
        snapshot.cancel_all(self.root.path)
        self.daemon.cancel.assert_not_called()
        self._stream(b'')
        self.snap.stream()
        snapshot.cancel_all(self.root.path)
        self.daemon.cancel.assert_called_once_with(self.snap.stage)

    def test_cleanup_closes_the_reader_and_removes_the_stage(self):
        self._stream(b'x')
        data = self.snap.stream()
        reader = data._reader
        self.snap.cleanup()
        self.assertTrue(reader.closed)
        self.daemon.remove_stage.assert_called_once_with(self.snap.stage)
        self.assertFalse(os.path.exists(self.snap.stage))
        self.assertNotIn(self.snap, snapshot._RUNNING.get(self.root.path,
                                                          ()))


class RecoverTest(_Base):

    def test_nothing_to_do(self):
        self.assertEqual([], snapshot.recover(self.root, self.container_dir))
        self.daemon.stages.assert_called_once_with(self.root.path)
        self.disks.thaw.assert_not_called()
        self.daemon.remove_stage.assert_not_called()

    def test_btrfs_leftovers_removed(self):
        mnt = self.root.root_disk.mountpoint
        self.mounted.update({mnt, self.snap.merged})
        os.makedirs(self.snap.merged)
        os.mkdir(os.path.join(mnt, '.snapshot-x'))
        # Not a snapshot's: the container's own upper layer stays.
        removed = snapshot.recover(self.root, self.container_dir)
        self.daemon.remove_stage.assert_called_once_with(self.snap.stage)
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
        self.live.add(self.snap.stage)
        self.assertEqual([], snapshot.recover(self.root, self.container_dir))
        self.assertTrue(os.path.isdir(self.snap.merged))
        self.daemon.remove_stage.assert_not_called()
        self.disks.thaw.assert_not_called()
        self.lxc.unfreeze.assert_not_called()
        self.lxc.clear_marker.assert_not_called()
        self.disks.delete_subvolume.assert_not_called()
        # Once its process is gone (the lock with it), it is removed.
        self.live.clear()
        self.assertIn(self.snap.stage,
                      snapshot.recover(self.root, self.container_dir))

    def test_a_dead_stage_beside_a_live_one_goes_alone(self):
        mnt = self.root.root_disk.mountpoint
        self.mounted.add(mnt)
        live = os.path.join(self.root.path, 'snapshot-live')
        os.makedirs(live)
        os.makedirs(self.snap.stage)
        os.mkdir(os.path.join(mnt, '.snapshot-live'))
        self.live.add(live)
        self.assertEqual([self.snap.stage],
                         snapshot.recover(self.root, self.container_dir))
        self.assertTrue(os.path.isdir(live))
        self.disks.delete_subvolume.assert_not_called()
        self.disks.thaw.assert_not_called()

    def test_cgroup_freeze_undone(self):
        marker = os.path.join(self.container_dir, snapshot.FROZEN_MARKER)
        open(marker, 'w').close()
        removed = snapshot.recover(self.root, self.container_dir)
        self.lxc.unfreeze.assert_called_once_with(
            'instance-1', os.path.dirname(self.container_dir))
        self.lxc.clear_marker.assert_called_once_with(
            'instance-1', os.path.dirname(self.container_dir),
            'snapshot-frozen')
        self.assertEqual([marker], removed)
        self.assertFalse(os.path.exists(marker))


class SpoolTest(unit_base.TestCase):

    def test_only_dead_processes_fifos_go(self):
        spool = self.useFixture(fixtures.TempDir()).path
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)   # a pid that is gone
        dead = os.path.join(spool, 'snapshot-%d-ab12.fifo' % child)
        mine = os.path.join(spool, 'snapshot-%d-ab12.fifo' % os.getpid())
        other = os.path.join(spool, 'notes.fifo')
        for path in (dead, mine, other):
            os.mkfifo(path)
        self.assertEqual([dead], snapshot.remove_spool_leftovers(spool))
        self.assertEqual(sorted([mine, other]), sorted(
            os.path.join(spool, n) for n in os.listdir(spool)))

    def test_no_spool_yet(self):
        self.assertEqual([], snapshot.remove_spool_leftovers(
            '/nonexistent/spool'))


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
