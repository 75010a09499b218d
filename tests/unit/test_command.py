"""command.wait_exit: a started process's end, seen when it happens."""

import errno
import subprocess
import sys
import threading
import time
from unittest import mock

from novalxcdriver import command
from tests.unit import base

WAITS_FOR_STDIN = [sys.executable, '-c',
                   'import sys; sys.stdin.read(); sys.exit(3)']


class WaitExitTest(base.TestCase):

    def start(self, argv=WAITS_FOR_STDIN):
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
        self.addCleanup(self.end, proc)
        return proc

    @staticmethod
    def end(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdin:
            proc.stdin.close()

    def test_its_status_once_it_ends_without_polling(self):
        proc = self.start()
        ender = threading.Timer(0.2, proc.stdin.close)
        ender.start()
        self.addCleanup(ender.cancel)
        # Popen.wait(timeout)'s polling sleeps between looks; none here.
        with mock.patch('subprocess.time.sleep',
                        side_effect=AssertionError('polled')):
            self.assertEqual(3, command.wait_exit(proc, 30))
        self.assertEqual(3, proc.returncode)

    def test_still_running_after_timeout(self):
        proc = self.start()
        start = time.monotonic()
        e = self.assertRaises(subprocess.TimeoutExpired, command.wait_exit,
                              proc, 0.2)
        self.assertGreaterEqual(time.monotonic() - start, 0.2)
        self.assertEqual(0.2, e.timeout)
        self.assertIsNone(proc.poll())

    def test_ended_and_not_yet_reaped(self):
        proc = self.start([sys.executable, '-c', 'raise SystemExit(4)'])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open('/proc/%d/stat' % proc.pid) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    break
            time.sleep(0.01)
        self.assertEqual(4, command.wait_exit(proc, 0))

    def test_reaped_already(self):
        proc = self.start([sys.executable, '-c', 'raise SystemExit(5)'])
        proc.wait()
        self.assertEqual(5, command.wait_exit(proc, 0))

    def test_without_pidfds_popen_s_own_wait(self):
        proc = self.start()
        self.patch('os.pidfd_open', side_effect=OSError(errno.ENOSYS, 'no'))
        wait = self.patch_object(proc, 'wait', return_value=7)
        self.assertEqual(7, command.wait_exit(proc, 12))
        wait.assert_called_once_with(timeout=12)
