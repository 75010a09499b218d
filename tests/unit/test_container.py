"""Tests for novalxcdriver.container, with the lxc layer and mounts mocked."""

import dataclasses
import functools
import os
import shutil
from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from novalxcdriver import conf
from novalxcdriver import container as container_mod
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import images
from novalxcdriver import limits
from novalxcdriver import mount as real_mount
from novalxcdriver import record
from novalxcdriver import rescue
from novalxcdriver import rootfs
from novalxcdriver import spec as spec_mod
from tests.unit import base as unit_base

UUID = '0d7c2b1e-5a3f-4c9b-8e21-7f6a5b4c3d2e'
IMAGE_ID = 'a1b2c3d4-0000-4000-8000-000000000001'
CONF = conf.CONF
NAME = 'instance-0000001a'
SIZE = 65536
LIMITS = limits.Limits(
    memory_bytes=256 * 1024 * 1024, memsw_bytes=256 * 1024 * 1024,
    cpus=(0,), cpu_period_us=100000, cpu_quota_us=100000, cpu_shares=None,
    pids_max=4096)


class FakeClock:
    """time.monotonic and time.sleep that only move when asked."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class _Base(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        # syncfs(2) runs in the storage_admin daemon.
        self.sync_filesystem = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.disks.sync_filesystem')).mock
        self.conf_fixture = self.useFixture(config_fixture.Config(conf.CONF))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.lxc_path = os.path.join(self.tmp, 'containers')
        self.state_path = os.path.join(self.tmp, 'state')
        subuid = os.path.join(self.tmp, 'subuid')
        subgid = os.path.join(self.tmp, 'subgid')
        with open(subuid, 'w') as f:
            f.write('root:100000:%d\n' % (16 * SIZE))
        with open(subgid, 'w') as f:
            f.write('root:300000:%d\n' % (16 * SIZE))
        self.ids = ids.IdAllocator(self.state_path, subuid_path=subuid,
                                   subgid_path=subgid)

        # The lxc layer: a container whose state the tests set.
        self.lxc_state = 'RUNNING'
        patcher = mock.patch.object(container_mod, 'lxc', autospec=True)
        self.lxc = patcher.start()
        self.addCleanup(patcher.stop)
        self.lxc.info.side_effect = self._info
        unit_base.container_dirs(self.lxc)
        # snapshot.recover's, at each remount.
        self.useFixture(unit_base.SnapshotStages())
        # Serial console relays: the lxc_admin daemon's (privsep.console).
        self.console = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.container.console_ps', autospec=True)).mock
        self.console.ensure_relay.return_value = None
        self.lxc.write_config.side_effect = unit_base.checked_config_writer(
            (self.lxc_path, self.state_path), subuid, subgid)
        self.lxc.kill.side_effect = self._set('STOPPED')
        self.lxc.start.side_effect = self._set('RUNNING')
        self.lxc.freeze.side_effect = self._set('FROZEN')
        self.lxc.unfreeze.side_effect = self._set('RUNNING')
        self.lxc.request_halt.return_value = False
        self.lxc.reboot.return_value = True

        # Mounts: nothing is mounted, nothing will be.
        patcher = mock.patch('novalxcdriver.rootfs.mount', autospec=True)
        self.mount = patcher.start()
        self.addCleanup(patcher.stop)
        self.mount.mountpoints.return_value = set()
        unit_base.mounts_by_name(self.mount)
        self.mount.table.side_effect = lambda: [
            real_mount.Mount('/', p, None, None)
            for p in sorted(self.mount.mountpoints())]
        # Roots' directories: the storage_admin daemon's, in this process.
        self.useFixture(unit_base.RootDirsInProcess(
            self.state_path, mounts=lambda: self.mount.mountpoints()))

        self.clock = FakeClock()
        patcher = mock.patch.object(container_mod, 'time', self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)

        self.image = images.CachedImage(IMAGE_ID, '/images/x/rootfs',
                                        'busybox', 100)
        self.records = record.RecordStore(self.state_path)
        self.c = container_mod.Container(NAME, UUID, self.lxc_path,
                                         self.state_path, self.ids,
                                         self.records)

    def _info(self, name, lxc_path):
        self.assertEqual(NAME, name)
        self.assertEqual(self.lxc_path, lxc_path)
        if self.lxc_state == 'STOPPED':
            return 'STOPPED', None
        return self.lxc_state, 4242

    def _set(self, state):
        def set_state(*args, **kwargs):
            self.lxc_state = state
        return set_state

    def make_spec(self, cid):
        return spec_mod.ContainerSpec(
            name=NAME, instance_uuid=UUID, host='compute-1', cid=cid,
            idmap=self.ids.idmap(cid), hostname='web-1',
            rootfs=os.path.join(self.state_path, 'rootfs', str(cid),
                                'merged'),
            container_dir=self.c.dir, image_id=IMAGE_ID,
            init_system='busybox', console_log_size=65536, limits=LIMITS,
            cgroup_parent=CONF.lxc.cgroup_parent)

    def make_container(self):
        """Lay out what a complete create() leaves: ID, rootfs, config."""
        cid = self.ids.allocate(UUID, NAME)
        upper = os.path.join(self.state_path, 'rootfs', str(cid), 'root',
                             'upper')
        os.makedirs(upper)
        with open(os.path.join(upper, 'file'), 'w') as f:
            f.write('written by the container')
        os.makedirs(self.c.dir)
        spec = self.make_spec(cid)
        with open(self.c.config_path, 'w') as f:
            f.write(spec_mod.render_config(spec))
        with open(os.path.join(self.c.dir, 'console.log'), 'w') as f:
            f.write('boot\n')
        self.records.write(self.c._record_of(
            spec, rootfs.Rootfs(self.state_path, cid), record.READY))
        return cid

    def lxc_calls(self):
        """Names of the state-changing lxc calls, in order."""
        return [c[0] for c in self.lxc.mock_calls
                if c[0] not in ('info', 'console_argv')]


class StopTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_container()

    def test_timeout_zero_kills_at_once(self):
        self.c.stop(0)
        self.assertEqual(['kill'], self.lxc_calls())
        self.lxc.kill.assert_called_once_with(NAME, self.lxc_path)
        self.assertEqual('STOPPED', self.lxc_state)
        self.assertEqual([], self.clock.sleeps)

    def test_already_stopped(self):
        self.lxc_state = 'STOPPED'
        self.c.stop(30)
        self.assertEqual([], self.lxc_calls())

    def test_clean_halt(self):
        def halt(name, lxc_path, timeout):
            self.lxc_state = 'STOPPED'
            return True
        self.lxc.request_halt.side_effect = halt
        self.c.stop(30, 10)
        self.assertEqual(['request_halt'], self.lxc_calls())
        self.lxc.request_halt.assert_called_once_with(NAME, self.lxc_path,
                                                      10)

    def test_returns_when_stopped_although_request_failed(self):
        # lxc-stop fails at once when a halt is under way already.
        def halt(name, lxc_path, timeout):
            self.clock.now += 1
            self.lxc_state = 'STOPPED'
            return False
        self.lxc.request_halt.side_effect = halt
        self.c.stop(30, 10)
        self.assertEqual(['request_halt'], self.lxc_calls())

    def test_halt_repeated_then_killed_after_timeout(self):
        deadline = self.clock.now + 10
        kill_times = []
        halt_times = []

        def halt(name, lxc_path, timeout):
            # lxc-stop --nokill -t waits that long, then fails.
            halt_times.append(self.clock.now)
            self.clock.now += timeout
            return False

        def kill(name, lxc_path):
            kill_times.append(self.clock.now)
            self.lxc_state = 'STOPPED'

        self.lxc.request_halt.side_effect = halt
        self.lxc.kill.side_effect = kill
        self.c.stop(10, 3)

        timeouts = [c.args[2] for c in self.lxc.request_halt.call_args_list]
        self.assertEqual(4, len(timeouts))
        self.assertEqual([3, 3, 3], timeouts[:3])
        for t in timeouts:
            self.assertIsInstance(t, int)
            self.assertGreaterEqual(t, 1)
            self.assertLessEqual(t, 3)
        for t in halt_times:
            self.assertLess(t, deadline)
        self.assertEqual(['request_halt'] * 4 + ['kill'], self.lxc_calls())
        self.assertEqual(1, len(kill_times))
        self.assertGreaterEqual(kill_times[0], deadline)
        self.assertEqual('STOPPED', self.lxc_state)

    def test_halt_without_retry_interval_asks_once_for_all(self):
        def halt(name, lxc_path, timeout):
            self.clock.now += timeout
            return False
        self.lxc.request_halt.side_effect = halt
        self.c.stop(20)
        self.lxc.request_halt.assert_called_once_with(NAME, self.lxc_path,
                                                      20)
        self.assertEqual(['request_halt', 'kill'], self.lxc_calls())

    def test_frozen_thawed_before_kill(self):
        self.lxc_state = 'FROZEN'
        self.c.stop(0)
        self.assertEqual(['unfreeze', 'kill'], self.lxc_calls())

    def test_frozen_thawed_before_halt(self):
        self.lxc_state = 'FROZEN'

        def halt(name, lxc_path, timeout):
            self.assertEqual('RUNNING', self.lxc_state)
            self.lxc_state = 'STOPPED'
            return True
        self.lxc.request_halt.side_effect = halt
        self.c.stop(30)
        self.assertEqual(['unfreeze', 'request_halt'], self.lxc_calls())

    def test_freezing_thawed_before_kill(self):
        self.lxc_state = 'FREEZING'
        self.c.kill()
        self.assertEqual(['unfreeze', 'kill'], self.lxc_calls())

    def test_kill_reads_the_state_once(self):
        # Every lxc-info is a process: destroy runs stop(0) on each delete.
        self.c.stop(0)
        self.assertEqual(1, self.lxc.info.call_count)

    def test_kill_racing_exit_of_init_is_no_error(self):
        def exited_meanwhile(name, lxc_path):
            self.lxc_state = 'STOPPED'
            raise exception.CommandFailed(cmd='lxc-stop', exit_code=2,
                                          stderr='not running')
        self.lxc.kill.side_effect = exited_meanwhile
        self.c.stop(0)
        self.assertEqual('STOPPED', self.lxc_state)

    def test_failed_kill_of_running_container_raises(self):
        self.lxc.kill.side_effect = exception.CommandFailed(
            cmd='lxc-stop', exit_code=1, stderr='failed')
        self.assertRaises(exception.CommandFailed, self.c.stop, 0)

    def test_stop_without_config_is_not_found(self):
        os.unlink(self.c.config_path)
        self.records.remove(UUID)
        self.ids.release(self.ids.find(UUID))
        self.assertRaises(exception.ContainerNotFound, self.c.stop, 0)
        self.assertRaises(exception.ContainerNotFound, self.c.kill)
        self.assertEqual([], self.lxc_calls())

    def test_stop_of_recorded_container_without_config_is_done(self):
        # LXC cannot have started it without a config.
        os.unlink(self.c.config_path)
        self.c.stop(0)
        self.c.kill()
        self.assertEqual([], self.lxc_calls())
        self.lxc.info.assert_not_called()

    def test_stop_clears_suspended_marker(self):
        self.c.freeze(suspend=True)
        self.c.stop(0)
        self.assertFalse(self.c.is_suspended())


class LifecycleTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_container()

    def test_state_without_config_or_record(self):
        os.unlink(self.c.config_path)
        self.records.remove(UUID)
        self.ids.release(self.ids.find(UUID))
        self.assertRaises(exception.ContainerNotFound, self.c.state)
        self.lxc.info.assert_not_called()

    def test_state_of_recorded_container_with_torn_config_is_stopped(self):
        for text in ('', '# Written by novalxcdriver; changes are lost on '
                     'rebuild.\n# novalxc.instance_uuid = 0d7c2b1e-5a'):
            with open(self.c.config_path, 'w') as f:
                f.write(text)
            self.assertEqual(('STOPPED', None), self.c.state())
        self.lxc.info.assert_not_called()

    def test_start(self):
        self.lxc_state = 'STOPPED'
        self.c.start()
        self.lxc.start.assert_called_once_with(NAME, self.lxc_path)

    def test_start_of_created_container_reads_no_state(self):
        self.lxc_state = 'STOPPED'
        self.c.start(created=True)
        self.lxc.start.assert_called_once_with(NAME, self.lxc_path)
        self.lxc.info.assert_not_called()

    def test_start_with_io_throttles_but_no_disk_refused(self):
        # Starting unthrottled would sell more than the flavor says.
        with open(self.c.config_path) as f:
            text = f.read()
        with open(self.c.config_path, 'w') as f:
            f.write(text.replace(
                '# novalxc.image_id', '# novalxc.io = '
                'disk_write_bytes_sec=1000\n# novalxc.image_id'))
        self.assertEqual('disk_write_bytes_sec=1000',
                         self.c.config_record()['io'])
        self.lxc_state = 'STOPPED'
        self.assertRaises(exception.DisksNotMounted, self.c.start)
        self.lxc.start.assert_not_called()

    def test_io_throttles_placed_in_a_config_of_another_cgroup_parent(self):
        with open(self.c.config_path) as f:
            text = f.read()
        self.assertIn('\nlxc.cgroup.dir = novalxc\n', text)
        with open(self.c.config_path, 'w') as f:
            f.write(text.replace('\nlxc.cgroup.dir = novalxc\n', '\n').replace(
                '# novalxc.image_id', '# novalxc.io = '
                'disk_write_bytes_sec=1000\n# novalxc.image_id'))
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.rootfs.Rootfs.disk_devices',
            return_value=['7:3']))
        set_writeback = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.throttle.set_writeback')).mock
        self.lxc_state = 'STOPPED'
        self.c.start()
        with open(self.c.config_path) as f:
            text = f.read()
        self.assertIn('\nlxc.cgroup.dir = novalxc\n', text)
        self.assertIn('7:3 1000', text)
        set_writeback.assert_called_once_with(
            (('disk_write_bytes_sec', 1000),), ['7:3'])
        self.lxc.start.assert_called_once_with(NAME, self.lxc_path)

    def test_start_running_does_nothing(self):
        self.c.start()
        self.lxc.start.assert_not_called()

    def test_soft_reboot(self):
        self.assertTrue(self.c.reboot_soft(60))
        self.assertEqual(['reboot'], self.lxc_calls())
        self.lxc.reboot.assert_called_once_with(NAME, self.lxc_path, 60)

    def test_soft_reboot_not_completed_is_false(self):
        self.lxc.reboot.return_value = False
        self.assertFalse(self.c.reboot_soft(60))
        self.assertEqual(['reboot'], self.lxc_calls())

    def test_soft_reboot_that_leaves_it_stopped_is_false(self):
        def reboot(name, lxc_path, timeout):
            self.lxc_state = 'STOPPED'
            return True
        self.lxc.reboot.side_effect = reboot
        self.assertFalse(self.c.reboot_soft(60))

    def test_soft_reboot_of_stopped_is_false(self):
        self.lxc_state = 'STOPPED'
        self.assertFalse(self.c.reboot_soft(60))
        self.assertEqual([], self.lxc_calls())

    def test_freeze_suspend_marks_and_thaw_clears(self):
        self.assertFalse(self.c.is_suspended())
        self.c.freeze(suspend=True)
        self.assertTrue(self.c.is_suspended())
        self.assertTrue(os.path.exists(os.path.join(self.c.dir,
                                                    'suspended')))
        self.lxc.freeze.assert_called_once_with(NAME, self.lxc_path)
        self.assertEqual('FROZEN', self.lxc_state)
        self.c.thaw()
        self.assertFalse(self.c.is_suspended())
        self.lxc.unfreeze.assert_called_once_with(NAME, self.lxc_path)
        self.assertEqual('RUNNING', self.lxc_state)

    def test_pause_does_not_mark(self):
        self.c.freeze()
        self.assertFalse(self.c.is_suspended())
        self.assertEqual('FROZEN', self.lxc_state)

    def test_freeze_frozen_does_not_refreeze(self):
        self.lxc_state = 'FROZEN'
        self.c.freeze(suspend=True)
        self.lxc.freeze.assert_not_called()
        self.assertTrue(self.c.is_suspended())

    def test_thaw_running_does_nothing(self):
        self.c.thaw()
        self.lxc.unfreeze.assert_not_called()

    def test_start_clears_suspended_marker(self):
        self.c.freeze(suspend=True)
        self.lxc_state = 'STOPPED'
        self.c.start()
        self.assertFalse(self.c.is_suspended())


class RunningElsewhereTest(_Base):
    """A container started from an lxc_path that has since moved away."""

    def setUp(self):
        super().setUp()
        self.cid = self.make_container()
        self.cgroups = os.path.join(self.tmp, 'cgroup')
        self.proc = os.path.join(self.tmp, 'proc')
        self.useFixture(fixtures.MonkeyPatch(
            'novalxcdriver.container.CGROUP_ROOT', self.cgroups))
        self.useFixture(fixtures.MonkeyPatch(
            'novalxcdriver.container.PROC_ROOT', self.proc))
        self.upper = os.path.join(self.state_path, 'rootfs', str(self.cid),
                                  'root', 'upper')
        # lxc_path moved away: no config here, LXC here sees nothing.
        os.unlink(self.c.config_path)

    def process(self, group, pid, upper, point='/', controller='pids'):
        procs = os.path.join(self.cgroups, controller, group)
        os.makedirs(procs)
        with open(os.path.join(procs, 'cgroup.procs'), 'w') as f:
            f.write('%d\n%d\n' % (pid, pid + 1))
        os.makedirs(os.path.join(self.proc, str(pid)))
        with open(os.path.join(self.proc, str(pid), 'mountinfo'), 'w') as f:
            if point != '/':
                f.write('1 0 8:1 / / rw - ext4 /dev/sda1 rw\n')
            f.write('2 1 0:1 / %s rw - overlay overlay rw,lowerdir=/l,'
                    'upperdir=%s,workdir=/w\n' % (point, upper))

    def test_running_on_its_disks_is_running_and_not_started_again(self):
        self.process('lxc.payload.%s-1' % NAME, 4321, self.upper)
        self.assertEqual(('RUNNING', 4321), self.c.state())
        with open(self.c.config_path, 'w') as f:
            f.write(spec_mod.render_config(self.make_spec(self.cid)))
        self.lxc_state = 'STOPPED'
        e = self.assertRaises(exception.ContainerRunningElsewhere,
                              self.c.start)
        self.assertIn('4321', str(e))
        self.lxc.start.assert_not_called()

    def test_same_name_starting_with_the_hosts_mounts_does_not_count(self):
        # Before its pivot_root, a container of the same name (another
        # lxc_path) is in its cgroup with a copy of the host's mounts.
        merged = os.path.join(self.state_path, 'rootfs', str(self.cid),
                              'merged')
        self.process('lxc.payload.%s-2' % NAME, 4500, self.upper,
                     point=merged)
        self.assertEqual(('STOPPED', None), self.c.state())

    def test_found_under_the_cgroup_parent(self):
        # [lxc] cgroup_parent (lxc.cgroup.dir): v1, one hierarchy per
        # controller, and v2's single one.
        self.conf_fixture.config(cgroup_parent='novalxc/guests', group='lxc')
        self.process('novalxc/guests/lxc.payload.%s' % NAME, 4321,
                     self.upper)
        self.assertEqual(('RUNNING', 4321), self.c.state())
        shutil.rmtree(self.cgroups)
        self.process('novalxc/guests/lxc.payload.%s-1' % NAME, 4600,
                     self.upper, controller='')
        self.assertEqual(('RUNNING', 4600), self.c.state())

    def test_started_at_the_root_before_the_parent_was_set(self):
        self.process('lxc.payload.%s' % NAME, 4321, self.upper)
        self.conf_fixture.config(cgroup_parent='novalxc', group='lxc')
        self.assertEqual(('RUNNING', 4321), self.c.state())

    def test_another_parent_is_not_searched(self):
        self.conf_fixture.config(cgroup_parent='novalxc', group='lxc')
        self.process('other/lxc.payload.%s' % NAME, 4321, self.upper)
        self.assertEqual(('STOPPED', None), self.c.state())

    def test_same_name_on_other_disks_does_not_count(self):
        self.process('lxc.payload.%s' % NAME, 4321, '/elsewhere/upper')
        self.process('lxc.payload.%sx' % NAME, 4400, self.upper)
        self.assertEqual(('STOPPED', None), self.c.state())


class CreateTest(_Base):

    def setUp(self):
        super().setUp()
        patcher = mock.patch('novalxcdriver.rootfs.Rootfs', autospec=True)
        self.rootfs_cls = patcher.start()
        self.addCleanup(patcher.stop)
        self.root = self.rootfs_cls.return_value
        self.root.path = os.path.join(self.state_path, 'rootfs', '0')
        self.cid = self.ids.allocate(UUID, NAME)
        self.root.cid = self.cid
        self.spec = self.make_spec(self.cid)

    def test_create(self):
        self.c.create(self.spec, self.image)
        self.rootfs_cls.assert_called_once_with(self.state_path, self.cid)
        # /etc/hostname too: systemd prefers it to lxc.uts.name.
        self.root.create.assert_called_once_with(
            self.image.rootfs, self.ids.idmap(self.cid), 0, 0,
            root_fs='btrfs', hostname='web-1')
        self.assertTrue(self.c.exists())
        self.assertEqual(0o700, os.stat(self.c.dir).st_mode & 0o777)
        with open(self.c.config_path) as f:
            self.assertEqual(spec_mod.render_config(self.spec), f.read())
        self.assertEqual({'instance_uuid': UUID, 'host': 'compute-1',
                          'id': self.cid, 'image_id': IMAGE_ID},
                         self.c.config_record())
        self.assertEqual(['config'], os.listdir(self.c.dir))
        rec = self.c.record()
        self.assertEqual((UUID, NAME, self.cid, self.ids.idmap(self.cid),
                          IMAGE_ID, record.SPAWNING, os.getpid()),
                         (rec.instance_uuid, rec.name, rec.cid, rec.idmap,
                          rec.image_id, rec.state, rec.pid))
        # Created stopped.
        self.lxc.start.assert_not_called()
        self.c.mark_ready()
        self.assertEqual(record.READY, self.c.record().state)

    def test_record_is_written_before_anything_is_made(self):
        def root_create(*args, **kwargs):
            self.assertEqual(record.SPAWNING, self.c.record().state)
            self.assertEqual(['config'], os.listdir(self.c.dir))
        self.root.create.side_effect = root_create
        self.c.create(self.spec, self.image)
        self.root.create.assert_called_once()

    def test_disk_sizes_reach_rootfs(self):
        self.c.create(self.spec, self.image, root_gb=2, ephemeral_gb=3)
        self.root.create.assert_called_once_with(
            self.image.rootfs, self.ids.idmap(self.cid), 2, 3,
            root_fs='btrfs', hostname='web-1')

    def test_root_disk_filesystem_from_config(self):
        conf.CONF.set_override('root_disk_fs', 'ext4', group='lxc')
        self.c.create(self.spec, self.image, root_gb=2)
        self.assertEqual('ext4',
                         self.root.create.call_args.kwargs['root_fs'])
        self.assertTrue(self.c.exists())

    def test_rootfs_failure_removes_what_it_made(self):
        self.root.create.side_effect = exception.MountFailed(
            what='overlay', target='x', reason='EPERM')
        self.assertRaises(exception.MountFailed, self.c.create, self.spec,
                          self.image)
        self.assertFalse(os.path.lexists(self.c.dir))
        self.assertIsNone(self.c.record())
        self.root.destroy.assert_called_once_with()

    def test_existing_rootfs_dir_refused_and_kept(self):
        self.root.create.side_effect = exception.RootfsExists(path='/x')
        self.assertRaises(exception.RootfsExists, self.c.create, self.spec,
                          self.image)
        self.root.destroy.assert_not_called()
        self.assertFalse(os.path.lexists(self.c.dir))
        self.assertIsNone(self.c.record())

    def test_render_failure_removes_dir(self):
        bad = dataclasses.replace(self.spec, hostname='a\nlxc.x = y')
        self.assertRaises(ValueError, self.c.create, bad, self.image)
        self.assertFalse(os.path.lexists(self.c.dir))
        self.root.create.assert_not_called()
        self.root.destroy.assert_not_called()
        self.assertIsNone(self.c.record())

    def test_existing_dir_refused_and_kept(self):
        # Finding 2: lxc_path reused, instance names restarting at 1.
        os.makedirs(self.c.dir)
        with open(os.path.join(self.c.dir, 'config'), 'w') as f:
            f.write('someone else\n')
        e = self.assertRaises(exception.ContainerExists, self.c.create,
                              self.spec, self.image)
        self.assertIn(self.c.dir, str(e))
        self.root.create.assert_not_called()
        self.root.destroy.assert_not_called()
        with open(os.path.join(self.c.dir, 'config')) as f:
            self.assertEqual('someone else\n', f.read())
        self.assertIsNone(self.c.record())
        # Nor does a destroy afterwards take it.
        self.c.destroy()
        with open(os.path.join(self.c.dir, 'config')) as f:
            self.assertEqual('someone else\n', f.read())


class DirOwnerTest(_Base):
    """Whose <lxc_path>/<name> is: only what is proven ours goes."""

    def setUp(self):
        super().setUp()
        self.cid = self.make_container()
        with open(self.c.config_path) as f:
            self.config = f.read()

    def write_config(self, text):
        with open(self.c.config_path, 'w') as f:
            f.write(text)

    def test_config_naming_us(self):
        self.assertEqual('us', self.c.dir_owner())

    def test_absent(self):
        self.c.destroy()
        self.assertEqual('none', self.c.dir_owner())

    def test_torn_configs_of_ours(self):
        # What LXC writes beside the config once it started.
        with open(os.path.join(self.c.dir, 'lxc.log'), 'w') as f:
            f.write('lxc-start: warning\n')
        header_end = self.config.index('\nlxc.')
        for text in ('', self.config[:header_end - 5],
                     self.config[:len(self.config) * 6 // 10]):
            self.write_config(text)
            self.assertEqual('us', self.c.dir_owner(), text)
        os.unlink(self.c.config_path)
        self.assertEqual('us', self.c.dir_owner())

    def test_other_instance_or_foreign_lxc_config(self):
        other = self.config.replace(UUID,
                                    'ffffffff-5a3f-4c9b-8e21-7f6a5b4c3d2e')
        for text in (other, 'lxc.uts.name = foreign\n'):
            self.write_config(text)
            self.assertEqual('other', self.c.dir_owner(), text)

    def test_foreign_files_beside_no_config(self):
        os.unlink(self.c.config_path)
        os.mkdir(os.path.join(self.c.dir, 'rootfs'))
        self.assertEqual('other', self.c.dir_owner())

    def test_binary_config_is_not_ours(self):
        with open(self.c.config_path, 'wb') as f:
            f.write(b'\xff\xfe')
        self.assertEqual('other', self.c.dir_owner())

    def test_destroy_leaves_a_foreign_dir_and_removes_the_rest(self):
        self.write_config('lxc.uts.name = foreign\n')
        self.c.destroy()
        self.assertEqual(['config', 'console.log'],
                         sorted(os.listdir(self.c.dir)))
        self.assertFalse(os.path.exists(os.path.join(
            self.state_path, 'rootfs', str(self.cid))))
        self.assertIsNone(self.ids.find(UUID))
        self.assertIsNone(self.c.record())


class RebuildTest(_Base):
    """rebuild: the derived parts made again from a spec."""

    def setUp(self):
        super().setUp()
        self.cid = self.make_container()
        self.spec = self.make_spec(self.cid)
        patcher = mock.patch('novalxcdriver.rootfs.Rootfs.mount',
                             autospec=True)
        self.root_mount = patcher.start()
        self.addCleanup(patcher.stop)

    def test_missing_config_and_dir_written_again(self):
        os.unlink(self.c.config_path)
        os.unlink(os.path.join(self.c.dir, 'console.log'))
        os.rmdir(self.c.dir)
        self.c.rebuild(self.spec, self.image)
        with open(self.c.config_path) as f:
            self.assertEqual(spec_mod.render_config(self.spec), f.read())
        root, image_rootfs, idmap, disk_idmap = (
            self.root_mount.call_args.args)
        self.assertIsNone(disk_idmap)
        self.assertEqual((self.cid, '/images/x/rootfs',
                          self.ids.idmap(self.cid)),
                         (root.cid, image_rootfs, idmap))

    def test_torn_config_written_again(self):
        with open(self.c.config_path, 'r+') as f:
            f.truncate(100)
        self.c.rebuild(self.spec, self.image)
        with open(self.c.config_path) as f:
            self.assertEqual(spec_mod.render_config(self.spec), f.read())

    def test_unchanged_record_not_written_again(self):
        # Another process (a restarted nova-compute) repairs it.
        with mock.patch('os.getpid', return_value=2 ** 30), \
                mock.patch.object(self.records, 'write') as write:
            self.c.rebuild(self.spec, self.image)
        write.assert_not_called()

    def test_missing_record_written_again(self):
        self.records.remove(UUID)
        self.c.rebuild(self.spec, self.image)
        self.assertEqual(self.cid, self.c.record().cid)
        self.assertEqual(record.READY, self.c.record().state)

    def test_foreign_dir_refused_and_untouched(self):
        with open(self.c.config_path, 'w') as f:
            f.write('lxc.uts.name = foreign\n')
        e = self.assertRaises(exception.ContainerExists, self.c.rebuild,
                              self.spec, self.image)
        self.assertIn(self.c.dir, str(e))
        with open(self.c.config_path) as f:
            self.assertEqual('lxc.uts.name = foreign\n', f.read())
        self.root_mount.assert_not_called()


class RemountTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_container()
        self.cache = mock.Mock()
        self.cache.lookup.return_value = self.image
        patcher = mock.patch('novalxcdriver.rootfs.Rootfs.mount',
                             autospec=True)
        self.root_mount = patcher.start()
        self.addCleanup(patcher.stop)

    def test_mounts_on_the_cached_image_with_the_recorded_idmap(self):
        self.assertTrue(self.c.remount(self.cache))
        root, image_rootfs, idmap, disk_idmap = (
            self.root_mount.call_args.args)
        self.assertIsNone(disk_idmap)
        self.assertEqual('/images/x/rootfs', image_rootfs)
        self.assertEqual(self.c.record().idmap, idmap)

    def test_spawn_under_way_mounts_nothing(self):
        # Its own process is making the mounts (or was, until a crash).
        self.records.write(dataclasses.replace(self.c.record(),
                                               state=record.SPAWNING))
        self.assertFalse(self.c.remount(self.cache))
        self.root_mount.assert_not_called()

    def test_rootfs_gone_mounts_nothing(self):
        shutil.rmtree(os.path.join(self.state_path, 'rootfs'))
        self.assertFalse(self.c.remount(self.cache))
        self.root_mount.assert_not_called()

    def test_image_not_cached_mounts_nothing(self):
        self.cache.lookup.return_value = None
        self.assertFalse(self.c.remount(self.cache))
        self.root_mount.assert_not_called()

    def test_remount_and_destroy_share_one_external_lock(self):
        locks = []
        real_lock = container_mod.lockutils.lock

        def lock(name, **kwargs):
            locks.append((name, kwargs['external']))
            return real_lock(name, **kwargs)
        with mock.patch.object(container_mod.lockutils, 'lock', lock):
            cid = self.c.cid()
            self.c.remount(self.cache)
            self.lxc_state = 'STOPPED'
            self.c.destroy()
        # (ids.release takes the ID allocator's own lock too.)
        self.assertEqual([('novalxc-container-%d' % cid, True)] * 2,
                         [lk for lk in locks if lk[0] != 'novalxc-ids'])

    def test_destroy_done_while_waiting_for_the_lock_mounts_nothing(self):
        class DestroyedWhileWaiting:
            def __enter__(lock):
                self.records.remove(UUID)

            def __exit__(lock, *exc):
                return False
        with mock.patch.object(container_mod.lockutils, 'lock',
                               return_value=DestroyedWhileWaiting()):
            self.assertFalse(self.c.remount(self.cache))
        self.root_mount.assert_not_called()

    def test_failure_raised(self):
        self.root_mount.side_effect = exception.MountFailed(
            what='overlay', target='/x', reason='EINVAL')
        self.assertRaises(exception.MountFailed, self.c.remount, self.cache)


class RescueTest(_Base):
    """rescue(), and rebuild, remount and destroy of a rescued container."""

    def setUp(self):
        super().setUp()
        self.cid = self.make_container()
        self.lxc_state = 'STOPPED'
        self.server_spec = self.make_spec(self.cid)
        self.server_config = spec_mod.render_config(self.server_spec)
        self.root = rootfs.Rootfs(self.state_path, self.cid)
        self.rescue_root = rescue.root_of(self.root)
        self.rescue_image = images.CachedImage(
            'rescue-image', '/images/r/rootfs', 'busybox', 50)
        self.spec = rescue.spec_of(self.server_spec, self.rescue_image,
                                   self.rescue_root)
        self.server_file = os.path.join(self.root.upper, 'file')
        self.root_mount = self._patch('mount')
        self.root_create = self._patch('create', side_effect=self._create)

    def _patch(self, name, **kwargs):
        patcher = mock.patch('novalxcdriver.rootfs.Rootfs.' + name,
                             autospec=True, **kwargs)
        self.addCleanup(patcher.stop)
        return patcher.start()

    @staticmethod
    def _create(root, image_rootfs, idmap, root_gb=0, ephemeral_gb=0,
                hostname=None):
        # The real one makes disks and mounts; the directories suffice.
        for d in (root.lower, root.upper, root.work, root.merged):
            os.makedirs(d)

    def config(self):
        with open(self.c.config_path) as f:
            return f.read()

    def assert_server_untouched(self):
        with open(self.server_file) as f:
            self.assertEqual('written by the container', f.read())
        self.assertEqual(['file'], os.listdir(self.root.upper))

    def test_rescue(self):
        self.c.rescue(self.spec, self.image, self.rescue_image, root_gb=2)
        self.assertEqual('rescue-image', self.c.record().rescue_image_id)
        self.assertEqual(spec_mod.render_config(self.spec), self.config())
        root, *args = self.root_create.call_args.args
        self.assertEqual((self.rescue_root.path, '/images/r/rootfs',
                          self.ids.idmap(self.cid), 2),
                         (root.path, *args))
        # Its /etc/hostname, as create writes the server's.
        self.assertEqual({'hostname': 'web-1'},
                         self.root_create.call_args.kwargs)
        # Its own root for /mnt, then the rescue's.
        self.assertEqual(
            [(self.root.path, '/images/x/rootfs'),
             (self.rescue_root.path, '/images/r/rootfs')],
            [(c.args[0].path, c.args[1])
             for c in self.root_mount.call_args_list])
        self.assert_server_untouched()
        self.lxc.start.assert_not_called()

    def test_rescue_root_made_only_once_the_record_names_it(self):
        def create(root, *args, **kwargs):
            self.assertEqual(self.rescue_root.path, root.path)
            self.assertEqual('rescue-image',
                             self.c.record().rescue_image_id)
            # The config names it only once it is there.
            self.assertEqual(self.server_config, self.config())
            self._create(root, *args, **kwargs)
        self.root_create.side_effect = create
        self.c.rescue(self.spec, self.image, self.rescue_image)
        self.root_create.assert_called_once()

    def test_leftover_of_an_interrupted_rescue_replaced(self):
        os.makedirs(self.rescue_root.upper)
        with open(os.path.join(self.rescue_root.upper, 'old'), 'w') as f:
            f.write('scratch')
        self.c.rescue(self.spec, self.image, self.rescue_image)
        self.assertEqual([], os.listdir(self.rescue_root.upper))
        self.mount.unmount_tree.assert_called_once_with(
            self.rescue_root.path, mock.ANY)

    def test_foreign_dir_refused_untouched(self):
        with open(self.c.config_path, 'w') as f:
            f.write('lxc.uts.name = foreign\n')
        self.assertRaises(exception.ContainerExists, self.c.rescue,
                          self.spec, self.image, self.rescue_image)
        self.assertEqual('', self.c.record().rescue_image_id)
        self.root_create.assert_not_called()
        self.assertEqual('lxc.uts.name = foreign\n', self.config())

    def test_server_spec_takes_the_rescue_root_before_the_record(self):
        self.c.rescue(self.spec, self.image, self.rescue_image)
        real_write = self.records.write

        def write(rec):
            self.assertFalse(os.path.lexists(self.rescue_root.path))
            real_write(rec)
        with mock.patch.object(self.records, 'write', side_effect=write):
            self.c.rebuild(self.server_spec, self.image)
        self.assertEqual('', self.c.record().rescue_image_id)
        self.assertEqual(self.server_config, self.config())
        self.assertEqual(['root'], os.listdir(self.root.path))
        self.assert_server_untouched()

    def test_busy_rescue_root_stays_named_by_the_record(self):
        self.c.rescue(self.spec, self.image, self.rescue_image)
        self.mount.mountpoints.return_value = {self.rescue_root.merged}
        self.assertRaises(exception.MountFailed, self.c.rebuild,
                          self.server_spec, self.image)
        self.assertEqual('rescue-image', self.c.record().rescue_image_id)
        self.assertEqual(spec_mod.render_config(self.spec), self.config())
        self.assertTrue(os.path.isdir(self.rescue_root.upper))

    def test_rescue_spec_rebuilt_on_its_rescue_root(self):
        self.c.rescue(self.spec, self.image, self.rescue_image)
        os.unlink(self.c.config_path)
        self.root_mount.reset_mock()
        self.c.rebuild(self.spec, self.image, self.rescue_image)
        self.assertEqual(spec_mod.render_config(self.spec), self.config())
        self.assertEqual([self.root.path, self.rescue_root.path],
                         [c.args[0].path
                          for c in self.root_mount.call_args_list])
        self.root_create.assert_called_once()  # by rescue() alone

    def test_rescue_spec_without_rescue_root_refused(self):
        self.c.rescue(self.spec, self.image, self.rescue_image)
        shutil.rmtree(self.rescue_root.path)
        e = self.assertRaises(exception.RescueUnavailable, self.c.rebuild,
                              self.spec, self.image, self.rescue_image)
        self.assertIn(self.rescue_root.path, str(e))
        self.assertIn('Unrescue', str(e))
        self.root_create.assert_called_once()

    def test_remount_mounts_both_roots(self):
        self.c.rescue(self.spec, self.image, self.rescue_image)
        self.root_mount.reset_mock()
        cache = mock.Mock()
        cache.lookup.side_effect = {
            IMAGE_ID: self.image, 'rescue-image': self.rescue_image}.get
        self.assertTrue(self.c.remount(cache))
        self.assertEqual(
            [(self.root.path, '/images/x/rootfs', self.ids.idmap(self.cid),
              None),
             (self.rescue_root.path, '/images/r/rootfs',
              self.ids.idmap(self.cid))],
            [(c.args[0].path,) + c.args[1:]
             for c in self.root_mount.call_args_list])

    def remounted(self, images_cached):
        cache = mock.Mock()
        cache.lookup.side_effect = {i.image_id: i
                                    for i in images_cached}.get
        self.root_mount.reset_mock()
        self.assertTrue(self.c.remount(cache))
        return [c.args[0].path for c in self.root_mount.call_args_list]

    def test_remount_without_rescue_image_mounts_the_server(self):
        # Its next start fetches the image (_rebuild).
        self.c.rescue(self.spec, self.image, self.rescue_image)
        self.assertEqual([self.root.path], self.remounted([self.image]))

    def test_remount_without_rescue_root_mounts_the_server(self):
        self.c.rescue(self.spec, self.image, self.rescue_image)
        shutil.rmtree(self.rescue_root.path)
        self.assertEqual([self.root.path], self.remounted(
            [self.image, self.rescue_image]))

    def test_destroy_takes_the_rescue_root_first(self):
        self.c.rescue(self.spec, self.image, self.rescue_image)
        self.mount.unmount_tree.reset_mock()
        self.c.destroy()
        self.assertEqual([mock.call(self.rescue_root.path, mock.ANY),
                          mock.call(self.root.path, mock.ANY)],
                         self.mount.unmount_tree.call_args_list)
        self.assertFalse(os.path.lexists(self.root.path))
        self.assertIsNone(self.c.record())
        self.assertEqual({}, self.ids.reservations())


class DestroyTest(_Base):

    def rootfs_dir(self, cid):
        return os.path.join(self.state_path, 'rootfs', str(cid))

    def test_destroy(self):
        cid = self.make_container()
        self.c.destroy()
        self.assertEqual(['kill', 'remove_dir'], self.lxc_calls())
        self.assertFalse(os.path.lexists(self.c.dir))
        self.assertFalse(os.path.lexists(self.rootfs_dir(cid)))
        self.assertIsNone(self.ids.find(UUID))
        self.assertEqual({}, self.ids.reservations())
        self.assertFalse(self.c.exists())

    def test_destroy_with_halt_timeout(self):
        self.make_container()

        def halt(name, lxc_path, timeout):
            self.lxc_state = 'STOPPED'
            return True
        self.lxc.request_halt.side_effect = halt
        self.c.destroy(timeout=20)
        self.assertEqual(['request_halt', 'remove_dir'], self.lxc_calls())
        self.assertFalse(os.path.lexists(self.c.dir))

    def test_destroy_is_idempotent(self):
        cid = self.make_container()
        self.c.destroy()
        self.lxc.reset_mock()
        self.c.destroy()
        self.c.destroy()
        self.assertEqual([], self.lxc_calls())
        self.lxc.info.assert_not_called()
        self.assertFalse(os.path.lexists(self.rootfs_dir(cid)))
        self.assertEqual({}, self.ids.reservations())

    def test_destroy_of_nothing(self):
        self.c.destroy()
        self.assertEqual([], self.lxc_calls())
        self.assertFalse(os.path.lexists(self.c.dir))

    def test_destroy_after_interrupted_create(self):
        # The ID was reserved, the rootfs half made, no config written.
        cid = self.ids.allocate(UUID, NAME)
        os.makedirs(os.path.join(self.rootfs_dir(cid), 'root', 'upper'))
        os.makedirs(self.c.dir)
        self.c.destroy()
        self.lxc.info.assert_not_called()
        self.assertFalse(os.path.lexists(self.rootfs_dir(cid)))
        self.assertFalse(os.path.lexists(self.c.dir))
        self.assertIsNone(self.ids.find(UUID))
        self.assertEqual({}, self.ids.reservations())

    def test_destroy_after_reservation_only(self):
        self.ids.allocate(UUID, NAME)
        self.c.destroy()
        self.assertEqual({}, self.ids.reservations())

    def test_destroy_keeps_id_reserved_by_other_instance(self):
        # The record names ID 0 but the reservation belongs to another
        # instance (the ID was reused): do not release someone else's ID.
        cid = self.make_container()
        self.ids.release(cid)
        self.assertEqual(cid, self.ids.allocate('other-uuid', 'other'))
        self.c.destroy()
        self.assertEqual(cid, self.ids.find('other-uuid'))

    def test_mounted_rootfs_not_deleted(self):
        cid = self.make_container()
        merged = os.path.join(self.rootfs_dir(cid), 'merged')
        self.mount.mountpoints.return_value = {merged}
        self.assertRaises(exception.MountFailed, self.c.destroy)
        self.mount.unmount_tree.assert_called_once_with(self.rootfs_dir(cid),
                                                        [merged])
        # Nothing deleted through the mount; the ID stays reserved.
        self.assertTrue(os.path.exists(os.path.join(
            self.rootfs_dir(cid), 'root', 'upper', 'file')))
        self.assertEqual(cid, self.ids.find(UUID))


class ConsoleOutputTest(_Base):

    def write(self, name, data):
        os.makedirs(self.c.dir, exist_ok=True)
        with open(os.path.join(self.c.dir, name), 'wb') as f:
            f.write(data)

    def test_no_log(self):
        self.assertEqual(b'', self.c.console_output())

    def test_tail_across_rotation(self):
        self.write('console.log.1', b'a' * 100)
        self.write('console.log', b'b' * 50)
        self.assertEqual(b'a' * 30 + b'b' * 50,
                         self.c.console_output(max_bytes=80))
        self.assertEqual(b'a' * 100 + b'b' * 50,
                         self.c.console_output(max_bytes=1000))

    def test_tail_of_current_log_only(self):
        self.write('console.log.1', b'a' * 100)
        self.write('console.log', b'0123456789')
        self.assertEqual(b'6789', self.c.console_output(max_bytes=4))

    def test_only_current_log(self):
        self.write('console.log', b'hello\n')
        self.assertEqual(b'hello\n', self.c.console_output())

    def test_default_limit(self):
        size = container_mod.CONSOLE_OUTPUT_MAX
        self.write('console.log', b'y' * 10 + b'x' * size)
        self.assertEqual(b'x' * size, self.c.console_output())


class RecordsTest(_Base):

    def test_config_records_and_artifact_ids(self):
        cid = self.make_container()
        os.makedirs(os.path.join(self.lxc_path, 'foreign'))
        with open(os.path.join(self.lxc_path, 'foreign', 'config'),
                  'w') as f:
            f.write('lxc.uts.name = foreign\n')
        os.makedirs(os.path.join(self.lxc_path, 'noconfig'))
        os.makedirs(os.path.join(self.state_path, 'rootfs', '9'))
        # A record whose config and rootfs are gone still holds its ID.
        other = dataclasses.replace(
            self.c.record(), cid=7,
            instance_uuid='ffffffff-5a3f-4c9b-8e21-7f6a5b4c3d2e')
        self.records.write(other)
        self.assertEqual({NAME: {'instance_uuid': UUID,
                                 'host': 'compute-1', 'id': cid,
                                 'image_id': IMAGE_ID}},
                         container_mod.config_records(self.lxc_path))
        self.assertEqual({cid, 7, 9}, container_mod.artifact_ids(
            self.lxc_path, self.state_path, self.records))

    def test_artifact_ids_read_only_changed_files(self):
        cid = self.make_container()
        other = dataclasses.replace(
            self.c.record(), cid=7,
            instance_uuid='ffffffff-5a3f-4c9b-8e21-7f6a5b4c3d2e')
        self.records.write(other)
        scan = functools.partial(container_mod.artifact_ids, self.lxc_path,
                                 self.state_path, self.records)
        self.assertEqual({cid, 7}, scan())
        with mock.patch.object(container_mod, '_record_id') as rec, \
                mock.patch.object(container_mod, '_config_id') as cfg:
            self.assertEqual({cid, 7}, scan())
        rec.assert_not_called()
        cfg.assert_not_called()
        # Replaced (durable.write renames): read again.
        self.records.write(dataclasses.replace(other, cid=8))
        self.assertEqual({cid, 8}, scan())
        # Gone: forgotten.
        self.records.remove(other.instance_uuid)
        self.assertEqual({cid}, scan())

    def test_artifact_ids_count_a_config_edited_in_place(self):
        cid = self.make_container()
        self.records.remove(UUID)
        config = os.path.join(self.lxc_path, NAME, 'config')
        scan = functools.partial(container_mod.artifact_ids, self.lxc_path,
                                 self.state_path, self.records)
        shutil.rmtree(os.path.join(self.state_path, 'rootfs'),
                      ignore_errors=True)
        self.assertEqual({cid}, scan())
        with open(config) as f:
            text = f.read()
        with open(config, 'w') as f:
            f.write(text.replace('novalxc.id = %d' % cid,
                                 'novalxc.id = %d' % (cid + 40)))
        self.assertEqual({cid + 40}, scan())

    def test_artifact_ids_skip_a_config_they_may_not_read(self):
        # Someone else's directory, 0700, while the driver runs as a user
        # of its own: skipped and logged once, where it was a
        # PermissionError out of every spawn's ID allocation.
        cid = self.make_container()
        planted = os.path.join(self.lxc_path, 'planted', 'config')
        os.makedirs(os.path.dirname(planted))
        with open(planted, 'w') as f:
            f.write('lxc.uts.name = planted\n')

        def refusing(real):
            def call(path, *args, **kwargs):
                if path == planted:
                    raise PermissionError(13, 'Permission denied', path)
                return real(path, *args, **kwargs)
            return call

        scan = functools.partial(container_mod.artifact_ids, self.lxc_path,
                                 self.state_path, self.records)
        self.addCleanup(lambda: getattr(container_mod, '_UNREADABLE',
                                        set()).discard(planted))
        with mock.patch.object(container_mod.os, 'stat',
                               side_effect=refusing(os.stat)), \
                mock.patch.object(container_mod.LOG, 'warning') as warn:
            self.assertEqual({cid}, scan())
            self.assertEqual({cid}, scan())
        self.assertEqual(1, warn.call_count)
        self.assertIn(planted, warn.call_args[0])

        # Readable to stat, not to open: the same.
        container_mod._SCANNED.clear()
        with mock.patch('builtins.open', side_effect=refusing(open)):
            self.assertEqual({cid}, scan())
            # Nor do they stop init_host's adoption of configs.
            self.assertEqual([NAME], list(
                container_mod.config_records(self.lxc_path)))

    def test_no_lxc_path(self):
        self.assertEqual({}, container_mod.config_records(
            os.path.join(self.tmp, 'nothing')))

    def test_invalid_name_refused(self):
        self.assertRaises(exception.InvalidContainerName,
                          container_mod.Container, '../x', UUID,
                          self.lxc_path, self.state_path, self.ids,
                          self.records)


class NicsTest(_Base):
    """The NICs the config names, read and rewritten; reboot's hook."""

    def nic(self, index, port_id):
        return spec_mod.NicSpec(
            index=index, name='eth%d' % index,
            mac='fa:16:3e:00:00:0%d' % index,
            mtu=1500, host_dev='tap' + port_id, peer_dev='nlx' + port_id,
            kind='bridge', bridge='br0', port_id=port_id)

    def test_none_without_config(self):
        self.assertEqual((), self.c.nics())

    def test_set_and_read_back(self):
        self.make_container()
        self.assertEqual((), self.c.nics())
        nics = (self.nic(0, 'a'), self.nic(1, 'b'))
        self.c.set_nics(nics)
        self.assertEqual(nics, self.c.nics())
        self.c.set_nics(nics[1:])
        (left,) = self.c.nics()
        self.assertEqual((0, 'eth1', 'b'),
                         (left.index, left.name, left.port_id))
        # The rest of the config and its record are untouched.
        self.assertEqual(UUID, self.c.config_record()['instance_uuid'])
        self.assertEqual(['config', 'console.log'],
                         sorted(os.listdir(self.c.dir)))

    def test_set_on_a_config_of_another_cgroup_parent(self):
        # Written before [lxc] cgroup_parent was set, or changed since:
        # the lxc_admin daemon (checked_config_writer here) writes only
        # configs naming its own parent.
        self.conf_fixture.config(cgroup_parent='', group='lxc')
        self.make_container()
        self.conf_fixture.config(cgroup_parent='novalxc/guests', group='lxc')
        self.c.set_nics((self.nic(0, 'a'),))
        with open(self.c.config_path) as f:
            text = f.read()
        self.assertEqual(1, text.count('\nlxc.cgroup.dir = novalxc/guests\n'))
        self.assertEqual(1, len(self.c.nics()))


