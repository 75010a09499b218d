"""Tests of LXCDriver's cold migration, resize, evacuate and destroy_disks.

As test_driver: the lxc layer, mounts and host facts mocked, containers,
IDs and records for real over temporary directories. The copy between
hosts (migration.fetch) and VIF plumbing (vif.plug/unplug) are mocked.
"""

import json
import os
from unittest import mock

from nova.compute import power_state
from nova.compute import task_states
from nova import exception as nova_exc
from nova.network import model as network_model
from nova import objects

from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import migration
from novalxcdriver import record as record_mod
from tests.unit import test_driver
from tests.unit import test_images
from tests.unit import test_vif

UUID = test_driver.UUID
UUID2 = test_driver.UUID2
HOST = test_driver.HOST
SIZE = test_driver.SIZE
DEST_IP = '192.0.2.20'


def flavor(root_gb=1, ephemeral_gb=0, memory_mb=256):
    return objects.Flavor(
        id=2, name='m1.other', memory_mb=memory_mb, vcpus=1, root_gb=root_gb,
        ephemeral_gb=ephemeral_gb, swap=0, flavorid='2', rxtx_factor=1.0,
        vcpu_weight=1, disabled=False, is_public=True, extra_specs={},
        projects=[])


class _Base(test_driver._Base):

    def setUp(self):
        super().setUp()
        self.init_host()
        self.patch('novalxcdriver.disk.Disk.detach_loops')
        self.vif_plug = self.patch('novalxcdriver.vif.plug')
        self.vif_unplug = self.patch('novalxcdriver.vif.unplug')
        self.remove_leftovers = self.patch(
            'novalxcdriver.vif.remove_leftovers')
        self.get_migration = self.patch_object(
            objects.Migration, 'get_by_id',
            return_value=objects.Migration(id=7, source_compute=HOST,
                                           dest_compute='compute-2'))
        self.network_info = network_model.NetworkInfo([
            test_vif.bridge_vif(test_vif.PORT2, active=True)])

    def instance(self, **kwargs):
        instance = super().instance(**kwargs)
        instance.migration_context = None
        return instance

    def root_path(self, cid=0):
        return os.path.join(self.state_path, 'rootfs', str(cid))

    def assert_stays_running(self, instance):
        self.assertEqual('RUNNING', self.states[instance.name])
        self.lxc.kill.assert_not_called()
        self.lxc.request_halt.assert_not_called()
        self.assertEqual(record_mod.READY,
                         self.drv._records.get(instance.uuid).state)
        self.vif_unplug.assert_not_called()
        self.mount.unmount_tree.assert_not_called()


