"""Cold migration and resize between two drivers of this machine.

Two LXCDriver instances, each with its own lxc_path and state_path and one
machine-wide ids_path, stand for two compute hosts (as the all-in-one's
two computes do): the source's migrate_disk_and_power_off, the
destination's finish_migration, then confirm or revert, on real
containers from the busybox image.
"""

import contextlib
import functools
import io
import os
import subprocess
import tarfile
from unittest import mock

import fixtures
from nova import exception as nova_exc
from nova import objects
from nova.virt import fake as fake_virt
from oslo_config import fixture as config_fixture

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import migration as migration_mod
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import migrationcopy
from novalxcdriver import record as record_mod
from tests.functional import base
from tests.functional import test_snapshot
from tests import private_sshd

CONF = conf.CONF
HOST_B = 'novalxc-functional-b'


def second_driver(test, suffix=''):
    """A second LXCDriver on test's root: lxc-b/, state-b/, same ids.

    :param suffix: added to both directories' names (a third driver).
    """
    root = test.fx.root
    cfg = test.useFixture(config_fixture.Config(CONF))
    own = CONF.lxc.lxc_path, CONF.lxc.state_path
    cfg.config(group='lxc', lxc_path=os.path.join(root, 'lxc-b' + suffix),
               state_path=os.path.join(root, 'state-b' + suffix))
    drv = base.new_driver(fake_virt.FakeVirtAPI())
    drv.init_host(HOST_B)
    test.addCleanup(drv.cleanup_host, HOST_B)
    cfg.config(group='lxc', lxc_path=own[0], state_path=own[1])
    return drv


def moved(source, dest):
    """The Migration record Nova hands both drivers: source to dest."""
    return objects.Migration(source_compute=source._host,
                             dest_compute=dest._host)


class _MigrationBase(base.FunctionalTestCase):
    """Two drivers of this machine, a and b, and the busybox image."""

    private_root = True

    def setUp(self):
        super().setUp()
        self.image_id = self.busybox_image()
        self.a = self.driver
        self.b = self._second_driver()

    def _second_driver(self):
        return second_driver(self)

    def run_in(self, drv, instance, *argv):
        return subprocess.run(
            ['lxc-attach', '-n', instance.name, '-P', drv._lxc_path, '--']
            + list(argv), capture_output=True, text=True, check=True
        ).stdout

    def state_in(self, drv, instance):
        return subprocess.run(
            ['lxc-info', '-n', instance.name, '-P', drv._lxc_path, '-s',
             '-H'], capture_output=True, text=True).stdout.strip()

    def flavor(self, **values):
        base_values = {'memory_mb': 256, 'vcpus': 1, 'root_gb': 1,
                       'ephemeral_gb': 0, 'swap': 0}
        base_values.update(values)
        return objects.Flavor(flavorid='2', name='bigger', extra_specs={},
                              **base_values)

    def spawned(self, **flavor):
        instance = self.make_instance(**flavor)
        self.addCleanup(self.b.destroy, self.ctxt, instance, [])
        self.spawn(instance, self.image_id)
        # Owned by the container's root and by a user of its own.
        self.run_in(self.a, instance, 'sh', '-c',
                    'echo before > /root/marker && mkdir -p /home/u && '
                    'echo x > /home/u/f && chown -R 1000:1000 /home/u')
        return instance

    def migrate(self, instance, new_flavor):
        old_flavor = instance.flavor
        disk_info = self.a.migrate_disk_and_power_off(
            self.ctxt, instance, '127.0.0.1', new_flavor, [])
        instance.old_flavor, instance.flavor = old_flavor, new_flavor
        self.b.finish_migration(
            self.ctxt, moved(self.a, self.b), instance, disk_info, [],
            self.image_meta(self.image_id), True, {}, power_on=True)
        return disk_info

    def leftovers(self, drv, instance, cid):
        paths = [os.path.join(drv._lxc_path, instance.name),
                 os.path.join(drv._state_path, 'rootfs', str(cid)),
                 os.path.join(drv._state_path, 'instances',
                              instance.uuid + '.json')]
        found = [p for p in paths if os.path.lexists(p)]
        found += mount.below(paths[1])
        if drv._ids.find(instance.uuid) is not None:
            found.append('ID reservation %d' % drv._ids.find(instance.uuid))
        return found


