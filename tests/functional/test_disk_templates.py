"""btrfs disks copied from one formatted template, mounted side by side.

Real mkfs, loop devices and mounts (root). This needs the kernel's
temp-fsid (privsep.disks.from_template, decided in the storage_admin
daemon); without it the driver formats each btrfs disk, as it does with
no templates directory. ext4 disks are formatted each.
"""

import os
import subprocess
import threading
import time
from unittest import mock

import fixtures
from oslotest import base as oslo_base

from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import disks as privsep_disks
from tests.functional import base


class DiskTemplateTest(oslo_base.BaseTestCase):

    def setUp(self):
        super().setUp()
        base.require_root(self)
        self.tmp = self.useFixture(fixtures.TempDir()).path
        # Mounts are made below driver roots only.
        privsep.add_roots(self.tmp)
        self.templates = os.path.join(self.tmp, disk.TEMPLATES)
        self._roots = []

    def disk(self, name, templates=True, top=None):
        # In a root's directory of its own, as rootfs.py lays them out
        # (the daemon makes mount points there only).
        root_dir = os.path.join(top or self.tmp, 'rootfs',
                                str(len(self._roots)))
        self._roots.append(name)
        os.makedirs(root_dir)
        d = disk.Disk(os.path.join(root_dir, 'root.img'),
                      os.path.join(root_dir, 'root'),
                      self.templates if templates else None)
        self.addCleanup(self._gone, d)
        return d

    @staticmethod
    def owner(n):
        # An idmap inside root's subordinate ids (the daemon checks).
        start = 100000 + (n + 1) * 65536
        return ids.Idmap(start, start, 65536)

    def _gone(self, d):
        mount.unmount_tree(d.mountpoint)
        base.poll(lambda: not disk.loop_devices_of(d.image_path), timeout=5)
        self.assertEqual([], disk.loop_devices_of(d.image_path))

    def _side_by_side(self, fs):
        disks = [self.disk('%s%d' % (fs, n)) for n in range(3)]
        for n, d in enumerate(disks):
            d.create(1, self.owner(n), fs=fs)
            with open(os.path.join(d.mountpoint, 'who'), 'w') as f:
                f.write(str(n))
        # Each mount shows its own disk, its root owned as asked.
        for n, d in enumerate(disks):
            self.assertEqual(fs, d.filesystem())
            self.assertTrue(d.is_mounted())
            with open(os.path.join(d.mountpoint, 'who')) as f:
                self.assertEqual(str(n), f.read())
            self.assertEqual(self.owner(n).uid_start,
                             os.stat(d.mountpoint).st_uid)
        # And again after all are unmounted and mounted in another order.
        for d in disks:
            mount.unmount_tree(d.mountpoint)
        for n, d in reversed(list(enumerate(disks))):
            d.mount()
            with open(os.path.join(d.mountpoint, 'who')) as f:
                self.assertEqual(str(n), f.read())
        return disks

    def test_ext4_formatted_each(self):
        self._side_by_side('ext4')
        self.assertFalse(os.path.exists(self.templates))

    def test_btrfs(self):
        if not privsep_disks.from_template('btrfs'):
            self.skipTest('no btrfs temp-fsid in this kernel')
        disks = self._side_by_side('btrfs')
        self.assertEqual(['btrfs-1G.img'], os.listdir(self.templates))
        # Grown online while its siblings (same fsid on disk) are mounted.
        disks[1].grow(2)
        st = os.statvfs(disks[1].mountpoint)
        self.assertGreater(st.f_blocks * st.f_frsize, 1.5 * 1024 ** 3)
        # Subvolume snapshots (snapshot.py) work on a clone.
        privsep_disks.snapshot_subvolume(disks[2].mountpoint, 'snap')
        self.assertTrue(os.path.exists(os.path.join(
            disks[2].mountpoint, 'snap', 'who')))

    def test_btrfs_without_templates_formats_each(self):
        # Kernels without temp-fsid: privsep.disks passes no template
        # either (test_privsep_disks).
        d = self.disk('plain', templates=False)
        d.create(1, fs='btrfs')
        self.assertEqual('btrfs', d.filesystem())
        self.assertFalse(os.path.exists(self.templates))

    def test_under_a_driver_root_reached_through_a_symlink(self):
        # A state_path such as /var/lib/nova -> /srv/nova: the daemon
        # finds the new disk's mount point where the kernel put it (the
        # mount table names the resolved path, which a string match
        # against the driver's path missed: give_disk_root refused).
        other = self.useFixture(fixtures.TempDir()).path
        real = os.path.join(other, 'real')
        os.makedirs(os.path.join(real, 'rootfs', '0'))
        root = os.path.join(other, 'state')
        os.symlink(real, root)
        privsep.add_roots(root)
        d = disk.Disk(os.path.join(root, 'rootfs', '0', 'root.img'),
                      os.path.join(root, 'rootfs', '0', 'root'),
                      self.templates)
        self.addCleanup(self._gone, d)
        d.create(1, self.owner(0), fs='btrfs')
        self.assertIn(os.path.join(real, 'rootfs', '0', 'root'),
                      mount.mountpoints())
        self.assertEqual(self.owner(0).uid_start,
                         os.stat(d.mountpoint).st_uid)

    def test_ext4_grown_unmounted(self):
        d = self.disk('eph')
        d.create(1, fs='ext4')
        with open(os.path.join(d.mountpoint, 'f'), 'w') as f:
            f.write('kept')
        mount.unmount_tree(d.mountpoint)
        d.grow(2)
        d.mount()
        with open(os.path.join(d.mountpoint, 'f')) as f:
            self.assertEqual('kept', f.read())
        st = os.statvfs(d.mountpoint)
        self.assertGreater(st.f_blocks * st.f_frsize, 1.5 * 1024 ** 3)

    def test_never_mounted_twice(self):
        self._never_mounted_twice(self.disk('held'))

    def test_never_mounted_twice_through_a_symlinked_root(self):
        # sysfs names the image's resolved path: a remount after a host
        # reboot under /var/lib/nova -> /srv/nova saw no device holding it
        # (the symlinked-root reconcile test's rare "overlay ... No such
        # file or directory": upper/ not yet written back).
        link = self.tmp + '.link'
        os.symlink(self.tmp, link)
        self.addCleanup(os.unlink, link)
        privsep.add_roots(link)
        self._never_mounted_twice(self.disk('held', top=link))

    def test_a_copy_after_the_unmount_has_what_was_written(self):
        # Rootfs.unmount_for_copy (a migration's hand_over) for one disk:
        # synced while mounted, the image read while another namespace
        # still holds its filesystem has the file. Without the sync the
        # read found /who empty (ext4 writes its data back 30 s later).
        d = self.disk('copied')
        holder = self._held(d)
        d.sync()
        mount.unmount_tree(d.mountpoint)
        self.assertTrue(disk.loop_devices_of(d.image_path))
        read = subprocess.run(['debugfs', '-R', 'cat /who', d.image_path],
                              capture_output=True, check=True)
        self.assertEqual(b'first', read.stdout)
        # Still held: the copy did not wait for the namespace to go.
        self.assertTrue(disk.loop_devices_of(d.image_path))
        holder.kill()

    def test_a_slave_namespace_lets_go_under_a_shared_mount(self):
        # host.private_mount_warning's reason: a namespace cloned while the
        # disk is mounted and made a slave (ip netns exec's and LXC's way)
        # loses the disk with the unmount here only when the mount holding
        # the driver root is shared.
        for shared in (True, False):
            top = os.path.join(self.tmp, 'shared' if shared else 'private')
            os.makedirs(top)
            subprocess.run(['mount', '--bind', top, top], check=True)
            self.addCleanup(subprocess.run, ['umount', top], check=True)
            subprocess.run(['mount', '--make-shared' if shared else
                            '--make-private', top], check=True)
            self.assertEqual((top, shared),
                             mount.propagation(os.path.join(top, 'rootfs')))
            privsep.add_roots(top)
            d = self.disk('slave-%s' % shared, top=top)
            d.create(1, fs='ext4')
            holder = self._namespace('--propagation', 'slave')
            mount.unmount_tree(d.mountpoint)
            if shared:
                self.assertTrue(base.poll(
                    lambda: not disk.loop_devices_of(d.image_path),
                    timeout=5))
            else:
                time.sleep(0.5)
                self.assertTrue(disk.loop_devices_of(d.image_path))
            holder.kill()
            holder.wait()

    def _namespace(self, *options):
        """A process in a mount namespace cloned from this one, now."""
        holder = subprocess.Popen(['unshare', '--mount'] + list(options) +
                                  ['sleep', '60'])
        self.addCleanup(holder.wait)
        self.addCleanup(holder.kill)
        base.poll(lambda: os.readlink('/proc/%d/ns/mnt' % holder.pid) !=
                  os.readlink('/proc/self/ns/mnt'))
        return holder

    def _held(self, d):
        """d made (ext4) with /who, a mount namespace holding it; that.

        The namespace is cloned while the disk is mounted, as a container
        being started clones the host's: it keeps the ext4 alive after an
        unmount here, with what it has not written back.
        """
        d.create(1, fs='ext4')
        with open(os.path.join(d.mountpoint, 'who'), 'w') as f:
            f.write('first')
        # unshare's default: the clone's mounts private, held whatever
        # the host's propagation.
        return self._namespace()

    def _never_mounted_twice(self, d):
        # Mounting the image again while the namespace holds it would give
        # it a second live filesystem that lacks the unwritten data.
        holder = self._held(d)
        mount.unmount_tree(d.mountpoint)
        self.assertTrue(disk.loop_devices_of(d.image_path))
        with mock.patch.object(disk, 'ATTACHED_TIMEOUT', 0.5):
            e = self.assertRaises(exception.MountFailed, d.mount)
        self.assertIn('mounting it twice would corrupt it', str(e))
        self.assertFalse(d.is_mounted())
        # Once the namespace is gone, its filesystem written back, the
        # image mounts with everything in it.
        threading.Timer(1, holder.kill).start()
        d.mount()
        with open(os.path.join(d.mountpoint, 'who')) as f:
            self.assertEqual('first', f.read())
        self.assertEqual(1, len(disk.loop_devices_of(d.image_path)))