class MigrateDiskAndPowerOffTest(_Base):
    """The source's half: refuse early, or stop and hand the disks over."""

    def migrate(self, instance, new_flavor, network_info=None):
        return self.drv.migrate_disk_and_power_off(
            self.context, instance, DEST_IP, new_flavor,
            self.network_info if network_info is None else network_info)

    def spawned(self, **kwargs):
        instance = self.instance(**kwargs)
        self.spawn(instance)
        return instance

    def test_shrink_refused_before_anything(self):
        instance = self.spawned(root_gb=2)
        e = self.assertRaises(nova_exc.InstanceFaultRollback, self.migrate,
                              instance, flavor(root_gb=1))
        self.assertIsInstance(e.inner_exception, nova_exc.ResizeError)
        self.assertIn('root disk cannot shrink from 2 GiB to 1 GiB',
                      str(e.inner_exception))
        self.assert_stays_running(instance)

    def test_ephemeral_shrink_refused_before_anything(self):
        instance = self.spawned(ephemeral_gb=2)
        e = self.assertRaises(nova_exc.InstanceFaultRollback, self.migrate,
                              instance, flavor(ephemeral_gb=1))
        self.assertIsInstance(e.inner_exception, nova_exc.ResizeError)
        self.assert_stays_running(instance)

    def test_root_disk_coming_refused(self):
        instance = self.spawned(root_gb=0)
        e = self.assertRaises(nova_exc.InstanceFaultRollback, self.migrate,
                              instance, flavor(root_gb=1))
        self.assertIsInstance(e.inner_exception, nova_exc.ResizeError)
        self.assert_stays_running(instance)

    def test_unprivileged_compute_hands_its_disks_over(self):
        # The copy goes through privsep (migrationcopy): nothing to refuse.
        self.patch('os.geteuid', return_value=990)
        for n, root_gb in enumerate((1, 0)):
            instance = self.spawned(root_gb=root_gb, id=n + 1,
                                    uuid='00000000-0000-4000-8000-%012d' % n)
            info = migration.DiskInfo.from_json(
                self.migrate(instance, flavor(root_gb=root_gb)))
            self.assertEqual(instance.uuid, info.instance_uuid)

    def test_volumes_refused_before_anything(self):
        instance = self.spawned()
        bdi = {'block_device_mapping': [{'mount_device': '/dev/vdb',
                                         'connection_info': {}}]}
        e = self.assertRaises(
            nova_exc.InstanceFaultRollback,
            self.drv.migrate_disk_and_power_off, self.context, instance,
            DEST_IP, flavor(), self.network_info, block_device_info=bdi)
        self.assertIsInstance(e.inner_exception, nova_exc.ResizeError)
        self.assert_stays_running(instance)

    def test_same_host_sets_the_container_aside(self):
        instance = self.spawned()
        instance.migration_context = objects.MigrationContext(
            instance_uuid=UUID, migration_id=7)
        self.get_migration.return_value = objects.Migration(
            id=7, source_compute=HOST, dest_compute=HOST)
        info = migration.DiskInfo.from_json(self.migrate(instance,
                                                         flavor()))
        self.get_migration.assert_called_once_with(self.context, 7)
        # The new container may take the name and record; this one's
        # disks wait, untouched, under an ID still reserved.
        self.assertEqual(self.root_path(), info.rootfs)
        self.assertTrue(os.path.isdir(self.root_path()))
        self.assertIsNone(self.drv._records.get(UUID))
        self.assertEqual([], os.listdir(self.lxc_path))
        parked = self.drv._resize_sources.get(UUID)
        self.assertEqual((0, record_mod.MIGRATING),
                         (parked.cid, parked.state))
        self.assertIsNone(self.drv._ids.find(UUID))
        self.assertTrue(self.drv._ids.reservation(0).resize_source)
        self.assertEqual([], self.drv.list_instance_uuids())
        # Not a spawn left half way: init_host keeps and mounts nothing.
        self.rootfs_mount.reset_mock()
        self.drv.init_host(HOST)
        self.rootfs_mount.assert_not_called()
        self.assertTrue(os.path.isdir(self.root_path()))

    def test_other_host_in_migration_context_accepted(self):
        instance = self.spawned()
        instance.migration_context = objects.MigrationContext(
            instance_uuid=UUID, migration_id=7)
        json.loads(self.migrate(instance, flavor()))
        self.get_migration.assert_called_once_with(self.context, 7)
        self.assertEqual('STOPPED', self.states[instance.name])

    def test_not_here(self):
        self.assertRaises(nova_exc.InstanceNotFound, self.migrate,
                          self.instance(), flavor())

    def test_hands_over_root_and_ephemeral_disks(self):
        instance = self.spawned(root_gb=1, ephemeral_gb=1)
        root = self.root_path()
        for name in ('root.img', 'ephemeral.img'):
            open(os.path.join(root, name), 'w').close()
        info = json.loads(self.migrate(instance,
                                       flavor(root_gb=2, ephemeral_gb=1)))
        self.assertEqual(['root.img', 'ephemeral.img'], info['files'])
        self.assertEqual(UUID, info['instance_uuid'])
        self.assertEqual(HOST, info['source_host'])
        self.assertEqual(root, info['rootfs'])
        self.assertEqual({'uid_start': 100000, 'gid_start': 100000,
                          'size': SIZE}, info['idmap'])
        self.assertEqual(test_driver.IMAGE_ID, info['image_id'])
        # Where the source's cache holds that image, should Glance lose it.
        self.assertEqual(os.path.join(self.state_path, 'images',
                                      test_driver.IMAGE_ID),
                         info['image_cache'])
        # The token beside the disks: a destination on this machine finds
        # it and copies locally.
        with open(os.path.join(root, migration.TOKEN_FILE)) as f:
            self.assertEqual(info['token'], f.read().strip())
        self.assertTrue(info['token'])
        # The sizes the disks have now: the old flavor's.
        self.assertEqual((1, 1), (info['root_gb'], info['ephemeral_gb']))
        # What the destination reads back.
        parsed = migration.DiskInfo.from_json(json.dumps(info))
        self.assertEqual(str(self.drv._my_ip), parsed.source_ip)

    def test_stops_unplugs_unmounts_and_marks_migrating(self):
        instance = self.spawned(root_gb=0)
        info = json.loads(self.migrate(instance, flavor(root_gb=0)))
        # No root disk: the directory of its writes travels.
        self.assertEqual(['root'], info['files'])
        self.assertEqual('STOPPED', self.states[instance.name])
        self.assertEqual(power_state.SHUTDOWN,
                         self.drv.get_info(instance).state)
        self.vif_unplug.assert_called_once_with(instance,
                                                self.network_info[0])
        self.mount.unmount_tree.assert_any_call(self.root_path(), mock.ANY)
        record = self.drv._records.get(UUID)
        self.assertEqual(record_mod.MIGRATING, record.state)
        # The disks, their ID and config stay until confirm or revert.
        self.assertTrue(os.path.isdir(self.root_path()))
        self.assertEqual(0, self.drv._ids.find(UUID))
        self.assertTrue(os.path.exists(os.path.join(
            self.lxc_path, instance.name, 'config')))

    def test_remount_leaves_migrating_disks_alone(self):
        instance = self.spawned()
        self.migrate(instance, flavor())
        self.rootfs_mount.reset_mock()
        # A restart of nova-compute while the destination copies.
        self.drv.init_host(HOST)
        self.rootfs_mount.assert_not_called()
        self.assertEqual(record_mod.MIGRATING,
                         self.drv._records.get(UUID).state)