class MigrationTest(_MigrationBase):

    def test_resize_up_and_confirm(self):
        instance = self.spawned(root_gb=1, ephemeral_gb=0)
        cid_a = self.a._ids.find(instance.uuid)
        self.migrate(instance, self.flavor(root_gb=2, ephemeral_gb=1))

        # The source's copy waits, stopped, its disks unmounted.
        self.assertEqual('STOPPED', self.state_in(self.a, instance))
        self.assertEqual(record_mod.MIGRATING,
                         self.a._records.get(instance.uuid).state)
        self.assertFalse(self.a._container(instance).rootfs().is_mounted())

        self.assertEqual('RUNNING', self.state_in(self.b, instance))
        cid_b = self.b._ids.find(instance.uuid)
        self.assertNotEqual(cid_a, cid_b)
        rec = self.b._records.get(instance.uuid)
        self.assertEqual(self.a._ids.idmap(cid_a), rec.disk_idmap)
        self.assertEqual(self.b._ids.idmap(cid_b), rec.idmap)
        self.assertEqual('before\n', self.run_in(self.b, instance, 'cat',
                                                 '/root/marker'))
        # Owners as the container saw them on the source, no chown.
        self.assertEqual('0:0 1000:1000', self.run_in(
            self.b, instance, 'stat', '-c', '%u:%g', '/root/marker',
            '/home/u/f').replace('\n', ' ').strip())
        # It writes on, as its own root, through the shifted disk.
        self.run_in(self.b, instance, 'sh', '-c', 'echo after > /root/new')
        # The root disk grew to 2 GiB, the new ephemeral is on /mnt.
        sizes = self.run_in(self.b, instance, 'df', '-k', '/', '/mnt')
        blocks = [int(line.split()[1]) for line in sizes.splitlines()[1:]]
        self.assertGreater(blocks[0], 1.5 * 1024 * 1024)
        self.assertGreater(blocks[1], 0.8 * 1024 * 1024)
        root_b = self.b._container(instance).rootfs()
        self.assertEqual(2 << 30,
                         os.path.getsize(root_b.root_disk.image_path))

        self.a.confirm_migration(
            self.ctxt, moved(self.a, self.b), instance, [])
        self.assertEqual([], self.leftovers(self.a, instance, cid_a))
        self.assertEqual('RUNNING', self.state_in(self.b, instance))
        self.b.destroy(self.ctxt, instance, [])
        self.assertEqual([], self.leftovers(self.b, instance, cid_b))

    def test_ephemeral_disk_grown(self):
        # ext4 grows unmounted: no CAP_SYS_RESOURCE needed (these
        # machines' root lacks it, so resize2fs online fails with EPERM).
        instance = self.spawned(root_gb=1, ephemeral_gb=1)
        self.run_in(self.a, instance, 'sh', '-c', 'echo eph > /mnt/f')
        self.migrate(instance, self.flavor(root_gb=1, ephemeral_gb=2))
        self.assertEqual('eph\n', self.run_in(self.b, instance, 'cat',
                                              '/mnt/f'))
        sizes = self.run_in(self.b, instance, 'df', '-k', '/mnt')
        blocks = int(sizes.splitlines()[1].split()[1])
        self.assertGreater(blocks, 1.5 * 1024 * 1024)
        self.a.confirm_migration(
            self.ctxt, moved(self.a, self.b), instance, [])

    def test_resize_revert_restores_the_source(self):
        instance = self.spawned(root_gb=1)
        cid_a = self.a._ids.find(instance.uuid)
        old_flavor = instance.flavor
        self.migrate(instance, self.flavor(root_gb=2))
        cid_b = self.b._ids.find(instance.uuid)
        self.run_in(self.b, instance, 'sh', '-c', 'echo b > /root/only-b')

        # Nova's revert: destroy on the destination, then the source.
        self.b.destroy(self.ctxt, instance, [])
        self.assertEqual([], self.leftovers(self.b, instance, cid_b))
        instance.flavor = old_flavor
        self.a.finish_revert_migration(self.ctxt, instance, [],
                                       moved(self.a, self.b))
        self.assertEqual('RUNNING', self.state_in(self.a, instance))
        self.assertEqual(cid_a, self.a._ids.find(instance.uuid))
        self.assertEqual(record_mod.READY,
                         self.a._records.get(instance.uuid).state)
        self.assertEqual('before\n', self.run_in(self.a, instance, 'cat',
                                                 '/root/marker'))
        self.assertEqual('', self.run_in(
            self.a, instance, 'sh', '-c', 'ls /root/only-b 2>/dev/null; '
            'true'))
        root_a = self.a._container(instance).rootfs()
        self.assertEqual(1 << 30,
                         os.path.getsize(root_a.root_disk.image_path))

    def test_migrate_same_flavor_then_back(self):
        # Two moves: the second shifts disks that were shifted already.
        instance = self.spawned(root_gb=1)
        cid_a = self.a._ids.find(instance.uuid)
        flavor = instance.flavor
        self.migrate(instance, flavor)
        self.a.confirm_migration(
            self.ctxt, moved(self.a, self.b), instance, [])
        disk_info = self.b.migrate_disk_and_power_off(
            self.ctxt, instance, '127.0.0.1', flavor, [])
        self.a.finish_migration(
            self.ctxt, moved(self.b, self.a), instance, disk_info, [],
            self.image_meta(self.image_id), False, {}, power_on=True)
        self.b.confirm_migration(
            self.ctxt, moved(self.b, self.a), instance, [])
        cid = self.a._ids.find(instance.uuid)
        rec = self.a._records.get(instance.uuid)
        # Back in the range the disks were made in: no shift left.
        self.assertEqual(self.a._ids.idmap(cid_a), rec.disks_idmap)
        self.assertEqual('0:0 1000:1000', self.run_in(
            self.a, instance, 'stat', '-c', '%u:%g', '/root/marker',
            '/home/u/f').replace('\n', ' ').strip())
        self.assertEqual(cid == cid_a, rec.disk_idmap is None)

    def test_host_reboot_after_migration(self):
        instance = self.spawned(root_gb=1, ephemeral_gb=1)
        self.migrate(instance, self.flavor(root_gb=1, ephemeral_gb=1))
        self.a.confirm_migration(
            self.ctxt, moved(self.a, self.b), instance, [])
        self.run_in(self.b, instance, 'sh', '-c',
                    'echo e > /mnt/eph && chown 1000 /mnt/eph')
        # The host goes down: the container dies, every mount goes.
        c = self.b._container(instance)
        c.kill()
        c.rootfs().unmount()
        self.assertFalse(c.rootfs().is_mounted())
        self.b.cleanup_host(HOST_B)
        self.b = second_driver(self)
        # init_host mounts the disks again, shifted as the record says.
        root = self.b._container(instance).rootfs()
        self.assertTrue(root.is_mounted())
        self.assertTrue(mount.is_idmapped(root.root_disk.mountpoint))
        self.assertTrue(mount.is_idmapped(root.ephemeral_disk.mountpoint))
        self.b.power_on(self.ctxt, instance, [])
        self.assertEqual('0:0 1000:1000 1000:0', self.run_in(
            self.b, instance, 'stat', '-c', '%u:%g', '/root/marker',
            '/home/u/f', '/mnt/eph').replace('\n', ' ').strip())

    def test_rebuild_after_migration(self):
        # A fresh root on shifted disks: made in the disks' own range.
        instance = self.spawned(root_gb=1, ephemeral_gb=1)
        self.migrate(instance, self.flavor(root_gb=1, ephemeral_gb=1))
        self.a.confirm_migration(
            self.ctxt, moved(self.a, self.b), instance, [])
        instance.task_state = 'rebuilding'
        instance.system_metadata = {}
        instance.save = lambda **kw: None
        self.b.rebuild(self.ctxt, instance, self.image_meta(self.image_id),
                       [], None, {}, [], lambda *a, **k: None,
                       lambda *a, **k: None, network_info=[])
        self.assertEqual('', self.run_in(
            self.b, instance, 'sh', '-c', 'ls /root/marker 2>/dev/null; '
            'true'))
        self.run_in(self.b, instance, 'sh', '-c',
                    'echo new > /root/new && echo e > /mnt/eph')
        self.assertEqual('0:0 0:0 0:0', self.run_in(
            self.b, instance, 'stat', '-c', '%u:%g', '/root', '/root/new',
            '/mnt/eph').replace('\n', ' ').strip())

    def test_image_gone_from_glance_comes_from_the_source(self):
        instance = self.spawned(root_gb=1)
        del self.fx.images[self.image_id]
        self.assertIsNone(self.b._images.lookup(self.image_id))
        self.migrate(instance, instance.flavor)
        cached = self.b._images.lookup(self.image_id)
        self.assertIsNotNone(cached)
        self.assertEqual(self.a._images.lookup(self.image_id).size,
                         cached.size)
        self.assertEqual('before\n', self.run_in(self.b, instance, 'cat',
                                                 '/root/marker'))
        # The image's own files, owners and modes as in the source's.
        self.assertEqual('0:0 755', self.run_in(
            self.b, instance, 'stat', '-L', '-c', '%u:%g %a',
            '/bin/busybox').strip())
        self.a.confirm_migration(
            self.ctxt, moved(self.a, self.b), instance, [])

    def test_root_without_disk_keeps_whiteouts_and_opaque_dirs(self):
        # root_gb 0: the upper layer travels as a tree. A file of the
        # image deleted (a whiteout) stays deleted, a directory of the
        # image deleted and made again (opaque) hides the image's files.
        instance = self.spawned(root_gb=0)
        script = ('cp /etc/inittab /etc/passwd /tmp/ && rm -rf /etc && '
                  'mkdir /etc && cp /tmp/inittab /tmp/passwd /etc/ && '
                  'echo new > /etc/only && rm /bin/ls && '
                  'test ! -e /etc/group && test ! -e /bin/ls && '
                  'cat /etc/only')
        self.assertEqual('new\n', self.run_in(self.a, instance, 'sh', '-c',
                                              script))
        self.migrate(instance, self.flavor(root_gb=0))
        self.assertEqual('RUNNING', self.state_in(self.b, instance))
        self.assertEqual('new\n0:0 1000:1000\n', self.run_in(
            self.b, instance, 'sh', '-c',
            'test ! -e /etc/group && test ! -e /bin/ls && cat /etc/only '
            '&& stat -c %u:%g /root/marker /home/u/f | tr "\\n" " " | '
            'sed "s/ $/\\n/"'))
        self.a.confirm_migration(
            self.ctxt, moved(self.a, self.b), instance, [])

    def test_shrink_refused_server_keeps_running(self):
        instance = self.spawned(root_gb=2)
        pid = self.lxc_pid(instance.name)
        for flavor in (self.flavor(root_gb=1), self.flavor(root_gb=0)):
            e = self.assertRaises(
                nova_exc.InstanceFaultRollback,
                self.a.migrate_disk_and_power_off, self.ctxt, instance,
                '127.0.0.1', flavor, [])
            self.assertIsInstance(e.inner_exception, nova_exc.ResizeError)
        self.assertEqual('RUNNING', self.state_in(self.a, instance))
        self.assertEqual(pid, self.lxc_pid(instance.name))
        self.assertEqual(record_mod.READY,
                         self.a._records.get(instance.uuid).state)