class ReplaceRootTest(_Base):
    """begin_replacing_root, then rebuild: Nova's rebuild of the root."""

    NEW_IMAGE = images.CachedImage('b2c3d4e5-0000-4000-8000-000000000002',
                                   '/images/y/rootfs', 'busybox', 100)

    def setUp(self):
        super().setUp()
        self.cid = self.make_container()
        self.spec = self.make_spec(self.cid)
        self.new_spec = dataclasses.replace(
            self.spec, image_id=self.NEW_IMAGE.image_id)
        self.root = rootfs.Rootfs(self.state_path, self.cid)
        os.makedirs(self.root.work)
        patcher = mock.patch('novalxcdriver.rootfs.Rootfs.mount',
                             autospec=True)
        self.root_mount = patcher.start()
        self.addCleanup(patcher.stop)
        # The new layers and /etc/hostname: the storage_admin daemon's
        # entry points, in this process.
        self.useFixture(unit_base.OwnershipInProcess(self.state_path))
        self.replacement = rootfs.Replacement(
            image_id=self.NEW_IMAGE.image_id, hostname='web-2')
        self.lxc_state = 'STOPPED'

    def upper_file(self):
        return os.path.join(self.root.upper, 'file')

    def test_begin_then_rebuild_makes_the_new_root(self):
        # The new root's /etc, as its overlay shows it once mounted.
        os.makedirs(os.path.join(self.root.merged, 'etc'))
        self.c.begin_replacing_root(self.replacement)
        self.assertTrue(os.path.exists(self.upper_file()))
        self.assertEqual(IMAGE_ID, self.c.record().image_id)

        self.c.rebuild(self.new_spec, self.NEW_IMAGE)
        self.assertFalse(os.path.exists(self.upper_file()))
        self.assertEqual([], os.listdir(self.root.upper))
        record_ = self.c.record()
        self.assertEqual((self.NEW_IMAGE.image_id, self.cid,
                          self.ids.idmap(self.cid)),
                         (record_.image_id, record_.cid, record_.idmap))
        self.assertEqual(self.cid, self.ids.find(UUID))
        self.assertEqual(self.NEW_IMAGE.image_id,
                         self.c.config_record()['image_id'])
        root, image_rootfs, idmap, disk_idmap = (
            self.root_mount.call_args.args)
        self.assertIsNone(disk_idmap)
        self.assertEqual('/images/y/rootfs', image_rootfs)
        with open(os.path.join(self.root.merged, 'etc', 'hostname')) as f:
            self.assertEqual('web-2\n', f.read())
        self.assertIsNone(self.root.replacement())

    def test_running_container_refused_untouched(self):
        self.lxc_state = 'RUNNING'
        self.assertRaises(exception.ContainerNotStopped,
                          self.c.begin_replacing_root, self.replacement)
        self.assertIsNone(self.root.replacement())
        self.mount.unmount_tree.assert_not_called()

    def test_foreign_dir_refused_untouched(self):
        with open(self.c.config_path, 'w') as f:
            f.write('lxc.uts.name = foreign\n')
        self.assertRaises(exception.ContainerExists,
                          self.c.begin_replacing_root, self.replacement)
        self.assertIsNone(self.root.replacement())

    def test_rebuild_on_another_image_replaces_nothing(self):
        self.c.begin_replacing_root(self.replacement)
        self.assertRaises(ValueError, self.c.rebuild, self.spec, self.image)
        self.assertTrue(os.path.exists(self.upper_file()))
        self.assertEqual(IMAGE_ID, self.c.record().image_id)

    def test_started_meanwhile_replaces_nothing(self):
        self.c.begin_replacing_root(self.replacement)
        self.lxc_state = 'RUNNING'
        self.assertRaises(exception.ContainerNotStopped, self.c.rebuild,
                          self.new_spec, self.NEW_IMAGE)
        self.assertTrue(os.path.exists(self.upper_file()))

    def test_cut_short_then_finished(self):
        self.c.begin_replacing_root(self.replacement)
        with mock.patch.object(rootfs.Rootfs, 'end_replacement',
                               side_effect=OSError('crash')):
            self.assertRaises(OSError, self.c.rebuild, self.new_spec,
                              self.NEW_IMAGE)
        self.assertIsNotNone(self.root.replacement())
        # Written again and again until the record is forgotten.
        with open(self.root.upper + '/since', 'w') as f:
            f.write('x')
        self.c.rebuild(self.new_spec, self.NEW_IMAGE)
        self.assertEqual([], os.listdir(self.root.upper))
        self.assertIsNone(self.root.replacement())

    def test_remount_leaves_a_replacement_under_way_alone(self):
        self.c.begin_replacing_root(self.replacement)
        cache = mock.Mock()
        cache.lookup.return_value = self.NEW_IMAGE
        self.assertFalse(self.c.remount(cache))
        self.root_mount.assert_not_called()
        self.assertTrue(os.path.exists(self.upper_file()))
        self.assertIsNotNone(self.root.replacement())


