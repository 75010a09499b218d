"""Tests for novalxcdriver.lxcfs: finding, recovering and starting lxcfs."""

import os
from unittest import mock

import fixtures
from oslotest import base

from novalxcdriver import exception
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
        # A stale FUSE mount goes lazily: nothing is deleted under it.
        self.unmount = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.mount.detach_stale')).mock
        self.start = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.lxc.start_daemon')).mock
        self.log = os.path.join(self.tmp, 'lxcfs.log')
        self.useFixture(fixtures.MonkeyPatch(
            'novalxcdriver.lxcfs.LOCK_PATH', os.path.join(self.tmp, 'locks')))

    def test_serving_left_alone(self):
        self.state.return_value = lxcfs.SERVING
        self.assertEqual([], lxcfs.ensure(self.log))
        self.unmount.assert_not_called()
        self.start.assert_not_called()

    def test_absent_started(self):
        self.state.side_effect = [lxcfs.ABSENT, lxcfs.ABSENT, lxcfs.SERVING]
        self.assertEqual([], lxcfs.ensure(self.log))
        self.unmount.assert_not_called()
        self.assertTrue(os.path.isdir(self.mnt))
        self.start.assert_called_once_with(['lxcfs', self.mnt], self.log)

    def test_stale_detached_then_started(self):
        calls = mock.Mock()
        calls.attach_mock(self.unmount, 'unmount')
        calls.attach_mock(self.start, 'start')
        self.state.side_effect = [lxcfs.STALE, lxcfs.SERVING]
        self.assertEqual([], lxcfs.ensure(self.log))
        self.assertEqual(
            [mock.call.unmount(self.mnt),
             mock.call.start(['lxcfs', self.mnt], self.log)],
            calls.mock_calls)

    def test_stale_that_cannot_be_detached(self):
        self.state.return_value = lxcfs.STALE
        self.unmount.side_effect = exception.MountFailed(
            what='unmount', target=self.mnt, reason='Device or resource busy')
        problems = lxcfs.ensure(self.log)
        self.assertEqual(1, len(problems))
        self.assertIn('stale lxcfs mount', problems[0])
        self.assertIn('busy', problems[0])
        self.start.assert_not_called()

    def test_never_serving_is_a_problem_naming_the_log(self):
        self.state.return_value = lxcfs.ABSENT
        problems = lxcfs.ensure(self.log, timeout=0.3)
        self.assertEqual(1, len(problems))
        self.assertIn(self.log, problems[0])
        self.start.assert_called_once()