class SourceEndTest(_Base):
    """confirm_migration and finish_revert_migration, on the source."""

    def setUp(self):
        super().setUp()
        self.instance_ = self.instance()
        self.spawn(self.instance_)
        self.drv.migrate_disk_and_power_off(
            self.context, self.instance_, DEST_IP, flavor(root_gb=2),
            self.network_info)
        self.vif_unplug.reset_mock()
        self.lxc.start.reset_mock()
        self.rootfs_mount.reset_mock()
        self.migration = objects.Migration(id=7, source_compute=HOST,
                                           dest_compute='compute-2')

    def test_confirm_destroys_the_source_copy(self):
        self.drv.confirm_migration(self.context, self.migration,
                                   self.instance_, self.network_info)
        self.assertIsNone(self.drv._records.get(UUID))
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertFalse(os.path.exists(self.root_path()))
        self.assertEqual([], os.listdir(self.lxc_path))
        self.assertFalse(self.drv.instance_exists(self.instance_))
        # The VIF names are the destination's now.
        self.vif_unplug.assert_not_called()
        self.remove_leftovers.assert_not_called()
        self.lxc.start.assert_not_called()

    def test_revert_brings_it_back(self):
        self.drv.finish_revert_migration(self.context, self.instance_,
                                         self.network_info, self.migration)
        record = self.drv._records.get(UUID)
        self.assertEqual(record_mod.READY, record.state)
        self.assertIsNone(record.disk_idmap)
        self.assertEqual(0, record.cid)
        self.rootfs_mount.assert_called_once()
        self.assertEqual(self.root_path(),
                         self.rootfs_mount.call_args.args[0].path)
        self.vif_plug.assert_called_once_with(self.instance_,
                                              self.network_info[0])
        self.lxc.start.assert_called_once_with(self.instance_.name,
                                               self.lxc_path)
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(self.instance_).state)
        # The migration is over: no destination may take these disks
        # for local ones any more.
        self.assertFalse(os.path.exists(os.path.join(
            self.root_path(), migration.TOKEN_FILE)))

    def test_revert_powered_off(self):
        self.drv.finish_revert_migration(self.context, self.instance_,
                                         self.network_info, self.migration,
                                         power_on=False)
        self.assertEqual(record_mod.READY,
                         self.drv._records.get(UUID).state)
        self.lxc.start.assert_not_called()
        self.assertEqual(power_state.SHUTDOWN,
                         self.drv.get_info(self.instance_).state)


