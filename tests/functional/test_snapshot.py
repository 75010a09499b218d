"""Snapshots of real containers while they run, booted again.

Glance is faked at nova.image.glance.API: the upload is kept as a file
and booted through the driver's own image path, so each test checks the
tarball both as tar sees it and as a new container sees it.
"""

import io
import os
import subprocess
import tarfile
import threading
import time
from unittest import mock

import fixtures
import zstandard

from nova.compute import task_states
from nova import exception as nova_exc

from novalxcdriver import conf
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver import rootfs as rootfs_mod
from novalxcdriver import snapshot as snapshot_mod
from tests import fake_glance
from tests.functional import base

CONF = conf.CONF
# security.capability v2 with cap_net_raw (bit 13) permitted+effective.
CAP_NET_RAW_V2 = (b'\x01\x00\x00\x02' + (1 << 13).to_bytes(4, 'little') +
                  b'\x00' * 12)


class _SnapshotBase(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.glance = fake_glance.FakeImageAPI(self.tmp)
        self.useFixture(fixtures.MonkeyPatch(
            'novalxcdriver.driver.glance.API', self.glance))
        self.task_states = []

    def _update_task_state(self, task_state, expected_state=None):
        self.task_states.append((task_state, expected_state))

    def _prepare(self, instance):
        """Writes of the container's own that the snapshot must keep."""
        name = instance.name
        self.attach(name, 'sh', '-c',
                    'echo kept > /root/data; mkdir -p /home/u; '
                    'echo mine > /home/u/f; chown -R 1000:1000 /home/u; '
                    'cp /bin/busybox /bin/suid; chmod 4755 /bin/suid; '
                    'cp /bin/busybox /bin/capped; rm /etc/hostname; '
                    'ln /root/data /root/data-link; mkfifo /root/fifo')
        # As the container's root, so the kernel stores the capability
        # with its rootid (v3), as setcap inside would.
        merged = rootfs_mod.Rootfs(
            CONF.lxc.state_path,
            self.driver._container(instance).cid()).merged
        subprocess.run(['nsenter', '--user', '--target',
                        str(self.lxc_pid(name)), '--', 'setfattr', '-n',
                        'security.capability', '-v',
                        '0x' + CAP_NET_RAW_V2.hex(),
                        os.path.join(merged, 'bin', 'capped')],
                       check=True, capture_output=True)

    def _snapshot(self, instance):
        image_id = 'f0000000-0000-4000-8000-%012d' % len(self.glance.uploads)
        self.driver.snapshot(self.ctxt, instance, image_id,
                             self._update_task_state)
        return image_id

    def _members(self, image_id):
        with open(self.glance.uploads[image_id]['path'], 'rb') as f:
            data = zstandard.ZstdDecompressor().stream_reader(f).read()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {m.name.rstrip('/').removeprefix('./'): m
                    for m in tar.getmembers()}

    def _check_tarball(self, image_id):
        members = self._members(image_id)
        self.assertEqual((0, 0), (members['bin/busybox'].uid,
                                  members['bin/busybox'].gid))
        self.assertEqual((1000, 1000), (members['home/u/f'].uid,
                                        members['home/u/f'].gid))
        self.assertEqual(0o4755, members['bin/suid'].mode & 0o7777)
        cap = members['bin/capped'].pax_headers.get(
            'SCHILY.xattr.security.capability')
        # v2, no rootid: read through the container's own idmap.
        self.assertEqual(CAP_NET_RAW_V2, cap.encode('utf-8',
                                                    'surrogateescape'))
        self.assertNotIn('etc/hostname', members)
        # One name holds the data, the other links to it.
        self.assertEqual(
            [False, True], sorted([members['root/data'].islnk(),
                                   members['root/data-link'].islnk()]))
        self.assertTrue(members['root/fifo'].isfifo())
        self.assertIn('dev', members)
        self.assertEqual([], [n for n in members if n.startswith('dev/')])
        self.assertEqual([], [n for n, m in members.items()
                              if m.ischr() or m.isblk()])
        return members

    def _boot_from(self, image_id):
        self.fx.images[image_id] = self.glance.uploads[image_id]['path']
        clone = self.make_instance(root_gb=1)
        self.spawn(clone, image_id)
        out = self.attach(clone.name, 'sh', '-c',
                          'cat /root/data; stat -c %u:%a /home/u/f '
                          '/bin/suid').stdout.split()
        self.assertEqual(['kept', '1000:644', '0:4755'], out)
        return clone

    def _no_leftovers(self, instance):
        root = rootfs_mod.Rootfs(CONF.lxc.state_path,
                                 self.driver._container(instance).cid())
        self.assertEqual([], [p for p in os.listdir(root.path)
                              if p.startswith('snapshot-')])
        if os.path.ismount(root.root_disk.mountpoint):
            self.assertEqual(
                [], [p for p in os.listdir(root.root_disk.mountpoint)
                     if p.startswith('.snapshot-')])
        self.assertEqual([], [p for p in mount.mountpoints()
                              if p.startswith(root.path + '/snapshot-')])
        self.assertFalse(os.path.exists(os.path.join(
            CONF.lxc.lxc_path, instance.name, snapshot_mod.FROZEN_MARKER)))

    def _snapshot_running(self, instance):
        self.spawn(instance, self.busybox_image())
        self._prepare(instance)
        pid = self.lxc_pid(instance.name)
        image_id = self._snapshot(instance)
        # No downtime: the same init runs on.
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.assertEqual(pid, self.lxc_pid(instance.name))
        self.assertEqual(
            [(task_states.IMAGE_PENDING_UPLOAD, None),
             (task_states.IMAGE_UPLOADING,
              task_states.IMAGE_PENDING_UPLOAD)], self.task_states)
        self._no_leftovers(instance)
        self._check_tarball(image_id)
        return image_id


class SnapshotTest(_SnapshotBase):

    def test_btrfs_root_disk(self):
        instance = self.make_instance(root_gb=1)
        image_id = self._snapshot_running(instance)
        meta = self.glance.metadata[image_id]
        self.assertEqual(('raw', 'bare', 'lxc'),
                         (meta['disk_format'], meta['container_format'],
                          meta['properties']['hypervisor_type']))
        self.assertIn('hw_architecture', meta['properties'])
        self._boot_from(image_id)

    def test_ext4_root_disk(self):
        self.useFixture(fixtures.MonkeyPatch(
            'novalxcdriver.conf.CONF.lxc.root_disk_fs', 'ext4'))
        instance = self.make_instance(root_gb=1)
        with mock.patch.object(snapshot_mod.disks, 'freeze',
                               wraps=snapshot_mod.disks.freeze) as freeze:
            self._boot_from(self._snapshot_running(instance))
        freeze.assert_called_once()

    def test_unbounded_root(self):
        instance = self.make_instance(root_gb=0)
        with mock.patch.object(snapshot_mod.lxc, 'freeze',
                               wraps=snapshot_mod.lxc.freeze) as freeze:
            self._boot_from(self._snapshot_running(instance))
        freeze.assert_called_once()
        self.assertEqual('RUNNING', self.lxc_state(instance.name))

    def test_stopped_container(self):
        instance = self.make_instance(root_gb=1)
        self.spawn(instance, self.busybox_image())
        self._prepare(instance)
        self.driver.power_off(instance)
        image_id = self._snapshot(instance)
        self.assertEqual('STOPPED', self.lxc_state(instance.name))
        self._check_tarball(image_id)
        self._no_leftovers(instance)

    def test_writer_barely_waits(self):
        instance = self.make_instance(root_gb=1)
        self.spawn(instance, self.busybox_image())
        ticker = subprocess.Popen(
            ['lxc-attach', '-n', instance.name, '-P', CONF.lxc.lxc_path,
             '--', 'sh', '-c', 'while :; do cut -d" " -f1 /proc/uptime '
             '>> /root/ticks; usleep 10000; done'])
        self.addCleanup(ticker.kill)
        time.sleep(1)
        image_id = self._snapshot(instance)
        time.sleep(0.5)
        ticker.kill()
        with open(os.path.join(rootfs_mod.Rootfs(
                CONF.lxc.state_path,
                self.driver._container(instance).cid()).upper,
                'root', 'ticks')) as f:
            ticks = [float(t) for t in f.read().split()]
        # /proc/uptime (lxcfs: since the container started) has 10 ms
        # steps; the ticker ran from 1 s before to 0.5 s after.
        gap = max(b - a for a, b in zip(ticks, ticks[1:]))
        print('longest gap between 10 ms ticks around the snapshot: '
              '%.0f ms' % (gap * 1000))
        self.assertLess(gap, 1.0)
        # Everything ticked before the snapshot began is in it.
        members = self._members(image_id)
        self.assertGreater(members['root/ticks'].size, 0)

    def test_destroy_during_the_upload(self):
        instance = self.make_instance(root_gb=1)
        self.spawn(instance, self.busybox_image())
        cid = self.driver._container(instance).cid()

        def destroy():
            # Nova lets a delete run while the task is image_uploading.
            t = threading.Thread(target=self.driver.destroy,
                                 args=(self.ctxt, instance, []))
            t.start()
            t.join()
        self.glance.on_start = destroy
        self.assertRaises(nova_exc.InstanceNotFound, self._snapshot,
                          instance)
        self.assertEqual([], self.artifacts_of(instance, cid))


class SnapshotCrashTest(_SnapshotBase):
    # init_host acts on the whole state: a root of this test's own.
    private_root = True

    def test_restart_after_a_crash_mid_snapshot(self):
        instance = self.make_instance(root_gb=1)
        self.spawn(instance, self.busybox_image())
        c = self.driver._container(instance)
        snap = c.take_snapshot('f0000000-0000-4000-8000-00000000c0de')
        snap.stream().read(1000)
        # nova-compute dies: its end of the FIFO closes (the readers die of
        # SIGPIPE) and its storage_admin daemon exits with the stage's
        # lock; the mounts stay.
        snap._reader.close()
        privsep.storage_admin.stop()
        self.assertTrue(os.path.isdir(snap.stage))
        self.assertTrue(os.path.isdir(snap.subvolume))
        self.assertIn(snap.merged, mount.mountpoints())
        again = base.new_driver(self.driver.virtapi)
        again.init_host(CONF.host)
        self.addCleanup(again.cleanup_host, CONF.host)
        self._no_leftovers(instance)
        self.assertEqual('RUNNING', self.lxc_state(instance.name))


class SymlinkedRootTest(_SnapshotBase):
    """A state_path reached through a symlink (/var/lib/nova -> /srv/nova).

    mountinfo names the resolved paths; each check of a mount the driver
    makes must find it by the path it builds through the link.
    """

    private_root = True
    symlinked_root = True

    def test_snapshot_reboot_power_cycle_destroy(self):
        self.assertTrue(os.path.islink(os.path.dirname(CONF.lxc.state_path)))
        instance = self.make_instance(root_gb=1)
        image_id = self._snapshot_running(instance)
        self._boot_from(image_id)
        cid = self.driver._ids.find(instance.uuid)
        root = rootfs_mod.Rootfs(CONF.lxc.state_path, cid)
        self.assertTrue(root.is_mounted())
        self.assertTrue(root.root_disk.is_mounted())
        self.assertEqual('btrfs', root.root_disk.filesystem())
        self.assertEqual(1, len(root.disk_devices()))
        # This test's own (another worker mounts and unmounts meanwhile).
        points = mount.below(CONF.lxc.state_path)
        # Mounted already: nothing is mounted twice (nor waited for).
        self.driver.reboot(self.ctxt, instance, [], 'HARD')
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.driver.power_off(instance, timeout=0)
        self.driver.power_on(self.ctxt, instance, [])
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.assertEqual(sorted(points),
                         sorted(mount.below(CONF.lxc.state_path)))
        self.assertEqual('kept', self.attach(
            instance.name, 'cat', '/root/data').stdout.strip())
        self.driver.destroy(self.ctxt, instance, [])
        self.assertEqual([], self.artifacts_of(instance, cid))
