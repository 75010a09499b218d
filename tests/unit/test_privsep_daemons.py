"""privsep.daemons: start_daemon, and ensure_lxcfs's checks and steps.

start_daemon really starts a short Python program, a child of this
process, waited for here. ensure_lxcfs runs in-process (client mode off)
with lxcfs's state, the lazy detach and start_daemon mocked, lxcfs's
mount point and the lock directory moved into a temporary directory: the
host's /var/lib/lxcfs and /run/novalxc are never touched.
"""

import errno
import os
import signal
import sys
import time
from unittest import mock

import fixtures
from oslo_concurrency import lockutils

from novalxcdriver import exception
from novalxcdriver import lxcfs
from novalxcdriver import privsep
from novalxcdriver.privsep import daemons
from novalxcdriver.privsep import lxcconf
from novalxcdriver.privsep import storage
from tests.unit import base

# Says what it was started as; then, for each argument 'w<fd>', writes
# to that inherited fd; 'r<fd>', waits for a byte on it and says so;
# 'c<fd>', says whether it has that fd open.
CHILD = r'''
import os, sys

def say(*words):
    print(*words, flush=True)

say(sys.argv[1])
say('session', os.getsid(0) == os.getpid())
say('umask', oct(os.umask(0)))
say('stdin', os.readlink('/proc/self/fd/0'))
print('stderr', file=sys.stderr, flush=True)
for arg in sys.argv[2:]:
    fd = int(arg[1:])
    if arg[0] == 'w':
        os.write(fd, b'through the passed fd')
        os.close(fd)
    elif arg[0] == 'r':
        os.read(fd, 1)
        say('after the wait')
    elif arg[0] == 'c':
        try:
            os.fstat(fd)
            say('fd', fd, 'open')
        except OSError:
            say('fd', fd, 'closed')
'''
# What CHILD says about itself when started by start_daemon.
SAYS = 'session True\numask 0o22\nstdin /dev/null\nstderr\n'


def locks_held(path):
    """/proc/locks lines of POSIX locks on path's file held by this pid."""
    st = os.stat(path)
    dev = '%02x:%02x:%d' % (os.major(st.st_dev), os.minor(st.st_dev),
                            st.st_ino)
    with open('/proc/locks') as f:
        return [line for line in f
                if line.split()[1:2] == ['POSIX'] and
                str(os.getpid()) in line.split() and dev in line.split()]


def high_fd(fd):
    """A dup of fd at a high number not open yet, inheritable."""
    number = max([100] + list(base.open_fds())) + 1
    os.dup2(fd, number)
    return number


class EntryPointsTest(base.TestCase):

    def test_every_entry_point_is_covered(self):
        # A new entry point needs its checks tested here. start_daemon is
        # not one: only a daemon's own code calls it.
        names = {n for n, f in vars(daemons).items()
                 if privsep.storage_admin.is_entrypoint(f) or
                 privsep.lxc_admin.is_entrypoint(f) or
                 privsep.net_admin.is_entrypoint(f)}
        self.assertEqual({'ensure_lxcfs'}, names)
        self.assertTrue(privsep.storage_admin.is_entrypoint(
            daemons.ensure_lxcfs))


class StartDaemonTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.log = os.path.join(self.tmp, 'relay.log')
        # As in the privsep daemon: what start_daemon gives its child is
        # its own umask.
        self.addCleanup(os.umask, os.umask(0))

    def start(self, name, *args, pass_fds=()):
        return daemons.start_daemon(
            [sys.executable, '-c', CHILD, name] + list(args), self.log,
            pass_fds=pass_fds)

    def wait(self, pid, timeout=10):
        """Reap child pid; its exit code (None if reaped elsewhere)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                # subprocess reaped it (a Popen's cleanup of dropped ones).
                return None
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self.fail('pid %d still runs after %ss' % (pid, timeout))
            time.sleep(0.01)

    def read_log(self):
        with open(self.log) as f:
            return f.read()

    def test_own_session_umask_stdin_and_log(self):
        pid = self.start('first')
        self.assertNotEqual(os.getpid(), pid)
        self.assertIn(self.wait(pid), (0, None))
        self.assertEqual('first\n' + SAYS, self.read_log())
        self.assertEqual(0o600, os.lstat(self.log).st_mode & 0o7777)

    def test_appended_never_truncated(self):
        with open(self.log, 'w') as f:
            f.write('earlier\n')
        self.wait(self.start('first'))
        self.wait(self.start('second'))
        self.assertEqual('earlier\nfirst\n' + SAYS + 'second\n' + SAYS,
                         self.read_log())

    def test_appended_while_others_write(self):
        # O_APPEND: each of its writes goes at the end of the log as it
        # is then, whatever else was appended meanwhile.
        r, w = os.pipe()
        self.addCleanup(os.close, w)
        try:
            pid = self.start('first', 'r%d' % r, pass_fds=(r,))
        finally:
            os.close(r)
        deadline = time.monotonic() + 10
        while 'stderr' not in self.read_log():
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        with open(self.log, 'a') as f:
            f.write('from another writer\n')
        os.write(w, b'x')
        self.wait(pid)
        self.assertEqual('first\n' + SAYS + 'from another writer\n'
                         'after the wait\n', self.read_log())

    def test_pass_fds_and_no_other(self):
        r, w = os.pipe()
        other = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, other)
        # High numbers, which the child's own files never take.
        passed = high_fd(w)
        os.close(w)
        kept = high_fd(other)
        self.addCleanup(os.close, kept)
        try:
            pid = self.start('fds', 'w%d' % passed, 'c%d' % passed,
                             'c%d' % kept, pass_fds=(passed,))
        finally:
            os.close(passed)
        try:
            self.wait(pid)
            self.assertEqual(b'through the passed fd', os.read(r, 100))
        finally:
            os.close(r)
        self.assertEqual('fds\n' + SAYS + 'fd %d closed\nfd %d closed\n'
                         % (passed, kept), self.read_log())

    def test_no_fd_inherited_without_pass_fds(self):
        other = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, other)
        kept = high_fd(other)
        self.addCleanup(os.close, kept)
        self.assertTrue(os.get_inheritable(kept))
        self.wait(self.start('fds', 'c%d' % kept))
        self.assertEqual('fds\n' + SAYS + 'fd %d closed\n' % kept,
                         self.read_log())

    def test_stdin_is_dev_null_whatever_this_process_has(self):
        saved = os.dup(0)

        def restore():
            os.dup2(saved, 0)
            os.close(saved)
        self.addCleanup(restore)
        other = os.path.join(self.tmp, 'stdin')
        open(other, 'w').close()
        fd = os.open(other, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
        self.wait(self.start('stdin'))
        self.assertEqual('stdin\n' + SAYS, self.read_log())

    def test_a_symlink_at_the_log_path_is_refused(self):
        target = os.path.join(self.tmp, 'target')
        with open(target, 'w') as f:
            f.write('kept')
        os.chmod(target, 0o644)
        os.symlink(target, self.log)
        popen = self.patch('subprocess.Popen')
        e = self.assertRaises(OSError, self.start, 'x')
        self.assertEqual(errno.ELOOP, e.errno)
        popen.assert_not_called()
        with open(target) as f:
            self.assertEqual('kept', f.read())
        self.assertEqual(0o644, os.stat(target).st_mode & 0o7777)

    def test_a_dangling_symlink_makes_no_file(self):
        target = os.path.join(self.tmp, 'target')
        os.symlink(target, self.log)
        popen = self.patch('subprocess.Popen')
        e = self.assertRaises(OSError, self.start, 'x')
        self.assertEqual(errno.ELOOP, e.errno)
        popen.assert_not_called()
        self.assertFalse(os.path.lexists(target))

    def test_a_program_not_run_raises_and_leaks_no_fd(self):
        before = base.open_fds()
        self.assertRaises(OSError, daemons.start_daemon,
                          [os.path.join(self.tmp, 'no-such-program')],
                          self.log)
        self.assertEqual(before, base.open_fds())

    def test_a_log_that_cannot_be_opened(self):
        popen = self.patch('subprocess.Popen')
        self.assertRaises(OSError, daemons.start_daemon, ['true'],
                          os.path.join(self.tmp, 'no-such-dir', 'x.log'))
        popen.assert_not_called()


class EnsureLxcfsTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.state = os.path.join(self.tmp, 'state')
        os.mkdir(self.state)
        self.storage_admin_here(os.path.join(self.tmp, 'lxc'), self.state)
        self.log = os.path.join(self.state, 'lxcfs.log')
        self.mnt = os.path.join(self.tmp, 'var', 'lib', 'lxcfs')
        self.patch_object(lxcconf, 'LXCFS_MOUNT', self.mnt)
        self.lock_path = os.path.join(self.tmp, 'run', 'novalxc')
        self.patch_object(daemons, 'LOCK_PATH', self.lock_path)
        self.lock = self.patch_object(lockutils, 'lock',
                                      wraps=lockutils.lock)
        self.state_mock = self.patch_object(lxcfs, 'state')
        self.detach = self.patch_object(storage, 'detach_lazily')
        self.start = self.patch_object(daemons, 'start_daemon',
                                       return_value=4242)
        self.calls = mock.Mock()
        self.calls.attach_mock(self.detach, 'detach')
        self.calls.attach_mock(self.start, 'start')

    def refused(self, state_path, timeout):
        # Were it accepted, it would return at once.
        self.state_mock.return_value = lxcfs.SERVING
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              daemons.ensure_lxcfs, state_path, timeout)
        self.assertIn('ensure_lxcfs', str(e))
        self.lock.assert_not_called()
        self.state_mock.assert_not_called()
        self.detach.assert_not_called()
        self.start.assert_not_called()
        self.assertFalse(os.path.lexists(self.mnt))
        self.assertFalse(os.path.lexists(self.lock_path))
        return str(e)

    def test_state_path_not_a_driver_root(self):
        os.symlink(self.state, os.path.join(self.tmp, 'alias'))
        for path in ('/etc', '/', self.tmp, self.state + '/rootfs',
                     self.state + '/', self.state + '/.',
                     self.state + '/../state', os.path.join(self.tmp, 'alias'),
                     'state', os.path.relpath(self.state), '',
                     None, 5, os.fsencode(self.state), [self.state]):
            msg = self.refused(path, 5)
            self.assertIn('is not a driver root', msg)

    def test_timeouts(self):
        for timeout in (-1, -0.1, 60.5, 61, 1e9, float('inf'), float('nan'),
                        '5', b'5', None, True, False, [5]):
            msg = self.refused(self.state, timeout)
            self.assertIn('is not 0 to 60 seconds', msg)

    def test_timeouts_accepted(self):
        self.state_mock.return_value = lxcfs.SERVING
        for timeout in (0, 0.5, 10, 60, 60.0):
            self.assertEqual([], daemons.ensure_lxcfs(self.state, timeout))
        self.start.assert_not_called()

    def test_serving_left_alone(self):
        self.state_mock.return_value = lxcfs.SERVING
        self.assertEqual([], daemons.ensure_lxcfs(self.state, 5))
        self.state_mock.assert_called_once_with()
        self.detach.assert_not_called()
        self.start.assert_not_called()
        self.assertFalse(os.path.lexists(self.mnt))

    def test_absent_started(self):
        self.state_mock.side_effect = [lxcfs.ABSENT, lxcfs.ABSENT,
                                       lxcfs.SERVING]
        self.assertEqual([], daemons.ensure_lxcfs(self.state, 5))
        self.assertEqual([mock.call.start(['lxcfs', self.mnt], self.log)],
                         self.calls.mock_calls)
        self.assertEqual(3, self.state_mock.call_count)
        self.assertTrue(os.path.isdir(self.mnt))
        self.assertEqual(0o755, os.stat(self.mnt).st_mode & 0o7777)

    def test_the_lock_is_root_s_alone(self):
        # The daemon's umask is 0: a lock directory or file others may
        # write would let them replace it with a link, or hold it.
        self.state_mock.return_value = lxcfs.SERVING
        was = os.umask(0)
        try:
            daemons.ensure_lxcfs(self.state, 5)
        finally:
            os.umask(was)
        self.assertEqual(0o755, os.stat(self.lock_path).st_mode & 0o777)
        lock = os.path.join(self.lock_path, 'novalxc-lxcfs')
        self.assertEqual(0o644, os.stat(lock).st_mode & 0o777)

    def test_absent_with_its_mount_point_there(self):
        os.makedirs(self.mnt)
        self.state_mock.side_effect = [lxcfs.ABSENT, lxcfs.SERVING]
        self.assertEqual([], daemons.ensure_lxcfs(self.state, 5))
        self.start.assert_called_once_with(['lxcfs', self.mnt], self.log)

    def test_stale_detached_then_started(self):
        self.state_mock.side_effect = [lxcfs.STALE, lxcfs.SERVING]
        self.assertEqual([], daemons.ensure_lxcfs(self.state, 5))
        self.assertEqual(
            [mock.call.detach(self.mnt),
             mock.call.start(['lxcfs', self.mnt], self.log)],
            self.calls.mock_calls)

    def test_stale_that_cannot_be_detached(self):
        self.state_mock.return_value = lxcfs.STALE
        self.detach.side_effect = exception.MountFailed(
            what='lazy unmount', target=self.mnt,
            reason='Device or resource busy')
        problems = daemons.ensure_lxcfs(self.state, 5)
        self.assertEqual(1, len(problems))
        self.assertIn('cannot detach the stale lxcfs mount', problems[0])
        self.assertIn('Device or resource busy', problems[0])
        self.detach.assert_called_once_with(self.mnt)
        self.start.assert_not_called()
        self.assertFalse(os.path.lexists(self.mnt))

    def test_never_serving_is_a_problem_naming_the_log(self):
        self.state_mock.return_value = lxcfs.ABSENT
        problems = daemons.ensure_lxcfs(self.state, 0)
        self.assertEqual(1, len(problems))
        self.assertIn(self.log, problems[0])
        self.assertIn(self.mnt, problems[0])
        self.start.assert_called_once_with(['lxcfs', self.mnt], self.log)

    def test_waits_its_timeout(self):
        self.state_mock.return_value = lxcfs.STALE
        began = time.monotonic()
        problems = daemons.ensure_lxcfs(self.state, 0.3)
        took = time.monotonic() - began
        self.assertEqual(1, len(problems))
        self.assertIn(self.log, problems[0])
        self.assertGreaterEqual(took, 0.3)
        self.assertLess(took, 3)
        # Polled through the wait, not only at its end.
        self.assertGreater(self.state_mock.call_count, 2)
        self.detach.assert_called_once_with(self.mnt)
        self.start.assert_called_once()

    def test_under_the_host_s_external_lock(self):
        lock_file = os.path.join(self.lock_path, 'novalxc-lxcfs')
        held = []

        def state():
            held.append(locks_held(lock_file))
            return lxcfs.ABSENT if len(held) == 1 else lxcfs.SERVING

        def start(argv, log_path):
            held.append(locks_held(lock_file))
            return 4242

        self.state_mock.side_effect = state
        self.start.side_effect = start
        self.assertEqual([], daemons.ensure_lxcfs(self.state, 5))
        self.lock.assert_called_once_with('novalxc-lxcfs', external=True,
                                          lock_path=self.lock_path)
        self.assertEqual(3, len(held))
        for found in held:
            self.assertEqual(1, len(found), found)
        self.assertEqual([], locks_held(lock_file))

    def test_the_lock_released_on_an_error(self):
        self.state_mock.return_value = lxcfs.ABSENT
        self.start.side_effect = FileNotFoundError(errno.ENOENT, 'lxcfs')
        self.assertRaises(FileNotFoundError, daemons.ensure_lxcfs,
                          self.state, 5)
        self.assertEqual(
            [], locks_held(os.path.join(self.lock_path, 'novalxc-lxcfs')))
