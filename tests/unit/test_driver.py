"""Tests for novalxcdriver.driver: LXCDriver with the lxc layer mocked.

The container, ids, images and spec modules run for real over temporary
directories; only lxc-* commands, mounts and host facts are mocked.
"""

import dataclasses
import errno
import functools
import os
import shutil
import threading
import time
from unittest import mock

import fixtures
from nova.compute import power_state
from nova.compute import provider_tree
from nova.compute import task_states
from nova.compute import vm_states
from nova import context as nova_context
from nova import exception as nova_exc
from nova.network import model as network_model
from nova import objects
from nova.tests.unit import fake_instance
from nova.virt import driver as nova_driver
from nova.virt import event as virtevent
import os_resource_classes as orc
from oslo_config import fixture as config_fixture
from oslo_serialization import jsonutils
from oslotest import base

from novalxcdriver import conf
from novalxcdriver import container as container_mod
from novalxcdriver import driver
from novalxcdriver import exception
from novalxcdriver import host as host_mod
from novalxcdriver import ids
from novalxcdriver import limits
from novalxcdriver import lxc
from novalxcdriver import mount as real_mount
from novalxcdriver import record as record_mod
from novalxcdriver import spec as spec_mod
from novalxcdriver import vif as vif_mod
from tests.unit import base as unit_base
from tests.unit import test_images
from tests.unit import test_vif

UUID = '0d7c2b1e-5a3f-4c9b-8e21-7f6a5b4c3d2e'
UUID2 = '9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d'
UUID3 = '3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f'
IMAGE_ID = test_images.IMAGE_ID
OTHER_IMAGE_ID = test_images.OTHER_ID
NODE_UUID = 'f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9'
# Before setUp patches it.
_REAL_TRAVERSAL_PROBLEMS = host_mod.traversal_problems
HOST = 'compute-1'
SIZE = 65536
MiB = 1024 * 1024