class FinishMigrationTest(_Base):
    """The destination's half: pull the disks, shift, grow, start."""

    # The source's container ID was 3: its disks' owners.
    SOURCE_IDMAP = ids.Idmap(100000 + 3 * SIZE, 100000 + 3 * SIZE, SIZE)

    def setUp(self):
        super().setUp()
        self.source = os.path.join(self.tmp, 'source', 'rootfs', '3')
        self.fetched = []
        self.migration_fetch = self.patch(
            'novalxcdriver.driver.migration_mod.fetch',
            side_effect=self._fetch)
        self.grow = self.patch('novalxcdriver.disk.Disk.grow',
                               autospec=True)
        # The fake disks hold no superblock; btrfs grows mounted.
        self.patch('novalxcdriver.disk.Disk.filesystem',
                   return_value='btrfs')
        self.disk_create = self.patch('novalxcdriver.disk.Disk.create',
                                      autospec=True)
        self.migration = objects.Migration(id=7, source_compute='compute-0',
                                           dest_compute=HOST)

    def _fetch(self, info, dest_dir):
        # What the copy leaves: the files named, under dest_dir.
        self.fetched.append((info, dest_dir))
        made = []
        for name in info.files:
            path = os.path.join(dest_dir, name)
            if name == migration.ROOT_DIR:
                os.makedirs(os.path.join(path, 'upper'))
                os.makedirs(os.path.join(path, 'work'))
            else:
                open(path, 'w').close()
            made.append(path)
        return made

    def disk_info(self, **updates):
        fields = dict(
            instance_uuid=UUID, source_host='compute-0',
            source_ip='192.0.2.10', token='f' * 32, rootfs=self.source,
            files=(migration.ROOT_DISK,), idmap=self.SOURCE_IDMAP,
            image_id=test_driver.IMAGE_ID,
            image_cache=os.path.join(self.tmp, 'source', 'images',
                                     test_driver.IMAGE_ID),
            root_gb=1, ephemeral_gb=0)
        fields.update(updates)
        return migration.DiskInfo(**fields).to_json()

    def finish(self, instance, disk_info, power_on=True):
        self.drv.finish_migration(
            self.context, self.migration, instance, disk_info,
            self.network_info, self.image_meta(), True, {},
            power_on=power_on)

    def test_received_shifted_grown_and_started(self):
        instance = self.instance(root_gb=2)
        self.finish(instance, self.disk_info())
        info, dest_dir = self.migration_fetch.call_args.args
        self.assertEqual(self.root_path(), dest_dir)
        self.assertEqual(self.source, info.rootfs)
        record = self.drv._records.get(UUID)
        self.assertEqual(record_mod.READY, record.state)
        # Its own ID here; the disks keep the source's owners.
        self.assertEqual(0, record.cid)
        self.assertEqual(0, self.drv._ids.find(UUID))
        self.assertEqual(ids.Idmap(100000, 100000, SIZE), record.idmap)
        self.assertEqual(self.SOURCE_IDMAP, record.disk_idmap)
        root, _image_rootfs, idmap, disk_idmap = (
            self.rootfs_mount.call_args.args)
        self.assertEqual((self.root_path(), record.idmap,
                          self.SOURCE_IDMAP),
                         (root.path, idmap, disk_idmap))
        # Grown to the new flavor's root.
        self.grow.assert_called_once_with(root.root_disk, 2)
        with open(os.path.join(self.lxc_path, instance.name,
                               'config')) as f:
            self.assertIn('lxc.idmap = u 0 100000 65536\n', f.read())
        self.vif_plug.assert_called_once_with(instance,
                                              self.network_info[0])
        self.lxc.start.assert_called_once_with(instance.name, self.lxc_path)
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(instance).state)

    def test_image_gone_from_glance_comes_from_the_source_cache(self):
        self.fetch.side_effect = nova_exc.ImageNotFound(
            image_id=test_driver.IMAGE_ID)

        cache = self.drv._images
        real_get = cache.get

        def receive(image_id, copy):
            # What ImageCache.receive installs: a usable entry.
            return real_get(image_id, test_images.write_rootfs_tarball)
        receive = self.patch_object(cache, 'receive', side_effect=receive)
        fetch_image = self.patch(
            'novalxcdriver.driver.migration_mod.fetch_image')
        self.finish(self.instance(), self.disk_info())
        receive.assert_called_once()
        image_id, copy = receive.call_args.args
        self.assertEqual(test_driver.IMAGE_ID, image_id)
        # The copy is migration.fetch_image of this disk info.
        copy('/dest')
        info, dest = fetch_image.call_args.args
        self.assertEqual((test_driver.IMAGE_ID, '/dest'),
                         (info.image_id, dest))
        self.assertEqual(record_mod.READY,
                         self.drv._records.get(UUID).state)

    def test_image_gone_everywhere(self):
        self.fetch.side_effect = nova_exc.ImageNotFound(
            image_id=test_driver.IMAGE_ID)
        self.patch('novalxcdriver.driver.migration_mod.fetch_image',
                   side_effect=exception.CommandFailed(
                       cmd='rsync', exit_code=23, stderr='no such file'))
        self.assertRaises(exception.ImageGone, self.finish, self.instance(),
                          self.disk_info())
        self.migration_fetch.assert_not_called()
        self.assert_nothing_left()

    def test_powered_off(self):
        instance = self.instance(root_gb=1)
        self.finish(instance, self.disk_info(), power_on=False)
        self.lxc.start.assert_not_called()
        self.assertEqual(record_mod.READY,
                         self.drv._records.get(UUID).state)

    def test_root_directory_without_disk(self):
        instance = self.instance(root_gb=0)
        self.finish(instance, self.disk_info(files=(migration.ROOT_DIR,),
                                             root_gb=0))
        self.assertTrue(os.path.isdir(os.path.join(self.root_path(),
                                                   'root', 'upper')))
        self.grow.assert_not_called()
        self.assertEqual(self.SOURCE_IDMAP,
                         self.drv._records.get(UUID).disk_idmap)

    def test_new_ephemeral_disk_owned_as_its_siblings(self):
        instance = self.instance(root_gb=1, ephemeral_gb=2)
        self.finish(instance, self.disk_info())
        self.disk_create.assert_called_once()
        d, size_gb, owner = self.disk_create.call_args.args[:3]
        self.assertEqual(
            (os.path.join(self.root_path(), 'ephemeral.img'), 2,
             self.SOURCE_IDMAP), (d.image_path, size_gb, owner))

    def test_disk_info_of_another_instance_refused(self):
        instance = self.instance()
        self.assertRaises(exception.MigrationUnreadable, self.finish,
                          instance, self.disk_info(instance_uuid=UUID2))
        self.migration_fetch.assert_not_called()
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertIsNone(self.drv._records.get(UUID))

    def test_unreadable_disk_info_refused(self):
        self.assertRaises(exception.MigrationUnreadable, self.finish,
                          self.instance(), 'not json')
        self.migration_fetch.assert_not_called()
        self.assertEqual({}, self.drv._ids.reservations())

    def test_disks_of_another_id_range_size_refused_before_the_copy(self):
        # The source ran with [lxc] id_range_size 131072, this host with
        # 65536: no idmapped mount can show 131072 ids in 65536, and a
        # record naming both is one record.py refuses to read.
        wide = ids.Idmap(100000 + 4 * SIZE, 100000 + 4 * SIZE, 2 * SIZE)
        self.assertRaises(nova_exc.NovaException, self.finish,
                          self.instance(), self.disk_info(idmap=wide))
        self.migration_fetch.assert_not_called()
        self.assert_nothing_left()

    def test_instance_already_here_left_intact(self):
        # Its container here (e.g. kept by a destroy without its disks):
        # the migration must fail without taking its record or ID.
        instance = self.instance()
        self.spawn(instance)
        record = self.drv._records.get(UUID)
        self.assertRaises(exception.ContainerExists, self.finish, instance,
                          self.disk_info())
        self.migration_fetch.assert_not_called()
        self.assertEqual(record, self.drv._records.get(UUID))
        self.assertEqual(0, self.drv._ids.find(UUID))
        self.assertTrue(os.path.isdir(self.root_path()))

    def assert_nothing_left(self):
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertIsNone(self.drv._records.get(UUID))
        self.assertEqual([], os.listdir(self.lxc_path))
        self.assertFalse(os.path.exists(self.root_path()))
        self.lxc.start.assert_not_called()

    def test_failed_copy_leaves_nothing(self):
        def fail(info, dest_dir):
            # Half a disk, then the copy dies.
            open(os.path.join(dest_dir, 'root.img'), 'w').close()
            raise exception.CommandFailed(cmd='rsync', exit_code=12,
                                          stderr='connection reset')
        self.migration_fetch.side_effect = fail
        e = self.assertRaises(exception.CommandFailed, self.finish,
                              self.instance(), self.disk_info())
        self.assertIn('connection reset', str(e))
        self.assert_nothing_left()

    def test_copy_without_root_disk_leaves_nothing(self):
        # The disk info names a root directory, the flavor a root disk.
        self.assertRaises(exception.DiskUnreadable, self.finish,
                          self.instance(root_gb=1),
                          self.disk_info(files=(migration.ROOT_DIR,)))
        self.assert_nothing_left()

    def test_failed_grow_leaves_nothing(self):
        self.grow.side_effect = exception.CommandFailed(
            cmd='resize2fs', exit_code=1, stderr='no space')
        self.assertRaises(exception.CommandFailed, self.finish,
                          self.instance(root_gb=2), self.disk_info())
        self.assert_nothing_left()

    def test_failed_start_leaves_nothing(self):
        self.lxc.start.side_effect = exception.CommandFailed(
            cmd='lxc-start', exit_code=1, stderr='no')
        self.assertRaises(exception.CommandFailed, self.finish,
                          self.instance(), self.disk_info())
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertIsNone(self.drv._records.get(UUID))
        self.assertFalse(os.path.exists(self.root_path()))
        self.vif_unplug.assert_called_once_with(
            mock.ANY, self.network_info[0], ignore_errors=True)