class SymlinkedRootMigrationTest(MigrationTest):
    """The same, both drivers' roots reached through a symlink.

    As /var/lib/nova -> /srv/nova: the received disks' mounts and their
    idmapped shifts must be found by the paths the drivers build.
    """

    symlinked_root = True


class RsyncOverSSHTest(MigrationTest):
    """The transport between two machines, over a real sshd.

    The drivers share this machine, so the local copy is ruled out
    (is_local False) and the destination pulls from 127.0.0.1 through an
    sshd of the test's own (its port, host key and authorized key): disk
    images as tar's stream through the storage_admin daemon, a root
    without a disk with rsync.
    """

    def setUp(self):
        super().setUp()
        if not private_sshd.available():
            self.skipTest('openssh-server is not installed '
                          '(tools/test-setup.sh installs it)')
        tmp = os.path.join(self.useFixture(fixtures.TempDir()).path, 'sshd')
        sshd = contextlib.ExitStack()
        self.addCleanup(sshd.close)
        port, options = sshd.enter_context(private_sshd.running(tmp))
        self.flags(migration_ssh_port=port, migration_ssh_user='root',
                   migration_ssh_options=options, group='lxc')
        # The daemon reads them from the config root gives it.
        privsep.refresh_root_daemons()
        self.addCleanup(privsep.refresh_root_daemons)
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.migration.is_local', return_value=False))
        self.a._my_ip = self.b._my_ip = '127.0.0.1'
        self.copies = []
        for name, transport in (('receive_disks', 5), ('receive_upper', 4)):
            self.useFixture(fixtures.MockPatch(
                'novalxcdriver.migration.migrationcopy.' + name,
                side_effect=self.recorder(getattr(migrationcopy, name),
                                          transport)))

    def recorder(self, real, transport):
        def call(*args):
            self.copies.append(args[transport])
            return real(*args)
        return call

    def flags(self, **kw):
        group = kw.pop('group', None)
        for k, v in kw.items():
            CONF.set_override(k, v, group=group)
            self.addCleanup(CONF.clear_override, k, group=group)

    def transfers(self):
        return list(self.copies)

    def test_resize_up_and_confirm(self):
        super().test_resize_up_and_confirm()
        self.assertEqual(['ssh'], self.transfers())

    def test_root_without_disk(self):
        # root_gb 0: the directory of its writes travels, owners kept.
        instance = self.spawned(root_gb=0)
        self.migrate(instance, self.flavor(root_gb=0))
        self.assertEqual(['ssh'], self.transfers())
        self.assertEqual('0:0 1000:1000', self.run_in(
            self.b, instance, 'stat', '-c', '%u:%g', '/root/marker',
            '/home/u/f').replace('\n', ' ').strip())
        self.run_in(self.b, instance, 'sh', '-c', 'echo after > /root/new')
        self.a.confirm_migration(
            self.ctxt, moved(self.a, self.b), instance, [])