class _Base(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        # The confined unpacker (privsep.unpack), as a thread here.
        self.useFixture(unit_base.ConfinedUnpackInProcess())
        # syncfs(2) runs in the storage_admin daemon.
        self.sync_filesystem = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.disks.sync_filesystem')).mock
        objects.register_all()
        self.context = nova_context.get_admin_context()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.lxc_path = os.path.join(self.tmp, 'containers')
        self.state_path = os.path.join(self.tmp, 'state')
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.cfg.config(host=HOST)
        self.cfg.config(group='lxc', lxc_path=self.lxc_path,
                        state_path=self.state_path, state_poll_interval=0,
                        ids_path=os.path.join(self.state_path, 'ids'))

        # Root's subordinate ranges, in files of the test.
        self.subuid = os.path.join(self.tmp, 'subuid')
        self.subgid = os.path.join(self.tmp, 'subgid')
        for path in (self.subuid, self.subgid):
            with open(path, 'w') as f:
                f.write('root:100000:%d\n' % (16 * SIZE))
        self.patch('novalxcdriver.driver.ids.IdAllocator',
                   functools.partial(ids.IdAllocator,
                                     subuid_path=self.subuid,
                                     subgid_path=self.subgid))
        self.problems = self.patch('novalxcdriver.host.problems',
                                   return_value=[])
        # The test's temporary directories are 0700 (see InitHostTest).
        self.traversal = self.patch(
            'novalxcdriver.host.traversal_problems', return_value=[])
        self.lxcfs = self.patch('novalxcdriver.lxcfs.ensure',
                                return_value=[])
        self.daemons = self.patch('novalxcdriver.vif.start_daemons')
        self.our_daemons = self.patch(
            'novalxcdriver.privsep.start_daemons')
        self.roots = self.patch('novalxcdriver.privsep._added_roots',
                                new=set())
        # The storage_admin daemon's; init_host's reconcile calls it.
        self.template_leftovers = self.patch(
            'novalxcdriver.disk.disks.remove_template_leftovers',
            return_value=[])
        # Host facts spawn checks a flavor against.
        self.memory = self.patch('novalxcdriver.host.memory_mb',
                                 return_value=(16000, 4000))
        self.disk = self.patch('novalxcdriver.host.disk_gb',
                               return_value=(100, 40, 60))
        self.shared_cpus = self.patch('novalxcdriver.numa.shared_cpus',
                                      return_value=set(range(8)))
        self.cgroup_version = self.patch(
            'novalxcdriver.host.cgroup_version', return_value=2)

        # lxc-* commands: one container state per name.
        self.states = {}
        self.lxc = self.patch('novalxcdriver.container.lxc', autospec=True)
        self.lxc.info.side_effect = self._info
        unit_base.container_dirs(self.lxc)
        # snapshot.recover's, at each remount.
        self.useFixture(unit_base.SnapshotStages())
        # Serial console relays: the lxc_admin daemon's (privsep.console).
        self.console = self.patch('novalxcdriver.container.console_ps',
                                  autospec=True)
        self.console.ensure_relay.return_value = None
        self.lxc.write_config.side_effect = unit_base.checked_config_writer(
            (self.lxc_path, self.state_path), self.subuid, self.subgid)
        self.lxc.start.side_effect = self._setter('RUNNING')
        self.lxc.kill.side_effect = self._setter('STOPPED')
        self.lxc.freeze.side_effect = self._setter('FROZEN')
        self.lxc.unfreeze.side_effect = self._setter('RUNNING')
        self.lxc.request_halt.return_value = False
        self.lxc.reboot.return_value = True

        # Ownership (/etc/hostname, config drives, layers): the
        # storage_admin daemon's entry points, in this process.
        self.own = self.useFixture(unit_base.OwnershipInProcess())
        # Mounts: Rootfs makes its directories, mounts nothing.
        self.mount = self.patch('novalxcdriver.rootfs.mount', autospec=True)
        self.mount.mountpoints.return_value = set()
        unit_base.mounts_by_name(self.mount)
        self.mount.table.side_effect = lambda: [
            real_mount.Mount('/', p, None, None)
            for p in sorted(self.mount.mountpoints())]
        # Roots' directories: the storage_admin daemon's, in this process.
        self.useFixture(unit_base.RootDirsInProcess(
            mounts=lambda: self.mount.mountpoints()))
        # The image cache's directories: the same daemon's, in this process.
        self.useFixture(unit_base.ImageCacheInProcess())
        self.rootfs_create = self.patch(
            'novalxcdriver.rootfs.Rootfs.create', autospec=True,
            side_effect=self._rootfs_create)
        self.rootfs_mount = self.patch('novalxcdriver.rootfs.Rootfs.mount',
                                       autospec=True)

        self.fetch = self.patch(
            'novalxcdriver.download.nova_images.fetch',
            side_effect=lambda ctx, image_id, dest:
                test_images.write_rootfs_tarball(dest))
        # Glance gives no stream (as with signature verification): the
        # image is fetched to a file. StreamedImageTest streams.
        self.chunks = self.patch('novalxcdriver.download.chunks',
                                 return_value=None)

        # MagicMock: wait_for_instance_event is a context manager.
        self.virtapi = mock.MagicMock()
        self.drv = driver.LXCDriver(self.virtapi)
        self.events = []
        self.drv.register_event_listener(self.events.append)

    def _info(self, name, lxc_path):
        self.assertEqual(self.lxc_path, lxc_path)
        # lxc-info: a defined container is STOPPED until started.
        if name not in self.states:
            if not os.path.exists(os.path.join(lxc_path, name, 'config')):
                raise exception.ContainerNotFound(name=name)
            self.states[name] = 'STOPPED'
        state = self.states[name]
        return state, None if state == 'STOPPED' else 4242

    def _setter(self, state):
        def set_state(name, lxc_path, *args):
            self.states[name] = state
        return set_state

    @staticmethod
    def _rootfs_create(root, image_rootfs, idmap, root_gb=0,
                       ephemeral_gb=0, root_fs='ext4', hostname=None):
        # The real one makes disks, chowns and mounts; make the
        # directories only.
        for d in (root.lower, root.upper, root.work, root.merged):
            os.makedirs(d)
        if ephemeral_gb:
            os.makedirs(root.ephemeral_disk.mountpoint)

    def instance(self, uuid=UUID, ephemeral_gb=0, swap=0, memory_mb=256,
                 vcpus=1, root_gb=1, extra_specs=None, numa_topology=None,
                 **updates):
        flavor = objects.Flavor(
            id=1, name='m1.small', memory_mb=memory_mb, vcpus=vcpus,
            root_gb=root_gb, ephemeral_gb=ephemeral_gb, swap=swap,
            flavorid='1', rxtx_factor=1.0, vcpu_weight=1, disabled=False,
            is_public=True, extra_specs=extra_specs or {}, projects=[])
        instance = fake_instance.fake_instance_obj(
            self.context, uuid=uuid, hostname='web-1', flavor=flavor,
            **updates)
        instance.numa_topology = numa_topology
        instance.obj_reset_changes(['numa_topology'])
        return instance

    @staticmethod
    def image_meta(container_format='bare', disk_format='raw'):
        meta = {'id': IMAGE_ID, 'name': 'busybox'}
        if container_format:
            meta['container_format'] = container_format
        if disk_format:
            meta['disk_format'] = disk_format
        return objects.ImageMeta.from_dict(meta)

    def init_host(self):
        self.drv.init_host(HOST)
        self.addCleanup(self.drv.cleanup_host, HOST)

    def spawn(self, instance, image_meta=None, **kwargs):
        self.drv.spawn(self.context, instance,
                       image_meta or self.image_meta(), [], None, {},
                       **kwargs)

    def write_container(self, name, uuid, host=HOST, cid=0, state=None,
                        record=True):
        """A container as a complete spawn leaves it, on disk.

        :param record: write its durable record too (False: a container
            made before records existed).
        """
        path = os.path.join(self.lxc_path, name)
        os.makedirs(path)
        start = 100000 + cid * SIZE
        spec = spec_mod.ContainerSpec(
            name=name, instance_uuid=uuid, host=host, cid=cid,
            idmap=ids.Idmap(start, start, SIZE), hostname=name,
            rootfs='/r', container_dir=path, image_id=IMAGE_ID,
            init_system='busybox', console_log_size=65536,
            limits=limits.Limits(
                memory_bytes=256 * MiB, memsw_bytes=256 * MiB, cpus=(0,),
                cpu_period_us=100000, cpu_quota_us=100000, cpu_shares=None,
                pids_max=4096))
        with open(os.path.join(path, 'config'), 'w') as f:
            f.write(spec_mod.render_config(spec))
        if record:
            record_mod.RecordStore(self.state_path).write(
                record_mod.InstanceRecord(
                    instance_uuid=uuid, name=name, host=host, cid=cid,
                    idmap=spec.idmap, image_id=IMAGE_ID, container_dir=path,
                    rootfs=os.path.join(self.state_path, 'rootfs',
                                        str(cid)),
                    state=record_mod.READY))
        if state:
            self.states[name] = state
        return path


class CapabilitiesTest(base.BaseTestCase):

    def test_honest(self):
        caps = driver.LXCDriver.capabilities
        self.assertTrue(caps['supports_image_type_raw'])
        self.assertTrue(caps['supports_attach_interface'])
        self.assertTrue(caps['has_imagecache'])
        # [compute] cpu_dedicated_set gives PCPU inventory; numa.py pins.
        self.assertTrue(caps['supports_pcpus'])
        # Evacuate spawns from the image on the new host.
        self.assertTrue(caps['supports_evacuate'])
        # A cold migration must change host (same-host resize needs no
        # capability: allow_resize_to_same_host).
        self.assertFalse(caps['supports_migrate_to_same_host'])
        for key in ('supports_multiattach', 'supports_trusted_certs',
                    'supports_bfv_rescue',
                    'supports_extend_volume',
                    'supports_device_tagging', 'supports_vtpm',
                    'supports_image_type_iso', 'supports_image_type_vmdk',
                    'supports_image_type_ami', 'supports_image_type_vhd',
                    'supports_image_type_vhdx', 'supports_image_type_ploop',
                    'supports_image_type_aki', 'supports_image_type_ari'):
            self.assertIs(False, caps[key], key)

    def test_every_nova_capability_listed(self):
        caps = driver.LXCDriver.capabilities
        for key in nova_driver.ComputeDriver.capabilities:
            self.assertIn(key, caps)
            self.assertIsInstance(caps[key], bool, key)
        # Tarballs and disk images are raw; qcow2 is converted
        # (diskimage.py).
        self.assertEqual(['supports_image_type_qcow2',
                          'supports_image_type_raw'],
                         sorted(k for k, v in caps.items()
                                if k.startswith('supports_image_type_') and v))


class InitHostTest(_Base):

    def test_ready_host(self):
        self.init_host()
        self.assertTrue(os.path.isdir(self.lxc_path))
        self.assertTrue(os.path.isdir(self.state_path))
        self.assertIsNone(self.drv._watcher)

    def test_every_problem_listed(self):
        self.problems.return_value = ['missing commands lxc-start',
                                      'no cgroup freezer']
        e = self.assertRaises(exception.HostCheckFailed, self.drv.init_host,
                              HOST)
        self.assertIn('missing commands lxc-start', str(e))
        self.assertIn('no cgroup freezer', str(e))
        self.assertFalse(os.path.exists(self.lxc_path))

    def test_a_spare_unpacker_asked_for_once_the_daemons_run(self):
        prepare = self.patch('novalxcdriver.privsep.unpack.prepare_spare',
                             side_effect=lambda: self.assertTrue(
                                 self.our_daemons.called))
        self.init_host()
        prepare.assert_called_once_with()

    def test_no_spare_unpacker_when_off(self):
        self.cfg.config(group='lxc', spare_unpacker=False)
        prepare = self.patch('novalxcdriver.privsep.unpack.prepare_spare')
        self.init_host()
        prepare.assert_not_called()

    def test_a_spare_unpacker_s_failure_is_only_logged(self):
        self.patch('novalxcdriver.privsep.unpack.prepare_spare',
                   side_effect=OSError(errno.EAGAIN, 'no fork'))
        log = self.useFixture(fixtures.FakeLogger())
        self.init_host()
        self.assertIn('No spare image unpacker: [Errno 11] no fork',
                      log.output)
        self.assertTrue(os.path.isdir(self.state_path))

    def test_a_private_mount_above_state_path_warned_of(self):
        propagation = self.patch('novalxcdriver.mount.propagation',
                                 return_value=('/srv', False))
        log = self.useFixture(fixtures.FakeLogger())
        self.init_host()
        propagation.assert_called_once_with(self.state_path)
        self.assertIn('The mount on /srv, which holds state_path %s, is '
                      'private' % self.state_path, log.output)

    def test_no_warning_under_a_shared_mount(self):
        self.patch('novalxcdriver.mount.propagation',
                   return_value=('/srv', True))
        log = self.useFixture(fixtures.FakeLogger())
        self.init_host()
        self.assertNotIn('private', log.output)

    def test_half_made_disk_templates_removed(self):
        self.init_host()
        self.template_leftovers.assert_called_once_with(
            os.path.join(self.state_path, 'disk-templates'))

    def test_lxcfs_ensured_for_the_state_path(self):
        # Where the daemon appends lxcfs's log, if it starts it.
        self.init_host()
        self.lxcfs.assert_called_once_with(self.state_path)

    def test_lxcfs_problem_fails_host_check(self):
        self.lxcfs.return_value = ['lxcfs did not start on /var/lib/lxcfs']
        e = self.assertRaises(exception.HostCheckFailed, self.drv.init_host,
                              HOST)
        self.assertIn('lxcfs did not start', str(e))
        self.assertFalse(os.path.exists(self.lxc_path))

    def test_privsep_daemons_started(self):
        self.init_host()
        self.daemons.assert_called_once_with()
        self.our_daemons.assert_called_once_with()

    def test_roots_given_to_the_daemons_first(self):
        self.our_daemons.side_effect = lambda: self.assertEqual(
            {self.lxc_path, self.state_path}, self.roots)
        self.init_host()
        self.our_daemons.assert_called_once_with()

    def test_privsep_daemon_failure_fails_host_check(self):
        self.daemons.side_effect = OSError(2, 'No such file', 'sudo')
        e = self.assertRaises(exception.HostCheckFailed, self.drv.init_host,
                              HOST)
        self.assertIn('privsep daemons cannot start', str(e))
        self.assertIn('sudo', str(e))

    def test_lxcfs_not_tried_on_a_host_lacking_tools(self):
        self.problems.return_value = ['missing commands lxcfs']
        self.assertRaises(exception.HostCheckFailed, self.drv.init_host, HOST)
        self.lxcfs.assert_not_called()

    def test_missing_subuid(self):
        os.unlink(self.subuid)
        self.problems.return_value = ['no cgroup freezer']
        e = self.assertRaises(exception.HostCheckFailed, self.drv.init_host,
                              HOST)
        self.assertIn('no cgroup freezer', str(e))
        self.assertIn(self.subuid, str(e))
        self.assertIn('/etc/subuid', str(e))
        self.assertFalse(os.path.exists(self.lxc_path))

    def test_subuid_range_too_small(self):
        with open(self.subgid, 'w') as f:
            f.write('root:100000:1000\n')
        e = self.assertRaises(exception.HostCheckFailed, self.drv.init_host,
                              HOST)
        self.assertIn('65536', str(e))

    def test_reservations_move_to_the_machine_directory(self):
        # Made by a version whose reservations lived in <state_path>/ids.
        machine_ids = os.path.join(self.tmp, 'machine', 'ids')
        self.cfg.config(group='lxc', ids_path=machine_ids)
        legacy = ids.IdAllocator(self.state_path, subuid_path=self.subuid,
                                 subgid_path=self.subgid)
        cid = legacy.allocate(UUID, 'instance-00000001')
        self.drv = driver.LXCDriver(self.virtapi)
        self.drv.init_host(HOST)
        self.assertEqual([], os.listdir(os.path.join(self.state_path,
                                                     'ids')))
        self.assertEqual(cid, self.drv._ids.find(UUID))
        self.assertEqual(machine_ids, self.drv._ids.ids_path)
        self.assertEqual(HOST, self.drv._ids.reservations()[cid].host)

    def test_reservation_conflict_stops_the_start(self):
        machine_ids = os.path.join(self.tmp, 'machine', 'ids')
        self.cfg.config(group='lxc', ids_path=machine_ids)
        other = ids.IdAllocator(os.path.join(self.tmp, 'other'),
                                subuid_path=self.subuid,
                                subgid_path=self.subgid, ids_path=machine_ids)
        ids.IdAllocator(self.state_path, subuid_path=self.subuid,
                        subgid_path=self.subgid).allocate(UUID, 'mine')
        other.allocate('0e7e2e64-4c5e-4a8c-9a6e-6f6b1d1c1e01', 'theirs')
        self.drv = driver.LXCDriver(self.virtapi)
        e = self.assertRaises(exception.HostCheckFailed, self.drv.init_host,
                              HOST)
        self.assertIn('reserved twice', str(e))
        self.assertTrue(os.path.exists(os.path.join(self.state_path, 'ids',
                                                    '0', 'owner.json')))

    def test_watcher_started_and_stopped(self):
        self.cfg.config(group='lxc', state_poll_interval=0.5)
        with mock.patch('novalxcdriver.events.StateWatcher',
                        autospec=True) as watcher_cls:
            self.drv.init_host(HOST)
            watcher_cls.assert_called_once_with(
                self.lxc_path, 0.5, self.drv._state_changed,
                on_restart=self.drv._restarted)
            watcher_cls.return_value.start.assert_called_once_with()
            self.drv.cleanup_host(HOST)
            watcher_cls.return_value.stop.assert_called_once_with()

    def test_interrupted_spawn_kept_until_nova_deletes_it(self):
        # Finding 1: a dead process reserved ID 0 and made a rootfs, no
        # config. After any restart its owner is dead; that proves nothing
        # about the disk, so init_host keeps it and destroy removes it.
        allocator = ids.IdAllocator(self.state_path,
                                    subuid_path=self.subuid,
                                    subgid_path=self.subgid)
        with mock.patch('os.getpid', return_value=2 ** 30):
            cid = allocator.allocate(UUID, 'instance-00000001')
        rootfs = os.path.join(self.state_path, 'rootfs', str(cid))
        os.makedirs(os.path.join(rootfs, 'upper'))
        self.init_host()
        self.assertEqual([cid], list(allocator.reservations()))
        self.assertTrue(os.path.exists(rootfs))
        self.drv.destroy(self.context, self.instance(), [])
        self.assertEqual({}, allocator.reservations())
        self.assertFalse(os.path.exists(rootfs))

    def _spawned_then_restarted(self, mishap):
        """Spawn, apply mishap(instance, config path), restart the driver.

        :returns: (instance, root disk file) once the restarted driver's
            init_host is done.
        """
        self.init_host()
        instance = self.instance(root_gb=0)
        self.spawn(instance)
        root = os.path.join(self.state_path, 'rootfs', '0', 'root', 'upper',
                            'data')
        with open(root, 'w') as f:
            f.write('user data')
        mishap(instance, os.path.join(self.lxc_path, instance.name,
                                      'config'))
        self.drv = driver.LXCDriver(self.drv.virtapi)
        with mock.patch('os.getpid', return_value=2 ** 30):
            self.drv.init_host(HOST)
        self.addCleanup(self.drv.cleanup_host, HOST)
        return instance, root

    def _truncate(self, size):
        def mishap(instance, config):
            with open(config, 'r+') as f:
                f.truncate(size(f.read()))
        return mishap

    def test_restart_after_mishaps_deletes_nothing(self):
        # Finding 1: lxc_path missing or empty, a config missing, empty or
        # torn after a power loss: the disks stay, the instance is still
        # listed, and init_host does not make a missing lxc_path again.
        mishaps = {
            'lxc_path missing': lambda i, c: shutil.rmtree(self.lxc_path),
            'lxc_path empty': lambda i, c: shutil.rmtree(
                os.path.dirname(c)),
            'config missing': lambda i, c: os.unlink(c),
            'config empty': self._truncate(lambda text: 0),
            'config torn': self._truncate(lambda text: len(text) * 6 // 10),
        }
        for label, mishap in mishaps.items():
            instance, root = self._spawned_then_restarted(mishap)
            with open(root) as f:
                self.assertEqual('user data', f.read(), label)
            self.assertEqual([instance.name], self.drv.list_instances(),
                             label)
            self.assertEqual({0}, set(self.drv._ids.reservations()), label)
            self.assertEqual(label != 'lxc_path missing',
                             os.path.isdir(self.lxc_path), label)
            self.drv.destroy(self.context, instance, [])
            self.assertFalse(os.path.exists(root), label)
            self.assertEqual({}, self.drv._ids.reservations(), label)

    def test_unclaimed_rootfs_left_in_place_and_named(self):
        orphan = os.path.join(self.state_path, 'rootfs', '0')
        os.makedirs(os.path.join(orphan, 'root'))
        with mock.patch.object(driver.LOG, 'warning') as warning:
            self.init_host()
        self.assertTrue(os.path.isdir(orphan))
        self.assertIn(orphan, [c.args[1] for c in warning.call_args_list
                               if 'Left in place' in c.args[0]])
        # Its ID is not handed out while it is there.
        self.spawn(self.instance())
        self.assertEqual(1, self.drv._ids.find(UUID))

    def test_records_of_configs_made_before_records_existed(self):
        self.write_container('instance-00000001', UUID, cid=2,
                             record=False)
        self.init_host()
        rec = self.drv._records.get(UUID)
        self.assertEqual((2, ids.Idmap(100000 + 2 * SIZE,
                                       100000 + 2 * SIZE, SIZE), IMAGE_ID),
                         (rec.cid, rec.idmap, rec.image_id))
        self.assertEqual(['instance-00000001'], self.drv.list_instances())

    def test_configs_of_another_host_not_recorded(self):
        # Two drivers sharing lxc_path, each with its own state_path: the
        # other's container has its record in the other's state_path.
        self.write_container('instance-00000001', UUID, host='other',
                             cid=2, record=False)
        self.init_host()
        self.assertIsNone(self.drv._records.get(UUID))
        self.assertEqual({}, self.drv._records.all())

    def test_config_deleted_after_the_listing_skipped(self):
        self.write_container('instance-00000001', UUID, cid=2,
                             record=False)
        config = os.path.join(self.lxc_path, 'instance-00000001', 'config')
        listed = container_mod.config_records(self.lxc_path)
        os.unlink(config)
        with mock.patch.object(container_mod, 'config_records',
                               return_value=listed):
            self.init_host()
        self.assertIsNone(self.drv._records.get(UUID))

    def test_changed_id_range_size_refused(self):
        # Finding 5: a new range size would remap existing containers.
        self.write_container('instance-00000001', UUID, cid=1)
        self.cfg.config(group='lxc', id_range_size=2 * SIZE)
        e = self.assertRaises(exception.HostCheckFailed, self.drv.init_host,
                              HOST)
        self.assertIn('id_range_size', str(e))
        self.assertIn('uid %d' % (100000 + SIZE), str(e))
        self.assertIn(UUID, str(e))

    def test_untraversable_paths_refused(self):
        self.traversal.side_effect = _REAL_TRAVERSAL_PROBLEMS
        parent = os.path.join(self.tmp, 'closed')
        os.mkdir(parent, 0o700)
        self.cfg.config(group='lxc', lxc_path=os.path.join(parent, 'lxc'))
        self.drv = driver.LXCDriver(None)
        e = self.assertRaises(exception.HostCheckFailed, self.drv.init_host,
                              HOST)
        self.assertIn('%s (mode 0700) is not searchable' % parent, str(e))
        self.assertIn('chmod o+x %s' % parent, str(e))

    def test_untraversable_target_of_a_symlink_refused(self):
        # /var/lib/nova -> /srv/nova with /srv closed: the link's own
        # directories are open, the containers cross /srv.
        self.traversal.side_effect = _REAL_TRAVERSAL_PROBLEMS
        closed = os.path.join(self.tmp, 'srv')
        os.makedirs(os.path.join(closed, 'nova'))
        os.chmod(closed, 0o700)
        link = os.path.join(self.tmp, 'nova')
        os.symlink(os.path.join(closed, 'nova'), link)
        os.chmod(self.tmp, 0o755)
        self.cfg.config(group='lxc', lxc_path=os.path.join(link, 'lxc'))
        self.drv = driver.LXCDriver(None)
        e = self.assertRaises(exception.HostCheckFailed, self.drv.init_host,
                              HOST)
        self.assertIn('%s (mode 0700) is not searchable' % closed, str(e))

    def test_reservation_without_owner_removed(self):
        # A process killed between the reservation's mkdir and owner.json:
        # no pid to ask, no container; init_host must not trip on it.
        os.makedirs(os.path.join(self.state_path, 'ids', '3'))
        self.init_host()
        self.assertEqual({}, self.drv._ids.reservations())

    def test_remounts_own_roots(self):
        self.init_host()
        instance = self.instance()
        self.spawn(instance)
        self.rootfs_mount.reset_mock()
        self.drv.init_host(HOST)
        self.rootfs_mount.assert_called_once()
        root, image_rootfs, idmap, disk_idmap = (
            self.rootfs_mount.call_args.args)
        self.assertIsNone(disk_idmap)
        self.assertEqual(0, root.cid)
        self.assertEqual(self.drv._ids.idmap(0), idmap)
        self.assertTrue(image_rootfs.endswith(IMAGE_ID + '/rootfs'))


class SpawnTest(_Base):

    def setUp(self):
        super().setUp()
        self.init_host()

    def assert_nothing_created(self):
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertEqual([], os.listdir(self.lxc_path))
        self.assertFalse(os.path.exists(
            os.path.join(self.state_path, 'rootfs')))
        self.lxc.start.assert_not_called()

    def test_spawn(self):
        instance = self.instance()
        self.spawn(instance)
        c_dir = os.path.join(self.lxc_path, instance.name)
        with open(os.path.join(c_dir, 'config')) as f:
            config = f.read()
        self.assertEqual({'instance_uuid': UUID, 'host': HOST, 'id': 0,
                          'image_id': IMAGE_ID},
                         spec_mod.parse_record(config))
        self.assertIn('lxc.uts.name = web-1\n', config)
        self.assertIn('lxc.signal.halt = SIGUSR1\n', config)
        self.assertIn('lxc.idmap = u 0 100000 65536\n', config)
        self.assertIn('lxc.console.size = 1048576\n', config)
        self.assertIn('lxc.rootfs.path = dir:%s/rootfs/0/merged\n'
                      % self.state_path, config)
        self.assertEqual(0, self.drv._ids.find(UUID))
        self.fetch.assert_called_once()
        self.assertEqual(IMAGE_ID, self.fetch.call_args.args[1])
        self.lxc.start.assert_called_once_with(instance.name, self.lxc_path)
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(instance).state)
        self.assertEqual([instance.name], self.drv.list_instances())
        self.assertEqual([UUID], self.drv.list_instance_uuids())
        self.assertTrue(self.drv.instance_exists(instance))

    def test_image_streamed_under_the_disk_ops_semaphore(self):
        path = os.path.join(self.state_path, 'streamed.tar.gz')
        test_images.write_rootfs_tarball(path)
        with open(path, 'rb') as f:
            data = f.read()
        semaphore = mock.MagicMock()
        self.patch('nova.compute.utils.disk_ops_semaphore', semaphore)
        held = []

        def chunks(context, image_id):
            for i in range(0, len(data), 100):
                held.append(semaphore.__enter__.call_count -
                            semaphore.__exit__.call_count)
                yield data[i:i + 100]
        self.chunks.side_effect = chunks
        instance = self.instance()
        self.spawn(instance)
        self.fetch.assert_not_called()
        self.assertEqual(IMAGE_ID, self.chunks.call_args.args[1])
        self.assertEqual({1}, set(held))
        self.assertEqual(1, semaphore.__exit__.call_count)
        self.assertTrue(self.drv.instance_exists(instance))

    def test_spawn_powered_off(self):
        instance = self.instance()
        self.spawn(instance, power_on=False)
        self.lxc.start.assert_not_called()
        self.assertTrue(self.drv.instance_exists(instance))

    def test_second_spawn_uses_cached_image_and_next_id(self):
        self.spawn(self.instance())
        other = self.instance(uuid=UUID2, id=2)
        self.spawn(other)
        self.fetch.assert_called_once()
        self.assertEqual(1, self.drv._ids.find(UUID2))

    def test_image_formats_refused_before_anything(self):
        for formats in (('ovf', 'raw'), ('bare', None), ('bare', 'vmdk'),
                        ('bare', 'iso'), ('ami', 'ami'), ('bare', 'vhd'),
                        (None, 'raw'), ('docker', 'raw'), ('ovf', 'qcow2')):
            e = self.assertRaises(nova_exc.ImageUnacceptable, self.spawn,
                                  self.instance(),
                                  self.image_meta(*formats))
            self.assertIn(IMAGE_ID, str(e))
            self.assertIn('not %s/%s' % tuple(f or '(unset)'
                                              for f in formats), str(e))
        self.fetch.assert_not_called()
        self.assert_nothing_created()

    def test_qcow2_goes_to_the_cache_with_its_format(self):
        get = self.patch_object(self.drv._images, 'get',
                                side_effect=exception.ImageUnpackError(
                                    image_id=IMAGE_ID, reason='no init'))
        e = self.assertRaises(nova_exc.ImageUnacceptable, self.spawn,
                              self.instance(),
                              self.image_meta('bare', 'qcow2'))
        self.assertIn('no init', str(e))
        self.assertEqual((IMAGE_ID, mock.ANY, 'qcow2', None, mock.ANY),
                         get.call_args.args)
        self.assert_nothing_created()

    def test_root_partition_property_read_from_system_metadata(self):
        # Nova's ImageMeta drops properties it does not know; Nova keeps
        # every image property as image_<name> system metadata.
        get = self.patch_object(self.drv._images, 'get',
                                side_effect=exception.ImageUnpackError(
                                    image_id=IMAGE_ID, reason='x'))
        instance = self.instance()
        instance.image_ref = IMAGE_ID
        instance.system_metadata = {'image_novalxc_root_partition': '3'}
        self.assertRaises(nova_exc.ImageUnacceptable, self.spawn, instance,
                          self.image_meta('bare', 'raw'))
        self.assertEqual((IMAGE_ID, mock.ANY, 'raw', '3', mock.ANY),
                         get.call_args.args)
        # Another image (a rescue image) does not take the instance's.
        instance.image_ref = UUID2
        self.assertRaises(nova_exc.ImageUnacceptable, self.spawn, instance,
                          self.image_meta('bare', 'raw'))
        self.assertEqual((IMAGE_ID, mock.ANY, 'raw', None, mock.ANY),
                         get.call_args.args)

    def test_disk_images_off_refuses_qcow2_and_drops_the_trait(self):
        self.cfg.config(group='lxc', disk_images=False)
        drv = driver.LXCDriver(self.virtapi)
        self.assertIs(False, drv.capabilities['supports_image_type_qcow2'])
        self.assertIs(True, driver.LXCDriver.capabilities[
            'supports_image_type_qcow2'])
        self.assertNotIn('COMPUTE_IMAGE_TYPE_QCOW2',
                         [t for t, v in drv.capabilities_as_traits().items()
                          if v])
        self.drv = drv
        e = self.assertRaises(nova_exc.ImageUnacceptable, self.spawn,
                              self.instance(),
                              self.image_meta('bare', 'qcow2'))
        self.assertIn('tarballs (container_format=bare, disk_format=raw), '
                      'not bare/qcow2', str(e))
        self.fetch.assert_not_called()

    def test_refetch_for_a_hard_reboot_lets_the_content_decide(self):
        # No image_meta there: Glance's format is unknown, the content
        # says what it is; the property comes from the instance.
        get = self.patch_object(self.drv._images, 'get')
        instance = self.instance()
        instance.image_ref = IMAGE_ID
        instance.system_metadata = {'image_novalxc_root_partition': '1'}
        self.drv._fetched_image(self.context, IMAGE_ID, instance=instance)
        self.assertEqual((IMAGE_ID, mock.ANY, None, '1', mock.ANY),
                         get.call_args.args)

    def test_qcow2_content_in_a_raw_image_refused(self):
        def qcow2(ctx, image_id, dest):
            with open(dest, 'wb') as f:
                f.write(b'QFI\xfb' + b'\0' * 508)

        self.fetch.side_effect = qcow2
        e = self.assertRaises(nova_exc.ImageUnacceptable, self.spawn,
                              self.instance(),
                              self.image_meta('bare', 'raw'))
        self.assertIn('disk_format=raw but its content is a qcow2', str(e))
        self.assert_nothing_created()

    def test_unusable_image_refused(self):
        self.fetch.side_effect = (
            lambda ctx, image_id, dest:
                test_images.write_rootfs_tarball(dest, with_init=False))
        e = self.assertRaises(nova_exc.ImageUnacceptable, self.spawn,
                              self.instance())
        self.assertIn('/sbin/init', str(e))
        self.assert_nothing_created()

    def test_unsupported_vif_type_refused_before_the_container(self):
        network_info = network_model.NetworkInfo([
            network_model.VIF(id='4e2a7b3c-0000-4000-8000-00000000000a',
                              address='fa:16:3e:00:00:01',
                              type='vhostuser')])
        e = self.assertRaises(nova_exc.InvalidInput, self.spawn,
                              self.instance(), network_info=network_info)
        self.assertIn("vif_type 'vhostuser'", str(e))
        # The image was fetched while Nova allocated the network (it
        # stays cached); nothing of the container was made.
        self.fetch.assert_called_once()
        self.assert_nothing_created()

    def test_empty_network_info_accepted(self):
        self.spawn(self.instance(), network_info=network_model.NetworkInfo())
        self.assertEqual(0, self.drv._ids.find(UUID))

    def test_volumes_refused(self):
        bdi = {'block_device_mapping': [{'mount_device': '/dev/vdb',
                                         'connection_info': {}}]}
        self.assertRaises(nova_exc.InvalidInput, self.spawn, self.instance(),
                          block_device_info=bdi)
        self.fetch.assert_not_called()
        self.assert_nothing_created()

    def config(self, instance):
        with open(os.path.join(self.lxc_path, instance.name,
                               'config')) as f:
            return f.read()

    def limit_keys(self, config, prefix='lxc.cgroup2.'):
        # lxc.cgroup.dir places the cgroup; it limits nothing.
        return {k[len(prefix):]: v for k, v in (
            line.split(' = ', 1) for line in config.splitlines()
            if line.startswith(prefix)) if k != 'lxc.cgroup.dir'}

    def spawn_recording_create(self, instance):
        real_create = container_mod.Container.create
        with mock.patch.object(container_mod.Container, 'create',
                               autospec=True,
                               side_effect=real_create) as create:
            self.spawn(instance)
        create.assert_called_once()
        return create.call_args

    def assert_refused_cleanly(self, instance, *expected):
        """spawn raises InvalidInput naming expected; nothing is left."""
        e = self.assertRaises(nova_exc.InvalidInput, self.spawn, instance)
        for text in expected:
            self.assertIn(text, str(e))
        self.rootfs_create.assert_not_called()
        self.assert_nothing_created()
        return e

    def test_disk_sizes_reach_container_create(self):
        instance = self.instance(root_gb=5, ephemeral_gb=3)
        call = self.spawn_recording_create(instance)
        self.assertEqual(5, call.kwargs['root_gb'])
        self.assertEqual(3, call.kwargs['ephemeral_gb'])
        self.rootfs_create.assert_called_once()
        self.assertEqual((5, 3), self.rootfs_create.call_args.args[3:])
        self.lxc.start.assert_called_once_with(instance.name, self.lxc_path)

    def test_no_ephemeral_disk(self):
        instance = self.instance(root_gb=2)
        call = self.spawn_recording_create(instance)
        self.assertEqual(2, call.kwargs['root_gb'])
        self.assertEqual(0, call.kwargs['ephemeral_gb'])
        self.assertNotIn(' mnt none ', self.config(instance))

    def test_ephemeral_bind_mounted_on_mnt(self):
        instance = self.instance(ephemeral_gb=1)
        self.spawn(instance)
        self.assertIn(
            'lxc.mount.entry = %s/rootfs/0/ephemeral mnt none '
            'bind,create=dir 0 0\n' % self.state_path,
            self.config(instance))

    def test_swap_is_memory_swap_limit(self):
        instance = self.instance(swap=512)
        self.spawn(instance)
        keys = self.limit_keys(self.config(instance))
        self.assertEqual(str(256 * MiB), keys['memory.max'])
        self.assertEqual(str(512 * MiB), keys['memory.swap.max'])
        self.lxc.start.assert_called_once_with(instance.name, self.lxc_path)

    def test_limits_in_config_v2(self):
        instance = self.instance(vcpus=2)
        self.spawn(instance)
        config = self.config(instance)
        self.assertEqual({
            'memory.max': str(256 * MiB),
            'memory.swap.max': '0',
            'cpuset.cpus': '0,1',
            'cpu.max': '200000 100000',
            'pids.max': '4096',
        }, self.limit_keys(config))
        self.assertEqual({}, self.limit_keys(config, 'lxc.cgroup.'))
        self.shared_cpus.assert_called_with()

    def test_limits_in_config_v1(self):
        self.cgroup_version.return_value = 1
        instance = self.instance()
        self.spawn(instance)
        config = self.config(instance)
        keys = self.limit_keys(config, 'lxc.cgroup.')
        self.assertEqual(str(256 * MiB), keys['memory.limit_in_bytes'])
        self.assertEqual('0', keys['cpuset.cpus'])
        self.assertEqual({}, self.limit_keys(config))

    def test_cpus_round_robin_by_container_id(self):
        first = self.instance(vcpus=2)
        second = self.instance(uuid=UUID2, id=2, vcpus=2)
        self.spawn(first)
        self.spawn(second)
        self.assertEqual('0,1', self.limit_keys(
            self.config(first))['cpuset.cpus'])
        self.assertEqual('2,3', self.limit_keys(
            self.config(second))['cpuset.cpus'])

    def test_pinned_cpus(self):
        cell = objects.InstanceNUMACell(
            id=0, cpuset=set(), pcpuset={0, 1}, memory=256,
            cpu_pinning_raw={})
        cell.pin_vcpus((0, 5), (1, 6))
        numa = objects.InstanceNUMATopology(cells=[cell])
        instance = self.instance(vcpus=2, numa_topology=numa)
        self.spawn(instance)
        self.assertEqual('5,6', self.limit_keys(
            self.config(instance))['cpuset.cpus'])

    def test_cgroup_parent_from_conf(self):
        instance = self.instance()
        self.spawn(instance)
        self.assertIn('\nlxc.cgroup.dir = novalxc\n', self.config(instance))
        self.cfg.config(group='lxc', cgroup_parent='')
        other = self.instance(uuid=UUID2, id=2)
        self.spawn(other)
        self.assertNotIn('lxc.cgroup.dir', self.config(other))

    def test_pids_max_from_conf_and_extra_spec(self):
        self.cfg.config(group='lxc', pids_max=100)
        instance = self.instance()
        self.spawn(instance)
        self.assertEqual('100', self.limit_keys(
            self.config(instance))['pids.max'])
        other = self.instance(uuid=UUID2, id=2,
                              extra_specs={'lxc:pids_max': '64'})
        self.spawn(other)
        self.assertEqual('64', self.limit_keys(
            self.config(other))['pids.max'])

    def test_io_throttles_on_own_disks_at_each_start(self):
        devices = self.patch('novalxcdriver.rootfs.Rootfs.disk_devices',
                             return_value=['7:3', '7:9'])
        writeback = self.patch('novalxcdriver.throttle.set_writeback')
        instance = self.instance(
            extra_specs={'quota:disk_write_iops_sec': '500'})
        self.spawn(instance)
        config = self.config(instance)
        self.assertIn('lxc.cgroup2.io.max = 7:3 wiops=500\n', config)
        self.assertIn('lxc.cgroup2.io.max = 7:9 wiops=500\n', config)
        writeback.assert_called_once_with(
            (('disk_write_iops_sec', 500),), ['7:3', '7:9'])
        # Attached again (host boot): other devices, the old keys go.
        self.drv.power_off(instance)
        devices.return_value = ['7:4']
        self.drv.power_on(self.context, instance, [])
        config = self.config(instance)
        self.assertEqual(['lxc.cgroup2.io.max = 7:4 wiops=500'],
                         [line for line in config.splitlines()
                          if 'io.max' in line])
        self.assertEqual(['7:4'], writeback.call_args.args[1])

    def test_no_io_throttles_touch_nothing(self):
        writeback = self.patch('novalxcdriver.throttle.set_writeback')
        instance = self.instance()
        self.spawn(instance)
        self.assertNotIn('io.max', self.config(instance))
        writeback.assert_not_called()

    def test_io_throttles_without_root_disk_refused(self):
        self.assert_refused_cleanly(
            self.instance(root_gb=0,
                          extra_specs={'quota:disk_read_bytes_sec': '9'}),
            'root_gb 0')

    def test_flavor_filling_the_host_accepted(self):
        call = self.spawn_recording_create(self.instance(
            memory_mb=16000, root_gb=70, ephemeral_gb=30))
        self.assertEqual((70, 30), (call.kwargs['root_gb'],
                                    call.kwargs['ephemeral_gb']))

    def test_more_memory_than_host_refused(self):
        self.assert_refused_cleanly(self.instance(memory_mb=16001),
                                    '16001 MiB of memory',
                                    'host has 16000 MiB')

    def test_more_disk_than_filesystem_refused(self):
        self.assert_refused_cleanly(
            self.instance(root_gb=80, ephemeral_gb=21), '101 GiB of disk',
            '100 GiB')
        self.disk.assert_called_with(self.state_path)

    def test_more_vcpus_than_host_refused(self):
        self.assert_refused_cleanly(self.instance(vcpus=9), '9 vCPUs',
                                    'offers 8 CPUs')

    def test_bad_cpu_period_refused(self):
        self.assert_refused_cleanly(
            self.instance(extra_specs={'quota:cpu_period': '5'}),
            'quota:cpu_period')

    def test_bad_pids_max_refused(self):
        self.assert_refused_cleanly(
            self.instance(extra_specs={'lxc:pids_max': 'abc'}),
            'lxc:pids_max', "'abc'")

    def test_failed_create_releases_the_id(self):
        # create() removes what it made itself; the driver frees the ID.
        with mock.patch.object(
                container_mod.Container, 'create', autospec=True,
                side_effect=exception.MountFailed(
                    what='overlay', target='t', reason='EPERM')), \
                mock.patch.object(container_mod.Container,
                                  'destroy') as destroy:
            self.assertRaises(exception.MountFailed, self.spawn,
                              self.instance())
        destroy.assert_not_called()
        self.assert_nothing_created()

    def test_name_taken_by_a_foreign_container_refused_untouched(self):
        # Finding 2: lxc_path reused by a new deployment.
        foreign = os.path.join(self.lxc_path, 'instance-00000001')
        os.makedirs(os.path.join(foreign, 'rootfs'))
        with open(os.path.join(foreign, 'config'), 'w') as f:
            f.write('lxc.uts.name = theirs\n')
        e = self.assertRaises(exception.ContainerExists, self.spawn,
                              self.instance())
        self.assertIn(foreign, str(e))
        self.assertIsInstance(e, nova_exc.NovaException)
        self.assertEqual(['config', 'rootfs'], sorted(os.listdir(foreign)))
        with open(os.path.join(foreign, 'config')) as f:
            self.assertEqual('lxc.uts.name = theirs\n', f.read())
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertEqual([], self.drv.list_instances())
        self.assertFalse(os.path.exists(
            os.path.join(self.state_path, 'rootfs', '0')))

    def test_start_failure_destroys(self):
        self.lxc.start.side_effect = exception.CommandFailed(
            cmd='lxc-start', exit_code=1, stderr='no')
        self.assertRaises(exception.CommandFailed, self.spawn,
                          self.instance())
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertEqual([], os.listdir(self.lxc_path))
        self.assertEqual([], os.listdir(
            os.path.join(self.state_path, 'rootfs')))

    def test_destroy(self):
        instance = self.instance()
        self.spawn(instance)
        self.drv.destroy(self.context, instance, None)
        self.assertFalse(self.drv.instance_exists(instance))
        self.assertEqual([], self.drv.list_instances())
        self.assertEqual({}, self.drv._ids.reservations())
        self.lxc.kill.assert_called_once_with(instance.name, self.lxc_path)
        # Idempotent.
        self.drv.destroy(self.context, instance, None)


class RepairTest(_Base):
    """Hard reboot, power on and host boot rebuild what is derived."""

    def setUp(self):
        super().setUp()
        self.init_host()
        self.instance_ = self.instance()
        self.spawn(self.instance_)
        self.dir = os.path.join(self.lxc_path, self.instance_.name)
        self.config = os.path.join(self.dir, 'config')
        with open(self.config) as f:
            self.good_config = f.read()
        self.rootfs_mount.reset_mock()
        self.lxc.start.reset_mock()

    def assert_repaired(self):
        with open(self.config) as f:
            self.assertEqual(self.good_config, f.read())
        self.rootfs_mount.assert_called_once()
        self.lxc.start.assert_called_once_with(self.instance_.name,
                                               self.lxc_path)

    def test_hard_reboot_writes_a_missing_config_again(self):
        # Finding 4: ContainerNotFound reached the API as an HTTP 500.
        shutil.rmtree(self.dir)
        self.states[self.instance_.name] = 'STOPPED'
        self.drv.reboot(self.context, self.instance_, [], 'HARD')
        self.assert_repaired()

    def test_soft_reboot_of_a_torn_config_becomes_hard(self):
        with open(self.config, 'r+') as f:
            f.truncate(40)
        self.states[self.instance_.name] = 'STOPPED'
        self.drv.reboot(self.context, self.instance_, [], 'SOFT')
        self.lxc.reboot.assert_not_called()
        self.assert_repaired()

    def test_power_on_and_host_boot_rebuild(self):
        for action in (
                lambda: self.drv.power_on(self.context, self.instance_, []),
                lambda: self.drv.resume_state_on_host_boot(
                    self.context, self.instance_, [], None)):
            with open(self.config, 'w') as f:
                f.write('')
            self.states[self.instance_.name] = 'STOPPED'
            self.rootfs_mount.reset_mock()
            self.lxc.start.reset_mock()
            action()
            self.assert_repaired()

    def test_image_gone_from_the_cache_fetched_again(self):
        # Finding 8: it could never start again.
        shutil.rmtree(os.path.join(self.state_path, 'images', IMAGE_ID))
        self.fetch.reset_mock()
        self.drv.reboot(self.context, self.instance_, [], 'HARD')
        self.fetch.assert_called_once()
        self.assertEqual(IMAGE_ID, self.fetch.call_args.args[1])
        self.assert_repaired()

    def test_image_gone_everywhere_is_a_clear_fault_keeping_disks(self):
        shutil.rmtree(os.path.join(self.state_path, 'images', IMAGE_ID))
        self.fetch.side_effect = nova_exc.ImageNotFound(image_id=IMAGE_ID)
        e = self.assertRaises(exception.ImageGone, self.drv.reboot,
                              self.context, self.instance_, [], 'HARD')
        self.assertIsInstance(e, nova_exc.NovaException)
        self.assertIn(IMAGE_ID, str(e))
        self.assertTrue(os.path.isdir(
            os.path.join(self.state_path, 'rootfs', '0')))
        self.assertEqual([self.instance_.name], self.drv.list_instances())

    def test_foreign_container_on_the_name_refused_untouched(self):
        shutil.rmtree(self.dir)
        os.makedirs(os.path.join(self.dir, 'rootfs'))
        with open(self.config, 'w') as f:
            f.write('lxc.uts.name = theirs\n')
        e = self.assertRaises(exception.ContainerExists, self.drv.reboot,
                              self.context, self.instance_, [], 'HARD')
        self.assertIn(self.dir, str(e))
        with open(self.config) as f:
            self.assertEqual('lxc.uts.name = theirs\n', f.read())
        self.lxc.start.assert_not_called()
        self.drv.destroy(self.context, self.instance_, [])
        self.assertEqual(['config', 'rootfs'], sorted(os.listdir(self.dir)))
        self.assertEqual({}, self.drv._ids.reservations())

    def test_rebuilt_with_the_recorded_idmap(self):
        # The config is derived: a changed allocator must not leak in.
        os.unlink(self.config)
        recorded = self.drv._records.get(UUID).idmap
        with mock.patch.object(self.drv._ids, 'idmap',
                               return_value=ids.Idmap(1, 1, SIZE)):
            self.drv.reboot(self.context, self.instance_, [], 'HARD')
        self.assertEqual(recorded, self.rootfs_mount.call_args.args[2])
        self.assert_repaired()


class _Killed(BaseException):
    """The process dies here: no except Exception clause runs."""


class RescueTest(_Base):
    """rescue, unrescue, and what a rescued server's other calls do."""

    def setUp(self):
        super().setUp()
        self.init_host()
        for name in ('plug', 'unplug', 'hot_plug', 'remove_leftovers'):
            self.patch('novalxcdriver.vif.' + name)
        self.patch('novalxcdriver.vif.link_exists', return_value=True)
        self.cd_write = self.patch('novalxcdriver.configdrive.write',
                                   side_effect=lambda path, *a: os.mkdir(
                                       path))
        self.network_info = network_model.NetworkInfo(
            [test_vif.bridge_vif(test_vif.PORT2, active=True)])
        self.instance_ = self.instance(config_drive='True')
        self.instance_.info_cache = objects.InstanceInfoCache(
            network_info=self.network_info)
        self.drv.spawn(self.context, self.instance_, self.image_meta(), [],
                       'pw', {}, network_info=self.network_info)
        self.name = self.instance_.name
        self.config_path = os.path.join(self.lxc_path, self.name, 'config')
        self.server_config = self.config()
        self.server_record = self.drv._records.get(UUID)
        self.root = os.path.join(self.state_path, 'rootfs', '0')
        self.rescue_root = os.path.join(self.root, 'rescue')
        self.cd_write.reset_mock()
        self.lxc.reset_mock()
        self.fetch.reset_mock()

    def config(self):
        with open(self.config_path) as f:
            return f.read()

    @staticmethod
    def rescue_meta(image_id=OTHER_IMAGE_ID, container_format='bare',
                    **properties):
        return objects.ImageMeta.from_dict({
            'id': image_id, 'name': 'rescue', 'disk_format': 'raw',
            'container_format': container_format,
            'properties': properties})

    def rescue(self, image_meta=None, password='rescue-pw'):
        self.drv.rescue(self.context, self.instance_, self.network_info,
                        image_meta or self.rescue_meta(), password, None,
                        objects.ShareMappingList())

    def assert_server_back(self):
        """The server's own config and record, no rescue root left."""
        self.assertEqual(self.server_config, self.config())
        self.assertEqual(self.server_record,
                         dataclasses.replace(self.drv._records.get(UUID),
                                             pid=self.server_record.pid))
        self.assertFalse(os.path.lexists(self.rescue_root))
        # The server's root: its upper layer and config drive are kept.
        self.assertTrue(os.path.isdir(os.path.join(self.root, 'root',
                                                   'upper')))
        self.assertTrue(os.path.isdir(os.path.join(self.root,
                                                   'config-drive')))

    def test_rescue(self):
        def create(root, image_rootfs, *args, **kwargs):
            if root.path == self.rescue_root:
                # Nova stopped it; stopped it stays until it is ready.
                self.assertEqual('STOPPED', self.states[self.name])
            self._rootfs_create(root, image_rootfs, *args, **kwargs)
        self.rootfs_create.side_effect = create
        self.rescue()
        self.assertEqual(OTHER_IMAGE_ID, self.fetch.call_args.args[1])
        config = self.config()
        self.assertEqual({'instance_uuid': UUID, 'host': HOST, 'id': 0,
                          'image_id': IMAGE_ID,
                          'rescue_image_id': OTHER_IMAGE_ID},
                         spec_mod.parse_record(config))
        self.assertIn('lxc.rootfs.path = dir:%s/merged\n' % self.rescue_root,
                      config)
        self.assertIn('lxc.mount.entry = %s/merged mnt none '
                      'bind,create=dir 0 0\n' % self.root, config)
        self.assertIn('lxc.mount.entry = %s/config-drive config-drive none '
                      'bind,ro,create=dir 0 0\n' % self.rescue_root, config)
        # Same container, idmap and NICs.
        for line in ('lxc.idmap = u 0 100000 65536',
                     'lxc.idmap = g 0 100000 65536', 'lxc.uts.name = web-1'):
            self.assertIn(line + '\n', config)
        self.assertEqual(spec_mod.parse_nics(self.server_config),
                         spec_mod.parse_nics(config))
        self.assertEqual(1, len(spec_mod.parse_nics(config)))
        self.assertEqual(OTHER_IMAGE_ID,
                         self.drv._records.get(UUID).rescue_image_id)
        self.assertEqual(0, self.drv._ids.find(UUID))
        # The rescue password, in the rescue's own config drive.
        self.cd_write.assert_called_once_with(
            self.rescue_root + '/config-drive', self.instance_, None,
            'rescue-pw', self.network_info, self.drv._ids.idmap(0))
        self.assertEqual(['kill', 'start'],
                         [c[0] for c in self.lxc.mock_calls
                          if c[0] in ('kill', 'start')])
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(self.instance_).state)

    def test_image_without_id_is_the_servers_own(self):
        self.rescue(objects.ImageMeta.from_dict({}), password='')
        self.fetch.assert_not_called()
        self.assertEqual(IMAGE_ID,
                         self.drv._records.get(UUID).rescue_image_id)
        root, image_rootfs = self.rootfs_create.call_args.args[:2]
        self.assertEqual((self.rescue_root, IMAGE_ID + '/rootfs'),
                         (root.path, image_rootfs[-len(IMAGE_ID) - 7:]))
        self.assertEqual('', self.cd_write.call_args.args[3])

    def test_config_drive_only_with_one(self):
        self.drv.destroy(self.context, self.instance_, self.network_info)
        self.instance_ = self.instance(config_drive='')
        self.instance_.info_cache = objects.InstanceInfoCache(
            network_info=self.network_info)
        self.drv.spawn(self.context, self.instance_, self.image_meta(), [],
                       None, {}, network_info=self.network_info)
        self.rescue()
        self.cd_write.assert_not_called()
        self.assertNotIn('config-drive', self.config())
        # Unless the rescue image asks for one.
        self.drv.unrescue(self.context, self.instance_)
        self.rescue(self.rescue_meta(img_config_drive='mandatory'))
        self.cd_write.assert_called_once()
        self.assertIn('%s/config-drive config-drive' % self.rescue_root,
                      self.config())

    def test_refused_before_anything(self):
        for meta, error in (
                (self.rescue_meta(hw_rescue_device='disk'),
                 nova_exc.InstanceNotRescuable),
                (self.rescue_meta(hw_rescue_bus='usb'),
                 nova_exc.InstanceNotRescuable),
                (self.rescue_meta(container_format='ami'),
                 nova_exc.ImageUnacceptable)):
            self.assertRaises(error, self.rescue, meta)
            self.lxc.kill.assert_not_called()
            self.assert_server_back()

    def test_failure_gives_the_server_its_root_back(self):
        def fail_start(name, lxc_path):
            raise exception.CommandFailed(cmd='lxc-start', exit_code=1,
                                          stderr='no')
        for where, failure, error in (
                (self.cd_write, OSError('disk full'), OSError),
                (self.lxc.start, fail_start, exception.CommandFailed),
                (self.rootfs_create, exception.MountFailed(
                    what='overlay', target='x', reason='EPERM'),
                 exception.MountFailed)):
            saved = where.side_effect
            where.side_effect = failure
            self.assertRaises(error, self.rescue)
            where.side_effect = saved
            self.assertEqual('STOPPED', self.states[self.name])
            self.assert_server_back()
        # It can be rescued then.
        self.rescue()
        self.assertEqual('RUNNING', self.states[self.name])

    def restart(self):
        """A new nova-compute process on the same host."""
        self.drv = driver.LXCDriver(self.virtapi)
        self.init_host()

    def test_killed_anywhere_in_rescue_hard_reboot_repairs(self):
        # The process dies (no rollback); Nova, restarted, leaves the
        # server RESCUING until reset, then ERROR: hard reboot repairs.
        for where in (self.rootfs_create, self.cd_write, self.lxc.start):
            saved = where.side_effect
            where.side_effect = _Killed()
            self.assertRaises(_Killed, self.rescue)
            where.side_effect = saved
            self.restart()
            self.instance_.vm_state = vm_states.ERROR
            self.drv.reboot(self.context, self.instance_, self.network_info,
                            'HARD')
            self.assert_server_back()
            self.assertEqual('RUNNING', self.states[self.name])

    def test_killed_anywhere_in_unrescue_finished_again(self):
        def kill_in_unmount(path, points=None):
            raise _Killed()
        points = ((self.mount.unmount_tree, kill_in_unmount),
                  (self.lxc.start, _Killed()))
        for where, killed in points:
            for finish in (
                    lambda: self.drv.unrescue(self.context, self.instance_),
                    lambda: self.drv.reboot(self.context, self.instance_,
                                            self.network_info, 'HARD')):
                self.instance_.vm_state = vm_states.ACTIVE
                self.rescue()
                self.instance_.vm_state = vm_states.RESCUED
                saved = where.side_effect
                where.side_effect = killed
                self.assertRaises(_Killed, self.drv.unrescue, self.context,
                                  self.instance_)
                where.side_effect = saved
                self.restart()
                self.instance_.vm_state = vm_states.ERROR
                finish()
                self.assert_server_back()
                self.assertEqual('RUNNING', self.states[self.name])

    def test_unrescue(self):
        self.rescue()
        self.lxc.reset_mock()
        self.drv.unrescue(self.context, self.instance_)
        self.assert_server_back()
        self.assertEqual(0, self.drv._ids.find(UUID))
        self.assertEqual(['kill', 'start'],
                         [c[0] for c in self.lxc.mock_calls
                          if c[0] in ('kill', 'start')])
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(self.instance_).state)

    def test_unrescue_of_a_server_not_rescued_restarts_it(self):
        self.drv.unrescue(self.context, self.instance_)
        self.assert_server_back()
        self.lxc.start.assert_called_once_with(self.name, self.lxc_path)

    def test_unrescue_keeps_the_rescue_if_the_server_cannot_boot(self):
        self.rescue()
        rescued = self.config()
        shutil.rmtree(os.path.join(self.state_path, 'images', IMAGE_ID))
        self.fetch.side_effect = nova_exc.ImageNotFound(image_id=IMAGE_ID)
        self.assertRaises(exception.ImageGone, self.drv.unrescue,
                          self.context, self.instance_)
        self.assertEqual(rescued, self.config())
        self.assertEqual('RUNNING', self.states[self.name])

    def test_restarts_keep_a_rescue_nova_sees(self):
        self.rescue()
        rescued = self.config()
        self.instance_.vm_state = vm_states.RESCUED
        for action in (
                lambda: self.drv.reboot(self.context, self.instance_,
                                        self.network_info, 'HARD'),
                lambda: self.drv.power_on(self.context, self.instance_,
                                          self.network_info),
                lambda: self.drv.resume_state_on_host_boot(
                    self.context, self.instance_, self.network_info, None)):
            os.unlink(self.config_path)
            self.states[self.name] = 'STOPPED'
            self.rootfs_mount.reset_mock()
            action()
            self.assertEqual(rescued, self.config())
            self.assertEqual([self.root, self.rescue_root],
                             [c.args[0].path
                              for c in self.rootfs_mount.call_args_list])
            self.assertEqual('RUNNING', self.states[self.name])

    def test_hard_reboot_leaves_a_rescue_nova_does_not_see(self):
        # A rescue cut short: Nova put the server in ERROR.
        self.rescue()
        self.instance_.vm_state = vm_states.ERROR
        self.lxc.reset_mock()

        def unmount_tree(path, points=None):
            # Its mounts would be busy under a running rescue.
            if path == self.rescue_root:
                self.assertEqual('STOPPED', self.states[self.name])
        self.mount.unmount_tree.side_effect = unmount_tree
        self.drv.reboot(self.context, self.instance_, self.network_info,
                        'HARD')
        self.mount.unmount_tree.assert_called_once_with(self.rescue_root,
                                                        mock.ANY)
        self.assert_server_back()
        self.assertEqual(['kill', 'start'],
                         [c[0] for c in self.lxc.mock_calls
                          if c[0] in ('kill', 'start')])

    def test_rescue_image_gone_everywhere(self):
        self.rescue()
        self.instance_.vm_state = vm_states.RESCUED
        shutil.rmtree(os.path.join(self.state_path, 'images',
                                   OTHER_IMAGE_ID))
        self.fetch.side_effect = nova_exc.ImageNotFound(
            image_id=OTHER_IMAGE_ID)
        e = self.assertRaises(exception.RescueUnavailable,
                              self.drv.resume_state_on_host_boot,
                              self.context, self.instance_,
                              self.network_info, None)
        self.assertIn(OTHER_IMAGE_ID, str(e))
        # Unrescue is the way out.
        self.fetch.side_effect = None
        self.drv.unrescue(self.context, self.instance_)
        self.assert_server_back()

    def test_init_host_remounts_the_rescue_root(self):
        self.rescue()
        self.rootfs_mount.reset_mock()
        self.drv.init_host(HOST)
        self.assertEqual([self.root, self.rescue_root],
                         [c.args[0].path
                          for c in self.rootfs_mount.call_args_list])
        self.assertTrue(self.rootfs_mount.call_args.args[1].endswith(
            OTHER_IMAGE_ID + '/rootfs'))

    def test_destroy_leaves_nothing(self):
        self.rescue()
        self.drv.destroy(self.context, self.instance_, self.network_info)
        self.assertEqual([], os.listdir(self.lxc_path))
        self.assertEqual([], os.listdir(os.path.join(self.state_path,
                                                     'rootfs')))
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertEqual({}, self.drv._records.all())

    def test_rescue_image_kept_in_the_cache(self):
        self.rescue()
        prune = self.patch('novalxcdriver.images.ImageCache.prune')
        self.drv.manage_image_cache(self.context, [])
        self.assertEqual({IMAGE_ID, OTHER_IMAGE_ID},
                         prune.call_args.args[0])


