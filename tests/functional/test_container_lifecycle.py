"""The driver's lifecycle on real unprivileged LXC containers (as root)."""

import os
import tarfile
import time

from nova.compute import power_state
from nova import exception as nova_exc
from nova.virt import event as virtevent
from oslo_config import fixture as config_fixture

from novalxcdriver import conf
from novalxcdriver import events
from novalxcdriver import rootfs
from tests.functional import base
from tests.functional import rootfs_images

CONF = conf.CONF


class BusyboxLifecycleTest(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.image_id = self.busybox_image()

    def _spawned(self, **kwargs):
        instance = self.make_instance()
        self.spawn(instance, self.image_id, **kwargs)
        return instance, self.driver._ids.find(instance.uuid)

    def test_spawn_runs_unprivileged_in_own_idmap(self):
        instance, cid = self._spawned()
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.assertEqual(power_state.RUNNING,
                         self.driver.get_info(instance).state)
        # Container root is an unprivileged host uid, the ID's range.
        idmap = self.driver._ids.idmap(cid)
        with open('/proc/%d/uid_map' % self.lxc_pid(instance.name)) as f:
            self.assertEqual(['0', str(idmap.uid_start), '65536'],
                             f.read().split())
        self.assertEqual(idmap.uid_start,
                         os.stat('/proc/%d' % self.lxc_pid(instance.name))
                         .st_uid)
        self.assertEqual(instance.hostname,
                         self.attach(instance.name, 'hostname').stdout.strip())
        self.assertIn(instance.name, self.driver.list_instances())
        self.assertIn(instance.uuid, self.driver.list_instance_uuids())
        self.assertTrue(self.driver.instance_exists(instance))
        out = self.wait_for(lambda: b'busybox booted' in
                            self.driver.get_console_output(self.ctxt,
                                                           instance))
        self.assertTrue(out)
        # The operator sees it with the stock tools.
        listing = base.subprocess.run(
            ['lxc-ls', '-P', CONF.lxc.lxc_path], capture_output=True,
            text=True, check=True).stdout.split()
        self.assertIn(instance.name, listing)

    def test_writes_go_to_upper_never_to_the_image(self):
        instance, cid = self._spawned()
        self.attach(instance.name, 'touch', '/root/written-inside')
        self.attach(instance.name, 'rm', '/etc/inittab')
        image = self.driver._images.lookup(self.image_id)
        self.assertFalse(os.path.exists(
            os.path.join(image.rootfs, 'root', 'written-inside')))
        self.assertTrue(os.path.exists(
            os.path.join(image.rootfs, 'etc', 'inittab')))
        upper = rootfs.Rootfs(CONF.lxc.state_path, cid).upper
        st = os.stat(os.path.join(upper, 'root', 'written-inside'))
        self.assertEqual(self.driver._ids.idmap(cid).uid_start, st.st_uid)
        # The shared image itself keeps host root as owner: never chowned.
        self.assertEqual(0, os.stat(os.path.join(image.rootfs, 'bin',
                                                 'busybox')).st_uid)

    def test_full_lifecycle_then_nothing_left(self):
        instance, cid = self._spawned()
        pid = self.lxc_pid(instance.name)
        self.driver.reboot(self.ctxt, instance, [], 'SOFT')
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.assertNotEqual(pid, self.lxc_pid(instance.name))
        pid = self.lxc_pid(instance.name)
        self.driver.reboot(self.ctxt, instance, [], 'HARD')
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.assertNotEqual(pid, self.lxc_pid(instance.name))

        self.driver.pause(instance)
        self.assertEqual('FROZEN', self.lxc_state(instance.name))
        self.assertEqual(power_state.PAUSED,
                         self.driver.get_info(instance).state)
        self.driver.unpause(instance)
        self.assertEqual('RUNNING', self.lxc_state(instance.name))

        self.driver.suspend(self.ctxt, instance)
        self.assertEqual('FROZEN', self.lxc_state(instance.name))
        self.assertEqual(power_state.SUSPENDED,
                         self.driver.get_info(instance).state)
        self.driver.resume(self.ctxt, instance, [])
        self.assertEqual(power_state.RUNNING,
                         self.driver.get_info(instance).state)

        self.driver.power_off(instance, timeout=10, retry_interval=2)
        self.assertEqual('STOPPED', self.lxc_state(instance.name))
        self.assertEqual(power_state.SHUTDOWN,
                         self.driver.get_info(instance).state)
        self.assertIn(b'busybox halting',
                      self.driver.get_console_output(self.ctxt, instance))
        self.driver.power_on(self.ctxt, instance, [])
        self.assertEqual('RUNNING', self.lxc_state(instance.name))

        self.driver.destroy(self.ctxt, instance, [])
        self.assertEqual([], self.artifacts_of(instance, cid))
        self.assertRaises(nova_exc.InstanceNotFound, self.driver.get_info,
                          instance)
        self.assertNotIn(instance.name, self.driver.list_instances())
        # Idempotent.
        self.driver.destroy(self.ctxt, instance, [])

    def test_destroy_while_paused(self):
        instance, cid = self._spawned()
        self.driver.pause(instance)
        self.driver.destroy(self.ctxt, instance, [])
        self.assertEqual([], self.artifacts_of(instance, cid))

    def test_power_on_false_leaves_it_stopped(self):
        instance, _cid = self._spawned(power_on=False)
        self.assertEqual('STOPPED', self.lxc_state(instance.name))
        self.assertEqual(power_state.SHUTDOWN,
                         self.driver.get_info(instance).state)
        self.driver.power_on(self.ctxt, instance, [])
        self.assertEqual('RUNNING', self.lxc_state(instance.name))

    def test_clean_power_off_falls_back_to_kill(self):
        instance, _cid = self._spawned()
        # A halt signal init ignores stands for a guest that will not halt.
        conf_path = os.path.join(CONF.lxc.lxc_path, instance.name, 'config')
        with open(conf_path) as f:
            text = f.read()
        with open(conf_path, 'w') as f:
            f.write(text.replace('lxc.signal.halt = SIGUSR1',
                                 'lxc.signal.halt = SIGWINCH'))
        start = time.monotonic()
        self.driver.power_off(instance, timeout=2, retry_interval=1)
        self.assertEqual('STOPPED', self.lxc_state(instance.name))
        self.assertGreaterEqual(time.monotonic() - start, 2)

    def test_poweroff_inside_reaches_nova_as_event(self):
        self.driver._watcher = None
        instance, _cid = self._spawned()
        watcher = events.StateWatcher(CONF.lxc.lxc_path, 0.2,
                                      self.driver._state_changed)
        watcher.start()
        self.addCleanup(watcher.stop)
        time.sleep(0.5)
        # poweroff may be killed by the halt it starts; its status is moot.
        self.attach(instance.name, 'poweroff', check=False)
        event = self.wait_for(
            lambda: [e for e in self.fx.events
                     if e.get_instance_uuid() == instance.uuid], timeout=20)
        self.assertEqual(virtevent.EVENT_LIFECYCLE_STOPPED,
                         event[0].get_transition())
        self.assertEqual(power_state.SHUTDOWN,
                         self.driver.get_info(instance).state)

    def test_ids_and_ranges_unique_across_concurrent_spawns(self):
        instances = [self.make_instance() for _ in range(6)]
        self.spawn_concurrently(instances, self.image_id)
        cids = [self.driver._ids.find(i.uuid) for i in instances]
        self.assertEqual(len(instances), len(set(cids)))
        starts = sorted(self.driver._ids.idmap(c).uid_start for c in cids)
        for a, b in zip(starts, starts[1:]):
            self.assertGreaterEqual(b - a, 65536)
        for inst in instances:
            self.assertEqual('RUNNING', self.lxc_state(inst.name))


class ImageCacheTest(base.FunctionalTestCase):

    def test_new_image_fetched_and_unpacked_once_for_ten_boots(self):
        image_id = self.busybox_image()
        instances = [self.make_instance() for _ in range(10)]
        self.spawn_concurrently(instances, image_id, power_on=False)
        self.assertEqual([image_id], self.fx.fetches)


class ImagePruneTest(base.FunctionalTestCase):
    """Nova's image cache manager pass through manage_image_cache."""

    # Pruning looks at every cached image: not the ones of other tests.
    private_root = True

    def test_unused_images_pruned_used_kept(self):
        kept, gone = self.busybox_image(), self.busybox_image()
        keeper, leaver = self.make_instance(), self.make_instance()
        self.spawn(keeper, kept)
        self.spawn(leaver, gone)
        self.driver.destroy(self.ctxt, leaver, [])
        cache = self.driver._images
        hour_ago = time.time() - 3600
        for image_id in (kept, gone):
            os.utime(os.path.join(cache.path, image_id),
                     (hour_ago, hour_ago))
        self.useFixture(config_fixture.Config(CONF)).config(
            group='image_cache',
            remove_unused_original_minimum_age_seconds=600)

        self.driver.manage_image_cache(self.ctxt, [])
        self.assertIsNone(cache.lookup(gone))
        self.assertIsNotNone(cache.lookup(kept))
        self.assertEqual([kept], os.listdir(cache.path))
        # The keeper's root, over the kept image, still boots.
        self.driver.reboot(self.ctxt, keeper, [], 'HARD')
        self.assertEqual('ok', self.attach(keeper.name, 'echo',
                                           'ok').stdout.strip())
        # A new boot from the pruned image fetches it again.
        self.spawn(self.make_instance(), gone)
        self.assertEqual(2, self.fx.fetches.count(gone))


class BadImageTest(base.FunctionalTestCase):

    def _reservations_of(self, instance):
        # Other workers reserve IDs of their own meanwhile (the ids_path
        # is shared): only this instance's count.
        return [cid for cid, res in self.driver._ids.reservations().items()
                if res.instance_uuid == instance.uuid]

    def _assert_refused(self, image_id, reason, **meta):
        instance = self.make_instance()
        exc = self.assertRaises(
            nova_exc.ImageUnacceptable, self.driver.spawn, self.ctxt,
            instance, self.image_meta(image_id, **meta), [], None, {},
            network_info=[])
        self.assertIn(reason, str(exc))
        self.assertFalse(self.driver.instance_exists(instance))
        self.assertFalse(os.path.exists(
            os.path.join(CONF.lxc.lxc_path, instance.name)))
        self.assertEqual([], self._reservations_of(instance))
        self.assertIsNone(self.driver._images.lookup(image_id))
        partials = [n for n in os.listdir(self.driver._images.path)
                    if n.startswith('.partial-%s' % image_id)]
        self.assertEqual([], partials)

    def _file_image(self, data):
        path = os.path.join(self.useFixture(base.fixtures.TempDir()).path,
                            'image')
        with open(path, 'wb') as f:
            f.write(data)
        return self.add_image(path)

    def test_qcow2_uploaded_as_raw_refused(self):
        # Content and Glance's disk_format must agree (diskimage.py).
        self._assert_refused(self._file_image(b'QFI\xfb' + b'\0' * 4096),
                             'disk_format=raw but its content is a qcow2')

    def test_tarball_uploaded_as_qcow2_refused(self):
        self._assert_refused(self.busybox_image(),
                             'disk_format=qcow2 but its content is a rootfs '
                             'tarball', disk_format='qcow2')

    def test_unknown_content_refused(self):
        self._assert_refused(self._file_image(b'KDMV' + b'\0' * 4096),
                             'not a tar archive')

    def test_wrong_disk_format_refused(self):
        self._assert_refused(self.busybox_image(), 'disk_format=raw',
                             disk_format='vmdk')

    def test_hostile_member_refused(self):
        path = os.path.join(self.useFixture(base.fixtures.TempDir()).path,
                            'evil.tar')
        with tarfile.open(path, 'w') as tar:
            info = tarfile.TarInfo('../../etc/evil')
            tar.addfile(info)
        self._assert_refused(self.add_image(path), '../../etc/evil')

    def test_archive_without_init_refused(self):
        path = os.path.join(self.useFixture(base.fixtures.TempDir()).path,
                            'noinit.tar')
        with tarfile.open(path, 'w') as tar:
            info = tarfile.TarInfo('etc')
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        self._assert_refused(self.add_image(path), 'no /sbin/init')


class DebianTest(base.FunctionalTestCase):
    """A debootstrapped Debian 12 whose systemd boots unprivileged."""

    def test_systemd_boots_to_multi_user(self):
        image_id = self.add_image(rootfs_images.debian_tarball())
        instance = self.make_instance()
        # Warm the cache: boot time is measured with the image cached.
        self.driver._images.get(
            image_id, lambda dest: self.fx.fetch(None, image_id, dest))
        start = time.monotonic()
        self.spawn(instance, image_id)

        def system_state():
            out = self.attach(instance.name, 'systemctl',
                              'is-system-running', check=False).stdout
            return out.strip() in ('running', 'degraded') and out.strip()

        state = self.wait_for(system_state, timeout=60, interval=0.05)
        booted = time.monotonic() - start
        print('Debian 12 container: spawn to systemd %s in %.2f s'
              % (state, booted))
        self.assertIn(b'Reached target', self.driver.get_console_output(
            self.ctxt, instance))
        self.assertIn('multi-user.target', self.attach(
            instance.name, 'systemctl', 'list-units', '--type=target',
            '--state=active', '--no-legend').stdout)
        # systemd kept the instance's hostname (the image says 'vm' or so).
        self.assertEqual(instance.hostname, self.attach(
            instance.name, 'hostname').stdout.strip())
        # Container root is not host root.
        pid = self.lxc_pid(instance.name)
        self.assertNotEqual(0, os.stat('/proc/%d' % pid).st_uid)
        self.driver.reboot(self.ctxt, instance, [], 'SOFT')
        self.wait_for(system_state, timeout=60)
        self.driver.power_off(instance, timeout=30, retry_interval=5)
        self.assertEqual('STOPPED', self.lxc_state(instance.name))
        cid = self.driver._ids.find(instance.uuid)
        self.driver.destroy(self.ctxt, instance, [])
        self.assertEqual([], self.artifacts_of(instance, cid))