def _member(name, size, kind=tarfile.REGTYPE, linkname=''):
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, linkname
    return info


def _tar(*members):
    """An uncompressed tar of (TarInfo, data) pairs, closed properly."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w', format=tarfile.GNU_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


# What a hostile or broken source host sends in place of tar's stream of
# the disks (root.img only: root_gb 1, no ephemeral disk).
HOSTILE_STREAMS = {
    'a name outside the root': _tar(
        (_member('../../../../etc/cron.d/x', 4), b'boo\n')),
    # Refused at its header: ssh's write then fails (a broken pipe),
    # which must not hide the reason.
    'a large file not asked for': _tar(
        (_member('authorized_keys', 8 << 20), b'k' * (8 << 20))),
    'the disk as a symlink to the host\'s shadow': _tar(
        (_member('root.img', 0, tarfile.SYMTYPE, '/etc/shadow'), None)),
    'the disk as a hard link': _tar(
        (_member('root.img', 0, tarfile.LNKTYPE, 'etc/shadow'), None)),
    'the disk as a device': _tar(
        (_member('root.img', 0, tarfile.CHRTYPE), None)),
    'the disk twice': _tar((_member('root.img', 4), b'abcd'),
                           (_member('root.img', 4), b'efgh')),
    'a file after the disks': _tar(
        (_member('root.img', 4), b'abcd'),
        (_member('authorized_keys', 4), b'key\n')),
    'a disk larger than its flavor': _member(
        'root.img', (1 << 30) + 1).tobuf(format=tarfile.GNU_FORMAT),
    'a stream cut inside the disk': _member(
        'root.img', 1 << 20).tobuf(format=tarfile.GNU_FORMAT) + b'x' * 1000,
    'no tar at all': b'<html>not a tar</html>\n' * 100,
    'nothing': b'',
}


class HostileSourceTest(_MigrationBase):
    """A source host that sends something else than its disks.

    The destination's daemon runs ssh and tar (privsep.migrationcopy);
    here the sshd answers any command with HOSTILE_STREAMS' bytes
    (ForceCommand). Each is refused by the confined child, nothing of it
    stays on the destination, and the server goes back to its source.
    """

    def setUp(self):
        super().setUp()
        if not private_sshd.available():
            self.skipTest('openssh-server is not installed '
                          '(tools/test-setup.sh installs it)')
        tmp = self.useFixture(fixtures.TempDir()).path
        self.stream = os.path.join(tmp, 'stream')
        sshd = contextlib.ExitStack()
        self.addCleanup(sshd.close)
        port, options = sshd.enter_context(private_sshd.running(
            os.path.join(tmp, 'sshd'), force_command='cat ' + self.stream))
        self.flags(migration_ssh_port=port, migration_ssh_user='root',
                   migration_ssh_options=options, group='lxc')
        privsep.refresh_root_daemons()
        self.addCleanup(privsep.refresh_root_daemons)
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.migration.is_local', return_value=False))
        self.a._my_ip = self.b._my_ip = '127.0.0.1'

    flags = RsyncOverSSHTest.flags

    def test_every_hostile_stream_refused_nothing_left(self):
        instance = self.spawned(root_gb=1)
        cid_a = self.a._ids.find(instance.uuid)
        disk_info = self.a.migrate_disk_and_power_off(
            self.ctxt, instance, '127.0.0.1', instance.flavor, [])
        rootfs_b = os.path.join(self.b._state_path, 'rootfs')

        def roots_b():
            return sorted(os.listdir(rootfs_b)) if os.path.isdir(
                rootfs_b) else []
        outcomes = {}
        for label, data in HOSTILE_STREAMS.items():
            with open(self.stream, 'wb') as f:
                f.write(data)
            try:
                self.b.finish_migration(
                    self.ctxt, moved(self.a, self.b), instance, disk_info,
                    [], self.image_meta(self.image_id), True, {},
                    power_on=True)
            except Exception as e:
                outcomes[label] = type(e).__name__
            else:
                outcomes[label] = 'accepted'
            # Nothing of the attempt stays on the destination.
            self.assertEqual([], roots_b(), label)
            self.assertIsNone(self.b._ids.find(instance.uuid), label)
            self.assertFalse(self.b._container(instance).exists(), label)
            self.assertFalse(os.path.lexists(os.path.join(
                self.b._state_path, 'instances', instance.uuid + '.json')),
                label)
        self.assertEqual({'UnsafeArchiveMember', 'ArchiveError'},
                         set(outcomes.values()), outcomes)
        self.assertEqual('UnsafeArchiveMember',
                         outcomes['a large file not asked for'])
        for label, outcome in sorted(outcomes.items()):
            print('hostile source: %s -> %s' % (label, outcome))
        self.assertFalse(os.path.exists('/etc/cron.d/x'))
        # The source's disks are untouched: the server comes back.
        self.a.finish_revert_migration(self.ctxt, instance, [],
                                       moved(self.a, self.b))
        self.assertEqual('RUNNING', self.state_in(self.a, instance))
        self.assertEqual(cid_a, self.a._ids.find(instance.uuid))
        self.assertEqual('before\n', self.run_in(self.a, instance, 'cat',
                                                 '/root/marker'))

    def test_hostile_image_entry_refused_nothing_cached(self):
        # Glance lost the image: the source's cache entry is asked for,
        # and the source sends a tarball that climbs out of the rootfs.
        instance = self.spawned(root_gb=1)
        del self.fx.images[self.image_id]
        disk_info = self.a.migrate_disk_and_power_off(
            self.ctxt, instance, '127.0.0.1', instance.flavor, [])
        with open(self.stream, 'wb') as f:
            f.write(_tar((_member('sbin/init', 4), b'boo\n'),
                         (_member('../../../../escaped', 4), b'boo\n')))
        e = self.assertRaises(
            exception.ImageGone, self.b.finish_migration, self.ctxt,
            moved(self.a, self.b), instance, disk_info, [],
            self.image_meta(self.image_id), True, {}, power_on=True)
        self.assertIn('escaped', str(e.__cause__))
        self.assertEqual([], os.listdir(self.b._images.path))
        self.assertIsNone(self.b._ids.find(instance.uuid))
        self.a.finish_revert_migration(self.ctxt, instance, [],
                                       moved(self.a, self.b))
        self.assertEqual('RUNNING', self.state_in(self.a, instance))


class MigratedSnapshotTest(test_snapshot._SnapshotBase):
    """A snapshot of a migrated server: owners, setuid and capabilities.

    Its disks keep the source's range; the snapshot reads them through
    the destination's idmapped mount (a btrfs snapshot of the shifted
    root disk), so the image must show what the container saw.
    """

    private_root = True

    def test_snapshot_on_the_destination(self):
        b = second_driver(self)
        image_id = self.busybox_image()
        instance = self.make_instance(root_gb=1)
        self.addCleanup(b.destroy, self.ctxt, instance, [])
        self.spawn(instance, image_id)
        self._prepare(instance)
        disk_info = self.driver.migrate_disk_and_power_off(
            self.ctxt, instance, '127.0.0.1', instance.flavor, [])
        b.finish_migration(self.ctxt, moved(self.driver, b), instance,
                           disk_info, [],
                           self.image_meta(image_id), False, {})
        self.driver.confirm_migration(
            self.ctxt, moved(self.driver, b), instance, [])
        instance.system_metadata = {}
        snapshot_id = 'f0000000-0000-4000-8000-%012d' % len(
            self.glance.uploads)
        b.snapshot(self.ctxt, instance, snapshot_id,
                   self._update_task_state)
        self._check_tarball(snapshot_id)

    def test_entry_of_an_image_gone_from_glance_travels_whole(self):
        # A snapshot (setuid, a file capability, a hard link, a FIFO,
        # owners) becomes the image of a server; gone from Glance, its
        # cache entry goes through the confined unpacker to the other
        # driver's cache, over each transport, and arrives identical.
        source = self.make_instance(root_gb=1)
        self.spawn(source, self.busybox_image())
        self._prepare(source)
        snapshot_id = 'f0000000-0000-4000-8000-%012d' % len(
            self.glance.uploads)
        self.driver.snapshot(self.ctxt, source, snapshot_id,
                             self._update_task_state)
        self.driver.destroy(self.ctxt, source, [])
        clone = self._boot_from(snapshot_id)
        del self.fx.images[snapshot_id]
        entry = self.driver._images.lookup(snapshot_id).rootfs
        # Where the private sshd listens.
        self.driver._my_ip = '127.0.0.1'
        for transport in ('local', 'ssh'):
            b = second_driver(self, suffix='-' + transport)
            info = migration_mod.DiskInfo.from_json(
                self.driver.migrate_disk_and_power_off(
                    self.ctxt, clone, '127.0.0.1', clone.flavor, []))
            with self.transport(transport):
                b._images.receive(
                    snapshot_id,
                    functools.partial(migration_mod.fetch_image, info))
            self.driver.finish_revert_migration(
                self.ctxt, clone, [], moved(self.driver, b))
            copied = b._images.lookup(snapshot_id)
            self.assertEqual(self.driver._images.lookup(snapshot_id).size,
                             copied.size)
            self.assertEqual(tree(entry), tree(copied.rootfs), transport)
        self.assertIn(('bin/suid', 0o104755, 0, 0, None, ()),
                      tree(entry))

    @contextlib.contextmanager
    def transport(self, name):
        if name == 'local':
            yield
            return
        tmp = self.useFixture(fixtures.TempDir()).path
        sshd = private_sshd.running(os.path.join(tmp, 'sshd'))
        with sshd as (port, options):
            values = {'migration_ssh_port': port,
                      'migration_ssh_user': 'root',
                      'migration_ssh_options': options}
            for key, value in values.items():
                CONF.set_override(key, value, group='lxc')
            privsep.refresh_root_daemons()
            try:
                with mock.patch.object(migration_mod, 'is_local',
                                       return_value=False):
                    yield
            finally:
                for key in values:
                    CONF.clear_override(key, group='lxc')
                privsep.refresh_root_daemons()


def tree(top):
    """(path, mode, uid, gid, link target, xattrs) of each file below top.

    Hard links show as equal inode groups' first names, in order.
    """
    out = []
    first = {}
    for d, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(d, name)
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else None
            if st.st_nlink > 1 and not os.path.isdir(path):
                link = 'hardlink:' + first.setdefault(st.st_ino, rel)
            xattrs = () if os.path.islink(path) else tuple(sorted(
                (k, os.getxattr(path, k, follow_symlinks=False))
                for k in os.listxattr(path, follow_symlinks=False)))
            out.append((rel, st.st_mode, st.st_uid, st.st_gid, link,
                        xattrs))
    return out