class GetInfoTest(_Base):

    def setUp(self):
        super().setUp()
        self.init_host()
        self.inst = self.instance()
        self.write_container(self.inst.name, UUID, state='RUNNING')

    def test_power_states(self):
        self.assertEqual(set(lxc.STATES), set(driver.POWER_STATES))
        for state in lxc.STATES:
            self.states[self.inst.name] = state
            info = self.drv.get_info(self.inst)
            self.assertEqual(driver.POWER_STATES[state], info.state, state)
        expected = {'STOPPED': power_state.SHUTDOWN,
                    'RUNNING': power_state.RUNNING,
                    'FROZEN': power_state.PAUSED,
                    'ABORTING': power_state.CRASHED}
        for state, power in expected.items():
            self.states[self.inst.name] = state
            self.assertEqual(power, self.drv.get_info(self.inst).state)

    def test_unknown_state(self):
        self.states[self.inst.name] = 'WEIRD'
        self.assertEqual(power_state.NOSTATE,
                         self.drv.get_info(self.inst).state)

    def test_suspended(self):
        self.drv.suspend(self.context, self.inst)
        self.assertEqual(power_state.SUSPENDED,
                         self.drv.get_info(self.inst).state)
        self.drv.resume(self.context, self.inst, None)
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(self.inst).state)

    def test_paused_is_not_suspended(self):
        self.drv.pause(self.inst)
        self.assertEqual(power_state.PAUSED,
                         self.drv.get_info(self.inst).state)

    def test_no_container(self):
        other = self.instance(uuid=UUID2, id=2)
        self.assertRaises(nova_exc.InstanceNotFound, self.drv.get_info,
                          other)

    def test_lxc_does_not_know_it(self):
        self.lxc.info.side_effect = exception.ContainerNotFound(
            name=self.inst.name)
        self.assertRaises(nova_exc.InstanceNotFound, self.drv.get_info,
                          self.inst)

    def test_recorded_without_config_is_shut_down(self):
        # Its config lost (a crash, lxc_path not mounted): not running,
        # and a hard reboot or power on brings it back.
        os.unlink(os.path.join(self.lxc_path, self.inst.name, 'config'))
        self.assertEqual(power_state.SHUTDOWN,
                         self.drv.get_info(self.inst).state)
        self.assertTrue(self.drv.instance_exists(self.inst))
        self.lxc.info.assert_not_called()

    def test_config_lxc_cannot_read_is_nostate(self):
        self.lxc.info.side_effect = exception.CommandFailed(
            cmd='lxc-info', exit_code=1, stderr='Failed to load config')
        self.assertEqual(power_state.NOSTATE,
                         self.drv.get_info(self.inst).state)


