"""Tests for novalxcdriver.host.problems: the commands a host must have."""

import shutil

from novalxcdriver import host
from tests.unit import base


class ToolsTest(base.TestCase):
    """Each command the driver runs is looked for before the first spawn."""

    def setUp(self):
        super().setUp()
        self.absent = set()
        real = shutil.which
        self.patch('shutil.which', side_effect=lambda name: (
            None if name in self.absent else real(name) or '/bin/' + name))

    def _missing(self, root_disk_fs='ext4'):
        return [p for p in host.problems(root_disk_fs)
                if p.startswith('missing commands')]

    def test_none_missing(self):
        self.assertEqual([], self._missing('btrfs'))

    def test_disk_tools_named(self):
        # A resize or a migration grows an ext4 disk: e2fsck, resize2fs.
        self.absent = {'e2fsck', 'resize2fs'}
        problem, = self._missing()
        self.assertIn('e2fsck, resize2fs', problem)
        self.assertIn('e2fsprogs', problem)

    def test_btrfs_tools_only_for_btrfs_roots(self):
        self.absent = {'btrfs', 'fallocate'}
        self.assertEqual([], self._missing('ext4'))
        problem, = self._missing('btrfs')
        self.assertIn('btrfs, fallocate for [lxc] root_disk_fs = btrfs',
                      problem)
        self.assertIn('util-linux', problem)

    def test_every_disk_command_is_checked(self):
        # The commands privsep/disks.py runs, as its execute calls name
        # them: one added there and not here fails this test.
        with open(host.__file__.replace('host.py', 'privsep/disks.py')) as f:
            source = f.read()
        for name in ('mkfs.ext4', 'e2fsck', 'resize2fs', 'mkfs.btrfs',
                     'btrfs', 'fallocate'):
            self.assertIn("'%s'" % name, source)
            self.assertIn(name, host.REQUIRED_TOOLS + host.BTRFS_TOOLS)


class PrivateMountWarningTest(base.TestCase):

    def test_none_under_a_shared_mount(self):
        self.patch('novalxcdriver.mount.propagation',
                   return_value=('/', True))
        self.assertIsNone(host.private_mount_warning('/var/lib/novalxc', 10))

    def test_a_private_mount_named_with_the_remedy(self):
        propagation = self.patch('novalxcdriver.mount.propagation',
                                 return_value=('/var', False))
        warning = host.private_mount_warning('/var/lib/novalxc', 10)
        propagation.assert_called_once_with('/var/lib/novalxc')
        self.assertIn('The mount on /var, which holds state_path '
                      '/var/lib/novalxc, is private', warning)
        self.assertIn('waits 10 s', warning)
        self.assertTrue(warning.endswith('mount --make-shared /var'))