class SameHostResizeTest(_Base):
    """A resize on the server's own host: both containers, then one."""

    def setUp(self):
        super().setUp()
        self.patch('novalxcdriver.disk.Disk.grow', autospec=True)
        self.patch('novalxcdriver.disk.Disk.filesystem',
                   return_value='btrfs')
        self.patch('novalxcdriver.disk.Disk.create', autospec=True)
        self.migration_fetch = self.patch(
            'novalxcdriver.driver.migration_mod.fetch',
            side_effect=self._fetch)
        self.migration = objects.Migration(id=7, source_compute=HOST,
                                           dest_compute=HOST)
        self.get_migration.return_value = self.migration
        self.instance_ = self.instance()
        self.spawn(self.instance_)
        self.instance_.migration_context = objects.MigrationContext(
            instance_uuid=UUID, migration_id=7)
        disk_info = self.drv.migrate_disk_and_power_off(
            self.context, self.instance_, DEST_IP, flavor(root_gb=2),
            self.network_info)
        self.instance_.flavor = flavor(root_gb=2)
        self.drv.finish_migration(
            self.context, self.migration, self.instance_, disk_info,
            self.network_info, self.image_meta(), True, {})
        for m in (self.vif_plug, self.vif_unplug, self.lxc.start,
                  self.lxc.kill, self.rootfs_mount):
            m.reset_mock()

    def _fetch(self, info, dest_dir):
        path = os.path.join(dest_dir, migration.ROOT_DISK)
        open(path, 'w').close()
        return [path]

    def test_both_containers_until_confirm_or_revert(self):
        info, dest_dir = self.migration_fetch.call_args.args
        self.assertEqual((self.root_path(0), self.root_path(1)),
                         (info.rootfs, dest_dir))
        record = self.drv._records.get(UUID)
        self.assertEqual((1, record_mod.READY), (record.cid, record.state))
        self.assertEqual(self.drv._ids.idmap(0), record.disk_idmap)
        self.assertEqual(0, self.drv._resize_sources.get(UUID).cid)
        self.assertEqual(1, self.drv._ids.find(UUID))
        self.assertEqual({0, 1}, set(self.drv._ids.reservations()))
        self.assertEqual([UUID], self.drv.list_instance_uuids())
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(self.instance_).state)

    def test_confirm_removes_only_the_container_set_aside(self):
        self.drv.confirm_migration(self.context, self.migration,
                                   self.instance_, self.network_info)
        self.assertFalse(os.path.exists(self.root_path(0)))
        self.assertTrue(os.path.isdir(self.root_path(1)))
        self.assertEqual({1}, set(self.drv._ids.reservations()))
        self.assertIsNone(self.drv._resize_sources.get(UUID))
        self.assertEqual(1, self.drv._records.get(UUID).cid)
        # The server runs on, plugged, in the new container.
        self.lxc.kill.assert_not_called()
        self.vif_unplug.assert_not_called()
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(self.instance_).state)

    def test_revert_brings_back_the_container_set_aside(self):
        # Nova's revert_resize: the resize's container destroyed first.
        self.drv.destroy(self.context, self.instance_, self.network_info)
        self.assertEqual(0, self.drv._resize_sources.get(UUID).cid)
        self.assertTrue(os.path.isdir(self.root_path(0)))
        self.instance_.flavor = flavor(root_gb=1)
        self.drv.finish_revert_migration(self.context, self.instance_,
                                         self.network_info, self.migration)
        record = self.drv._records.get(UUID)
        self.assertEqual((0, record_mod.READY), (record.cid, record.state))
        self.assertIsNone(self.drv._resize_sources.get(UUID))
        self.assertEqual({0}, set(self.drv._ids.reservations()))
        self.assertEqual(0, self.drv._ids.find(UUID))
        self.assertFalse(os.path.exists(self.root_path(1)))
        self.assertEqual(self.root_path(0),
                         self.rootfs_mount.call_args.args[0].path)
        self.lxc.start.assert_called_once_with(self.instance_.name,
                                               self.lxc_path)

    def test_revert_destroys_a_resize_container_left_behind(self):
        self.instance_.flavor = flavor(root_gb=1)
        self.drv.finish_revert_migration(self.context, self.instance_,
                                         self.network_info, self.migration)
        self.assertEqual(0, self.drv._records.get(UUID).cid)
        self.assertEqual({0}, set(self.drv._ids.reservations()))
        self.assertFalse(os.path.exists(self.root_path(1)))

    def test_delete_before_confirm_removes_both(self):
        self.instance_.task_state = task_states.DELETING
        self.drv.destroy(self.context, self.instance_, self.network_info)
        self.assertFalse(os.path.exists(self.root_path(0)))
        self.assertFalse(os.path.exists(self.root_path(1)))
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertIsNone(self.drv._resize_sources.get(UUID))

    def test_revert_s_destroy_keeps_the_container_set_aside(self):
        self.instance_.task_state = task_states.RESIZE_REVERTING
        self.drv.destroy(self.context, self.instance_, self.network_info)
        self.assertTrue(os.path.isdir(self.root_path(0)))
        self.assertEqual({0}, set(self.drv._ids.reservations()))