class SerialConsoleTest(_Base):

    def setUp(self):
        super().setUp()
        self.cfg.config(group='serial_console', enabled=True,
                        proxyclient_address='192.0.2.7',
                        port_range='10000:10009')
        self.ensure = self.console.ensure_relay
        self.ensure.return_value = [77, '192.0.2.7', 10003]
        self.lxc.monitor_pid.return_value = 4241
        self.lxc.console_argv.side_effect = lxc.console_argv
        self.init_host()
        self.inst = self.instance()
        self.dir = self.write_container(self.inst.name, UUID,
                                        state='RUNNING')

    def test_running(self):
        console = self.drv.get_serial_console(self.context, self.inst)
        self.assertEqual(('192.0.2.7', 10003), (console.host, console.port))
        self.lxc.monitor_pid.assert_called_once_with(4242)
        self.ensure.assert_called_once_with(
            self.inst.name, self.lxc_path, 4241, '192.0.2.7', '10000:10009',
            restart_only=False)

    def test_paused_still_served(self):
        self.states[self.inst.name] = 'FROZEN'
        self.assertEqual(10003, self.drv.get_serial_console(
            self.context, self.inst).port)

    def test_disabled(self):
        self.cfg.config(group='serial_console', enabled=False)
        self.assertRaises(nova_exc.ConsoleTypeUnavailable,
                          self.drv.get_serial_console, self.context,
                          self.inst)
        self.ensure.assert_not_called()

    def test_stopped_is_not_ready(self):
        self.states[self.inst.name] = 'STOPPED'
        self.assertRaises(nova_exc.InstanceNotReady,
                          self.drv.get_serial_console, self.context,
                          self.inst)
        self.ensure.assert_not_called()

    def test_no_monitor_is_not_ready(self):
        self.lxc.monitor_pid.return_value = None
        self.assertRaises(nova_exc.InstanceNotReady,
                          self.drv.get_serial_console, self.context,
                          self.inst)

    def test_no_container(self):
        self.assertRaises(nova_exc.InstanceNotFound,
                          self.drv.get_serial_console, self.context,
                          self.instance(uuid=UUID2, id=2))

    def test_ports_exhausted(self):
        self.ensure.side_effect = exception.ConsolePortsExhausted(
            port_range='10000:10009', address='192.0.2.7')
        self.assertRaises(nova_exc.SocketPortRangeExhaustedException,
                          self.drv.get_serial_console, self.context,
                          self.inst)

    def test_destroy_stops_the_relay(self):
        self.drv.destroy(self.context, self.inst, [])
        self.console.stop_relay.assert_called_once_with(self.inst.name,
                                                        self.lxc_path)

    def test_destroy_leaves_a_foreign_directory_alone(self):
        other = self.instance(uuid=UUID2, id=2)
        # Its name's directory holds a container of another instance.
        self.write_container(other.name, UUID, record=False)
        self.drv.destroy(self.context, other, [])
        self.console.stop_relay.assert_not_called()

    def test_init_host_asks_the_daemon_to_restart_a_running_one_s(self):
        # Whether it had a relay that died is the daemon's to see
        # (privsep.console.ensure_relay, tested there).
        self.ensure.return_value = None
        self.drv.init_host(HOST)
        self.ensure.assert_called_once_with(
            self.inst.name, self.lxc_path, 4241, '192.0.2.7', '10000:10009',
            restart_only=True)

    def test_init_host_no_relay_for_a_stopped_container(self):
        self.states[self.inst.name] = 'STOPPED'
        self.drv.init_host(HOST)
        self.ensure.assert_not_called()


