"""Files given to a container's root by the storage_admin daemon, for real.

privsep.ownership's entry points over the daemon's socket, as
nova-compute reaches them, with the test's directory as a driver root
(privsep.add_roots) and an idmap in root's real subordinate ranges. The
daemon runs with umask 0 and CAP_CHOWN: what it makes is owned by the
container's root and writable by no one else. Root only.
"""

import os
import stat
import subprocess

import fixtures
from oslotest import base as oslo_base

from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import ownership
from tests.functional import base

SIZE = 65536


class OwnershipDaemonTest(oslo_base.BaseTestCase):

    def setUp(self):
        super().setUp()
        base.require_root(self)
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        # The daemon acts below driver roots only.
        privsep.add_roots(self.tmp)
        # Not a driver root: what must stay untouched.
        self.outside = os.path.realpath(
            self.useFixture(fixtures.TempDir()).path)
        (uid_start, _n), (gid_start, _n) = ids.read_subordinate_ranges()
        # A container's range, past the first (the host's first boots').
        self.uid, self.gid = uid_start + SIZE, gid_start + SIZE
        self.idmap = ids.Idmap(self.uid, self.gid, SIZE)

    def owner(self, path):
        st = os.lstat(path)
        return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))

    def test_owned_dir(self):
        path = os.path.join(self.tmp, 'upper')
        ownership.make_owned_dir(path, self.idmap.fields())
        self.assertTrue(os.path.isdir(path))
        self.assertEqual((self.uid, self.gid, 0o755), self.owner(path))
        # An OSError crosses the socket with its class.
        self.assertRaises(FileExistsError, ownership.make_owned_dir, path,
                          self.idmap.fields())

    def test_config_drive_read_only_for_the_container_s_root(self):
        path = os.path.join(self.tmp, 'config-drive')
        files = [['openstack/latest/meta_data.json', b'{"uuid": "u"}'],
                 ['openstack/latest/user_data', b'\x00\xff#!/bin/sh']]
        ownership.write_config_drive(path, files, self.idmap.fields())
        self.assertEqual((self.uid, self.gid, 0o500), self.owner(path))
        for rel in ('openstack', 'openstack/latest'):
            self.assertEqual((self.uid, self.gid, 0o500),
                             self.owner(os.path.join(path, rel)))
        for rel, data in files:
            self.assertEqual((self.uid, self.gid, 0o400),
                             self.owner(os.path.join(path, rel)))
            with open(os.path.join(path, rel), 'rb') as f:
                self.assertEqual(data, f.read())

    def test_etc_file_never_written_out_of_the_root(self):
        merged = os.path.join(self.tmp, 'merged')
        os.mkdir(merged)
        victim_dir = os.path.join(self.outside, 'etc')
        os.mkdir(victim_dir)
        # An image's /etc pointing at a host directory.
        os.symlink(victim_dir, os.path.join(merged, 'etc'))
        self.assertEqual(ownership.NO_ETC, ownership.write_etc_file(
            merged, 'hostname', 'web-1\n', self.idmap.fields()))
        self.assertEqual([], os.listdir(victim_dir))
        # An image with that directory gets it there, inside.
        inside = merged + victim_dir
        os.makedirs(inside)
        self.assertIsNone(ownership.write_etc_file(
            merged, 'hostname', 'web-1\n', self.idmap.fields()))
        self.assertEqual([], os.listdir(victim_dir))
        path = os.path.join(inside, 'hostname')
        self.assertEqual((self.uid, self.gid, 0o644), self.owner(path))
        with open(path) as f:
            self.assertEqual('web-1\n', f.read())

    def test_paths_outside_the_roots_refused(self):
        for fn, args in (
                (ownership.make_owned_dir,
                 (os.path.join(self.outside, 'd'), self.idmap.fields())),
                (ownership.write_config_drive,
                 (os.path.join(self.outside, 'cd'), [['f', b'x']],
                  self.idmap.fields())),
                (ownership.write_etc_file,
                 (self.outside, 'hostname', 'h\n', self.idmap.fields())),
                (ownership.give_disk_root,
                 (self.outside, self.idmap.fields()))):
            e = self.assertRaises(exception.PrivilegedCallRefused, fn,
                                  *args)
            self.assertIn('not below a driver root', str(e))
        self.assertEqual([], os.listdir(self.outside))
        self.assertEqual((0, 0, 0o700), self.owner(self.outside))

    def test_an_idmap_of_the_host_s_refused(self):
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              ownership.make_owned_dir,
                              os.path.join(self.tmp, 'd'), [0, 0, SIZE])
        self.assertEqual('make_owned_dir', e.kwargs['call'])
        self.assertFalse(os.path.lexists(os.path.join(self.tmp, 'd')))

    def test_a_new_disk_s_root(self):
        image = os.path.join(self.tmp, 'ephemeral.img')
        with open(image, 'wb') as f:
            f.truncate(64 << 20)
        subprocess.run(['mkfs.ext4', '-q', '-F', image], check=True)
        mnt = os.path.join(self.tmp, 'ephemeral')
        os.mkdir(mnt)
        self.assertRaises(exception.PrivilegedCallRefused,
                          ownership.give_disk_root, mnt, self.idmap.fields())
        mount.disk_image(image, mnt)
        self.addCleanup(self._unmounted, image, mnt)
        self.assertTrue(os.path.isdir(os.path.join(mnt, 'lost+found')))
        ownership.give_disk_root(mnt, self.idmap.fields())
        self.assertEqual((self.uid, self.gid, 0o755), self.owner(mnt))
        self.assertEqual([], os.listdir(mnt))

    def _unmounted(self, image, mnt):
        mount.unmount(mnt)
        base.poll(lambda: not disk.loop_devices_of(image), timeout=5)
        self.assertEqual([], disk.loop_devices_of(image))
