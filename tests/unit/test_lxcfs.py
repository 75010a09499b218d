"""Tests for novalxcdriver.lxcfs: finding lxcfs, and asking for it.

Starting it (the storage_admin daemon's ensure_lxcfs) is
tests/unit/test_privsep_daemons.py's.
"""

import os

import fixtures
from oslotest import base

from novalxcdriver import lxcfs


class _Base(base.BaseTestCase):
    """lxcfs's mount point moved into a temporary directory."""

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.mnt = os.path.join(self.tmp, 'lxcfs')
        self.useFixture(fixtures.MonkeyPatch(
            'novalxcdriver.host.LXCFS_MOUNT', self.mnt))


class StateTest(_Base):

    def setUp(self):
        super().setUp()
        self.points = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.mount.mountpoints', return_value=set())).mock

    def test_serving(self):
        os.makedirs(os.path.join(self.mnt, 'proc'))
        open(os.path.join(self.mnt, 'proc', 'meminfo'), 'w').close()
        self.assertEqual(lxcfs.SERVING, lxcfs.state())

    def test_stale_when_mounted_but_unreadable(self):
        # A dead FUSE daemon: the mount point is listed, its files are not.
        self.points.return_value = {'/', self.mnt}
        self.assertEqual(lxcfs.STALE, lxcfs.state())

    def test_absent(self):
        self.points.return_value = {'/'}
        self.assertEqual(lxcfs.ABSENT, lxcfs.state())


class EnsureTest(_Base):

    def setUp(self):
        super().setUp()
        self.state = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.lxcfs.state')).mock
        self.daemon = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.daemons.ensure_lxcfs',
            return_value=[])).mock

    def test_serving_costs_no_privileged_call(self):
        self.state.return_value = lxcfs.SERVING
        self.assertEqual([], lxcfs.ensure('/var/lib/novalxc'))
        self.daemon.assert_not_called()

    def test_otherwise_the_daemon_with_the_normalized_state_path(self):
        for current in (lxcfs.ABSENT, lxcfs.STALE):
            self.daemon.reset_mock()
            self.state.return_value = current
            self.assertEqual([], lxcfs.ensure('/var/lib/novalxc/'))
            self.daemon.assert_called_once_with('/var/lib/novalxc', 10)

    def test_the_daemons_problems_returned(self):
        self.state.return_value = lxcfs.ABSENT
        self.daemon.return_value = ['lxcfs did not start on /var/lib/lxcfs']
        self.assertEqual(['lxcfs did not start on /var/lib/lxcfs'],
                         lxcfs.ensure('/s', timeout=3))
        self.daemon.assert_called_once_with('/s', 3)
