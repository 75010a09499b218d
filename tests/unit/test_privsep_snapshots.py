"""privsep.snapshots: a snapshot's stage, its readers and the FIFO.

Entry points run here in-process (client mode off) against temporary
driver roots. The mount table (storage.is_mount_root, mount.holders) and
storage.unmount_tree are mocked; the readers' unshare(1) prefix is not
used (_argv is replaced: no user namespace is made), but the readers
themselves are real processes, either the real find | tar | zstd or
shell stand-ins, and their output reaches a real FIFO in the spool, read
here as nova-compute reads it. _argv itself is tested on its own.
Through a real daemon, with real mounts: tests/functional/
test_snapshot.py.
"""

import errno
import fcntl
import io
import os
import select
import signal
import socket
import stat
import subprocess
import tarfile
import threading
import time

import fixtures

from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver.privsep import snapshots
from novalxcdriver.privsep import storage
from tests.unit import base

# Root's subordinate ranges, as read_subordinate_ranges gives them.
SUBORDINATE = ((100000, 1000000), (300000, 1000000))
IDMAP = [100000, 300000, 65536]
# Saved before any test patches them (Popen, os.kill and time.sleep are
# patched module-wide by some tests).
_POPEN = subprocess.Popen
_KILL = os.kill
_ARGV = snapshots._argv
# Readers that run until killed (none ends for the end of its input).
SLEEPING = {'find': ['sleep', '60'], 'tar': ['sleep', '60'],
            'zstd': ['sleep', '60']}


def _mode(path):
    return os.lstat(path).st_mode & 0o7777


def _fds_on(path):
    """This process's fds open on path or below (deleted ones too)."""
    return sorted(fd for fd, target in base.open_fds().items()
                  if target == path or target.startswith(path + '/') or
                  target == path + ' (deleted)')