class MigrationTest(_Base):
    """hand_over (source), receive (destination), the disks' idmap."""

    DISK_IDMAP = ids.Idmap(100000 + 5 * SIZE, 300000 + 5 * SIZE, SIZE)

    def setUp(self):
        super().setUp()
        self.root_mount = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.rootfs.Rootfs.mount', autospec=True)).mock
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.disk.Disk.detach_loops', autospec=True))

    def rootfs_dir(self, cid):
        return os.path.join(self.state_path, 'rootfs', str(cid))

    # -- hand_over ---------------------------------------------------------

    def test_hand_over_stops_unmounts_and_marks_migrating(self):
        cid = self.make_container()

        def halt(name, lxc_path, timeout):
            self.lxc_state = 'STOPPED'
            return True
        self.lxc.request_halt.side_effect = halt
        rec = self.c.hand_over(timeout=20, retry_interval=5)
        self.lxc.request_halt.assert_called_once_with(NAME, self.lxc_path, 5)
        self.assertEqual(record.MIGRATING, rec.state)
        self.assertEqual(rec, self.records.get(UUID))
        self.mount.unmount_tree.assert_any_call(self.rootfs_dir(cid),
                                                mock.ANY)
        # Everything else stays for a confirm or a revert.
        self.assertEqual(cid, self.ids.find(UUID))
        self.assertTrue(os.path.isfile(os.path.join(
            self.rootfs_dir(cid), 'root', 'upper', 'file')))
        self.assertTrue(os.path.exists(self.c.config_path))

    def test_hand_over_leaves_the_disks_whole_for_the_copy(self):
        cid = self.make_container()
        self.lxc_state = 'STOPPED'
        with mock.patch('novalxcdriver.rootfs.Rootfs.unmount_for_copy',
                        autospec=True) as unmount:
            self.c.hand_over()
        unmount.assert_called_once_with(mock.ANY)
        self.assertEqual(self.rootfs_dir(cid), unmount.call_args[0][0].path)

    def test_hand_over_of_a_stopped_container(self):
        self.make_container()
        self.lxc_state = 'STOPPED'
        self.assertEqual(record.MIGRATING, self.c.hand_over().state)
        self.assertEqual([], self.lxc_calls())

    def test_hand_over_without_record(self):
        self.assertRaises(exception.ContainerNotFound, self.c.hand_over)

    def test_hand_over_of_a_container_that_does_not_stop(self):
        self.make_container()
        self.lxc.kill.side_effect = None
        self.assertRaises(exception.ContainerNotStopped, self.c.hand_over)
        self.assertEqual(record.READY, self.records.get(UUID).state)
        self.mount.unmount_tree.assert_not_called()

    def test_remount_leaves_migrating_disks_alone(self):
        self.make_container()
        self.lxc_state = 'STOPPED'
        self.c.hand_over()
        cache = mock.Mock()
        cache.lookup.return_value = self.image
        self.assertFalse(self.c.remount(cache))
        self.root_mount.assert_not_called()

    def test_rebuild_after_hand_over_is_a_revert(self):
        cid = self.make_container()
        self.lxc_state = 'STOPPED'
        self.c.hand_over()
        self.c.rebuild(self.make_spec(cid), self.image)
        self.assertEqual(record.READY, self.records.get(UUID).state)
        self.root_mount.assert_called_once()

    # -- the disks' idmap --------------------------------------------------

    def test_rebuild_keeps_the_disks_idmap(self):
        cid = self.make_container()
        self.records.write(dataclasses.replace(
            self.records.get(UUID), disk_idmap=self.DISK_IDMAP))
        self.c.rebuild(self.make_spec(cid), self.image)
        self.assertEqual(self.DISK_IDMAP, self.records.get(UUID).disk_idmap)
        root, _image_rootfs, idmap, disk_idmap = (
            self.root_mount.call_args.args)
        self.assertEqual((self.ids.idmap(cid), self.DISK_IDMAP),
                         (idmap, disk_idmap))

    def test_remount_with_the_disks_idmap(self):
        self.make_container()
        self.records.write(dataclasses.replace(
            self.records.get(UUID), disk_idmap=self.DISK_IDMAP))
        cache = mock.Mock()
        cache.lookup.return_value = self.image
        self.assertTrue(self.c.remount(cache))
        self.assertEqual(self.DISK_IDMAP,
                         self.root_mount.call_args.args[3])

    # -- shut_down (destroy without its disks) -----------------------------

    def test_shut_down_kills_unmounts_and_keeps(self):
        cid = self.make_container()
        self.c.shut_down()
        self.assertEqual(['kill'], self.lxc_calls())
        self.mount.unmount_tree.assert_any_call(self.rootfs_dir(cid),
                                                mock.ANY)
        self.assertEqual(record.READY, self.records.get(UUID).state)
        self.assertEqual(cid, self.ids.find(UUID))
        self.assertTrue(os.path.isdir(self.rootfs_dir(cid)))
        self.assertTrue(os.path.exists(self.c.config_path))
        # A later destroy removes it all.
        self.c.destroy()
        self.assertIsNone(self.records.get(UUID))
        self.assertEqual({}, self.ids.reservations())
        self.assertFalse(os.path.exists(self.rootfs_dir(cid)))

    def test_shut_down_of_nothing(self):
        self.c.shut_down()
        self.assertEqual([], self.lxc_calls())
        self.mount.unmount_tree.assert_not_called()

    # -- a resize on its own host ----------------------------------------

    def handed_over(self):
        cid = self.make_container()
        self.lxc_state = 'STOPPED'
        self.c.hand_over()
        return cid

    def test_park_resize_source(self):
        cid = self.handed_over()
        parked = self.c.park_resize_source()
        self.assertEqual((cid, record.MIGRATING),
                         (parked.cid, parked.state))
        self.assertEqual(parked, self.c.resize_source())
        self.assertIsNone(self.records.get(UUID))
        self.assertFalse(os.path.exists(self.c.dir))
        self.assertTrue(os.path.isfile(os.path.join(
            self.rootfs_dir(cid), 'root', 'upper', 'file')))
        # Reserved still, but free for the resize's own ID.
        self.assertIsNone(self.ids.find(UUID))
        self.assertTrue(self.ids.reservation(cid).resize_source)
        self.assertEqual(cid + 1, self.ids.allocate(UUID, NAME))

    def test_park_of_a_container_not_handed_over(self):
        cid = self.make_container()
        self.assertRaises(exception.ContainerNotStopped,
                          self.c.park_resize_source)
        self.assertIsNone(self.c.resize_source())
        self.assertEqual(cid, self.ids.find(UUID))
        self.assertTrue(os.path.exists(self.c.config_path))

    def test_take_back(self):
        cid = self.handed_over()
        self.c.park_resize_source()
        self.assertEqual(cid, self.c.take_back_resize_source().cid)
        self.assertEqual(record.MIGRATING, self.records.get(UUID).state)
        self.assertIsNone(self.c.resize_source())
        self.assertEqual(cid, self.ids.find(UUID))
        self.assertFalse(self.ids.reservation(cid).resize_source)

    def test_take_back_of_nothing(self):
        cid = self.make_container()
        self.assertIsNone(self.c.take_back_resize_source())
        self.assertEqual(cid, self.records.get(UUID).cid)

    def test_park_interrupted_before_the_record_moved(self):
        # Set aside, but the instance record still names it: it is the
        # instance's one container, whichever way the resize ends.
        cid = self.handed_over()
        self.c._resize_sources().write(self.records.get(UUID))
        self.assertTrue(self.c.destroy_resize_source())
        self.assertTrue(os.path.isdir(self.rootfs_dir(cid)))
        self.assertEqual(cid, self.ids.find(UUID))
        self.assertEqual(cid, self.records.get(UUID).cid)
        self.c._resize_sources().write(self.records.get(UUID))
        self.assertEqual(cid, self.c.take_back_resize_source().cid)
        self.assertTrue(os.path.isdir(self.rootfs_dir(cid)))
        self.assertIsNone(self.c.resize_source())

    def test_destroy_forgets_an_interrupted_park(self):
        cid = self.handed_over()
        self.c._resize_sources().write(self.records.get(UUID))
        self.c.destroy()
        self.assertIsNone(self.c.resize_source())
        self.assertFalse(os.path.exists(self.rootfs_dir(cid)))

    def test_destroy_resize_source_leaves_the_new_container(self):
        old = self.handed_over()
        self.c.park_resize_source()
        new = self.make_container()
        self.assertTrue(self.c.destroy_resize_source())
        self.assertFalse(os.path.exists(self.rootfs_dir(old)))
        self.assertEqual([new], list(self.ids.reservations()))
        self.assertTrue(os.path.isdir(self.rootfs_dir(new)))
        self.assertEqual(new, self.records.get(UUID).cid)
        self.assertTrue(os.path.exists(self.c.config_path))
        self.assertFalse(self.c.destroy_resize_source())

    def test_destroy_resize_source_keeps_another_s_id(self):
        # The set-aside record names an ID another instance holds now.
        old = self.handed_over()
        self.c.park_resize_source()
        new = self.make_container()
        self.ids.set_resize_source(old, UUID, False)
        self.ids.release(old)
        self.assertEqual(old, self.ids.allocate(
            '11111111-2222-4333-8444-555555555555', 'instance-other'))
        self.assertFalse(self.c.destroy_resize_source())
        self.assertTrue(os.path.isdir(self.rootfs_dir(old)))
        self.assertEqual({old, new}, set(self.ids.reservations()))
        self.assertEqual(old, self.c.resize_source().cid)

    def test_destroy_resize_source_keeps_an_only_copy(self):
        # No current container (its record is lost): the set-aside disks
        # are all the instance has, so a confirm keeps them.
        old = self.handed_over()
        self.c.park_resize_source()
        self.assertFalse(self.c.destroy_resize_source())
        self.assertTrue(os.path.isdir(self.rootfs_dir(old)))
        self.assertTrue(self.ids.reservation(old).resize_source)
        self.assertEqual(old, self.c.resize_source().cid)
        # Deleting the instance removes them.
        self.assertTrue(self.c.destroy_resize_source(instance_deleted=True))
        self.assertFalse(os.path.exists(self.rootfs_dir(old)))
        self.assertEqual({}, self.ids.reservations())
        self.assertIsNone(self.c.resize_source())

    # -- receive -----------------------------------------------------------

    def receive(self, cid, fetch=None, root_gb=1, ephemeral_gb=0):
        self.c.receive(self.make_spec(cid), self.image,
                       fetch or mock.Mock(), self.DISK_IDMAP, root_gb,
                       ephemeral_gb)

    def test_receive(self):
        cid = self.ids.allocate(UUID, NAME)
        rootfs_receive = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.rootfs.Rootfs.receive', autospec=True)).mock
        fetch = mock.Mock()
        self.receive(cid, fetch, root_gb=2, ephemeral_gb=1)
        root, got_fetch, image_rootfs, idmap, disk_idmap, root_gb, eph_gb = (
            rootfs_receive.call_args.args)
        self.assertEqual(
            (self.rootfs_dir(cid), fetch, '/images/x/rootfs',
             self.ids.idmap(cid), self.DISK_IDMAP, 2, 1),
            (root.path, got_fetch, image_rootfs, idmap, disk_idmap, root_gb,
             eph_gb))
        rec = self.records.get(UUID)
        self.assertEqual(record.SPAWNING, rec.state)
        self.assertEqual(self.DISK_IDMAP, rec.disk_idmap)
        self.assertEqual(self.ids.idmap(cid), rec.idmap)
        with open(self.c.config_path) as f:
            self.assertEqual(spec_mod.render_config(self.make_spec(cid)),
                             f.read())
        self.c.mark_ready()
        self.assertEqual(self.DISK_IDMAP, self.records.get(UUID).disk_idmap)

    def test_receive_failure_removes_what_it_made(self):
        cid = self.ids.allocate(UUID, NAME)

        def fail(root, *args):
            os.makedirs(root.path)
            raise exception.CommandFailed(cmd='rsync', exit_code=12,
                                          stderr='reset')
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.rootfs.Rootfs.receive', autospec=True,
            side_effect=fail))
        self.assertRaises(exception.CommandFailed, self.receive, cid)
        self.assertIsNone(self.records.get(UUID))
        self.assertFalse(os.path.exists(self.c.dir))
        self.assertFalse(os.path.exists(self.rootfs_dir(cid)))

    def test_receive_into_an_existing_rootfs_leaves_it(self):
        cid = self.ids.allocate(UUID, NAME)
        os.makedirs(self.rootfs_dir(cid))
        open(os.path.join(self.rootfs_dir(cid), 'theirs'), 'w').close()
        fetch = mock.Mock()
        self.assertRaises(exception.RootfsExists, self.receive, cid, fetch)
        fetch.assert_not_called()
        self.assertEqual(['theirs'], os.listdir(self.rootfs_dir(cid)))
        self.assertIsNone(self.records.get(UUID))
        self.assertFalse(os.path.exists(self.c.dir))

    def test_receive_refuses_an_existing_container_dir(self):
        cid = self.ids.allocate(UUID, NAME)
        os.makedirs(self.c.dir)
        open(self.c.config_path, 'w').close()
        fetch = mock.Mock()
        self.assertRaises(exception.ContainerExists, self.receive, cid,
                          fetch)
        fetch.assert_not_called()
        self.assertTrue(os.path.exists(self.c.config_path))
        self.assertFalse(os.path.exists(self.rootfs_dir(cid)))
