"""Tests for novalxcdriver.spool: a FIFO's capacity."""

import errno
import fcntl
import os
from unittest import mock

import fixtures

from novalxcdriver import spool
from tests.unit import base


class WidenTest(base.TestCase):

    def setUp(self):
        super().setUp()
        fifo = os.path.join(self.useFixture(fixtures.TempDir()).path, 'f')
        os.mkfifo(fifo)
        self.fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, self.fd)
        self.before = fcntl.fcntl(self.fd, fcntl.F_GETPIPE_SZ)

    def test_a_mebibyte(self):
        self.assertLess(self.before, spool.PIPE_BYTES)
        spool.widen(self.fd)
        self.assertEqual(1 << 20,
                         fcntl.fcntl(self.fd, fcntl.F_GETPIPE_SZ))

    def test_a_refusal_leaves_the_pipe_as_it_was(self):
        real = fcntl.fcntl

        def refused(fd, op, *args):
            if op == fcntl.F_SETPIPE_SZ:
                raise PermissionError(errno.EPERM, 'Operation not permitted')
            return real(fd, op, *args)
        log = self.useFixture(fixtures.FakeLogger(level='DEBUG'))
        with mock.patch.object(spool.fcntl, 'fcntl', side_effect=refused):
            spool.widen(self.fd)
        self.assertEqual(self.before,
                         fcntl.fcntl(self.fd, fcntl.F_GETPIPE_SZ))
        self.assertIn('The pipe keeps its size', log.output)