class ImageCacheManagerTest(_Base):

    def setUp(self):
        super().setUp()
        self.init_host()
        self.prune = self.patch('novalxcdriver.images.ImageCache.prune',
                                return_value=[])

    def test_images_of_containers_and_instances_kept(self):
        self.write_container('instance-00000001', UUID, cid=0)
        self.write_container('instance-00000002', UUID2, host='compute-2',
                             cid=1)
        listed = self.instance(uuid=UUID2, image_ref=OTHER_IMAGE_ID)
        self.cfg.config(group='image_cache',
                        remove_unused_original_minimum_age_seconds=600)
        self.drv.manage_image_cache(self.context, [listed])
        self.prune.assert_called_once_with({IMAGE_ID, OTHER_IMAGE_ID}, 600)

    def test_nothing_removed_when_nova_says_so(self):
        self.cfg.config(group='image_cache', remove_unused_base_images=False)
        self.drv.manage_image_cache(self.context, [])
        self.prune.assert_not_called()


class ListInstancesTest(_Base):

    def test_only_this_host(self):
        self.write_container('instance-00000001', UUID, cid=0)
        self.write_container('instance-00000002', UUID2, cid=1)
        self.write_container('instance-00000003',
                             'ffffffff-0000-4000-8000-000000000003',
                             host='compute-2', cid=2)
        foreign = os.path.join(self.lxc_path, 'handmade')
        os.makedirs(foreign)
        with open(os.path.join(foreign, 'config'), 'w') as f:
            f.write('lxc.uts.name = handmade\n')
        self.assertEqual(['instance-00000001', 'instance-00000002'],
                         sorted(self.drv.list_instances()))
        self.assertEqual(sorted([UUID, UUID2]),
                         sorted(self.drv.list_instance_uuids()))

    def test_no_lxc_path(self):
        self.assertEqual([], self.drv.list_instances())

    def test_from_records_even_without_configs(self):
        self.write_container('instance-00000001', UUID, cid=0)
        shutil.rmtree(self.lxc_path)
        self.assertEqual(['instance-00000001'], self.drv.list_instances())
        self.assertEqual([UUID], self.drv.list_instance_uuids())


