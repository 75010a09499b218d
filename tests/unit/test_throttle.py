"""Tests for novalxcdriver.throttle: root blkio rules on cgroup v1."""

import os
from unittest import mock

import fixtures
from oslotest import base

from novalxcdriver import throttle

FILES = ('blkio.throttle.read_bps_device', 'blkio.throttle.read_iops_device',
         'blkio.throttle.write_bps_device',
         'blkio.throttle.write_iops_device')
IO = (('disk_read_bytes_sec', 1000), ('disk_write_bytes_sec', 2000),
      ('disk_write_iops_sec', 30))


class _Base(base.BaseTestCase):
    """A fake root blkio cgroup whose files record every line written."""

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path

    def make_v1(self):
        for name in FILES:
            open(os.path.join(self.root, name), 'w').close()

    def written(self, name):
        with open(os.path.join(self.root, name)) as f:
            return f.read()


class SetWritebackTest(_Base):

    def test_write_throttles_of_each_device_at_the_root(self):
        self.make_v1()
        with mock.patch.object(throttle, '_write',
                               wraps=throttle._write) as write:
            throttle.set_writeback(IO, ['7:3', '7:9'], root=self.root)
        writes = [rule for c in write.call_args_list for rule in c.args[0]]
        self.assertEqual([
            ('blkio.throttle.write_bps_device', '7:3 2000'),
            ('blkio.throttle.write_iops_device', '7:3 30'),
            ('blkio.throttle.write_bps_device', '7:9 2000'),
            ('blkio.throttle.write_iops_device', '7:9 30'),
        ], writes)
        # Reads are the reader's own: its cgroup's rule holds them.
        self.assertEqual('', self.written('blkio.throttle.read_bps_device'))

    def test_nothing_on_cgroup_v2(self):
        throttle.set_writeback(IO, ['7:3'], root=self.root)
        self.assertEqual([], os.listdir(self.root))

    def test_refused_rule_raises(self):
        os.mkdir(os.path.join(self.root, 'blkio.throttle.write_bps_device'))
        self.assertRaises(OSError, throttle.set_writeback, IO, ['7:3'],
                          root=self.root)


class ClearTest(_Base):

    def test_zero_for_every_kind(self):
        self.make_v1()
        throttle.clear('7:3', root=self.root)
        for name in FILES:
            self.assertEqual('7:3 0', self.written(name))

    def test_failure_only_logged(self):
        os.mkdir(os.path.join(self.root, 'blkio.throttle.write_bps_device'))
        log = self.useFixture(fixtures.FakeLogger())
        throttle.clear('7:3', root=self.root)
        self.assertIn('Cannot clear the blkio throttles of 7:3', log.output)

    def test_nothing_on_cgroup_v2(self):
        throttle.clear('7:3', root=self.root)
        self.assertEqual([], os.listdir(self.root))