class LiveMigrationTest(_Base):

    def test_refused_at_the_destination_pre_check(self):
        e = self.assertRaises(
            nova_exc.MigrationPreCheckError,
            self.drv.check_can_live_migrate_destination, self.context,
            self.instance(), {}, {})
        self.assertIn('CRIU', str(e))


class EvacuateTest(_Base):
    """rebuild with evacuate: a spawn here, as Nova's default rebuild."""

    def setUp(self):
        super().setUp()
        self.instance_ = self.instance()
        self.instance_.task_state = 'rebuilding'
        self.saves = []
        self.patch_object(self.instance_, 'save', side_effect=(
            lambda **kw: self.saves.append((self.instance_.task_state,
                                            kw))))
        self.detach = mock.Mock()
        self.attach = mock.Mock(return_value=None)

    def evacuate(self, **kwargs):
        self.drv.rebuild(
            self.context, self.instance_, self.image_meta(), [], 'secret',
            {}, [], self.detach, self.attach, evacuate=True, **kwargs)

    def test_spawns_here(self):
        self.evacuate()
        self.detach.assert_called_once_with(self.context, [],
                                            detach_root_bdm=True)
        self.attach.assert_called_once_with(self.context, self.instance_,
                                            [])
        self.assertEqual(
            [('rebuild_block_device_mapping',
              {'expected_task_state': ['rebuilding']}),
             ('rebuild_spawning',
              {'expected_task_state': ['rebuild_block_device_mapping']})],
            self.saves)
        self.fetch.assert_called_once()
        self.lxc.start.assert_called_once_with(self.instance_.name,
                                               self.lxc_path)
        self.assertEqual(record_mod.READY,
                         self.drv._records.get(UUID).state)
        self.assertEqual(0, self.drv._ids.find(UUID))
        self.assertEqual(power_state.RUNNING,
                         self.drv.get_info(self.instance_).state)

    def test_preserve_ephemeral_refused(self):
        self.assertRaises(nova_exc.PreserveEphemeralNotSupported,
                          self.evacuate, preserve_ephemeral=True)
        self.detach.assert_not_called()
        self.assertEqual([], self.saves)
        self.assertEqual({}, self.drv._ids.reservations())
        self.lxc.start.assert_not_called()