class ResourcesTest(_Base):

    def setUp(self):
        super().setUp()
        self.patch('novalxcdriver.host.cpu_count', return_value=8)
        self.patch('novalxcdriver.host.memory_mb',
                   return_value=(16000, 4000))
        self.disk = self.patch('novalxcdriver.host.disk_gb',
                               return_value=(100, 40, 60))
        self.patch('novalxcdriver.host.arch', return_value='x86_64')
        self.patch('novalxcdriver.host.lxc_version_int',
                   return_value=5000002)
        self.patch('nova.virt.node.get_local_node_uuid',
                   return_value=NODE_UUID)

    def test_get_available_resource(self):
        res = self.drv.get_available_resource(HOST)
        self.assertEqual('lxc', res['hypervisor_type'])
        self.assertIsInstance(res['hypervisor_version'], int)
        self.assertEqual(5000002, res['hypervisor_version'])
        self.assertEqual([('x86_64', 'lxc', 'exe')],
                         res['supported_instances'])
        self.assertEqual(8, res['vcpus'])
        self.assertEqual(16000, res['memory_mb'])
        self.assertEqual(4000, res['memory_mb_used'])
        self.assertEqual(100, res['local_gb'])
        self.assertEqual(40, res['local_gb_used'])
        self.assertEqual(60, res['disk_available_least'])
        self.assertEqual(HOST, res['hypervisor_hostname'])
        self.assertEqual(NODE_UUID, res['uuid'])
        self.assertEqual({'arch': 'x86_64'},
                         jsonutils.loads(res['cpu_info']))
        self.disk.assert_called_with(self.state_path)

    def test_nodes(self):
        self.assertEqual([HOST], self.drv.get_available_nodes())

    def test_update_provider_tree(self):
        self.cfg.config(reserved_host_cpus=1, reserved_host_memory_mb=512,
                        reserved_host_disk_mb=2048, cpu_allocation_ratio=2.0,
                        ram_allocation_ratio=None,
                        initial_ram_allocation_ratio=1.5,
                        disk_allocation_ratio=None,
                        initial_disk_allocation_ratio=1.0)
        tree = provider_tree.ProviderTree()
        tree.new_root(HOST, NODE_UUID)
        self.drv.update_provider_tree(tree, HOST)
        inventory = tree.data(HOST).inventory
        self.assertEqual({orc.VCPU, orc.MEMORY_MB, orc.DISK_GB},
                         set(inventory))
        self.assertEqual({'total': 8, 'min_unit': 1, 'max_unit': 8,
                          'step_size': 1, 'allocation_ratio': 2.0,
                          'reserved': 1}, inventory[orc.VCPU])
        self.assertEqual({'total': 16000, 'min_unit': 1, 'max_unit': 16000,
                          'step_size': 1, 'allocation_ratio': 1.5,
                          'reserved': 512}, inventory[orc.MEMORY_MB])
        self.assertEqual({'total': 100, 'min_unit': 1, 'max_unit': 100,
                          'step_size': 1, 'allocation_ratio': 1.0,
                          'reserved': 2}, inventory[orc.DISK_GB])

    def test_update_provider_tree_keeps_placement_ratio(self):
        # Without [DEFAULT] *_allocation_ratio, a ratio set in placement
        # stays (Nova's _get_allocation_ratios precedence).
        self.cfg.config(ram_allocation_ratio=None)
        tree = provider_tree.ProviderTree()
        tree.new_root(HOST, NODE_UUID)
        tree.update_inventory(HOST, {orc.MEMORY_MB: {
            'total': 1, 'allocation_ratio': 3.0}})
        self.drv.update_provider_tree(tree, HOST)
        self.assertEqual(
            3.0, tree.data(HOST).inventory[orc.MEMORY_MB]['allocation_ratio'])


class StateChangedTest(_Base):

    def setUp(self):
        super().setUp()
        self.write_container('instance-00000001', UUID, cid=0)
        self.write_container('instance-00000002', UUID2, host='compute-2',
                             cid=1)

    def changed(self, old, new, name='instance-00000001'):
        del self.events[:]
        self.drv._state_changed(name, old, new)
        return [(e.get_instance_uuid(), e.get_transition())
                for e in self.events]

    def test_events(self):
        cases = [
            ('RUNNING', 'STOPPED', virtevent.EVENT_LIFECYCLE_STOPPED),
            ('STOPPING', 'STOPPED', virtevent.EVENT_LIFECYCLE_STOPPED),
            ('STOPPED', 'RUNNING', virtevent.EVENT_LIFECYCLE_STARTED),
            ('STARTING', 'RUNNING', virtevent.EVENT_LIFECYCLE_STARTED),
            ('RUNNING', 'FROZEN', virtevent.EVENT_LIFECYCLE_PAUSED),
            ('FROZEN', 'RUNNING', virtevent.EVENT_LIFECYCLE_RESUMED),
            ('FREEZING', 'RUNNING', virtevent.EVENT_LIFECYCLE_RESUMED),
        ]
        for old, new, transition in cases:
            self.assertEqual([(UUID, transition)], self.changed(old, new),
                             '%s -> %s' % (old, new))
        for e in self.events:
            self.assertIsInstance(e, virtevent.LifecycleEvent)

    def test_intermediate_states_ignored(self):
        for old, new in (('RUNNING', 'STOPPING'), ('STOPPED', 'STARTING'),
                         ('RUNNING', 'FREEZING')):
            self.assertEqual([], self.changed(old, new))

    def test_other_host_ignored(self):
        self.assertEqual([], self.changed('RUNNING', 'STOPPED',
                                          name='instance-00000002'))

    def test_unknown_container_ignored(self):
        self.assertEqual([], self.changed('RUNNING', 'STOPPED',
                                          name='handmade'))


