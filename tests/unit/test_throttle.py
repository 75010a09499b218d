"""Tests for novalxcdriver.throttle: root blkio rules through the daemon.

The daemon's side (checks, the lines written) is
tests/unit/test_privsep_writeback.py's.
"""

from unittest import mock

import fixtures
from oslotest import base

from novalxcdriver import exception
from novalxcdriver import throttle

IO = (('disk_read_bytes_sec', 1000), ('disk_write_bytes_sec', 2000),
      ('disk_write_iops_sec', 30))


class _Base(base.BaseTestCase):
    """The storage_admin entry points mocked; cgroup v1 unless told."""

    def setUp(self):
        super().setUp()
        self.writeback = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.throttle.writeback', autospec=True)).mock
        self.writeback.has_root_rules.return_value = True


class SetWritebackTest(_Base):

    def test_one_call_for_all_devices_in_plain_values(self):
        throttle.set_writeback(IO, ('7:3', '7:9'))
        # Lists: what crosses the daemon's socket.
        self.writeback.set_writeback.assert_called_once_with(
            [['disk_read_bytes_sec', 1000], ['disk_write_bytes_sec', 2000],
             ['disk_write_iops_sec', 30]], ['7:3', '7:9'])

    def test_no_round_trip_on_cgroup_v2(self):
        self.writeback.has_root_rules.return_value = False
        throttle.set_writeback(IO, ['7:3'])
        self.writeback.set_writeback.assert_not_called()

    def test_failures_raise(self):
        for error in (OSError(22, 'Invalid argument'),
                      exception.LoopFailed(path='7:3', reason='not attached'),
                      exception.PrivilegedCallRefused(call='set_writeback',
                                                      reason='no')):
            self.writeback.set_writeback.side_effect = error
            self.assertRaises(type(error), throttle.set_writeback, IO,
                              ['7:3'])


class ClearTest(_Base):

    def test_through_the_daemon(self):
        throttle.clear('7:3')
        self.writeback.clear_writeback.assert_called_once_with('7:3')

    def test_failures_only_logged(self):
        for error in (OSError(22, 'Invalid argument'),
                      exception.LoopFailed(path='7:3', reason='not attached'),
                      exception.PrivilegedCallRefused(call='clear_writeback',
                                                      reason='no')):
            log = self.useFixture(fixtures.FakeLogger())
            self.writeback.clear_writeback.side_effect = error
            throttle.clear('7:3')
            self.assertIn('Cannot clear the blkio throttles of 7:3',
                          log.output)

    def test_other_errors_raise(self):
        # Only the failures the daemon reports are expected.
        self.writeback.clear_writeback.side_effect = RuntimeError('bug')
        self.assertRaises(RuntimeError, throttle.clear, '7:3')

    def test_no_round_trip_on_cgroup_v2(self):
        self.writeback.has_root_rules.return_value = False
        throttle.clear('7:3')
        self.writeback.clear_writeback.assert_not_called()
        self.assertEqual([mock.call.has_root_rules()],
                         self.writeback.mock_calls)