class DestroyKeepingDisksTest(_Base):
    """destroy(destroy_disks=False), then a destroy that removes all."""

    def setUp(self):
        super().setUp()
        self.instance_ = self.instance()
        self.spawn(self.instance_)

    def test_kills_unmounts_and_keeps(self):
        self.drv.destroy(self.context, self.instance_, self.network_info,
                         destroy_disks=False)
        self.lxc.kill.assert_called_once_with(self.instance_.name,
                                              self.lxc_path)
        self.mount.unmount_tree.assert_any_call(self.root_path(), mock.ANY)
        record = self.drv._records.get(UUID)
        self.assertIsNotNone(record)
        self.assertEqual(record_mod.READY, record.state)
        self.assertEqual(0, self.drv._ids.find(UUID))
        self.assertTrue(os.path.isdir(self.root_path()))
        self.assertEqual([self.instance_.name], self.drv.list_instances())
        # VIFs go as with any destroy.
        self.vif_unplug.assert_called_once_with(
            self.instance_, self.network_info[0], ignore_errors=True)

    def test_later_destroy_removes_everything(self):
        self.drv.destroy(self.context, self.instance_, self.network_info,
                         destroy_disks=False)
        self.drv.destroy(self.context, self.instance_, self.network_info)
        self.assertIsNone(self.drv._records.get(UUID))
        self.assertEqual({}, self.drv._ids.reservations())
        self.assertFalse(os.path.exists(self.root_path()))
        self.assertEqual([], self.drv.list_instances())
        self.assertFalse(self.drv.instance_exists(self.instance_))

    def test_stopped_container_not_killed_again(self):
        self.states[self.instance_.name] = 'STOPPED'
        self.drv.destroy(self.context, self.instance_, [],
                         destroy_disks=False)
        self.lxc.kill.assert_not_called()
        self.assertIsNotNone(self.drv._records.get(UUID))