class NetworkingTest(_Base):
    """VIFs: spawn's plug and wait, destroy's unplug, hot-plug.

    The vif module's host side (plug, unplug, hot_plug, remove_leftovers)
    is mocked; its pure parts run.
    """

    def setUp(self):
        super().setUp()
        self.init_host()
        self.vif = mock.Mock()
        for name in ('plug', 'unplug', 'hot_plug', 'remove_leftovers',
                     'link_exists'):
            setattr(self.vif, name, self.patch('novalxcdriver.vif.' + name))
        self.vif.link_exists.return_value = False
        # One record of plugs, waits and starts, in order.
        self.calls = mock.Mock()
        self.calls.attach_mock(self.vif.plug, 'plug')
        self.calls.attach_mock(self.lxc.start, 'start')
        self.wait = self.virtapi.wait_for_instance_event
        self.wait.return_value.__enter__.side_effect = (
            lambda: self.calls.wait_enter())
        # A false __exit__: exceptions of the block go through.
        self.wait.return_value.__exit__.side_effect = (
            lambda *exc: self.calls.wait_exit() and False)
        self.network_info = network_model.NetworkInfo([
            test_vif.ovs_vif(test_vif.PORT, active=False),
            test_vif.bridge_vif(test_vif.PORT2, active=True)])

    def config(self, instance):
        with open(os.path.join(self.lxc_path, instance.name,
                               'config')) as f:
            return f.read()

    def reset_vif(self):
        for name in ('plug', 'unplug', 'hot_plug', 'remove_leftovers'):
            getattr(self.vif, name).reset_mock()

    def assert_nothing_created(self):
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertEqual([], os.listdir(self.lxc_path))
        self.lxc.start.assert_not_called()

    def test_spawn_plugs_waits_then_starts(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        # Only the VIF Neutron has not reported up is waited for.
        self.wait.assert_called_once_with(
            instance, [('network-vif-plugged', test_vif.PORT)], timeout=300,
            error_callback=self.drv._neutron_failed_callback)
        self.assertEqual([
            mock.call.wait_enter(),
            mock.call.plug(instance, self.network_info[0]),
            mock.call.plug(instance, self.network_info[1]),
            mock.call.wait_exit(),
            mock.call.start(instance.name, self.lxc_path),
        ], self.calls.mock_calls)

    def test_image_fetched_while_nova_allocates_the_network(self):
        # Nova hands spawn a NetworkInfoAsyncWrapper whose first use
        # waits for the ports' allocation in Neutron: a new image is
        # fetched before, meanwhile.
        released = threading.Event()
        order = []

        def allocate():
            # Neutron's port create and bind, done once the fetch began
            # (or after 5 s: the spawn then waited for it first).
            order.append('allocated' if released.wait(5) else 'gave up')
            return self.network_info

        real = self.drv._fetched_image

        def fetched(*args, **kwargs):
            order.append('fetch')
            released.set()
            return real(*args, **kwargs)

        self.patch_object(self.drv, '_fetched_image', side_effect=fetched)
        instance = self.instance()
        info = network_model.NetworkInfoAsyncWrapper(allocate)
        self.spawn(instance, network_info=info)
        self.assertEqual(['fetch', 'allocated'], order)
        self.assertEqual(2, self.vif.plug.call_count)
        self.lxc.start.assert_called_once_with(instance.name, self.lxc_path)

    def test_failed_network_allocation_leaves_nothing(self):
        def allocate():
            raise nova_exc.PortLimitExceeded()

        self.assertRaises(
            nova_exc.PortLimitExceeded, self.spawn, self.instance(),
            network_info=network_model.NetworkInfoAsyncWrapper(allocate))
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertEqual([], os.listdir(self.lxc_path))
        roots = os.path.join(self.state_path, 'rootfs')
        self.assertEqual([], os.listdir(roots) if os.path.isdir(roots)
                         else [])
        self.assertEqual({}, self.drv._records.all())
        self.lxc.start.assert_not_called()
        self.vif.plug.assert_not_called()

    def test_ovn_installed_ends_the_wait(self):
        # ML2/OVN's port: once ovn-controller marks its interface
        # installed, Neutron's event (a second later) is not waited for.
        ovn = test_vif.ovs_vif(test_vif.PORT, active=False)
        ovn['details']['bound_drivers'] = {'0': 'ovn'}
        info = network_model.NetworkInfo([ovn, self.network_info[1]])
        installed = self.patch('novalxcdriver.vif.ovn_installed',
                               side_effect=lambda vifs, since, timeout: (
                                   self.calls.ovn_installed(
                                       [v['id'] for v in vifs], timeout),
                                   {test_vif.PORT})[1])
        self.calls.attach_mock(self.virtapi.exit_wait_early,
                               'exit_wait_early')
        before = time.time()
        instance = self.instance()
        self.spawn(instance, network_info=info)
        self.assertEqual([
            mock.call.wait_enter(),
            mock.call.plug(instance, info[0]),
            mock.call.plug(instance, info[1]),
            mock.call.ovn_installed([test_vif.PORT], 10.0),
            mock.call.exit_wait_early(
                [('network-vif-plugged', test_vif.PORT)]),
            mock.call.wait_exit(),
            mock.call.start(instance.name, self.lxc_path),
        ], self.calls.mock_calls)
        # Marks set since before the plug count.
        since = installed.call_args.args[1]
        self.assertLessEqual(before, since)
        # Not marked in time: Nova's wait goes on.
        installed.side_effect = None
        installed.return_value = set()
        self.virtapi.exit_wait_early.reset_mock()
        self.spawn(self.instance(uuid=UUID2, id=2), network_info=info)
        self.virtapi.exit_wait_early.assert_not_called()
        # Never looked for when turned off, or with a shorter plug wait.
        installed.reset_mock()
        self.cfg.config(ovn_installed_timeout=0, group='lxc')
        self.spawn(self.instance(uuid=UUID3, id=3), network_info=info)
        installed.assert_not_called()

    def test_ovn_wait_bounded_by_vif_plugging_timeout(self):
        ovn = test_vif.ovs_vif(test_vif.PORT, active=False)
        ovn['details']['bound_drivers'] = {'0': 'ovn'}
        installed = self.patch('novalxcdriver.vif.ovn_installed',
                               return_value=set())
        self.cfg.config(vif_plugging_timeout=3)
        self.spawn(self.instance(), network_info=network_model.NetworkInfo(
            [ovn]))
        self.assertEqual(3, installed.call_args.args[2])
        # Not an OVN port: not looked for.
        installed.reset_mock()
        self.spawn(self.instance(uuid=UUID2, id=2),
                   network_info=self.network_info)
        installed.assert_not_called()

    def test_plug_logged_with_the_awaited_ports(self):
        # bench.networked_boot reads it (the plug's moment in a boot).
        log = self.useFixture(fixtures.FakeLogger())
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        line = [x for x in log.output.splitlines() if 'Plugged VIFs' in x]
        self.assertEqual(1, len(line))
        for vif in self.network_info:
            self.assertIn(vif['id'], line[0])
        self.assertIn("network-vif-plugged of ['%s']" % test_vif.PORT,
                      line[0])
        log = self.useFixture(fixtures.FakeLogger())
        self.spawn(self.instance(uuid=UUID2, id=2),
                   network_info=network_model.NetworkInfo())
        self.assertNotIn('Plugged VIFs', log.output)

    def test_spawn_writes_nics(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        nics = spec_mod.parse_nics(self.config(instance))
        self.assertEqual(vif_mod.nics_for(self.network_info), nics)
        self.assertEqual(['eth0', 'eth1'], [n.name for n in nics])

    def test_no_wait_without_start_or_timeout(self):
        self.spawn(self.instance(), network_info=self.network_info,
                   power_on=False)
        self.assertEqual([], self.wait.call_args.args[1])
        self.assertEqual(2, self.vif.plug.call_count)
        self.cfg.config(vif_plugging_timeout=0)
        self.wait.reset_mock()
        self.spawn(self.instance(uuid=UUID2, id=2),
                   network_info=self.network_info)
        self.assertEqual([], self.wait.call_args.args[1])

    def test_no_vif_no_event(self):
        self.spawn(self.instance(), network_info=network_model.NetworkInfo())
        self.assertEqual([], self.wait.call_args.args[1])
        self.vif.plug.assert_not_called()

    def _time_out(self):
        self.wait.return_value.__exit__.side_effect = (
            nova_exc.InstanceEventTimeout())

    def test_timeout_fatal_leaves_nothing(self):
        self._time_out()
        instance = self.instance()
        self.assertRaises(nova_exc.VirtualInterfaceCreateException,
                          self.spawn, instance,
                          network_info=self.network_info)
        self.assert_nothing_created()
        self.assertEqual(
            [mock.call(instance, v, ignore_errors=True)
             for v in self.network_info],
            self.vif.unplug.call_args_list)
        self.vif.remove_leftovers.assert_called_once_with([])

    def test_timeout_not_fatal_starts(self):
        self.cfg.config(vif_plugging_is_fatal=False)
        self._time_out()
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        self.lxc.start.assert_called_once_with(instance.name, self.lxc_path)
        self.vif.unplug.assert_not_called()

    def test_neutron_failure_callback(self):
        instance = self.instance()
        self.assertRaises(nova_exc.VirtualInterfaceCreateException,
                          self.drv._neutron_failed_callback,
                          'network-vif-plugged', instance)
        self.cfg.config(vif_plugging_is_fatal=False)
        self.assertIsNone(self.drv._neutron_failed_callback(
            'network-vif-plugged', instance))

    def test_plug_failure_unplugs_all(self):
        self.vif.plug.side_effect = [
            None, nova_exc.VirtualInterfacePlugException('no bridge')]
        instance = self.instance()
        self.assertRaises(nova_exc.VirtualInterfacePlugException,
                          self.spawn, instance,
                          network_info=self.network_info)
        self.assert_nothing_created()
        self.assertEqual(2, self.vif.unplug.call_count)

    def test_failure_before_plugging_unplugs_nothing(self):
        # A flavor larger than the host fails before any VIF is plugged:
        # nothing to unplug (nor an OVSDB to wait for).
        self.assertRaises(nova_exc.InvalidInput, self.spawn,
                          self.instance(memory_mb=32000),
                          network_info=self.network_info)
        self.assert_nothing_created()
        self.vif.plug.assert_not_called()
        self.vif.unplug.assert_not_called()

    def test_destroy_survives_unreadable_nics(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        with open(os.path.join(self.lxc_path, instance.name, 'config'),
                  'a') as f:
            f.write('lxc.net.7.type = phys\n')
        self.drv.destroy(self.context, instance, self.network_info)
        self.assertFalse(self.drv.instance_exists(instance))
        self.assertEqual(2, self.vif.unplug.call_count)

    def test_destroy_unplugs_and_removes_leftovers(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        nics = vif_mod.nics_for(self.network_info)
        self.drv.destroy(self.context, instance, self.network_info[:1])
        self.vif.unplug.assert_called_once_with(
            instance, self.network_info[0], ignore_errors=True)
        # The NIC Nova did not name goes by the config's record.
        self.vif.remove_leftovers.assert_called_once_with([nics[1]])
        self.assertFalse(self.drv.instance_exists(instance))

    def test_cleanup_can_keep_vifs(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        self.drv.cleanup(self.context, instance, self.network_info,
                         destroy_vifs=False)
        self.vif.unplug.assert_not_called()
        self.vif.remove_leftovers.assert_not_called()
        self.assertFalse(self.drv.instance_exists(instance))

    def test_plug_and_unplug_vifs(self):
        instance = self.instance()
        self.drv.plug_vifs(instance, self.network_info)
        self.drv.unplug_vifs(instance, self.network_info)
        self.assertEqual(
            [mock.call(instance, v) for v in self.network_info],
            self.vif.plug.call_args_list)
        self.assertEqual(
            [mock.call(instance, v) for v in self.network_info],
            self.vif.unplug.call_args_list)

    def test_power_on_plugs_first(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info, power_on=False)
        done = len(self.calls.mock_calls)
        self.drv.power_on(self.context, instance, self.network_info)
        self.assertEqual(['plug', 'plug', 'start'],
                         [c[0] for c in self.calls.mock_calls[done:]])

    def test_hard_reboot_plugs_between_kill_and_start(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        self.calls.attach_mock(self.lxc.kill, 'kill')
        done = len(self.calls.mock_calls)
        self.drv.reboot(self.context, instance, self.network_info, 'HARD')
        self.assertEqual(['kill', 'plug', 'plug', 'start', 'plug', 'plug'],
                         [c[0] for c in self.calls.mock_calls[done:]])
        self.vif.hot_plug.assert_not_called()

    def test_soft_reboot_moves_lost_nics_back_in(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        nics = vif_mod.nics_for(self.network_info)
        # LXC gave back eth0 only: eth1's pair was made again on the host.
        self.vif.link_exists.side_effect = lambda dev: dev == nics[1].peer_dev
        self.drv.reboot(self.context, instance, self.network_info, 'SOFT')
        self.lxc.reboot.assert_called_once()
        self.vif.hot_plug.assert_called_once_with(4242, nics[1])

    def test_restart_from_inside_replugs_lost_nics(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        nics = vif_mod.nics_for(self.network_info)
        lookup = self.patch_object(
            self.drv, '_instance_and_network_info',
            return_value=(instance, self.network_info))
        self.reset_vif()
        # eth0's pair came back to the host and in again (LXC knew it);
        # eth1, attached since, died with the old network namespace,
        # then plug made it again.
        present = {nics[0].host_dev}
        self.vif.link_exists.side_effect = lambda dev: dev in present
        self.patch('novalxcdriver.vif.names_in', return_value={'eth0'})

        def plug(inst, vif):
            # As vif.plug: a pair only where its host end is missing.
            if vif['devname'] not in present:
                present.update({vif['devname'],
                                (vif_mod.PEER_PREFIX + vif['id'])[:14]})
        self.vif.plug.side_effect = plug
        self.drv._restarted(instance.name)
        lookup.assert_called_once_with(instance.uuid)
        self.assertEqual(2, self.vif.plug.call_count)
        self.vif.hot_plug.assert_called_once_with(4242, nics[1])

    def test_restart_with_every_nic_needs_nothing(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        lookup = self.patch_object(self.drv, '_instance_and_network_info')
        self.reset_vif()
        self.vif.link_exists.return_value = True
        self.drv._restarted(instance.name)
        lookup.assert_not_called()
        self.vif.plug.assert_not_called()

    def test_restart_of_another_hosts_container_ignored(self):
        self.write_container('instance-00000009', UUID2, host='compute-2',
                             cid=5)
        lookup = self.patch_object(self.drv, '_instance_and_network_info')
        self.drv._restarted('instance-00000009')
        lookup.assert_not_called()

    def _spawned_with_one(self, state='RUNNING'):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info[:1],
                   power_on=state == 'RUNNING')
        self.reset_vif()
        return instance

    def test_attach_running(self):
        instance = self._spawned_with_one()
        new = self.network_info[1]
        self.drv.attach_interface(self.context, instance, None, new)
        self.vif.plug.assert_called_once_with(instance, new)
        nic = vif_mod.nic_for(new, 1)
        self.vif.hot_plug.assert_called_once_with(4242, nic)
        self.assertEqual(['eth0', 'eth1'], [
            n.name for n in spec_mod.parse_nics(self.config(instance))])

    def test_attach_stopped_waits_for_start(self):
        instance = self._spawned_with_one('STOPPED')
        self.drv.attach_interface(self.context, instance, None,
                                  self.network_info[1])
        self.vif.plug.assert_called_once()
        self.vif.hot_plug.assert_not_called()
        self.assertEqual(2, len(spec_mod.parse_nics(self.config(instance))))

    def test_attach_takes_first_free_name(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        self.drv.detach_interface(self.context, instance,
                                  self.network_info[0])
        third = test_vif.ovs_vif('5a5a5a5a-0000-4000-8000-000000000003')
        self.drv.attach_interface(self.context, instance, None, third)
        self.assertEqual([('eth1', test_vif.PORT2), ('eth0', third['id'])], [
            (n.name, n.port_id)
            for n in spec_mod.parse_nics(self.config(instance))])

    def test_attach_failure_leaves_nothing(self):
        instance = self._spawned_with_one()
        before = self.config(instance)
        self.vif.hot_plug.side_effect = exception.CommandFailed(
            cmd='ip', exit_code=2, stderr='File exists')
        new = self.network_info[1]
        self.assertRaises(nova_exc.InterfaceAttachFailed,
                          self.drv.attach_interface, self.context, instance,
                          None, new)
        self.vif.unplug.assert_called_once_with(instance, new,
                                                ignore_errors=True)
        self.assertEqual(before, self.config(instance))

    def test_attach_unsupported_type(self):
        instance = self._spawned_with_one()
        self.assertRaises(nova_exc.InterfaceAttachFailed,
                          self.drv.attach_interface, self.context, instance,
                          None, test_vif.ovs_vif(test_vif.PORT2,
                                                 type='vhostuser'))
        self.vif.plug.assert_not_called()

    def test_attach_twice_is_a_no_op(self):
        instance = self._spawned_with_one()
        self.drv.attach_interface(self.context, instance, None,
                                  self.network_info[0])
        self.vif.plug.assert_not_called()

    def test_attach_to_missing_instance(self):
        self.assertRaises(nova_exc.InstanceNotFound,
                          self.drv.attach_interface, self.context,
                          self.instance(), None, self.network_info[0])

    def test_detach(self):
        instance = self.instance()
        self.spawn(instance, network_info=self.network_info)
        self.reset_vif()
        self.drv.detach_interface(self.context, instance,
                                  self.network_info[0])
        self.vif.unplug.assert_called_once_with(instance,
                                                self.network_info[0])
        self.assertEqual([test_vif.PORT2], [
            n.port_id for n in spec_mod.parse_nics(self.config(instance))])

    def test_detach_unknown_port_still_unplugs(self):
        instance = self._spawned_with_one()
        before = self.config(instance)
        self.drv.detach_interface(self.context, instance,
                                  self.network_info[1])
        self.vif.unplug.assert_called_once()
        self.assertEqual(before, self.config(instance))

    def test_detach_failure_still_forgets_the_nic(self):
        instance = self._spawned_with_one()
        self.vif.unplug.side_effect = (
            nova_exc.VirtualInterfaceUnplugException(reason='x'))
        self.assertRaises(nova_exc.VirtualInterfaceUnplugException,
                          self.drv.detach_interface, self.context, instance,
                          self.network_info[0])
        self.assertEqual((), spec_mod.parse_nics(self.config(instance)))


class ConfigDriveTest(_Base):

    def setUp(self):
        super().setUp()
        self.init_host()
        self.write = self.patch('novalxcdriver.configdrive.write')

    def config(self, instance):
        with open(os.path.join(self.lxc_path, instance.name,
                               'config')) as f:
            return f.read()

    def test_written_and_mounted_when_asked(self):
        instance = self.instance(config_drive='True')
        network_info = network_model.NetworkInfo()
        self.drv.spawn(self.context, instance, self.image_meta(),
                       [('/etc/motd', 'hi')], 'secret', {},
                       network_info=network_info)
        path = os.path.join(self.state_path, 'rootfs', '0', 'config-drive')
        self.write.assert_called_once_with(
            path, instance, [('/etc/motd', 'hi')], 'secret', network_info,
            self.drv._ids.idmap(0))
        self.assertIn('lxc.mount.entry = %s config-drive none '
                      'bind,ro,create=dir 0 0' % path, self.config(instance))

    def test_none_unless_asked(self):
        instance = self.instance()
        self.spawn(instance)
        self.write.assert_not_called()
        self.assertNotIn('config-drive', self.config(instance))

    def test_failure_leaves_nothing(self):
        self.write.side_effect = OSError('disk full')
        self.assertRaises(OSError, self.spawn,
                          self.instance(config_drive='True'))
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertEqual([], os.listdir(self.lxc_path))
        self.lxc.start.assert_not_called()


class SnapshotTest(_Base):
    """Nova's snapshot contract; snapshot.py's own work is mocked."""

    IMAGE = 'c0ffee00-0000-4000-8000-000000000001'

    def setUp(self):
        super().setUp()
        self.init_host()
        self.instance_ = self.instance()
        self.spawn(self.instance_)
        self.image_api = mock.Mock()
        self.image_api.get.return_value = {'name': 'my-snap'}
        self.patch('novalxcdriver.driver.glance.API',
                   return_value=self.image_api)
        self.snap = mock.Mock(stall=0.004, method='btrfs')
        self.snap.stream.return_value = mock.Mock(bytes=10)
        self.take = self.patch(
            'novalxcdriver.container.Container.take_snapshot',
            autospec=True, return_value=self.snap)
        self.end = self.patch(
            'novalxcdriver.container.Container.end_snapshot', autospec=True)
        self.states_seen = []

    def update_task_state(self, task_state, expected_state=None):
        self.states_seen.append((task_state, expected_state))

    def snapshot(self):
        self.drv.snapshot(self.context, self.instance_, self.IMAGE,
                          self.update_task_state)

    def test_task_states_and_upload(self):
        def take(c, image_id):
            self.assertEqual([(task_states.IMAGE_PENDING_UPLOAD, None)],
                             self.states_seen)
            return self.snap
        self.take.side_effect = take
        self.snapshot()
        self.assertEqual([(task_states.IMAGE_PENDING_UPLOAD, None),
                          (task_states.IMAGE_UPLOADING,
                           task_states.IMAGE_PENDING_UPLOAD)],
                         self.states_seen)
        args, kwargs = self.image_api.update.call_args
        self.assertEqual(self.IMAGE, args[1])
        self.assertEqual(('raw', 'bare', 'my-snap'),
                         (args[2]['disk_format'],
                          args[2]['container_format'], args[2]['name']))
        self.assertIs(self.snap.stream.return_value, kwargs['data'])
        self.assertFalse(kwargs['purge_props'])
        self.end.assert_called_once_with(mock.ANY, self.snap)

    def test_no_container(self):
        self.assertRaises(nova_exc.InstanceNotRunning, self.drv.snapshot,
                          self.context, self.instance(uuid=UUID2),
                          self.IMAGE,
                          self.update_task_state)
        self.take.assert_not_called()
        self.image_api.update.assert_not_called()

    def test_deleted_during_the_upload(self):
        def upload(*args, **kwargs):
            self.drv.destroy(self.context, self.instance_, [])
            raise exception.SnapshotFailed(name='x', reason='tar killed')
        self.image_api.update.side_effect = upload
        self.assertRaises(nova_exc.InstanceNotFound, self.snapshot)
        self.end.assert_called_once()

    def test_deleted_after_a_whole_upload(self):
        def upload(*args, **kwargs):
            self.drv.destroy(self.context, self.instance_, [])
        self.image_api.update.side_effect = upload
        self.assertRaises(nova_exc.InstanceNotFound, self.snapshot)

    def test_failure_kept_and_cleaned_up(self):
        self.image_api.update.side_effect = exception.SnapshotFailed(
            name='x', reason='tar exited 2')
        self.assertRaises(exception.SnapshotFailed, self.snapshot)
        self.end.assert_called_once_with(mock.ANY, self.snap)


class Crash(Exception):
    """The process dies here."""


class RebuildTest(_Base):
    """rebuild: a fresh root from another image in the same container."""

    def setUp(self):
        super().setUp()
        self.init_host()
        self.patch('novalxcdriver.disk.Disk.detach_loops')
        self.disk_create = self.patch('novalxcdriver.disk.Disk.create',
                                      autospec=True,
                                      side_effect=self._new_disk)
        # A clean halt, at once.
        self.lxc.request_halt.side_effect = self._halt
        self.instance_ = self.instance(ephemeral_gb=1)
        self.instance_.system_metadata = {}
        self.spawn(self.instance_)
        self.root = self.drv._container(self.instance_).rootfs()
        self.upper_file = os.path.join(self.root.upper, 'f')
        with open(self.upper_file, 'w') as f:
            f.write('the container wrote this')
        self.ephemeral_file = os.path.join(
            self.root.ephemeral_disk.mountpoint, 'f')
        with open(self.ephemeral_file, 'w') as f:
            f.write('on the ephemeral disk')
        self.record = self.drv._records.get(UUID)
        self.saves = []
        self.patch_object(self.instance_, 'save', side_effect=(
            lambda **kw: self.saves.append((self.instance_.task_state,
                                            kw))))
        self.instance_.task_state = 'rebuilding'
        self.lxc.start.reset_mock()
        self.rootfs_mount.reset_mock()
        self.fetch.reset_mock()
        self.detach = mock.Mock()
        self.attach = mock.Mock()

    def _halt(self, name, lxc_path, timeout):
        self.states[name] = 'STOPPED'
        return True

    def _new_disk(self, d, size_gb, owner=None):
        # Disk.create: a new, empty file system mounted on its mountpoint.
        open(d.image_path, 'x').close()
        os.makedirs(d.mountpoint, exist_ok=True)
        for name in os.listdir(d.mountpoint):
            os.unlink(os.path.join(d.mountpoint, name))

    @staticmethod
    def other_image(**props):
        return objects.ImageMeta.from_dict({
            'id': OTHER_IMAGE_ID, 'name': 'busybox-2',
            'container_format': 'bare', 'disk_format': 'raw',
            'properties': props})

    def rebuild(self, image_meta=None, **kwargs):
        self.drv.rebuild(
            self.context, self.instance_, image_meta or self.other_image(),
            kwargs.pop('injected_files', []),
            kwargs.pop('admin_password', 'new-secret'), {}, [],
            self.detach, self.attach, **kwargs)

    def assert_untouched(self):
        with open(self.upper_file) as f:
            self.assertEqual('the container wrote this', f.read())
        self.assertEqual(self.record, self.drv._records.get(UUID))
        self.assertIsNone(self.root.replacement())

    def assert_rebuilt_on(self, image_id):
        self.assertFalse(os.path.exists(self.upper_file))
        self.assertEqual([], os.listdir(self.root.upper))
        record = self.drv._records.get(UUID)
        self.assertEqual(image_id, record.image_id)
        self.assertEqual(
            dataclasses.replace(self.record, image_id=image_id, pid=0),
            dataclasses.replace(record, pid=0))
        self.assertEqual(0, self.drv._ids.find(UUID))
        with open(os.path.join(self.lxc_path, self.instance_.name,
                               'config')) as f:
            config = f.read()
        self.assertEqual(image_id, spec_mod.parse_record(config)['image_id'])
        self.assertIn('lxc.idmap = u 0 100000 65536\n', config)
        self.assertEqual(
            os.path.join(self.state_path, 'images', image_id, 'rootfs'),
            self.rootfs_mount.call_args.args[1])
        self.assertIsNone(self.root.replacement())
        self.assertEqual('RUNNING', self.states[self.instance_.name])

    def test_fresh_root_same_container(self):
        calls = mock.Mock()
        calls.attach_mock(self.lxc.request_halt, 'halt')
        calls.attach_mock(self.detach, 'detach')
        calls.attach_mock(self.attach, 'attach')
        calls.attach_mock(self.fetch, 'fetch')
        calls.attach_mock(self.lxc.start, 'start')
        self.rebuild()
        self.assert_rebuilt_on(OTHER_IMAGE_ID)
        self.assertEqual(['fetch', 'halt', 'detach', 'attach', 'start'],
                         [c[0] for c in calls.mock_calls])
        self.assertEqual(OTHER_IMAGE_ID, self.fetch.call_args.args[1])
        # Nova's task states, as _rebuild_default_impl moves them.
        self.assertEqual(
            [('rebuild_block_device_mapping',
              {'expected_task_state': ['rebuilding']}),
             ('rebuild_spawning',
              {'expected_task_state': ['rebuild_block_device_mapping']})],
            self.saves)
        self.detach.assert_called_once_with(self.context, [])
        self.attach.assert_called_once_with(self.context, self.instance_,
                                            [])
        # Its ephemeral disk is made anew, empty.
        self.disk_create.assert_called_once()
        d, size_gb, owner = self.disk_create.call_args.args
        self.assertEqual((self.root.ephemeral_disk.image_path, 1, 100000,
                          100000), (d.image_path, size_gb, owner.uid_start,
                                    owner.gid_start))
        self.assertFalse(os.path.exists(self.ephemeral_file))
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(self.instance_).state)

    def test_preserve_ephemeral_keeps_it(self):
        self.rebuild(preserve_ephemeral=True)
        self.assert_rebuilt_on(OTHER_IMAGE_ID)
        self.disk_create.assert_not_called()
        with open(self.ephemeral_file) as f:
            self.assertEqual('on the ephemeral disk', f.read())

    def test_same_image_again(self):
        self.rebuild(self.image_meta())
        self.assert_rebuilt_on(IMAGE_ID)
        self.fetch.assert_not_called()

    def test_clean_halt_as_nova_default_rebuild(self):
        self.cfg.config(shutdown_timeout=30)
        self.cfg.config(group='compute', shutdown_retry_interval=7)
        self.rebuild()
        self.lxc.request_halt.assert_called_once_with(
            self.instance_.name, self.lxc_path, 7)
        self.lxc.request_halt.reset_mock()
        self.instance_.system_metadata['image_os_shutdown_timeout'] = '3'
        self.rebuild()
        self.lxc.request_halt.assert_called_once_with(
            self.instance_.name, self.lxc_path, 3)

    def test_stopped_server_started_for_nova_to_stop(self):
        self.states[self.instance_.name] = 'STOPPED'
        self.rebuild()
        self.lxc.request_halt.assert_not_called()
        self.assert_rebuilt_on(OTHER_IMAGE_ID)

    def test_bad_image_leaves_the_server_running_untouched(self):
        self.fetch.side_effect = (
            lambda ctx, image_id, dest:
                test_images.write_rootfs_tarball(dest, with_init=False))
        e = self.assertRaises(nova_exc.ImageUnacceptable, self.rebuild)
        self.assertIn('/sbin/init', str(e))
        self.assert_untouched()
        self.assertEqual('RUNNING', self.states[self.instance_.name])
        self.lxc.request_halt.assert_not_called()
        self.assertEqual([], self.saves)
        self.mount.unmount_tree.assert_not_called()

    def test_image_format_refused_untouched(self):
        meta = self.other_image()
        meta.disk_format = 'vmdk'
        self.assertRaises(nova_exc.ImageUnacceptable, self.rebuild, meta)
        self.assert_untouched()
        self.fetch.assert_not_called()

    def test_image_cached_but_gone_from_glance(self):
        # Spawn cached IMAGE_ID; Glance has forgotten it since.
        self.fetch.side_effect = nova_exc.ImageNotFound(image_id=IMAGE_ID)
        self.rebuild(self.image_meta())
        self.assert_rebuilt_on(IMAGE_ID)

    def test_image_gone_everywhere_refused_untouched(self):
        self.fetch.side_effect = nova_exc.ImageNotFound(
            image_id=OTHER_IMAGE_ID)
        self.assertRaises(nova_exc.ImageNotFound, self.rebuild)
        self.assert_untouched()
        self.lxc.request_halt.assert_not_called()

    def test_volumes_refused_untouched(self):
        bdi = {'block_device_mapping': [{'mount_device': '/dev/vda',
                                         'connection_info': {}}]}
        self.assertRaises(nova_exc.InvalidInput, self.rebuild,
                          block_device_info=bdi, reimage_boot_volume=True)
        self.assert_untouched()
        self.fetch.assert_not_called()

    def test_reimage_boot_volume_flag_of_image_backed_server(self):
        # Nova's API sets it for every rebuild from microversion 2.93.
        self.rebuild(reimage_boot_volume=True)
        self.assert_rebuilt_on(OTHER_IMAGE_ID)

    def test_flavor_too_big_now_refused_untouched(self):
        self.memory.return_value = (128, 0)
        self.assertRaises(nova_exc.InvalidInput, self.rebuild)
        self.assert_untouched()
        self.lxc.request_halt.assert_not_called()

    def test_unknown_instance(self):
        self.assertRaises(nova_exc.InstanceNotFound, self.drv.rebuild,
                          self.context, self.instance(uuid=UUID2, id=2),
                          self.other_image(), [], None, {}, [], self.detach,
                          self.attach)

    def test_deleted_meanwhile_leaves_the_old_root(self):
        self.instance_.save.side_effect = (
            nova_exc.UnexpectedDeletingTaskStateError(
                instance_uuid=UUID, expected='rebuilding',
                actual='deleting'))
        self.assertRaises(nova_exc.UnexpectedDeletingTaskStateError,
                          self.rebuild)
        self.assert_untouched()
        self.lxc.start.assert_not_called()

    def test_nics_and_their_names_kept(self):
        plug = self.patch('novalxcdriver.vif.plug')
        self.patch('novalxcdriver.vif.link_exists', return_value=False)
        network_info = network_model.NetworkInfo([
            test_vif.bridge_vif(test_vif.PORT, active=True),
            test_vif.bridge_vif(test_vif.PORT2, active=True)])
        c = self.drv._container(self.instance_)
        # eth1 gone, eth2 attached: names other than spawn would give.
        nics = vif_mod.nics_for(network_info)
        c.set_nics((nics[0], dataclasses.replace(nics[1], name='eth2')))
        before = c.nics()
        self.rebuild(network_info=network_info)
        self.assertEqual(before, c.nics())
        self.assertEqual(['eth0', 'eth2'], [n.name for n in c.nics()])
        self.assertEqual([mock.call(self.instance_, vif)
                          for vif in network_info] * 2,
                         plug.call_args_list)

    def test_config_drive_made_anew(self):
        write = self.patch('novalxcdriver.configdrive.write',
                           side_effect=self._write_drive)
        drive = self.root.config_drive
        self._write_drive(drive, password='old-secret')
        self.instance_.config_drive = 'True'
        self.rebuild(injected_files=[('/etc/motd', 'hi')],
                     admin_password='new-secret')
        write.assert_called_once()
        self.assertEqual(
            {'instance': self.instance_,
             'injected_files': [('/etc/motd', 'hi')],
             'admin_password': 'new-secret', 'network_info': [],
             'idmap': self.record.idmap},
            write.call_args.kwargs)
        with open(os.path.join(drive, 'meta_data.json')) as f:
            self.assertEqual('new-secret', f.read())
        self.assertIn('lxc.mount.entry = %s config-drive' % drive,
                      self.config())

    def test_config_drive_failure_leaves_the_server_untouched(self):
        self.patch('novalxcdriver.configdrive.write',
                   side_effect=OSError('disk full'))
        self.instance_.config_drive = 'True'
        self.assertRaises(OSError, self.rebuild)
        self.assert_untouched()
        self.lxc.request_halt.assert_not_called()
        self.assertEqual([], [n for n in os.listdir(self.root.path)
                              if n.startswith('config-drive')])

    def test_config_drive_no_longer_wanted_removed(self):
        self._write_drive(self.root.config_drive, password='old-secret')
        self.rebuild()
        self.assertFalse(os.path.exists(self.root.config_drive))
        self.assertNotIn('config-drive', self.config())

    def config(self):
        with open(os.path.join(self.lxc_path, self.instance_.name,
                               'config')) as f:
            return f.read()

    @staticmethod
    def _write_drive(path, instance=None, injected_files=(),
                     admin_password=None, network_info=None, idmap=None,
                     password=None):
        os.mkdir(path)
        with open(os.path.join(path, 'meta_data.json'), 'w') as f:
            f.write(password or admin_password)

    def crash_after_commit(self):
        """A rebuild that dies once it committed to the new root."""
        with mock.patch('novalxcdriver.rootfs.Rootfs.replace_layers',
                        autospec=True, side_effect=Crash()):
            self.assertRaises(Crash, self.rebuild)
        self.assertEqual(OTHER_IMAGE_ID,
                         self.root.replacement().image_id)
        self.assertEqual(IMAGE_ID, self.drv._records.get(UUID).image_id)
        self.assertEqual('STOPPED', self.states[self.instance_.name])

    def restart_driver(self):
        self.drv.cleanup_host(HOST)
        self.drv = driver.LXCDriver(self.virtapi)
        self.init_host()

    def test_crash_after_commit_finished_by_hard_reboot(self):
        self.crash_after_commit()
        self.restart_driver()
        # nova-compute's start deletes nothing and mounts nothing of it.
        self.rootfs_mount.assert_not_called()
        self.assertTrue(os.path.exists(self.upper_file))
        self.drv.reboot(self.context, self.instance_, [], 'HARD')
        self.assert_rebuilt_on(OTHER_IMAGE_ID)
        self.assertFalse(os.path.exists(self.ephemeral_file))

    def test_crash_after_commit_finished_by_power_on(self):
        self.crash_after_commit()
        self.restart_driver()
        self.drv.power_on(self.context, self.instance_, [])
        self.assert_rebuilt_on(OTHER_IMAGE_ID)

    def test_crash_after_commit_then_rebuilt_again(self):
        self.crash_after_commit()
        self.restart_driver()
        self.instance_.task_state = 'rebuilding'
        self.rebuild(self.image_meta())
        self.assert_rebuilt_on(IMAGE_ID)

    def test_rescue_left_by_a_failure_goes_with_the_old_root(self):
        # A rescue cut short leaves its record and rescue root; Nova puts
        # the server in ERROR, from which it may be rebuilt.
        rescue_meta = objects.ImageMeta.from_dict({
            'id': OTHER_IMAGE_ID, 'name': 'rescue', 'disk_format': 'raw',
            'container_format': 'bare', 'properties': {}})
        self.drv.rescue(self.context, self.instance_, [], rescue_meta, 'pw',
                        None, objects.ShareMappingList())
        rescue_root = os.path.join(self.root.path, 'rescue')
        self.assertTrue(os.path.isdir(rescue_root))
        self.assertEqual(OTHER_IMAGE_ID,
                         self.drv._records.get(UUID).rescue_image_id)
        self.instance_.vm_state = 'error'
        self.rebuild(self.image_meta())
        self.assertFalse(os.path.lexists(rescue_root))
        self.assert_rebuilt_on(IMAGE_ID)
        self.assertEqual('', self.drv._records.get(UUID).rescue_image_id)

    def test_torn_replacement_record_a_clear_fault_until_rebuilt(self):
        self.crash_after_commit()
        with open(os.path.join(self.root.path, 'replacing.json'), 'w') as f:
            f.write('{"image_id": ')
        e = self.assertRaises(exception.ReplacementUnreadable,
                              self.drv.reboot, self.context, self.instance_,
                              [], 'HARD')
        self.assertIn('openstack server rebuild', str(e))
        self.lxc.start.assert_not_called()
        self.instance_.task_state = 'rebuilding'
        self.rebuild()
        self.assert_rebuilt_on(OTHER_IMAGE_ID)
