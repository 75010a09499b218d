"""Loop devices against the real kernel: sysfs, autoclear, a mount.

privsep.storage's loop_attached in this process, and the storage_admin
daemon's entry points (mount.disk_image, loop.set_capacity, loop.detach)
for real, with the test's directory as a driver root. Root only (loop
devices). Each test's device must be gone at its end.
"""

import contextlib
import os
import subprocess

import fixtures
from oslotest import base as oslo_base

from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import loop
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import storage
from tests.functional import base

MiB = 1024 * 1024


class LoopTest(oslo_base.BaseTestCase):

    def setUp(self):
        super().setUp()
        base.require_root(self)
        self.tmp = self.useFixture(fixtures.TempDir()).path
        # The daemon's entry points act below driver roots only.
        privsep.add_roots(self.tmp)
        self.image = os.path.join(self.tmp, 'disk;$(x) a.img')
        with open(self.image, 'wb') as f:
            f.truncate(64 * MiB)
        self.addCleanup(self._none_left)

    def _none_left(self):
        self.assertEqual([], disk.loop_devices_of(self.image))

    def sysfs(self, device, name):
        path = os.path.join('/sys/block', os.path.basename(device), name)
        with open(path) as f:
            return f.read().strip()

    def test_attached_with_its_settings_then_gone(self):
        with storage.loop_attached(self.image, offset=MiB, size=8 * MiB,
                                   read_only=True) as device:
            self.assertEqual([device], disk.loop_devices_of(self.image))
            self.assertEqual('1', self.sysfs(device, 'loop/autoclear'))
            self.assertEqual(str(MiB), self.sysfs(device, 'loop/offset'))
            self.assertEqual(str(8 * MiB),
                             self.sysfs(device, 'loop/sizelimit'))
            self.assertEqual('1', self.sysfs(device, 'ro'))
            # 512-byte sectors.
            self.assertEqual(str(8 * MiB // 512), self.sysfs(device, 'size'))
        base.poll(lambda: not disk.loop_devices_of(self.image), timeout=5)

    def test_a_mount_holds_it_until_unmounted(self):
        subprocess.run(['mkfs.ext4', '-q', '-F', self.image], check=True)
        mnt = os.path.join(self.tmp, 'mnt')
        os.mkdir(mnt)
        # Through the storage_admin daemon: attached and mounted in one
        # call, with autoclear.
        device = mount.disk_image(self.image, mnt)
        try:
            self.assertEqual([device], disk.loop_devices_of(self.image))
            with open(os.path.join(mnt, 'f'), 'w') as f:
                f.write('written')
        finally:
            mount.unmount(mnt)
        base.poll(lambda: not disk.loop_devices_of(self.image), timeout=5)

    def test_set_capacity_shows_a_grown_file(self):
        with storage.loop_attached(self.image) as device:
            os.truncate(self.image, 128 * MiB)
            self.assertEqual(str(64 * MiB // 512), self.sysfs(device, 'size'))
            loop.set_capacity(device)
            self.assertEqual(str(128 * MiB // 512),
                             self.sysfs(device, 'size'))
        base.poll(lambda: not disk.loop_devices_of(self.image), timeout=5)

    def test_detach_of_a_leftover_without_autoclear(self):
        # As an older driver's crash between losetup and its detach left.
        device = subprocess.run(['losetup', '--find', '--show', self.image],
                                check=True, capture_output=True,
                                text=True).stdout.strip()
        self.assertEqual('0', self.sysfs(device, 'loop/autoclear'))
        loop.detach(device)
        base.poll(lambda: not disk.loop_devices_of(self.image), timeout=5)
        # Not a second detach of device: a parallel worker may attach its
        # own image to the freed number at once (CI: "returned None").

    def test_attaches_get_their_own_devices(self):
        images = [self.image]
        for n in range(7):
            path = os.path.join(self.tmp, '%d.img' % n)
            with open(path, 'wb') as f:
                f.truncate(MiB)
            images.append(path)
        with contextlib.ExitStack() as stack:
            devices = [stack.enter_context(storage.loop_attached(p))
                       for p in images]
            self.assertEqual(len(images), len(set(devices)))
        base.poll(lambda: not any(disk.loop_devices_of(p) for p in images),
                  timeout=5)

    def test_missing_file_attaches_nothing(self):
        self.assertRaises(exception.LoopFailed, storage._loop_configure,
                          os.path.join(self.tmp, 'nope'), 0, 0, False)

    def test_the_daemon_refuses_a_device_backed_elsewhere(self):
        other = self.useFixture(fixtures.TempDir()).path
        image = os.path.join(other, 'x.img')
        with open(image, 'wb') as f:
            f.truncate(MiB)
        with storage.loop_attached(image) as device:
            self.assertRaises(exception.PrivilegedCallRefused, loop.detach,
                              device)
            self.assertEqual([device], disk.loop_devices_of(image))
        base.poll(lambda: not disk.loop_devices_of(image), timeout=5)