def _flock(path):
    """An fd of path with an exclusive flock, or None if it is held."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class _Base(base.TestCase):
    """Driver roots state and lxc with a container's directory and spool."""

    def setUp(self):
        super().setUp()
        self.addCleanup(os.umask, os.umask(0o022))
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.state = os.path.join(self.tmp, 'state')
        self.lxc = os.path.join(self.tmp, 'lxc')
        os.mkdir(self.lxc)
        self.cfg = self.storage_admin_here(self.lxc, self.state)
        self.rootfs_dir = os.path.join(self.state, 'rootfs', '3')
        os.makedirs(self.rootfs_dir)
        self.spool = os.path.join(self.state, 'spool')
        os.mkdir(self.spool)
        # Not a driver root: what is refused there must stay as it is.
        self.outside = os.path.join(self.tmp, 'outside')
        os.makedirs(os.path.join(self.outside, 'rootfs', '3'))
        os.makedirs(os.path.join(self.outside, 'spool'))
        self.stage = os.path.join(self.rootfs_dir, 'snapshot-image1')
        self.merged = os.path.join(self.stage, 'merged')

        # This test's registry of held stages, emptied at its end.
        self.held = {}
        self.patch_object(snapshots, '_held', new=self.held)
        self.addCleanup(self._release)
        self.mounted = set()
        self.patch_object(snapshots.storage, 'is_mount_root',
                          side_effect=lambda p: p in self.mounted)
        self.holders = self.patch_object(snapshots.mount, 'holders',
                                         return_value=[])
        self.unmount_tree = self.patch_object(snapshots.storage,
                                              'unmount_tree')
        self.patch('novalxcdriver.ids.read_subordinate_ranges',
                   return_value=SUBORDINATE)
        # {reader label: argv run in its place}; the real one otherwise,
        # without nice, ionice and unshare.
        self.commands = {}
        self.argv = self.patch_object(snapshots, '_argv',
                                      side_effect=self._argv)
        self.started = []
        self.calls = []
        self.popen = self.patch_object(snapshots.subprocess, 'Popen',
                                       side_effect=self._popen)

    def _argv(self, idmap, argv):
        return list(self.commands.get(argv[0], argv))

    def _popen(self, argv, **kwargs):
        seen = dict(kwargs, argv=argv)
        if isinstance(kwargs.get('stdout'), int) and \
                kwargs['stdout'] >= 0:
            seen['stdout_on'] = os.readlink('/proc/self/fd/%d'
                                            % kwargs['stdout'])
        if hasattr(kwargs.get('stderr'), 'fileno'):
            seen['stderr_on'] = os.readlink('/proc/self/fd/%d'
                                            % kwargs['stderr'].fileno())
        self.calls.append(seen)
        proc = _POPEN(argv, **kwargs)
        self.started.append(proc)
        self.addCleanup(self._reap, proc)
        return proc

    @staticmethod
    def _reap(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()

    def _release(self):
        for stage, held in list(self.held.items()):
            snapshots._end(held.readers)
            if held.lock_fd is not None:
                os.close(held.lock_fd)
        self.held.clear()

    def tree(self):
        """Every path under the temporary directory, as it is."""
        return base.tree_state(self.tmp)

    def refused(self, fn, *args, match=None):
        """fn(*args) is refused and touches nothing; the message."""
        before = self.tree()
        fds = base.open_fds()
        held = {stage: (h.lock_fd, list(h.readers))
                for stage, h in self.held.items()}
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, *args)
        if match is not None:
            self.assertIn(match, str(e))
        self.assertEqual(before, self.tree(), args)
        self.assertEqual(fds, base.open_fds(), args)
        self.assertEqual(held, {stage: (h.lock_fd, list(h.readers))
                                for stage, h in self.held.items()})
        self.popen.assert_not_called()
        self.unmount_tree.assert_not_called()
        self.holders.assert_not_called()
        return str(e)

    def make_fifo(self, name='t.fifo', spool=None, reader=True):
        """A FIFO in the spool; with its read end open (fd) if reader."""
        path = os.path.join(spool or self.spool, name)
        os.mkfifo(path, 0o600)
        if not reader:
            return path, None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.addCleanup(os.close, fd)
        return path, fd

    def read_all(self, fd, timeout=5):
        """What fd gives until EOF (every writer closed it)."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        data = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail('no EOF on the FIFO within %s s: a writer is '
                          'still open' % timeout)
            if not poller.poll(left * 1000):
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return bytes(data)
            data += chunk

    def make_view(self, stage=None):
        """make_stage, and its view 'mounted' (a tree in merged)."""
        stage = stage or self.stage
        snapshots.make_stage(stage)
        merged = os.path.join(stage, snapshots.MERGED)
        with open(os.path.join(merged, 'hello.txt'), 'w') as f:
            f.write('hello\n')
        os.mkdir(os.path.join(merged, 'etc'))
        with open(os.path.join(merged, 'etc', 'hostname'), 'w') as f:
            f.write('c3\n')
        self.mounted.add(merged)
        return merged

    def leftover(self, stage=None):
        """A stage no process holds: what a crash left."""
        stage = stage or self.stage
        os.mkdir(stage, 0o700)
        os.mkdir(os.path.join(stage, snapshots.MERGED))
        with open(os.path.join(stage, 'upper-copy'), 'w') as f:
            f.write('x')
        return stage

    def assertLocked(self, path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.assertRaises(BlockingIOError, fcntl.flock, fd,
                              fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)

    def assertNotLocked(self, path):
        fd = _flock(path)
        self.assertIsNotNone(fd, '%s is locked' % path)
        os.close(fd)


class StageChecksTest(_Base):
    """What is refused as a stage, by each entry point taking one."""

    def setUp(self):
        super().setUp()
        # What each refused path would need to be made: all there.
        for d in (('rootfs', 'abc'), ('rootfs', '3', 'root'),
                  ('other', '3'), ('sub', 'rootfs', '3'),
                  ('rootfs', '3', 'snapshot-a')):
            os.makedirs(os.path.join(self.state, *d), exist_ok=True)
        # rootfs/7 is rootfs/3 through a symlink; lxc's rootfs another
        # tree's.
        os.symlink('3', os.path.join(self.state, 'rootfs', '7'))
        os.symlink(os.path.join(self.outside, 'rootfs'),
                   os.path.join(self.lxc, 'rootfs'))
        # A stage's name that is a symlink to a directory elsewhere.
        self.target = os.path.join(self.outside, 'victim')
        os.mkdir(self.target)
        with open(os.path.join(self.target, 'file'), 'w') as f:
            f.write('keep')
        os.symlink(self.target,
                   os.path.join(self.rootfs_dir, 'snapshot-link'))
        self.fifo, self.fifo_fd = self.make_fifo()

    def bad_stages(self):
        r = self.rootfs_dir
        s = self.state
        return [
            # Outside the driver roots.
            os.path.join(self.outside, 'rootfs', '3', 'snapshot-a'),
            '/tmp/snapshot-a', '/snapshot-a',
            # Not absolute or not normalized.
            'state/rootfs/3/snapshot-a', r + '/./snapshot-a',
            r + '//snapshot-a', r + '/x/../snapshot-a', r + '/snapshot-a/',
            r + '/..', r + '/snapshot-a/..',
            # Through a symlink, or one itself.
            os.path.join(s, 'rootfs', '7', 'snapshot-a'),
            os.path.join(self.lxc, 'rootfs', '3', 'snapshot-a'),
            os.path.join(r, 'snapshot-link'),
            # Not a stage's name.
            r + '/image1', r + '/snapshot-', r + '/snapshot-.a',
            r + '/snapshot--a', r + '/.snapshot-a', r + '/snapshot-a\n',
            r + '/snapshot-a\0', r + '/snapshot-a b', r + '/snapshot-a\t',
            r + '/Snapshot-a', r + '/snapshot-\xe9',
            r + '/snapshot-' + 'a' * 129,
            # Its parent not <root>/rootfs/<digits>.
            r + '/snapshot-a/snapshot-b', r + '/root/snapshot-a',
            os.path.join(s, 'rootfs', 'abc', 'snapshot-a'),
            os.path.join(s, 'rootfs', 'snapshot-a'),
            os.path.join(s, 'snapshot-a'),
            os.path.join(s, 'other', '3', 'snapshot-a'),
            os.path.join(s, 'sub', 'rootfs', '3', 'snapshot-a'),
            # Not a str.
            None, 3, os.fsencode(r + '/snapshot-a'), [r + '/snapshot-a'],
        ]

    def test_make_stage(self):
        for stage in self.bad_stages():
            self.refused(snapshots.make_stage, stage)
        self.assertEqual({}, self.held)

    def test_remove_stage(self):
        for stage in self.bad_stages():
            self.refused(snapshots.remove_stage, stage)
        self.assertEqual(['file'], os.listdir(self.target))

    def test_cancel(self):
        for stage in self.bad_stages():
            self.refused(snapshots.cancel, stage)

    def test_finish(self):
        for stage in self.bad_stages():
            self.refused(snapshots.finish, stage)

    def test_stream(self):
        for stage in self.bad_stages():
            self.refused(snapshots.stream, stage, IDMAP, self.fifo)

    def test_longest_name_and_the_lxc_root_pass(self):
        longest = os.path.join(self.rootfs_dir, 'snapshot-' + 'a' * 128)
        snapshots.make_stage(longest)
        os.unlink(os.path.join(self.lxc, 'rootfs'))
        os.makedirs(os.path.join(self.lxc, 'rootfs', '12'))
        other = os.path.join(self.lxc, 'rootfs', '12', 'snapshot-A_1.b-c')
        snapshots.make_stage(other)
        self.assertEqual({longest, other}, set(self.held))
        self.assertTrue(os.path.isdir(longest))
        self.assertTrue(os.path.isdir(other))


class MakeStageTest(_Base):

    def test_modes_and_umask_whatever_the_daemon_s(self):
        # oslo.privsep's daemon runs with umask 0; another could be 077.
        for n, umask in enumerate((0, 0o077)):
            os.umask(umask)
            stage = os.path.join(self.rootfs_dir, 'snapshot-%d' % n)
            snapshots.make_stage(stage)
            self.assertEqual(0o700, _mode(stage))
            merged = os.path.join(stage, 'merged')
            self.assertEqual(0o755, _mode(merged))
            self.assertTrue(stat.S_ISDIR(os.lstat(merged).st_mode))
            self.assertEqual(['merged'], os.listdir(stage))
            self.assertEqual(0o022, base.process_umask())

    def test_holds_its_lock(self):
        snapshots.make_stage(self.stage)
        self.assertEqual([self.stage], list(self.held))
        held = self.held[self.stage]
        self.assertEqual([], held.readers)
        self.assertEqual(self.stage,
                         os.readlink('/proc/self/fd/%d' % held.lock_fd))
        self.assertLocked(self.stage)
        # The daemon's fd is not inherited by its children.
        self.assertTrue(fcntl.fcntl(held.lock_fd, fcntl.F_GETFD) &
                        fcntl.FD_CLOEXEC)
        # What a crash left is held by nobody; this one is live.
        self.assertEqual([[self.stage, True]],
                         snapshots.stages(self.rootfs_dir))

    def test_an_existing_stage_is_kept(self):
        self.leftover()
        before = self.tree()
        self.assertRaises(FileExistsError, snapshots.make_stage, self.stage)
        self.assertEqual(before, self.tree())
        self.assertEqual({}, self.held)
        self.assertEqual([], _fds_on(self.stage))
        self.assertNotLocked(self.stage)

    def test_a_held_stage_is_not_made_again(self):
        snapshots.make_stage(self.stage)
        fd = self.held[self.stage].lock_fd
        before = self.tree()
        self.assertRaises(FileExistsError, snapshots.make_stage, self.stage)
        self.assertEqual(before, self.tree())
        self.assertEqual([self.stage], list(self.held))
        self.assertEqual(fd, self.held[self.stage].lock_fd)
        self.assertEqual([fd], _fds_on(self.stage))
        self.assertLocked(self.stage)

    def test_waits_for_a_probe_holding_the_new_stage(self):
        # A stages() of another thread or daemon holds a new stage's lock
        # for an instant: make_stage waits, it never registers it
        # unlocked (a recover would take it for a crash's).
        real_mkdir = os.mkdir
        probe = []

        def mkdir(path, *args, **kwargs):
            real_mkdir(path, *args, **kwargs)
            if path == self.stage:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                fcntl.flock(fd, fcntl.LOCK_EX)
                probe.append(fd)
                timer = threading.Timer(0.2, os.close, (fd,))
                timer.start()
                self.addCleanup(timer.join)
        self.patch('os.mkdir', side_effect=mkdir)
        started = time.monotonic()
        snapshots.make_stage(self.stage)
        self.assertGreaterEqual(time.monotonic() - started, 0.15)
        self.assertEqual(1, len(probe))
        self.assertIsNotNone(self.held[self.stage].lock_fd)
        self.assertLocked(self.stage)
        self.assertEqual([[self.stage, True]],
                         snapshots.stages(self.rootfs_dir))

    def test_a_stage_replaced_once_locked_is_left_to_its_maker(self):
        real_lock = snapshots._lock

        def lock(path, *args, **kwargs):
            fd = real_lock(path, *args, **kwargs)
            os.rename(path, path + '-moved')
            os.mkdir(path)
            return fd
        self.patch_object(snapshots, '_lock', side_effect=lock)
        fds = base.open_fds()
        self.assertRaises(FileExistsError, snapshots.make_stage, self.stage)
        self.assertTrue(os.path.isdir(self.stage))
        self.assertEqual({}, self.held)
        self.assertEqual(fds, base.open_fds())

    def test_nothing_left_when_merged_cannot_be_made(self):
        real_mkdir = os.mkdir
        made = []

        def mkdir(path, *args, **kwargs):
            made.append(path)
            if len(made) == 2:
                raise OSError(errno.ENOSPC, 'No space left on device', path)
            return real_mkdir(path, *args, **kwargs)
        self.patch('os.mkdir', side_effect=mkdir)
        before = self.tree()
        e = self.assertRaises(OSError, snapshots.make_stage, self.stage)
        self.assertEqual(errno.ENOSPC, e.errno)
        self.assertEqual([self.stage, self.merged], made)
        self.assertEqual(set(before), set(self.tree()))
        self.assertFalse(os.path.lexists(self.stage))
        self.assertEqual({}, self.held)
        # Its lock's fd is closed too.
        self.assertEqual([], _fds_on(self.stage))

    def test_a_missing_container_directory(self):
        stage = os.path.join(self.state, 'rootfs', '4', 'snapshot-a')
        self.assertRaises(FileNotFoundError, snapshots.make_stage, stage)
        self.assertFalse(os.path.lexists(os.path.dirname(stage)))
        self.assertEqual({}, self.held)


class ArgvTest(base.TestCase):

    def test_user_namespace_over_the_range_at_low_priority(self):
        idmap = ids.Idmap(100000, 300000, 65536)
        self.assertEqual(
            ['nice', '-n', '10', 'ionice', '-c', '2', '-n', '7',
             'unshare', '--user', '--map-users=100000,0,65536',
             '--map-groups=300000,0,65536', '--setuid', '0',
             '--setgid', '0', '--', 'find', '.', '-print0'],
            _ARGV(idmap, ('find', '.', '-print0')))

    def test_argv_is_not_changed(self):
        argv = list(snapshots.TAR)
        got = _ARGV(ids.Idmap(1, 2, 3), argv)
        self.assertEqual(snapshots.TAR, argv)
        self.assertEqual(snapshots.TAR, got[-len(argv):])
        self.assertEqual('--', got[-len(argv) - 1])
        self.assertIn('--map-users=1,0,3', got)
        self.assertIn('--map-groups=2,0,3', got)

    def test_readers(self):
        # /dev's contents, devices and sockets are never listed.
        self.assertEqual(['find', '.'], snapshots.FIND[:2])
        self.assertIn('-print0', snapshots.FIND)
        self.assertIn('./dev/*', snapshots.FIND)
        self.assertIn('--null', snapshots.TAR)
        self.assertIn('--files-from=-', snapshots.TAR)
        self.assertIn('--no-recursion', snapshots.TAR)
        self.assertIn('--format=posix', snapshots.TAR)
        self.assertIn('--xattrs', snapshots.TAR)
        self.assertIn('--numeric-owner', snapshots.TAR)
        self.assertEqual(['zstd'], snapshots.ZSTD[:1])
        self.assertIn('-c', snapshots.ZSTD)
        self.assertIn('--check', snapshots.ZSTD)


class StreamTest(_Base):

    def setUp(self):
        super().setUp()
        self.fifo, self.fd = self.make_fifo()

    def test_the_real_pipeline_s_tarball_through_the_fifo(self):
        merged = self.make_view()
        os.makedirs(os.path.join(merged, 'dev', 'pts'))
        with open(os.path.join(merged, 'dev', 'console'), 'w'):
            pass
        os.mkdir(os.path.join(merged, 'run'))
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        sock.bind(os.path.join(merged, 'run', 'sock'))
        os.symlink('hello.txt', os.path.join(merged, 'link'))
        snapshots.stream(self.stage, IDMAP, self.fifo)
        data = self.read_all(self.fd)
        self.assertEqual([], snapshots.finish(self.stage))
        self.assertEqual(b'\x28\xb5\x2f\xfd', data[:4])   # zstd's magic
        tar = _POPEN(['zstd', '-d', '-c', '-q'], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE)
        out, _err = tar.communicate(data)
        self.assertEqual(0, tar.returncode)
        with tarfile.open(fileobj=io.BytesIO(out)) as t:
            self.assertEqual(tarfile.PAX_FORMAT, t.format)
            names = sorted(m.name for m in t.getmembers())
            self.assertEqual(b'c3\n', t.extractfile('./etc/hostname').read())
            self.assertEqual('hello.txt', t.getmember('./link').linkname)
        self.assertEqual(['.', './dev', './etc', './etc/hostname',
                          './hello.txt', './link', './run'], names)
        # The readers were given the real commands, with the checked
        # idmap, in order.
        self.assertEqual(
            [(ids.Idmap(*IDMAP), snapshots.FIND),
             (ids.Idmap(*IDMAP), snapshots.TAR),
             (ids.Idmap(*IDMAP), snapshots.ZSTD)],
            [c.args for c in self.argv.call_args_list])

    def test_how_the_readers_are_started(self):
        merged = self.make_view()
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.read_all(self.fd)
        self.assertEqual([], snapshots.finish(self.stage))
        self.assertEqual(3, len(self.calls))
        find, tar, zstd = self.calls
        self.assertEqual([snapshots.FIND, snapshots.TAR, snapshots.ZSTD],
                         [c['argv'] for c in self.calls])
        for call in self.calls:
            self.assertEqual(merged, call['cwd'])
            self.assertEqual([], call['extra_groups'])
            self.assertIs(True, call['start_new_session'])
            self.assertIs(True, call['close_fds'])
            self.assertTrue(call['stderr_on'].startswith(self.stage + '/'),
                            call['stderr_on'])
            self.assertNotIn('shell', call)
        # find | tar | zstd > fifo
        self.assertIsNone(find['stdin'])
        self.assertEqual(subprocess.PIPE, find['stdout'])
        self.assertIs(self.started[0].stdout, tar['stdin'])
        self.assertEqual(subprocess.PIPE, tar['stdout'])
        self.assertIs(self.started[1].stdout, zstd['stdin'])
        self.assertEqual(self.fifo, zstd['stdout_on'])
        # The daemon keeps no end of the pipes between them.
        self.assertTrue(self.started[0].stdout.closed)
        self.assertTrue(self.started[1].stdout.closed)
        self.assertEqual(['find', 'tar', 'zstd'],
                         [r[0] for r in self.held[self.stage].readers])
        self.assertEqual(self.started,
                         [r[1] for r in self.held[self.stage].readers])

    def test_readers_run_in_merged_with_umask_022(self):
        self.make_view()
        os.umask(0)
        self.commands = {'find': ['sh', '-c', 'pwd -P; umask'],
                         'tar': ['cat'], 'zstd': ['cat']}
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.assertEqual(('%s\n0022\n' % self.merged).encode(),
                         self.read_all(self.fd))
        self.assertEqual([], snapshots.finish(self.stage))

    def test_the_daemon_closes_its_write_end(self):
        self.make_view()
        self.commands = SLEEPING
        snapshots.stream(self.stage, IDMAP, self.fifo)
        # Only the test's read end is open here; zstd has the other.
        self.assertEqual([self.fd], _fds_on(self.fifo))
        self.assertEqual(self.fifo, os.readlink(
            '/proc/%d/fd/1' % self.started[2].pid))
        # Each reader leads a session of its own.
        for proc in self.started:
            self.assertEqual(proc.pid, os.getsid(proc.pid))
        # EOF once zstd goes: no other writer is left.
        self.started[2].kill()
        self.assertEqual(b'', self.read_all(self.fd))

    def test_stream_twice(self):
        self.make_view()
        snapshots.stream(self.stage, IDMAP, self.fifo)
        readers = list(self.held[self.stage].readers)
        # Read first: zstd's writes change the FIFO's mtime.
        data = self.read_all(self.fd)
        self.popen.reset_mock()
        second, _fd = self.make_fifo('second.fifo')
        self.refused(snapshots.stream, self.stage, IDMAP, second,
                     match='started already')
        self.assertEqual(readers, self.held[self.stage].readers)
        # The first stream's readers are those finish waits for.
        self.assertTrue(data)
        self.assertEqual([], snapshots.finish(self.stage))

    def test_no_view_mounted(self):
        snapshots.make_stage(self.stage)
        self.refused(snapshots.stream, self.stage, IDMAP, self.fifo,
                     match='no view is mounted on %s' % self.merged)
        # Mounted on the stage itself, or below merged: not the view.
        self.mounted.update({self.stage, self.merged + '/proc'})
        self.refused(snapshots.stream, self.stage, IDMAP, self.fifo)
        # Nothing was claimed: once mounted, it streams.
        self.mounted.add(self.merged)
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.assertTrue(self.read_all(self.fd))
        self.assertEqual([], snapshots.finish(self.stage))

    def test_a_stage_not_made_by_this_daemon(self):
        self.leftover()
        self.mounted.add(self.merged)
        self.refused(snapshots.stream, self.stage, IDMAP, self.fifo,
                     match='not made by this daemon')
        self.refused(snapshots.finish, self.stage,
                     match='not made by this daemon')
        # Nor one that does not exist.
        other = os.path.join(self.rootfs_dir, 'snapshot-other')
        self.refused(snapshots.stream, other, IDMAP, self.fifo)
        self.refused(snapshots.finish, other)

    def test_idmaps_outside_root_s_subordinate_ranges(self):
        self.make_view()
        for idmap in ([0, 0, 65536], [1000, 1000, 1], [0, 300000, 65536],
                      [100000, 100000, 65536], [100000, 0, 65536],
                      [99999, 300000, 65536], [100000, 299999, 65536],
                      [1099999, 300000, 2], [100000, 1299999, 2],
                      [100000, 300000, 1000001], [100000, 300000, 0],
                      [100000, 300000, -1], ['100000', 300000, 65536],
                      [100000.0, 300000, 65536], [True, 300000, 65536],
                      [100000, 300000], [100000, 300000, 65536, 0], None,
                      100000):
            self.refused(snapshots.stream, self.stage, idmap, self.fifo)
        # A tuple of the same is fine; nothing was claimed before.
        snapshots.stream(self.stage, tuple(IDMAP), self.fifo)
        self.assertTrue(self.read_all(self.fd))
        self.assertEqual([], snapshots.finish(self.stage))

    def test_fifo_paths(self):
        self.make_view()
        s = self.spool
        os.mkdir(os.path.join(s, 'sub'))
        os.makedirs(os.path.join(self.state, 'other', 'spool'))
        os.mkdir(os.path.join(self.state, 'spool2'))
        os.symlink(self.spool, os.path.join(self.lxc, 'spool'))
        bad = []
        for spool, name in (
                # Not in a driver root's spool.
                (os.path.join(self.outside, 'spool'), 'x.fifo'),
                (self.rootfs_dir, 'x.fifo'), (self.state, 'x.fifo'),
                (self.tmp, 'x.fifo'), (os.path.join(s, 'sub'), 'x.fifo'),
                (os.path.join(self.state, 'other', 'spool'), 'x.fifo'),
                (self.stage, 'x.fifo'),
                # Directly below a root, but not its spool.
                (os.path.join(self.state, 'rootfs'), 'x.fifo'),
                (os.path.join(self.state, 'other'), 'x.fifo'),
                (os.path.join(self.state, 'spool2'), 'x.fifo'),
                # Not named <name>.fifo.
                (s, 'x.pipe'), (s, 'x'), (s, '.fifo'), (s, '.x.fifo'),
                (s, '-x.fifo'), (s, 'x y.fifo'), (s, 'x.fifo\n'),
                (s, 'x.FIFO'), (s, 'a' * 129 + '.fifo'), (s, 'x.fifo.1')):
            path, _fd = self.make_fifo(name, spool=spool)
            bad.append(path)
        real = os.path.join(s, 'real.fifo')
        bad += [
            # Not normalized, relative, not a str.
            s + '/./real.fifo', s + '//real.fifo', s + '/sub/../real.fifo',
            'state/spool/real.fifo', real + '\0', None, 3,
            os.fsencode(real),
            # Through a symlinked spool.
            os.path.join(self.lxc, 'spool', 'real.fifo'),
        ]
        self.make_fifo('real.fifo')
        for fifo in bad:
            self.refused(snapshots.stream, self.stage, IDMAP, fifo)
        self.assertEqual([], self.held[self.stage].readers)

    def test_what_is_not_a_fifo_with_a_reader(self):
        self.make_view()
        regular = os.path.join(self.spool, 'regular.fifo')
        with open(regular, 'w') as f:
            f.write('not a FIFO')
        directory = os.path.join(self.spool, 'dir.fifo')
        os.mkdir(directory)
        link = os.path.join(self.spool, 'link.fifo')
        os.symlink('t.fifo', link)
        dangling = os.path.join(self.spool, 'dangling.fifo')
        os.symlink('nowhere.fifo', dangling)
        lonely, _fd = self.make_fifo('lonely.fifo', reader=False)
        missing = os.path.join(self.spool, 'missing.fifo')
        for fifo, reason in ((regular, 'is not a FIFO'),
                             (directory, 'is not a FIFO'),
                             (link, 'symlink'), (dangling, 'symlink'),
                             (lonely, 'No such device or address'),
                             (missing, 'does not exist')):
            self.refused(snapshots.stream, self.stage, IDMAP, fifo,
                         match=reason)
        with open(regular) as f:
            self.assertEqual('not a FIFO', f.read())
        self.assertEqual([], self.held[self.stage].readers)
        # The checked FIFO still works afterwards.
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.assertTrue(self.read_all(self.fd))
        self.assertEqual([], snapshots.finish(self.stage))

    def test_a_symlink_swapped_in_after_the_check_is_not_followed(self):
        # The path checks and the lstat passed (a FIFO was there); the
        # open itself refuses the symlink put in its place.
        self.patch_object(storage, 'check_path')
        link = os.path.join(self.spool, 'link.fifo')
        os.mkfifo(link)
        real_lstat = os.lstat

        def lstat(path, *args, **kwargs):
            st = real_lstat(path, *args, **kwargs)
            if path == link:
                os.unlink(link)
                os.symlink(self.fifo, link)
            return st
        self.patch('os.lstat', side_effect=lstat)
        fds = base.open_fds()
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              snapshots._open_fifo, 'stream', link)
        self.assertIn('Too many levels of symbolic links', str(e))
        self.assertEqual(fds, base.open_fds())

    def test_a_fifo_swapped_for_another_is_refused(self):
        # Another FIFO with a reader put in the checked one's place.
        self.patch_object(storage, 'check_path')
        other, _fd = self.make_fifo('other.fifo')
        swapped = os.path.join(self.spool, 'swapped.fifo')
        os.mkfifo(swapped)
        real_lstat = os.lstat

        def lstat(path, *args, **kwargs):
            st = real_lstat(path, *args, **kwargs)
            if path == swapped:
                os.rename(other, swapped)
            return st
        self.patch('os.lstat', side_effect=lstat)
        fds = base.open_fds()
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              snapshots._open_fifo, 'stream', swapped)
        self.assertIn('replaced while it was opened', str(e))
        # The test's reader is the one fd on the FIFO: renamed, not new.
        # Only none new: an fd of an earlier test may close meanwhile (the
        # garbage collector).
        self.assertEqual(set(), set(base.open_fds()) - set(fds))

    def test_a_device_node_is_never_opened(self):
        if os.geteuid() != 0:
            self.skipTest('mknod needs root')
        node = os.path.join(self.spool, 'null.fifo')
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        opened = []
        real_open = os.open

        def record(path, *args, **kwargs):
            opened.append(path)
            return real_open(path, *args, **kwargs)
        self.patch('os.open', side_effect=record)
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              snapshots._open_fifo, 'stream', node)
        self.assertIn('is not a FIFO', str(e))
        self.assertEqual([], opened)

    def test_the_fifo_s_write_end(self):
        fd = snapshots._open_fifo('stream', self.fifo)
        try:
            self.assertEqual(self.fifo, os.readlink('/proc/self/fd/%d' % fd))
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            self.assertEqual(os.O_WRONLY, flags & os.O_ACCMODE)
            # Blocking once open: zstd waits for nova-compute to read.
            self.assertFalse(flags & os.O_NONBLOCK)
            self.assertTrue(fcntl.fcntl(fd, fcntl.F_GETFD) &
                            fcntl.FD_CLOEXEC)
            os.write(fd, b'abc')
        finally:
            os.close(fd)
        self.assertEqual(b'abc', self.read_all(self.fd))

    def test_a_reader_that_cannot_start_ends_the_others(self):
        self.make_view()
        self.commands = dict(SLEEPING, tar=['/nonexistent/tar'])
        self.assertRaises(FileNotFoundError, snapshots.stream, self.stage,
                          IDMAP, self.fifo)
        self.assertEqual(1, len(self.started))
        self.assertEqual(-signal.SIGKILL, self.started[0].returncode)
        self.assertEqual([self.fd], _fds_on(self.fifo))
        self.assertEqual(b'', self.read_all(self.fd))
        # Its error files are closed: only the lock is open on the stage.
        self.assertEqual([self.held[self.stage].lock_fd],
                         _fds_on(self.stage))
        # None stays registered: a stream may be tried again.
        self.assertEqual([], self.held[self.stage].readers)
        self.assertRaises(exception.PrivilegedCallRefused, snapshots.finish,
                          self.stage)
        self.commands = dict(SLEEPING)
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.assertEqual(3, len(self.held[self.stage].readers))


class FinishTest(_Base):

    def setUp(self):
        super().setUp()
        self.fifo, self.fd = self.make_fifo()
        self.make_view()

    def test_all_succeeded(self):
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.assertTrue(self.read_all(self.fd))
        self.assertEqual([], snapshots.finish(self.stage))
        for proc in self.started:
            self.assertEqual(0, proc.returncode)

    def test_what_failed_with_its_code_and_stderr(self):
        self.commands = {
            'find': ['sh', '-c', 'echo "find: \'./x\': Permission denied"'
                     ' >&2; exit 2'],
            'tar': ['sh', '-c', 'cat; echo tar: bad >&2; exit 3'],
            'zstd': ['sh', '-c', 'cat; echo all good >&2'],
        }
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.assertEqual(b'', self.read_all(self.fd))
        self.assertEqual(["find exited 2: find: './x': Permission denied",
                          'tar exited 3: tar: bad'],
                         snapshots.finish(self.stage))

    def test_stderr_is_cut_and_decoded(self):
        self.commands = {
            'find': ['sh', '-c', "head -c 10000 /dev/zero | tr '\\0' x >&2;"
                     ' exit 1'],
            'tar': ['cat'],
            'zstd': ['sh', '-c', "cat; printf '\\377oops\\n' >&2; exit 4"],
        }
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.read_all(self.fd)
        self.assertEqual(['find exited 1: ' + 'x' * snapshots._ERR_BYTES,
                          'zstd exited 4: \ufffdoops'],
                         snapshots.finish(self.stage))

    def test_a_reader_that_does_not_end_is_killed(self):
        self.cfg.config(group='lxc', command_timeout=1)
        self.commands = SLEEPING
        snapshots.stream(self.stage, IDMAP, self.fifo)
        started = time.monotonic()
        failed = snapshots.finish(self.stage)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(['find exited -9: ', 'tar exited -9: ',
                          'zstd exited -9: '], failed)
        self.assertEqual([-signal.SIGKILL] * 3,
                         [p.returncode for p in self.started])
        self.assertEqual(b'', self.read_all(self.fd))

    def test_no_readers_started(self):
        self.refused(snapshots.finish, self.stage,
                     match='no readers were started')


class CancelTest(_Base):

    def setUp(self):
        super().setUp()
        self.fifo, self.fd = self.make_fifo()

    def test_kills_the_readers(self):
        self.make_view()
        self.commands = SLEEPING
        snapshots.stream(self.stage, IDMAP, self.fifo)
        for proc in self.started:
            self.assertIsNone(proc.poll())
        started = time.monotonic()
        self.assertIs(True, snapshots.cancel(self.stage))
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual([-signal.SIGKILL] * 3,
                         [p.returncode for p in self.started])
        # Then what the readers left holding it (unshare's helper).
        self.holders.assert_called_once_with(self.stage)
        self.assertEqual(b'', self.read_all(self.fd))
        # The stage stays, held, until removed.
        self.assertTrue(os.path.isdir(self.merged))
        self.assertIn(self.stage, self.held)
        self.assertLocked(self.stage)
        self.assertEqual(['find exited -9: ', 'tar exited -9: ',
                          'zstd exited -9: '], snapshots.finish(self.stage))
        # Again: nothing left to kill.
        self.assertIs(True, snapshots.cancel(self.stage))

    def test_before_any_reader(self):
        snapshots.make_stage(self.stage)
        self.assertIs(True, snapshots.cancel(self.stage))
        self.popen.assert_not_called()
        self.holders.assert_not_called()
        self.assertIn(self.stage, self.held)

    def test_a_stage_this_daemon_does_not_hold(self):
        self.leftover()
        before = self.tree()
        self.assertIs(False, snapshots.cancel(self.stage))
        self.assertIs(False, snapshots.cancel(
            os.path.join(self.rootfs_dir, 'snapshot-missing')))
        self.assertEqual(before, self.tree())
        self.assertEqual({}, self.held)


class RemoveStageTest(_Base):

    def setUp(self):
        super().setUp()
        self.fifo, self.fd = self.make_fifo()
        self.order = []
        self.holders.side_effect = self._holders
        self.unmount_tree.side_effect = self._unmount_tree

    def _holders(self, path):
        self.order.append(('holders', path,
                           [p.poll() for p in self.started]))
        return []

    def _unmount_tree(self, top):
        self.order.append(('unmount_tree', top,
                           [p.poll() for p in self.started]))

    def test_a_held_stage_with_readers(self):
        self.make_view()
        self.commands = SLEEPING
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.assertIs(True, snapshots.remove_stage(self.stage))
        killed = [-signal.SIGKILL] * 3
        # Readers ended, then what still holds it killed, then unmounted.
        self.assertEqual([('holders', self.stage, killed),
                          ('unmount_tree', self.stage, killed)], self.order)
        self.assertFalse(os.path.lexists(self.stage))
        self.assertEqual([], os.listdir(self.rootfs_dir))
        self.assertEqual({}, self.held)
        # Its lock and the readers' error files are closed.
        self.assertEqual([], _fds_on(self.stage))
        self.assertEqual(b'', self.read_all(self.fd))
        # And it is gone for good.
        self.assertIs(False, snapshots.remove_stage(self.stage))

    def test_a_held_stage_without_readers(self):
        snapshots.make_stage(self.stage)
        self.assertIs(True, snapshots.remove_stage(self.stage))
        self.unmount_tree.assert_called_once_with(self.stage)
        self.assertFalse(os.path.lexists(self.stage))
        self.assertEqual({}, self.held)
        self.assertEqual([], _fds_on(self.stage))
        # A stage of the same name can be made again.
        snapshots.make_stage(self.stage)
        self.assertLocked(self.stage)

    def test_a_missing_stage(self):
        before = self.tree()
        self.assertIs(False, snapshots.remove_stage(self.stage))
        self.assertEqual(before, self.tree())
        self.unmount_tree.assert_not_called()
        self.holders.assert_not_called()

    def test_a_held_stage_gone_with_its_root(self):
        snapshots.make_stage(self.stage)
        os.rename(self.stage, os.path.join(self.tmp, 'gone'))
        self.assertIs(False, snapshots.remove_stage(self.stage))
        self.unmount_tree.assert_not_called()
        self.assertEqual({}, self.held)
        self.assertEqual([], [fd for fd, target in base.open_fds().items()
                              if target == os.path.join(self.tmp, 'gone')])

    def test_a_stage_another_process_holds(self):
        self.leftover()
        fd = _flock(self.stage)
        self.addCleanup(os.close, fd)
        before = self.tree()
        fds = base.open_fds()
        self.assertIs(False, snapshots.remove_stage(self.stage))
        self.assertEqual(before, self.tree())
        self.assertEqual(fds, base.open_fds())
        self.unmount_tree.assert_not_called()
        self.holders.assert_not_called()
        # Still the other one's.
        self.assertLocked(self.stage)
        self.assertEqual({}, self.held)

    def test_a_leftover_stage(self):
        self.leftover()
        self.assertIs(True, snapshots.remove_stage(self.stage))
        self.assertEqual([('holders', self.stage, []),
                          ('unmount_tree', self.stage, [])], self.order)
        self.assertFalse(os.path.lexists(self.stage))
        self.assertEqual([], _fds_on(self.stage))
        self.assertEqual({}, self.held)

    def test_a_busy_view_keeps_the_stage_and_lets_go_of_it(self):
        self.make_view()
        self.commands = SLEEPING
        snapshots.stream(self.stage, IDMAP, self.fifo)
        self.unmount_tree.side_effect = exception.MountBusy(
            target=self.merged, holders='bash (42)')
        self.assertRaises(exception.MountBusy, snapshots.remove_stage,
                          self.stage)
        self.assertTrue(os.path.isdir(self.merged))
        self.assertTrue(os.path.isfile(os.path.join(self.merged,
                                                    'hello.txt')))
        self.assertEqual({}, self.held)
        self.assertEqual([-signal.SIGKILL] * 3,
                         [p.returncode for p in self.started])
        self.assertEqual([], _fds_on(self.stage))
        self.assertNotLocked(self.stage)
        # Not this daemon's any more: recover's to remove, as a leftover.
        self.assertEqual([[self.stage, False]],
                         snapshots.stages(self.rootfs_dir))
        self.unmount_tree.side_effect = None
        self.assertIs(True, snapshots.remove_stage(self.stage))
        self.assertFalse(os.path.lexists(self.stage))

    def test_a_leftover_s_readers_are_killed(self):
        self.leftover()
        sleeper = _POPEN(['sleep', '60'], cwd=self.merged)
        self.addCleanup(self._reap, sleeper)
        self.holders.side_effect = lambda path: (
            [(sleeper.pid, 'sleep')] if sleeper.poll() is None else [])
        killed = []
        self.unmount_tree.side_effect = lambda top: killed.append(
            sleeper.poll())
        self.assertIs(True, snapshots.remove_stage(self.stage))
        self.assertEqual([-signal.SIGKILL], killed)
        self.holders.assert_called_with(self.stage)


class KillHoldersTest(_Base):

    def setUp(self):
        super().setUp()
        self.kills = []
        self.patch_object(snapshots.os, 'kill', side_effect=self._kill)

    def _kill(self, pid, sig):
        self.kills.append((pid, sig))
        if pid != os.getpid():   # never this test's own process
            _KILL(pid, sig)

    def test_kills_the_holders_never_itself(self):
        sleeper = _POPEN(['sleep', '60'])
        self.addCleanup(self._reap, sleeper)
        me = os.getpid()
        self.holders.side_effect = lambda path: sorted(
            ([(sleeper.pid, 'sleep')] if sleeper.poll() is None else []) +
            [(me, 'python3')])
        snapshots._kill_holders(self.stage)
        self.assertEqual(-signal.SIGKILL, sleeper.returncode)
        self.holders.assert_called_with(self.stage)
        self.assertNotIn(me, [pid for pid, _sig in self.kills])
        self.assertEqual({(sleeper.pid, signal.SIGKILL)}, set(self.kills))

    def test_none(self):
        snapshots._kill_holders(self.stage)
        self.holders.assert_called_once_with(self.stage)
        self.assertEqual([], self.kills)
        self.holders.reset_mock()
        self.holders.return_value = [(os.getpid(), 'python3')]
        snapshots._kill_holders(self.stage)
        self.holders.assert_called_once_with(self.stage)
        self.assertEqual([], self.kills)

    def test_gives_up_on_what_will_not_go(self):
        # Gone before its kill, yet listed (or unkillable): tried a
        # bounded number of times, then unmount_tree reports it busy.
        sleep = self.patch_object(snapshots.time, 'sleep')
        self.holders.return_value = [(2 ** 22 + 1, 'ghost')]
        self.patch_object(snapshots.os, 'kill',
                          side_effect=ProcessLookupError)
        snapshots._kill_holders(self.stage)
        self.assertEqual(50, self.holders.call_count)
        self.assertEqual(50, sleep.call_count)


class StagesTest(_Base):

    def test_the_stages_and_whether_they_are_live(self):
        r = self.rootfs_dir
        mine = os.path.join(r, 'snapshot-b')
        snapshots.make_stage(mine)
        dead = self.leftover(os.path.join(r, 'snapshot-c'))
        theirs = self.leftover(os.path.join(r, 'snapshot-a'))
        fd = _flock(theirs)
        self.addCleanup(os.close, fd)
        # Not stages: files, symlinks, other names.
        with open(os.path.join(r, 'snapshot-file'), 'w'):
            pass
        os.symlink('snapshot-c', os.path.join(r, 'snapshot-link'))
        os.symlink(self.outside, os.path.join(r, 'snapshot-out'))
        os.mkfifo(os.path.join(r, 'snapshot-fifo'))
        for name in ('root', '.snapshot-d', 'snapshot-', 'snapshot-.e',
                     'snapshot-f\n', 'snapshot-' + 'g' * 129, 'Snapshot-h'):
            os.mkdir(os.path.join(r, name))
        before = self.tree()
        self.assertEqual([[theirs, True], [mine, True], [dead, False]],
                         snapshots.stages(r))
        self.assertEqual(before, self.tree())
        # Looking took no lock and let go of none.
        self.assertLocked(mine)
        self.assertLocked(theirs)
        self.assertNotLocked(dead)
        self.assertEqual([], _fds_on(dead))
        self.assertEqual([self.held[mine].lock_fd], _fds_on(mine))
        self.unmount_tree.assert_not_called()

    def test_sorted(self):
        names = ['snapshot-%s' % n for n in ('z', 'a', 'M', '9', 'a.b')]
        for name in names:
            os.mkdir(os.path.join(self.rootfs_dir, name))
        self.assertEqual(
            [[os.path.join(self.rootfs_dir, n), False]
             for n in sorted(names)], snapshots.stages(self.rootfs_dir))

    def test_none(self):
        self.assertEqual([], snapshots.stages(self.rootfs_dir))
        missing = os.path.join(self.state, 'rootfs', '4')
        self.assertEqual([], snapshots.stages(missing))
        self.assertFalse(os.path.lexists(missing))
        os.makedirs(os.path.join(self.lxc, 'rootfs', '0'))
        self.assertEqual([], snapshots.stages(
            os.path.join(self.lxc, 'rootfs', '0')))

    def test_refused(self):
        s = self.state
        os.makedirs(os.path.join(s, 'other', '3', 'snapshot-a'))
        os.makedirs(os.path.join(s, 'rootfs', 'abc', 'snapshot-a'))
        os.makedirs(os.path.join(s, 'rootfs', '3', 'root'))
        os.makedirs(os.path.join(self.outside, 'rootfs', '3', 'snapshot-a'))
        os.mkdir(os.path.join(self.rootfs_dir, 'snapshot-a'))
        os.symlink('3', os.path.join(s, 'rootfs', '7'))
        for path in (os.path.join(s, 'rootfs'), s, self.tmp, '/',
                     os.path.join(s, 'rootfs', 'abc'),
                     os.path.join(s, 'rootfs', '-3'),
                     os.path.join(s, 'rootfs', '3 '),
                     os.path.join(s, 'rootfs', '3\n'),
                     os.path.join(s, 'rootfs', '\u00b2'),
                     os.path.join(s, 'rootfs', '\u0663'),
                     os.path.join(s, 'other', '3'),
                     os.path.join(s, 'sub', 'rootfs', '3'),
                     os.path.join(self.outside, 'rootfs', '3'),
                     os.path.join(s, 'rootfs', '7'),
                     os.path.join(s, 'rootfs', '3', 'root'),
                     os.path.join(s, 'rootfs', '3', 'snapshot-a'),
                     self.rootfs_dir + '/', self.rootfs_dir + '/.',
                     'state/rootfs/3', self.rootfs_dir + '\0', None, 3):
            self.refused(snapshots.stages, path)
