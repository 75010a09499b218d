"""privsep.unpack: the confined unpacker's entry points, host side mocked.

The entry points run here in-process (client mode off, storage_admin_here)
on a temporary tree; the host's side is mocked: the idmapped view
(storage._idmapped, user_namespace, _unmount), the namespace's maps
(storage._map_writer), root's unpack range (ids.unpack_idmap) and the
child (subprocess.Popen, a FakeChild playing its half of the ready/go
handshake). What is asserted is what each refuses before touching
anything, what a start sets up and what every outcome leaves: no view, no
fd, no record.

RealUnpackTest (root only) runs the real child into a real idmapped view
under /var/tmp.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import io
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid

from unittest import mock

import fixtures
from oslo_config import fixture as config_fixture

import novalxcdriver
from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import storage
from novalxcdriver.privsep import unpack
from novalxcdriver import tarball
from tests.unit import base

CONF = conf.CONF
IMAGE = '0b5e8d6c-3f1a-4c2e-9d7b-1a2b3c4d5e6f'
# Distinct uid and gid starts: a swapped map shows.
IDMAP = ids.Idmap(uid_start=1000034464, gid_start=2000034464, size=65536)
USERNS_FD = 987
PARTIAL = '.partial-%s-1234-ab_C9' % IMAGE
FIFO = 'unpack-1234-00ff.fifo'


class FakeChild:
    """subprocess.Popen's stand-in, playing the child's half of the start.

    :param ready: what it writes on the ready fd (None: nothing, as a
        child that died first).
    :param returncode: its exit status once it ends.
    :param stdout, stderr: what it wrote there.
    :param finishes: whether wait(timeout) sees it end.
    """

    pid = 4242

    def __init__(self, ready=b'r', returncode=0, stdout=b'', stderr=b'',
                 finishes=True, on_start=None):
        self.ready = ready
        self.exit_status = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.finishes = finishes
        self.on_start = on_start
        self.argv = self.kwargs = None
        self.returncode = None
        self.killed = False
        self.waits = []
        self.go = None
        self.stdin_stat = None
        self.stdin_blocking = None
        self.stdin_mode = None
        self.stdin_inheritable = None
        self.pass_fd_modes = None

    def popen(self, argv, **kwargs):
        self.argv, self.kwargs = argv, kwargs
        if self.on_start:
            self.on_start(self)
        ready_w, go_r = kwargs['pass_fds']
        self.pass_fd_modes = [fcntl_mode(ready_w), fcntl_mode(go_r)]
        self.stdin_stat = os.fstat(kwargs['stdin'])
        self.stdin_blocking = os.get_blocking(kwargs['stdin'])
        self.stdin_mode = fcntl_mode(kwargs['stdin'])
        self.stdin_inheritable = os.get_inheritable(kwargs['stdin'])
        # The go pipe's read end, as the child holds it.
        self.go = os.dup(go_r)
        if self.ready:
            os.write(ready_w, self.ready)
        os.write(kwargs['stdout'].fileno(), self.stdout)
        os.write(kwargs['stderr'].fileno(), self.stderr)
        return self

    def go_bytes(self):
        """What the daemon sent on the go pipe: b'' when it closed it."""
        if not select.select([self.go], [], [], 0)[0]:
            return None
        return os.read(self.go, 16)

    def close(self):
        if self.go is not None:
            os.close(self.go)
            self.go = None

    def poll(self):
        return self.returncode

    def kill(self):
        self.killed = True
        self.returncode = -signal.SIGKILL

    def wait(self, timeout=None):
        self.waits.append(timeout)
        if self.returncode is None:
            if not self.finishes:
                if timeout is None:
                    raise AssertionError('waited without a timeout for a '
                                         'child that does not end')
                raise subprocess.TimeoutExpired(unpack.CHILD_MODULE, timeout)
            self.returncode = self.exit_status
        return self.returncode


def fcntl_mode(fd):
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


class _Base(base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.state = os.path.join(self.tmp, 'state')
        self.lxc = os.path.join(self.tmp, 'lxc')
        self.spool = os.path.join(self.state, 'spool')
        for path in (self.lxc, os.path.join(self.state, 'images'),
                     self.spool):
            os.makedirs(path)
        self.storage_admin_here(self.lxc, self.state)
        self.others = set()
        if os.geteuid() != 0:
            self._tree_as_root()
        self.partial = os.path.join(self.state, 'images', PARTIAL)
        self.rootfs = os.path.join(self.partial, 'rootfs')
        self.view = os.path.join(self.partial, 'view')
        os.makedirs(self.rootfs, mode=0o755)
        self.fifo = os.path.join(self.spool, FIFO)
        os.mkfifo(self.fifo, 0o600)

    def _tree_as_root(self):
        # Not root: the tree's files show as root's but for self.others.
        real = os.lstat

        def lstat(path, *args, **kwargs):
            st = real(path, *args, **kwargs)
            if isinstance(path, str) and path.startswith(self.tmp) and \
                    path not in self.others:
                st = os.stat_result((st.st_mode, st.st_ino, st.st_dev,
                                     st.st_nlink, 0, st.st_gid, st.st_size,
                                     st.st_atime, st.st_mtime, st.st_ctime))
            return st
        self.patch('os.lstat', new=lstat)

    def not_root_s(self, path):
        if os.geteuid() == 0:
            os.lchown(path, 1000, 1000)
        else:
            self.others.add(path)

    def make_partial(self, name):
        rootfs = os.path.join(self.state, 'images', name, 'rootfs')
        os.makedirs(rootfs, mode=0o755)
        return rootfs

    def views(self):
        """Every path named 'view' or 'copy' (copy_partition's) in the tree."""
        return {os.path.join(top, name)
                for top, dirs, files in os.walk(self.tmp)
                for name in dirs + files
                if name in (unpack.VIEW, unpack.COPY)}


class _Mocked(_Base):
    """The host's side mocked; self.child is what Popen starts."""

    def setUp(self):
        super().setUp()
        self.running = self.patch('novalxcdriver.privsep.unpack._running',
                                  new={})
        # An unpack a test leaves started holds its output files: closed
        # here, not by the garbage collector in a later test (whose fd
        # checks would see them go).
        self.addCleanup(self._close_held)
        self.idmap = self.patch('novalxcdriver.ids.unpack_idmap',
                                return_value=IDMAP)
        self.userns = self.patch(
            'novalxcdriver.privsep.storage.user_namespace')
        self.userns.return_value.__enter__.return_value = USERNS_FD
        self.idmapped = self.patch('novalxcdriver.privsep.storage._idmapped')
        self.unmount = self.patch('novalxcdriver.privsep.storage._unmount')
        self.map_writer = self.patch(
            'novalxcdriver.privsep.storage._map_writer')
        self.write_maps = self.map_writer.return_value
        # As nova-compute holds it: open for writing.
        reader = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.writer = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(reader)
        self.addCleanup(os.close, self.writer)
        self.child = self.new_child()
        # A FakeChild's pid is no process of this test's.
        self.patch('novalxcdriver.command.wait_exit',
                   side_effect=lambda proc, timeout: proc.wait(timeout))
        self.popen = self.patch(
            'novalxcdriver.privsep.unpack.subprocess.Popen',
            side_effect=lambda *a, **kw: self.child.popen(*a, **kw))

    def _close_held(self):
        for held in self.running.values():
            for f in (held.out, held.err):
                f.close()

    def new_child(self, **kwargs):
        child = FakeChild(**kwargs)
        self.addCleanup(child.close)
        self.child = child
        return child

    def refused(self, fn, *args):
        """fn(*args) is refused, having started and mounted nothing."""
        views = self.views()
        fds = base.open_fds()
        running = dict(self.running)
        mocks = (self.popen, self.userns, self.idmapped, self.map_writer,
                 self.write_maps, self.unmount)
        calls = [m.call_count for m in mocks]
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, *args)
        self.assertEqual(calls, [m.call_count for m in mocks])
        self.assertEqual(views, self.views())
        # Only none new: an fd of an earlier test may close meanwhile
        # (the garbage collector), and a renamed FIFO keeps its fd.
        self.assertEqual(set(), set(base.open_fds()) - set(fds))
        self.assertEqual(running, self.running)
        return str(e)

    def start(self, rootfs=None, fifo=None, max_bytes=1 << 20):
        unpack.start_unpack(rootfs or self.rootfs, fifo or self.fifo,
                            max_bytes)

    def assertCleanedUp(self, fds, view=None):
        """The view is unmounted and gone, fds as before, no record."""
        view = view or self.view
        self.unmount.assert_called_once_with(view)
        self.assertFalse(os.path.lexists(view))
        self.child.close()
        self.assertEqual(fds, base.open_fds())
        self.assertEqual({}, self.running)


class EntryPointsTest(base.TestCase):

    def test_every_entry_point_is_covered(self):
        # A new entry point needs its checks tested here.
        names = {n for n, f in vars(unpack).items()
                 if privsep.storage_admin.is_entrypoint(f)}
        self.assertEqual({'start_unpack', 'finish_unpack', 'cancel_unpack',
                          'copy_partition', 'prepare_spare'}, names)


class CheckRootfsTest(_Mocked):

    def refused_everywhere(self, rootfs):
        msgs = [self.refused(unpack.start_unpack, rootfs, self.fifo, 100),
                self.refused(unpack.finish_unpack, rootfs, 10),
                self.refused(unpack.cancel_unpack, rootfs),
                self.refused(unpack.copy_partition, rootfs, 100, 10)]
        msgs.append(self.refused(unpack.check_rootfs, 'start_unpack',
                                 rootfs))
        return msgs

    def test_a_good_rootfs(self):
        self.assertEqual(self.view,
                         unpack.check_rootfs('start_unpack', self.rootfs))
        # Any driver root's image cache.
        other = os.path.join(self.lxc, 'images', PARTIAL, 'rootfs')
        os.makedirs(other)
        self.assertEqual(os.path.join(self.lxc, 'images', PARTIAL, 'view'),
                         unpack.check_rootfs('start_unpack', other))

    def test_outside_the_roots(self):
        outside = os.path.join(self.tmp, 'images', PARTIAL, 'rootfs')
        os.makedirs(outside)
        for path in ('/etc', '/', outside, self.state, self.lxc,
                     '/proc/1/root' + self.rootfs):
            for msg in self.refused_everywhere(path):
                self.assertIn('driver root', msg)

    def test_relative_or_not_normalized(self):
        rel = os.path.relpath(self.rootfs, self.state)
        for path in (rel, 'images/%s/rootfs' % PARTIAL, self.rootfs + '/',
                     os.path.join(self.state, 'images', '.', PARTIAL,
                                  'rootfs'),
                     os.path.join(self.partial, 'x', '..', 'rootfs'),
                     self.state + '//images/%s/rootfs' % PARTIAL,
                     self.rootfs + '\0', None, 3, [self.rootfs],
                     self.rootfs.encode()):
            for msg in self.refused_everywhere(path):
                self.assertIn('not an absolute normalized path', msg)

    def test_not_a_partial_s_rootfs(self):
        # Each is a directory of root's, empty: the shape alone refuses.
        bad = [
            # A published entry of the image cache.
            'images/%s/rootfs' % IMAGE,
            'images/.partial-%s-1234-ab/rootfs' % IMAGE.upper(),
            'images/.partial-%s-1234-ab/rootfs' % IMAGE[:-1],
            'images/.partial-%s-1234-ab/rootfs' % IMAGE.replace('-', ''),
            'images/.partial-%s-1234-ab/rootfs' % ('g' + IMAGE[1:]),
            'images/.partial-%s-x1-ab/rootfs' % IMAGE,
            'images/.partial-%s--ab/rootfs' % IMAGE,
            'images/.partial-%s-1234-/rootfs' % IMAGE,
            'images/.partial-%s-1234-a.b/rootfs' % IMAGE,
            'images/.partial-%s-1234-%s/rootfs' % (IMAGE, 'a' * 65),
            'images/partial-%s-1234-ab/rootfs' % IMAGE,
            'images/.partial-%s-1234-ab/rootfs2' % IMAGE,
            'images/.partial-%s-1234-ab/view' % IMAGE,
            'images/.partial-%s-1234-ab/rootfs/usr' % IMAGE,
            'images/.partial-%s-1234-ab' % IMAGE,
            'images/x/.partial-%s-1234-ab/rootfs' % IMAGE,
            'x/images/.partial-%s-1234-ab/rootfs' % IMAGE,
            'rootfs/.partial-%s-1234-ab/rootfs' % IMAGE,
            '.partial-%s-1234-ab/rootfs' % IMAGE,
            'images/.partial-%s-1234-ab\n/rootfs' % IMAGE,
        ]
        for rel in bad:
            path = os.path.join(self.state, rel)
            os.makedirs(path, mode=0o755, exist_ok=True)
            for msg in self.refused_everywhere(path):
                self.assertIn('is not the rootfs of an image cache partial',
                              msg)

    def test_a_symlink(self):
        elsewhere = os.path.join(self.state, 'elsewhere')
        os.mkdir(elsewhere, 0o755)
        rootfs = os.path.join(self.state, 'images', PARTIAL + 'x', 'rootfs')
        os.makedirs(os.path.dirname(rootfs))
        os.symlink('../../elsewhere', rootfs)
        for msg in self.refused_everywhere(rootfs):
            self.assertIn('goes through a symlink', msg)
        os.unlink(rootfs)
        os.symlink(elsewhere, rootfs)
        self.refused_everywhere(rootfs)
        # A link to itself (a loop realpath would leave unresolved).
        os.unlink(rootfs)
        os.symlink('rootfs', rootfs)
        for msg in self.refused_everywhere(rootfs):
            self.assertIn('goes through a symlink', msg)
        self.assertTrue(os.path.islink(rootfs))

    def test_a_symlinked_partial(self):
        real = self.make_partial(PARTIAL + 'y')
        link = os.path.join(self.state, 'images', PARTIAL + 'z')
        os.symlink(os.path.dirname(real), link)
        for msg in self.refused_everywhere(os.path.join(link, 'rootfs')):
            self.assertIn('goes through a symlink', msg)

    def test_not_a_directory(self):
        os.rmdir(self.rootfs)
        with open(self.rootfs, 'w'):
            pass
        for msg in self.refused_everywhere(self.rootfs):
            self.assertIn('is not a directory of root\'s', msg)
        os.unlink(self.rootfs)
        os.mkfifo(self.rootfs)
        self.refused_everywhere(self.rootfs)

    def test_missing(self):
        os.rmdir(self.rootfs)
        for msg in self.refused_everywhere(self.rootfs):
            self.assertIn('does not exist', msg)
        shutil.rmtree(self.partial)
        self.refused_everywhere(self.rootfs)

    def test_not_root_s(self):
        self.not_root_s(self.rootfs)
        for msg in self.refused_everywhere(self.rootfs):
            self.assertIn('is not a directory of root\'s', msg)


class OpenFifoTest(_Mocked):

    def open(self, fifo):
        return unpack._open_fifo('start_unpack', fifo)

    def refused_fifo(self, fifo):
        msg = self.refused(self.open, fifo)
        self.assertIn('start_unpack', msg)
        return msg

    def test_opened_for_reading_without_blocking(self):
        # Nobody writes: an open without O_NONBLOCK would wait for ever.
        fifo = os.path.join(self.spool, 'unpack-1-beef.fifo')
        os.mkfifo(fifo)
        found = {}

        def opener():
            found['fd'] = self.open(fifo)
        thread = threading.Thread(target=opener, daemon=True)
        thread.start()
        thread.join(5)
        if thread.is_alive():
            # Let it go: a reader and writer of our own.
            os.close(os.open(fifo, os.O_RDWR))
            thread.join(5)
            os.close(found['fd'])
            self.fail('opening the FIFO blocked')
        fd = found['fd']
        try:
            st = os.fstat(fd)
            self.assertTrue(stat.S_ISFIFO(st.st_mode))
            self.assertTrue(os.path.samestat(os.lstat(fifo), st))
            self.assertEqual(os.O_RDONLY, fcntl_mode(fd))
            # Blocking once open: the child reads it as its stdin.
            self.assertTrue(os.get_blocking(fd))
            self.assertFalse(os.get_inheritable(fd))
        finally:
            os.close(fd)

    def test_any_driver_root_s_spool(self):
        os.mkdir(os.path.join(self.lxc, 'spool'))
        fifo = os.path.join(self.lxc, 'spool', 'unpack-1-a.fifo')
        os.mkfifo(fifo)
        self.addCleanup(os.close, os.open(fifo, os.O_RDWR))
        os.close(self.open(fifo))

    def test_bad_names(self):
        for name in ('unpack--00ff.fifo', 'unpack-1-00FF.fifo',
                     'unpack-1-.fifo', 'unpack-1-00ff.fif',
                     'unpack-1-00ff.fifo.x', 'x-1-00ff.fifo',
                     'unpack-x-00ff.fifo', 'unpack-1-00fg.fifo',
                     'unpack-1-%s.fifo' % ('a' * 65), 'unpack-1-00ff.fifo\n',
                     '.unpack-1-00ff.fifo', 'unpack-1-00ff'):
            fifo = os.path.join(self.spool, name)
            os.mkfifo(fifo)
            msg = self.refused_fifo(fifo)
            self.assertIn('is not an unpack FIFO of a driver root\'s spool',
                          msg)

    def test_not_a_driver_root_s_spool(self):
        for parent in (os.path.join(self.state, 'images'),
                       os.path.join(self.state, 'x', 'spool'),
                       os.path.join(self.partial, 'spool'),
                       os.path.join(self.state, 'spool2'),
                       os.path.join(self.spool, 'spool')):
            os.makedirs(parent, exist_ok=True)
            fifo = os.path.join(parent, FIFO)
            os.mkfifo(fifo)
            msg = self.refused_fifo(fifo)
            self.assertIn('is not an unpack FIFO of a driver root\'s spool',
                          msg)

    def test_outside_the_roots(self):
        spool = os.path.join(self.tmp, 'spool')
        os.mkdir(spool)
        fifo = os.path.join(spool, FIFO)
        os.mkfifo(fifo)
        for path in (fifo, '/etc/passwd', '/dev/stdin',
                     '/proc/self/fd/0', self.state):
            self.assertIn('driver root', self.refused_fifo(path))
        for path in ('spool/' + FIFO, self.spool + '/./' + FIFO, None, 7):
            self.assertIn('not an absolute normalized path',
                          self.refused_fifo(path))

    def test_not_a_fifo(self):
        os.unlink(self.fifo)
        with open(self.fifo, 'w') as f:
            f.write('tarball')
        self.assertIn('is not a FIFO', self.refused_fifo(self.fifo))
        os.unlink(self.fifo)
        os.mkdir(self.fifo)
        self.assertIn('is not a FIFO', self.refused_fifo(self.fifo))

    def test_a_symlink_to_a_fifo(self):
        other = os.path.join(self.spool, 'unpack-1-1.fifo')
        os.rename(self.fifo, other)
        os.symlink(os.path.basename(other), self.fifo)
        self.assertIn('goes through a symlink', self.refused_fifo(self.fifo))
        os.unlink(self.fifo)
        os.symlink(other, self.fifo)
        self.refused_fifo(self.fifo)
        # One to itself (a loop realpath would leave unresolved).
        os.unlink(self.fifo)
        os.symlink(FIFO, self.fifo)
        self.assertIn('goes through a symlink', self.refused_fifo(self.fifo))

    def test_missing(self):
        os.unlink(self.fifo)
        self.assertIn('does not exist', self.refused_fifo(self.fifo))

    def swapped_after_lstat(self, swap):
        """os.lstat running swap() once the FIFO was looked at."""
        prev = os.lstat

        def lstat(path, *args, **kwargs):
            st = prev(path, *args, **kwargs)
            if path == self.fifo and \
                    sys._getframe(1).f_code.co_name == 'open_spool_fifo':
                swap()
            return st
        self.patch('os.lstat', new=lstat)

    def test_replaced_by_another_fifo_before_the_open(self):
        # Made first: a new inode (an unlinked one's number may be reused
        # at once); with a writer: never a wait, whatever the open's flags.
        os.mkfifo(self.fifo + '.new')
        self.addCleanup(os.close, os.open(self.fifo + '.new', os.O_RDWR))

        def swap():
            os.rename(self.fifo + '.new', self.fifo)
        self.swapped_after_lstat(swap)
        self.assertIn('was replaced while it was opened',
                      self.refused_fifo(self.fifo))

    def test_replaced_by_a_file_before_the_open(self):
        def swap():
            os.unlink(self.fifo)
            with open(self.fifo, 'w'):
                pass
        self.swapped_after_lstat(swap)
        self.assertIn('was replaced while it was opened',
                      self.refused_fifo(self.fifo))

    def test_replaced_by_a_symlink_to_itself_before_the_open(self):
        # The same FIFO through a link: never opened through it.
        def swap():
            other = os.path.join(self.spool, 'unpack-1-1.fifo')
            os.link(self.fifo, other)
            os.unlink(self.fifo)
            os.symlink(os.path.basename(other), self.fifo)
        self.swapped_after_lstat(swap)
        msg = self.refused_fifo(self.fifo)
        self.assertIn('cannot open', msg)
        self.assertIn(os.strerror(errno.ELOOP), msg)

    def test_removed_before_the_open(self):
        self.swapped_after_lstat(lambda: os.unlink(self.fifo))
        self.assertIn('cannot open', self.refused_fifo(self.fifo))


class StartRefusedTest(_Mocked):

    def test_max_bytes(self):
        for max_bytes in (0, -1, True, False, 1.5, '5', None, [5], 5.0):
            msg = self.refused(unpack.start_unpack, self.rootfs, self.fifo,
                               max_bytes)
            self.assertIn('is not a positive int', msg)
        self.idmap.assert_not_called()

    def test_rootfs_not_empty(self):
        with open(os.path.join(self.rootfs, 'x'), 'w'):
            pass
        self.assertIn('is not empty', self.refused(
            unpack.start_unpack, self.rootfs, self.fifo, 100))
        os.unlink(os.path.join(self.rootfs, 'x'))
        os.mkdir(os.path.join(self.rootfs, '.hidden'))
        self.refused(unpack.start_unpack, self.rootfs, self.fifo, 100)
        self.idmap.assert_not_called()

    def test_an_existing_view_is_refused_and_left(self):
        os.mkdir(self.view, 0o755)
        mine = os.path.join(self.view, 'mine')
        with open(mine, 'w'):
            pass
        self.assertIn('exists already', self.refused(
            unpack.start_unpack, self.rootfs, self.fifo, 100))
        self.assertTrue(os.path.exists(mine))
        os.unlink(mine)
        os.rmdir(self.view)
        os.symlink('/etc', self.view)
        self.refused(unpack.start_unpack, self.rootfs, self.fifo, 100)
        self.assertEqual('/etc', os.readlink(self.view))

    def test_a_bad_fifo_removes_the_view(self):
        os.unlink(self.fifo)
        with open(self.fifo, 'w'):
            pass
        fds = base.open_fds()
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              unpack.start_unpack, self.rootfs, self.fifo,
                              100)
        self.assertIn('is not a FIFO', str(e))
        self.popen.assert_not_called()
        self.idmapped.assert_not_called()
        self.assertCleanedUp(fds)

    def test_second_start_refused_while_one_runs(self):
        self.start()
        self.addCleanup(unpack.cancel_unpack, self.rootfs)
        first = self.running[self.rootfs]
        e = self.assertRaises(exception.PrivilegedCallRefused, self.start)
        self.assertIn('is being unpacked already', str(e))
        self.assertEqual(1, self.popen.call_count)
        self.assertIs(first, self.running[self.rootfs])
        self.assertTrue(os.path.isdir(self.view))
        self.unmount.assert_not_called()

    def test_no_unpack_range(self):
        self.idmap.side_effect = exception.IdmapUnavailable(reason='none')
        self.assertRaises(exception.IdmapUnavailable, self.start)
        self.assertEqual(set(), self.views())
        self.popen.assert_not_called()


class StartTest(_Mocked):

    def test_started(self):
        seen = {}

        def on_start(child):
            # The view is mounted before the child starts in it.
            seen['mounted'] = self.idmapped.called
            seen['view_mode'] = stat.S_IMODE(os.lstat(self.view).st_mode)

        self.new_child(on_start=on_start)

        def write_maps(pid):
            # The child waits for its maps: 'g' comes after them.
            seen['go_before_maps'] = self.child.go_bytes()
        self.write_maps.side_effect = write_maps
        fds = base.open_fds()
        self.assertIsNone(unpack.start_unpack(self.rootfs, self.fifo, 5000))

        argv, kw = self.child.argv, self.child.kwargs
        ready_w, go_r = kw['pass_fds']
        self.assertEqual(unpack._child_argv(5000, ready_w, go_r), argv)
        self.assertEqual([os.O_WRONLY, os.O_RDONLY],
                         self.child.pass_fd_modes)
        self.assertEqual(unpack._child_env(), kw['env'])
        self.assertEqual(self.view, kw['cwd'])
        self.assertTrue(kw['close_fds'])
        self.assertEqual(0o022, kw['umask'])
        # Its stdin: the FIFO, blocking.
        self.assertTrue(os.path.samestat(os.lstat(self.fifo),
                                         self.child.stdin_stat))
        self.assertTrue(self.child.stdin_blocking)
        self.assertEqual(os.O_RDONLY, self.child.stdin_mode)
        self.assertEqual({'mounted': True, 'view_mode': 0o700,
                          'go_before_maps': None}, seen)

        self.idmap.assert_called_once_with()
        self.userns.assert_called_once_with(IDMAP)
        self.idmapped.assert_called_once_with(self.rootfs, self.view,
                                              USERNS_FD, 0)
        self.map_writer.assert_called_once_with(
            [(0, IDMAP.uid_start, IDMAP.size)],
            [(0, IDMAP.gid_start, IDMAP.size)])
        self.write_maps.assert_called_once_with(FakeChild.pid)
        self.assertEqual(b'g', self.child.go_bytes())
        # Then the daemon's go end is closed.
        self.assertEqual(b'', self.child.go_bytes())
        self.unmount.assert_not_called()
        self.assertFalse(self.child.killed)
        self.assertEqual([], self.child.waits)

        # Nothing left open but the child's stdout and stderr files (and
        # the test's copy of the go pipe).
        held = self.running[self.rootfs]
        self.assertEqual([self.view], held.made)
        self.assertIs(self.child, held.proc)
        new = set(base.open_fds()) - set(fds)
        self.assertEqual({held.out.fileno(), held.err.fileno(),
                          self.child.go}, new)

        self.child.stdout = b'{"size": 1234}\n'
        os.write(held.out.fileno(), self.child.stdout)
        self.assertEqual(1234, unpack.finish_unpack(self.rootfs, 30))
        self.assertEqual([30], self.child.waits)
        self.assertCleanedUp(fds)

    def test_two_rootfs_at_once(self):
        other = self.make_partial(PARTIAL + 'Z')
        fifo2 = os.path.join(self.spool, 'unpack-1-2.fifo')
        os.mkfifo(fifo2)
        self.addCleanup(os.close, os.open(fifo2, os.O_RDWR))
        first = self.child
        self.start()
        second = self.new_child()
        self.start(other, fifo2)
        self.assertEqual({self.rootfs, other}, set(self.running))
        unpack.cancel_unpack(self.rootfs)
        self.assertTrue(first.killed)
        self.assertFalse(second.killed)
        unpack.cancel_unpack(other)
        self.assertTrue(second.killed)
        self.assertEqual(set(), self.views())

    def check_failed(self, exc, killed, fds):
        e = self.assertRaises(exc, self.start)
        if self.popen.called:
            # Never let go: the daemon closed its go end, sending nothing.
            self.assertEqual(b'', self.child.go_bytes())
            # Waited for: no zombie.
            self.assertIsNotNone(self.child.returncode)
            self.assertIn(None, self.child.waits)
        self.assertEqual(killed, self.child.killed)
        self.assertCleanedUp(fds)
        return e

    def test_the_child_dies_before_the_handshake(self):
        self.new_child(ready=None, returncode=1, stderr=b'Traceback\n' +
                       b'x' * 3000 + b'\nImportError: no zstandard\n')
        fds = base.open_fds()
        e = self.check_failed(exception.CommandFailed, False, fds)
        self.assertIn('ImportError: no zstandard', str(e))
        self.assertIn('exit code 1', str(e))
        self.assertIn(unpack.CHILD_MODULE, str(e))
        self.write_maps.assert_not_called()

    def test_a_wrong_handshake_byte(self):
        self.new_child(ready=b'x', returncode=3)
        fds = base.open_fds()
        e = self.check_failed(exception.CommandFailed, False, fds)
        self.assertIn('exit code 3', str(e))
        self.write_maps.assert_not_called()

    def test_the_child_does_not_get_ready(self):
        sel = self.patch_object(unpack, 'select')
        sel.select.return_value = ([], [], [])
        self.new_child(ready=None, finishes=False)
        fds = base.open_fds()
        e = self.check_failed(exception.CommandTimedOut, True, fds)
        self.assertIn('unpacker unshare', str(e))
        self.assertEqual(CONF.lxc.command_timeout,
                         sel.select.call_args[0][3])
        self.write_maps.assert_not_called()

    def test_the_maps_cannot_be_written(self):
        self.new_child(finishes=False)
        self.write_maps.side_effect = exception.CommandFailed(
            cmd='writing uid_map', exit_code=1, stderr='EPERM')
        fds = base.open_fds()
        self.check_failed(exception.CommandFailed, True, fds)

    def test_the_child_cannot_start(self):
        self.popen.side_effect = OSError(errno.ENOENT, 'no python')
        fds = base.open_fds()
        self.assertRaises(OSError, self.start)
        self.assertCleanedUp(fds)

    def test_no_file_for_its_output(self):
        # ENOSPC or EMFILE in the daemon's tmpdir: the view goes, and the
        # rootfs is not left claimed.
        real = tempfile.TemporaryFile
        made = []

        def temporary_file():
            if made:
                raise OSError(errno.ENOSPC, 'No space left on device')
            made.append(real())
            return made[-1]
        fds = base.open_fds()
        with mock.patch.object(unpack.tempfile, 'TemporaryFile',
                               side_effect=temporary_file):
            self.assertRaises(OSError, self.start)
        self.assertTrue(made[0].closed)
        self.popen.assert_not_called()
        self.assertFalse(os.path.lexists(self.view))
        self.assertEqual(fds, base.open_fds())
        self.assertEqual({}, self.running)

    def test_the_view_cannot_be_mounted(self):
        self.idmapped.side_effect = exception.MountFailed(
            what='idmapped view', target=self.view, reason='EINVAL')
        fds = base.open_fds()
        self.assertRaises(exception.MountFailed, self.start)
        self.popen.assert_not_called()
        self.assertCleanedUp(fds)

    def test_no_user_namespace(self):
        self.userns.side_effect = exception.CommandFailed(
            cmd='unshare', exit_code=1, stderr='no')
        fds = base.open_fds()
        self.assertRaises(exception.CommandFailed, self.start)
        self.idmapped.assert_not_called()
        self.popen.assert_not_called()
        self.assertCleanedUp(fds)

    def test_interrupted(self):
        self.write_maps.side_effect = KeyboardInterrupt
        self.new_child(finishes=False)
        fds = base.open_fds()
        self.check_failed(KeyboardInterrupt, True, fds)


class SpareTest(_Mocked):
    """A spare child handed the job a new child would have been started with.

    The spare's side is played by a thread on the other end of its socket.
    """

    def setUp(self):
        super().setUp()
        self.spares = self.patch_object(unpack, '_SPARES',
                                        new=unpack._Spares())
        self.want = self.patch_object(self.spares, 'want')
        self.spare = FakeChild()
        self.spare.pid = 5151
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX,
                                                   socket.SOCK_SEQPACKET)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        self.spares._spare = (self.spare, self.ours)
        self.job = {}

    def play_spare(self):
        """Receive the job, close the socket, answer 'r' on its ready fd."""
        def run():
            data, fds, _f, _a = socket.recv_fds(self.theirs, 65536, 16)
            self.theirs.close()
            self.job['message'] = json.loads(data)
            self.job['stats'] = [os.fstat(fd) for fd in fds]
            self.job['modes'] = [fcntl_mode(fd) for fd in fds]
            self.job['fds'] = fds
            os.write(fds[3], b'r')
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def close_job_fds(self):
        for fd in self.job.get('fds', ()):
            os.close(fd)

    def test_the_spare_gets_the_job_a_child_would_have(self):
        self.addCleanup(self.close_job_fds)
        thread = self.play_spare()
        fds = base.open_fds()
        self.start(max_bytes=5000)
        thread.join()
        self.popen.assert_not_called()
        message = self.job['message']
        # As Popen would have placed them: stdin, stdout, stderr, then the
        # ready and go pipes' ends at the numbers in argv.
        ready_w, go_r = message['fds'][3:]
        self.assertEqual(
            {'argv': unpack._child_argv(5000, ready_w, go_r)[3:],
             'cwd': self.view, 'fds': [0, 1, 2, ready_w, go_r]}, message)
        held = self.running[self.rootfs]
        self.assertIs(self.spare, held.proc)
        stdin, out, err, ready, go = self.job['stats']
        self.assertTrue(os.path.samestat(os.lstat(self.fifo), stdin))
        self.assertTrue(os.path.samestat(os.fstat(held.out.fileno()), out))
        self.assertTrue(os.path.samestat(os.fstat(held.err.fileno()), err))
        self.assertEqual([os.O_RDONLY, os.O_RDWR, os.O_RDWR, os.O_WRONLY,
                          os.O_RDONLY], self.job['modes'])
        self.write_maps.assert_called_once_with(5151)
        self.assertEqual(b'g', os.read(self.job['fds'][4], 1))
        # The daemon's ends are closed: its socket, its pipe ends.
        self.assertEqual(b'', os.read(self.job['fds'][4], 1))
        self.assertEqual(-1, self.ours.fileno())
        # What the spare received (here, in this process) aside.
        self.assertEqual({held.out.fileno(), held.err.fileno()},
                         set(base.open_fds()) - set(fds) -
                         set(self.job['fds']))
        self.assertIsNone(self.spares.take())
        self.want.assert_not_called()

        os.write(held.out.fileno(), b'{"size": 77}\n')
        self.assertEqual(77, unpack.finish_unpack(self.rootfs, 30))
        # Its end asks for the next spare.
        self.want.assert_called_once_with()
        self.assertEqual([30], self.spare.waits)

    def test_a_spare_gone_meanwhile_a_new_child_instead(self):
        self.theirs.close()
        fds = base.open_fds()
        self.start(max_bytes=5000)
        # The spare is killed and reaped; a child is started.
        self.assertTrue(self.spare.killed)
        self.assertEqual([None], self.spare.waits)
        self.assertIs(self.child, self.running[self.rootfs].proc)
        ready_w, go_r = self.child.kwargs['pass_fds']
        self.assertEqual(unpack._child_argv(5000, ready_w, go_r),
                         self.child.argv)
        held = self.running[self.rootfs]
        self.assertEqual({held.out.fileno(), held.err.fileno(),
                          self.child.go},
                         set(base.open_fds()) - set(fds) | {self.child.go})

    def test_a_spare_that_ended_is_not_used(self):
        self.spare.returncode = 1
        self.assertIsNone(self.spares.take())
        self.assertEqual(-1, self.ours.fileno())
        self.start()
        self.assertIs(self.child, self.running[self.rootfs].proc)

    def test_a_cancel_asks_for_the_next_spare(self):
        self.spares._spare = None
        self.start()
        unpack.cancel_unpack(self.rootfs)
        self.want.assert_called_once_with()

    def test_a_failed_finish_asks_for_the_next_spare(self):
        self.spares._spare = None
        self.new_child(returncode=1, stdout=b'garbage')
        self.start()
        self.assertRaises(exception.ArchiveError, unpack.finish_unpack,
                          self.rootfs, 30)
        self.want.assert_called_once_with()


class SparesTest(base.TestCase):
    """_Spares: one spare at most, started by its own thread."""

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(CONF))
        self.spares = unpack._Spares()
        self.made = []

        def start_spare():
            proc = mock.Mock(pid=100 + len(self.made))
            proc.poll.return_value = None
            self.made.append(proc)
            return proc, mock.Mock()
        self.start_spare = self.patch_object(unpack, '_start_spare',
                                             side_effect=start_spare)

    def await_take(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            spare = self.spares.take()
            if spare is not None:
                return spare
            time.sleep(0.005)
        self.fail('no spare within 10 s')

    def test_off_nothing_started(self):
        self.cfg.config(group='lxc', spare_unpacker=False)
        self.spares.want()
        self.assertIsNone(self.spares._thread)
        self.assertIsNone(self.spares.take())
        self.start_spare.assert_not_called()

    def test_one_at_a_time_by_one_thread(self):
        self.cfg.config(group='lxc', spare_unpacker=True)
        self.spares.want()
        thread = self.spares._thread
        self.assertTrue(thread.daemon)
        proc, _sock = self.await_take()
        self.assertIs(self.made[0], proc)
        # Taken: the next want starts the next, from the same thread.
        self.spares.want()
        proc, _sock = self.await_take()
        self.assertIs(self.made[1], proc)
        self.assertIs(thread, self.spares._thread)
        # While one waits, a want starts none.
        self.spares.want()
        spare = self.await_take()
        self.spares._spare = spare
        self.spares.want()
        time.sleep(0.05)
        self.assertEqual(3, len(self.made))

    def test_a_failed_start_is_logged_and_the_next_want_tries_again(self):
        self.cfg.config(group='lxc', spare_unpacker=True)
        self.start_spare.side_effect = [OSError(errno.ENOMEM, 'no memory'),
                                        (mock.Mock(**{'poll.return_value':
                                                      None}), mock.Mock())]
        log = self.useFixture(fixtures.FakeLogger())
        self.spares.want()
        deadline = time.monotonic() + 10
        while 'no memory' not in log.output and time.monotonic() < deadline:
            time.sleep(0.005)
        self.assertIn('Cannot start a spare unpacker', log.output)
        self.assertIsNone(self.spares.take())
        self.spares.want()
        self.assertIsNotNone(self.await_take())


class FinishCancelTest(_Mocked):

    def started(self, **child):
        self.new_child(**child)
        self.fds = base.open_fds()
        self.start()
        self.assertIn(self.rootfs, self.running)

    def test_unknown_rootfs_refused(self):
        for fn, args in ((unpack.finish_unpack, (self.rootfs, 10)),
                         (unpack.cancel_unpack, (self.rootfs,))):
            self.assertIn('is not being unpacked', self.refused(fn, *args))
        # Another rootfs's unpack is not this one's.
        other = self.make_partial(PARTIAL + 'Z')
        self.start(other)
        self.addCleanup(unpack.cancel_unpack, other)
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              unpack.finish_unpack, self.rootfs, 10)
        self.assertIn('is not being unpacked', str(e))
        self.assertFalse(self.child.killed)
        self.unmount.assert_not_called()

    def test_finished(self):
        self.started(stdout=b'{"size": 77}\n', stderr=b'warning\n')
        self.assertEqual(77, unpack.finish_unpack(self.rootfs, 12))
        self.assertEqual([12], self.child.waits)
        self.assertFalse(self.child.killed)
        self.assertCleanedUp(self.fds)
        # Once.
        self.assertIn('is not being unpacked', self.refused(
            unpack.finish_unpack, self.rootfs, 12))

    def test_refused_tarball(self):
        self.started(returncode=1, stdout=json.dumps(
            {'error': 'UnsafeArchiveMember', 'member': '../etc/passwd',
             'reason': 'outside'}).encode() + b'\n')
        e = self.assertRaises(exception.UnsafeArchiveMember,
                              unpack.finish_unpack, self.rootfs, 12)
        self.assertEqual('../etc/passwd', e.kwargs['member'])
        self.assertCleanedUp(self.fds)

    def test_crashed(self):
        self.started(returncode=-signal.SIGSEGV, stdout=b'',
                     stderr=b'a' * 5000 + b'Fatal Python error')
        e = self.assertRaises(exception.ArchiveError,
                              unpack.finish_unpack, self.rootfs, 12)
        self.assertIn('killed by signal %d' % signal.SIGSEGV, str(e))
        self.assertIn('Fatal Python error', str(e))
        # Only the tail of its stderr.
        self.assertLess(str(e).count('a'), unpack._STDERR_TAIL + 100)
        self.assertCleanedUp(self.fds)

    def test_timed_out(self):
        self.started(finishes=False, stdout=b'{"size": 5}\n')
        e = self.assertRaises(exception.ArchiveError,
                              unpack.finish_unpack, self.rootfs, 7)
        self.assertIn('did not finish within 7 s', str(e))
        self.assertTrue(self.child.killed)
        self.assertEqual([7, None], self.child.waits)
        self.assertCleanedUp(self.fds)

    def test_the_view_goes_even_if_the_wait_fails(self):
        self.started()
        self.child.wait = mock_raising(OSError(errno.ECHILD, 'gone'))
        self.assertRaises(OSError, unpack.finish_unpack, self.rootfs, 7)
        self.unmount.assert_called_once_with(self.view)
        self.assertFalse(os.path.lexists(self.view))
        self.assertEqual({}, self.running)

    def test_a_view_already_gone(self):
        self.started(stdout=b'{"size": 5}\n')
        os.rmdir(self.view)
        self.assertEqual(5, unpack.finish_unpack(self.rootfs, 7))
        self.assertCleanedUp(self.fds)

    def test_cancelled(self):
        self.started(finishes=False)
        self.assertIsNone(unpack.cancel_unpack(self.rootfs))
        self.assertTrue(self.child.killed)
        self.assertEqual([None], self.child.waits)
        self.assertCleanedUp(self.fds)
        self.assertIn('is not being unpacked', self.refused(
            unpack.cancel_unpack, self.rootfs))
        self.assertIn('is not being unpacked', self.refused(
            unpack.finish_unpack, self.rootfs, 1))

    def test_cancelled_after_it_ended(self):
        self.started(returncode=1)
        self.child.wait()
        unpack.cancel_unpack(self.rootfs)
        self.assertFalse(self.child.killed)
        self.assertCleanedUp(self.fds)

    def test_restart_after_finish(self):
        self.started(stdout=b'{"size": 5}\n')
        unpack.finish_unpack(self.rootfs, 7)
        self.new_child()
        self.start()
        self.assertIn(self.rootfs, self.running)
        unpack.cancel_unpack(self.rootfs)


def mock_raising(error):
    def fail(*args, **kwargs):
        raise error
    return fail


# -- copy_partition, the host's side mocked ------------------------------

# diskimage.py's mount of the partition: ro, nosuid, nodev, noexec; and
# the same read-write.
RO_FLAGS = os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
RW_FLAGS = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC


class _CopyMocked(_Mocked):
    """_Mocked, with a partition mounted read-only on <partial>/mnt.

    mount.top and os.statvfs answer for self.mnt as self.mounted and
    self.mnt_flags say (the real ones for any other path); os.mkdir and
    os.chown are recorded (the chown done only as root); each unmount
    records whether its directory still existed.
    """

    def setUp(self):
        super().setUp()
        self.mnt = os.path.join(self.partial, 'mnt')
        self.work = os.path.join(self.partial, 'copy')
        self.source = os.path.join(self.work, 'source')
        self.target = os.path.join(self.work, 'rootfs')
        os.mkdir(self.mnt, 0o700)
        # The partition's files, as its mount shows them.
        with open(os.path.join(self.mnt, 'init'), 'w'):
            pass
        self.mounted = True
        self.mnt_flags = RO_FLAGS
        real_top = mount.top

        def top(point):
            if point == self.mnt:
                return ('ext4', '/dev/loop7') if self.mounted else None
            return real_top(point)
        self.top = self.patch('novalxcdriver.mount.top', side_effect=top)
        real_statvfs = os.statvfs

        def statvfs(path):
            st = real_statvfs(path)
            if path == self.mnt:
                st = os.statvfs_result(tuple(st[:8]) + (self.mnt_flags,) +
                                       tuple(st[9:]))
            return st
        self.patch('os.statvfs', side_effect=statvfs)
        self.mkdirs = []
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            self.mkdirs.append((path,) + args)
            return real_mkdir(path, *args, **kwargs)
        self.patch('os.mkdir', side_effect=mkdir)
        self.chowns = []
        real_chown = os.chown

        def chown(path, uid, gid, *args, **kwargs):
            self.chowns.append((path, uid, gid))
            if os.geteuid() == 0:
                real_chown(path, uid, gid, *args, **kwargs)
        self.chown = self.patch('os.chown', side_effect=chown)
        self.unmounted = []
        self.unmount.side_effect = lambda path: self.unmounted.append(
            (path, os.path.isdir(path)))

    def copy(self, rootfs=None, max_bytes=5000, timeout=45):
        return unpack.copy_partition(rootfs or self.rootfs, max_bytes,
                                     timeout)

    def copy_child(self, result=None, **child):
        """The child to start: result is the JSON object it prints."""
        if result is not None:
            child['stdout'] = json.dumps(result).encode() + b'\n'
        return self.new_child(**child)

    def assertCopyCleanedUp(self, fds, made=3):
        """Views unmounted then removed, last made first; no fd, no claim.

        :param made: how many of copy, copy/source, copy/rootfs were made.
        """
        want = [self.work, self.source, self.target][:made]
        self.assertEqual([(path, True) for path in reversed(want)],
                         self.unmounted)
        self.assertFalse(os.path.lexists(self.work))
        # The partition stays mounted (diskimage.py unmounts it), the
        # rootfs where it was.
        self.assertEqual(['init'], os.listdir(self.mnt))
        self.assertTrue(os.path.isdir(self.rootfs))
        self.assertNotIn(self.mnt, [c[0][0] for c in
                                    self.unmount.call_args_list])
        self.child.close()
        self.assertEqual(fds, base.open_fds())
        self.assertEqual({}, self.running)


class CopyRefusedTest(_CopyMocked):

    def test_max_bytes(self):
        for max_bytes in (0, -1, True, False, 1.5, '5', None, [5], 5.0):
            msg = self.refused(unpack.copy_partition, self.rootfs,
                               max_bytes, 10)
            self.assertIn('is not a positive int', msg)
            self.assertIn('copy_partition', msg)
        self.idmap.assert_not_called()
        self.assertEqual([], self.mkdirs)

    def test_timeout(self):
        for timeout in (0, -1, 0.0, -0.5, True, False, '5', None, [5],
                        float('nan'), float('inf'), float('-inf'), 1j,
                        b'5'):
            msg = self.refused(unpack.copy_partition, self.rootfs, 100,
                               timeout)
            self.assertIn('is not a positive number of seconds', msg)
            self.assertIn(repr(timeout), msg)
        self.idmap.assert_not_called()
        self.assertEqual([], self.mkdirs)

    def test_nothing_mounted_on_mnt(self):
        self.mounted = False
        msg = self.refused(unpack.copy_partition, self.rootfs, 100, 10)
        self.assertIn('nothing is mounted on %s' % self.mnt, msg)
        self.top.assert_called_with(self.mnt)
        shutil.rmtree(self.mnt)
        self.refused(unpack.copy_partition, self.rootfs, 100, 10)
        self.idmap.assert_not_called()
        self.assertEqual([], self.mkdirs)

    def test_mnt_mounted_read_write(self):
        for flags in (RW_FLAGS, 0, os.ST_NOSUID):
            self.mnt_flags = flags
            msg = self.refused(unpack.copy_partition, self.rootfs, 100, 10)
            self.assertIn('%s is mounted read-write' % self.mnt, msg)
        self.idmap.assert_not_called()
        self.assertEqual([], self.mkdirs)

    def test_rootfs_not_empty(self):
        with open(os.path.join(self.rootfs, 'x'), 'w'):
            pass
        self.assertIn('is not empty', self.refused(
            unpack.copy_partition, self.rootfs, 100, 10))
        os.unlink(os.path.join(self.rootfs, 'x'))
        os.mkdir(os.path.join(self.rootfs, '.hidden'))
        self.refused(unpack.copy_partition, self.rootfs, 100, 10)
        self.idmap.assert_not_called()

    def test_an_existing_copy_is_refused_and_left(self):
        os.mkdir(self.work, 0o755)
        self.assertIn('%s exists already' % self.work, self.refused(
            unpack.copy_partition, self.rootfs, 100, 10))
        self.assertTrue(os.path.isdir(self.work))
        mine = os.path.join(self.work, 'mine')
        with open(mine, 'w'):
            pass
        self.refused(unpack.copy_partition, self.rootfs, 100, 10)
        self.assertTrue(os.path.exists(mine))
        shutil.rmtree(self.work)
        os.symlink('/etc', self.work)
        self.refused(unpack.copy_partition, self.rootfs, 100, 10)
        self.assertEqual('/etc', os.readlink(self.work))
        self.assertEqual([], self.chowns)

    def test_refused_while_start_unpack_runs(self):
        self.start()
        self.addCleanup(unpack.cancel_unpack, self.rootfs)
        first = self.running[self.rootfs]
        self.assertIn('is being unpacked already', self.refused(
            unpack.copy_partition, self.rootfs, 100, 10))
        self.assertIs(first, self.running[self.rootfs])
        self.assertEqual(1, self.popen.call_count)
        self.assertTrue(os.path.isdir(self.view))

    def test_the_rest_refused_while_a_copy_runs(self):
        seen = {}

        def on_start(child):
            seen['claim'] = dict(self.running)
            for name, fn, args in (
                    ('start', unpack.start_unpack,
                     (self.rootfs, self.fifo, 100)),
                    ('copy', unpack.copy_partition, (self.rootfs, 100, 10)),
                    ('finish', unpack.finish_unpack, (self.rootfs, 10)),
                    ('cancel', unpack.cancel_unpack, (self.rootfs,))):
                try:
                    fn(*args)
                except exception.PrivilegedCallRefused as e:
                    seen[name] = str(e)
            # Still claimed by the copy.
            seen['claim after'] = dict(self.running)
        self.copy_child({'size': 1, 'skipped': 0}, on_start=on_start)
        fds = base.open_fds()
        self.assertEqual((1, 0), self.copy())
        self.assertEqual({self.rootfs: None}, seen.pop('claim'))
        self.assertEqual({self.rootfs: None}, seen.pop('claim after'))
        self.assertIn('is being unpacked already', seen.pop('start'))
        self.assertIn('is being unpacked already', seen.pop('copy'))
        self.assertIn('is not being unpacked', seen.pop('finish'))
        self.assertIn('is not being unpacked', seen.pop('cancel'))
        self.assertEqual({}, seen)
        self.assertEqual(1, self.popen.call_count)
        self.assertFalse(os.path.lexists(self.view))
        self.assertCopyCleanedUp(fds)
        # Released: an unpack may start now.
        self.new_child()
        self.start()
        unpack.cancel_unpack(self.rootfs)


class CopyTest(_CopyMocked):

    def test_copied(self):
        seen = {'mounts': []}

        def idmapped(source, target, userns_fd, attr):
            # On a directory made for it, empty, once all three are.
            seen['mounts'].append((target, os.listdir(target),
                                   len(self.mkdirs)))

        def on_start(child):
            seen['claim'] = dict(self.running)
            seen['mounted'] = self.idmapped.call_count
            seen['modes'] = [stat.S_IMODE(os.lstat(path).st_mode)
                             for path in (self.work, self.source,
                                          self.target)]
            if os.geteuid() == 0:
                seen['owners'] = [(os.lstat(path).st_uid,
                                   os.lstat(path).st_gid)
                                  for path in (self.work, self.source,
                                               self.target)]

        def write_maps(pid):
            # The child waits for its maps: 'g' comes after them.
            seen['go_before_maps'] = self.child.go_bytes()

        self.idmapped.side_effect = idmapped
        self.write_maps.side_effect = write_maps
        self.copy_child({'size': 1234, 'skipped': 3}, stderr=b'warning\n',
                        on_start=on_start)
        fds = base.open_fds()
        self.assertEqual((1234, 3), self.copy(max_bytes=5000, timeout=45))

        # copy (the range's root's), then its two mount points (root's),
        # each 0700.
        self.assertEqual([(self.work, 0o700), (self.source, 0o700),
                          (self.target, 0o700)], self.mkdirs)
        self.assertEqual([(self.work, IDMAP.uid_start, IDMAP.gid_start)],
                         self.chowns)
        want = {'claim': {self.rootfs: None}, 'mounted': 2,
                'modes': [0o700] * 3, 'go_before_maps': None,
                'mounts': [(self.source, [], 3), (self.target, [], 3)]}
        if os.geteuid() == 0:
            want['owners'] = [(IDMAP.uid_start, IDMAP.gid_start), (0, 0),
                              (0, 0)]
        self.assertEqual(want, seen)
        self.idmap.assert_called_once_with()
        self.userns.assert_called_once_with(IDMAP)
        # The partition read-only, the rootfs read-write.
        self.assertEqual(
            [mock.call(self.mnt, self.source, USERNS_FD,
                       storage._MOUNT_ATTR_RDONLY),
             mock.call(self.rootfs, self.target, USERNS_FD, 0)],
            self.idmapped.call_args_list)
        self.assertEqual(1, storage._MOUNT_ATTR_RDONLY)

        argv, kw = self.child.argv, self.child.kwargs
        ready_w, go_r = kw['pass_fds']
        self.assertEqual(unpack._child_argv(5000, ready_w, go_r, 'tree'),
                         argv)
        self.assertEqual(['--mode', 'tree', '--max-bytes', '5000'],
                         argv[3:7])
        self.assertEqual([os.O_WRONLY, os.O_RDONLY],
                         self.child.pass_fd_modes)
        self.assertEqual(self.work, kw['cwd'])
        self.assertEqual(unpack._child_env(), kw['env'])
        self.assertTrue(kw['close_fds'])
        self.assertEqual(0o022, kw['umask'])
        # Its stdin: /dev/null, read-only, not inherited but as stdin.
        self.assertTrue(os.path.samestat(os.stat(os.devnull),
                                         self.child.stdin_stat))
        self.assertEqual(os.O_RDONLY, self.child.stdin_mode)
        self.assertFalse(self.child.stdin_inheritable)

        self.map_writer.assert_called_once_with(
            [(0, IDMAP.uid_start, IDMAP.size)],
            [(0, IDMAP.gid_start, IDMAP.size)])
        self.write_maps.assert_called_once_with(FakeChild.pid)
        self.assertEqual(b'g', self.child.go_bytes())
        self.assertEqual(b'', self.child.go_bytes())
        self.assertEqual([45], self.child.waits)
        self.assertFalse(self.child.killed)
        self.assertCopyCleanedUp(fds)
        self.assertEqual([], os.listdir(self.rootfs))

    def test_skipped_left_out(self):
        self.copy_child({'size': 7})
        self.assertEqual((7, 0), self.copy())
        self.copy_child({'size': 0, 'skipped': 0})
        self.assertEqual((0, 0), self.copy())

    def test_a_bad_skipped_count(self):
        for skipped in ('x', -1, True, 2.9, [1], None):
            self.copy_child({'size': 7, 'skipped': skipped})
            e = self.assertRaises(exception.ArchiveError, self.copy)
            self.assertIn('reported %r skipped' % (skipped,), str(e))
            self.child.close()
        self.assertEqual({}, self.running)

    def test_any_positive_timeout(self):
        for timeout in (1, 0.25, 86400.5, 1 << 40):
            self.copy_child({'size': 5, 'skipped': 1})
            fds = base.open_fds()
            self.assertEqual((5, 1), self.copy(timeout=timeout))
            self.assertEqual([timeout], self.child.waits)
            self.child.close()
            self.assertEqual(fds, base.open_fds())
        self.assertEqual({}, self.running)

    def test_refused_by_the_child(self):
        self.copy_child({'error': 'DiskImageRefused',
                         'reason': 'its files would exceed the limit'},
                        returncode=1)
        fds = base.open_fds()
        e = self.assertRaises(exception.DiskImageRefused, self.copy)
        self.assertEqual('its files would exceed the limit',
                         e.kwargs['reason'])
        self.assertCopyCleanedUp(fds)

    def test_an_os_error_with_its_file(self):
        name = 'rootfs/usr/lib/libc.so.6'
        self.copy_child({'error': 'OSError', 'errno': errno.ENOSPC,
                         'strerror': 'No space left on device',
                         'filename': name}, returncode=1)
        fds = base.open_fds()
        e = self.assertRaises(OSError, self.copy)
        self.assertEqual(errno.ENOSPC, e.errno)
        self.assertIn('No space left on device', e.strerror)
        # Named in what crosses the daemon's channel: the args.
        self.assertIn(repr(name), str(type(e)(*e.args)))
        self.assertCopyCleanedUp(fds)
        self.unmounted[:] = []
        self.copy_child({'error': 'OSError', 'errno': errno.EACCES,
                         'strerror': 'Permission denied'}, returncode=1)
        e = self.assertRaises(PermissionError, self.copy)
        self.assertEqual((errno.EACCES, 'Permission denied'), e.args)
        self.assertCopyCleanedUp(fds)

    def test_killed_by_a_signal(self):
        self.copy_child(returncode=-signal.SIGKILL,
                        stderr=b'x' * 5000 + b'MemoryError')
        fds = base.open_fds()
        e = self.assertRaises(exception.ArchiveError, self.copy)
        self.assertIn('killed by signal 9', str(e))
        self.assertIn('MemoryError', str(e))
        self.assertFalse(self.child.killed)
        self.assertCopyCleanedUp(fds)

    def test_a_size_only_with_status_0(self):
        self.copy_child({'size': 5, 'skipped': 0}, returncode=1)
        fds = base.open_fds()
        e = self.assertRaises(exception.ArchiveError, self.copy)
        self.assertIn('exit status 1', str(e))
        self.assertCopyCleanedUp(fds)

    def test_timed_out(self):
        self.copy_child({'size': 5, 'skipped': 0}, finishes=False)
        fds = base.open_fds()
        e = self.assertRaises(exception.DiskImageRefused, self.copy,
                              None, 5000, 7)
        self.assertIn('longer than 7 s', e.kwargs['reason'])
        self.assertTrue(self.child.killed)
        self.assertEqual([7, None], self.child.waits)
        self.assertCopyCleanedUp(fds)

    def test_the_views_go_even_if_the_wait_fails(self):
        self.copy_child({'size': 5, 'skipped': 0})
        self.child.wait = mock_raising(OSError(errno.ECHILD, 'gone'))
        self.assertRaises(OSError, self.copy)
        self.assertEqual([(self.target, True), (self.source, True),
                          (self.work, True)], self.unmounted)
        self.assertFalse(os.path.lexists(self.work))
        self.assertEqual({}, self.running)

    def check_failed(self, exc, made, fds):
        """The start failed: as if nothing had been tried."""
        e = self.assertRaises(exc, self.copy)
        if self.popen.called:
            # Never let go, and waited for.
            self.assertEqual(b'', self.child.go_bytes())
            self.assertIsNotNone(self.child.returncode)
            self.assertIn(None, self.child.waits)
        self.assertCopyCleanedUp(fds, made)
        return e

    def test_the_rootfs_view_cannot_be_mounted(self):
        self.idmapped.side_effect = [None, exception.MountFailed(
            what='idmapped view', target=self.target, reason='EINVAL')]
        fds = base.open_fds()
        self.check_failed(exception.MountFailed, 3, fds)
        self.assertEqual(2, self.idmapped.call_count)
        self.popen.assert_not_called()

    def test_the_partition_view_cannot_be_mounted(self):
        self.idmapped.side_effect = exception.MountFailed(
            what='idmapped view', target=self.source, reason='EINVAL')
        fds = base.open_fds()
        self.check_failed(exception.MountFailed, 3, fds)
        self.assertEqual(1, self.idmapped.call_count)
        self.popen.assert_not_called()

    def test_copy_cannot_be_given_to_the_range(self):
        self.chown.side_effect = PermissionError(errno.EPERM, 'no')
        fds = base.open_fds()
        self.check_failed(PermissionError, 1, fds)
        self.userns.assert_not_called()
        self.popen.assert_not_called()

    def test_no_unpack_range(self):
        self.idmap.side_effect = exception.IdmapUnavailable(reason='none')
        fds = base.open_fds()
        self.check_failed(exception.IdmapUnavailable, 0, fds)
        self.assertEqual([], self.mkdirs)
        self.popen.assert_not_called()

    def test_the_child_dies_before_the_handshake(self):
        self.copy_child(ready=None, returncode=1,
                        stderr=b'ImportError: no treecopy\n')
        fds = base.open_fds()
        e = self.check_failed(exception.CommandFailed, 3, fds)
        self.assertIn('ImportError: no treecopy', str(e))
        self.assertFalse(self.child.killed)
        self.write_maps.assert_not_called()

    def test_the_maps_cannot_be_written(self):
        self.copy_child(finishes=False)
        self.write_maps.side_effect = exception.CommandFailed(
            cmd='writing uid_map', exit_code=1, stderr='EPERM')
        fds = base.open_fds()
        self.check_failed(exception.CommandFailed, 3, fds)
        self.assertTrue(self.child.killed)
        self.assertEqual([None], self.child.waits)


class ResultTest(base.TestCase):

    def result(self, returncode, out, err=b''):
        if not isinstance(out, bytes):
            out = json.dumps(out).encode() + b'\n'
        return unpack._outcome(returncode, out, err)['size']

    def test_size(self):
        self.assertEqual(123, self.result(0, {'size': 123}))
        self.assertEqual(0, self.result(0, {'size': 0}))
        # The last line counts.
        self.assertEqual(9, self.result(0, b'noise\n{"size": 9}\n'))
        self.assertEqual(9, self.result(0, b'{"size": 9}'))

    def test_unsafe_member(self):
        e = self.assertRaises(
            exception.UnsafeArchiveMember, self.result, 1,
            {'error': 'UnsafeArchiveMember', 'member': '../x',
             'reason': 'climbs out'})
        self.assertEqual({'member': '../x', 'reason': 'climbs out'},
                         {k: e.kwargs[k] for k in ('member', 'reason')})
        self.assertIn('climbs out', str(e))

    def test_archive_error(self):
        e = self.assertRaises(exception.ArchiveError, self.result, 1,
                              {'error': 'ArchiveError', 'reason': 'bad gz'})
        self.assertEqual('bad gz', e.kwargs['reason'])

    def test_os_error(self):
        e = self.assertRaises(OSError, self.result, 1,
                              {'error': 'OSError', 'errno': errno.ENOSPC,
                               'strerror': 'No space left on device'})
        self.assertEqual(errno.ENOSPC, e.errno)
        self.assertEqual('No space left on device', e.strerror)
        self.assertNotIsInstance(e, exception.ArchiveError)

    def test_os_error_naming_its_file(self):
        e = self.assertRaises(FileNotFoundError, self.result, 1,
                              {'error': 'OSError', 'errno': 2,
                               'strerror': 'x', 'filename': 'etc/a'})
        self.assertEqual(2, e.errno)
        self.assertTrue(e.strerror.startswith('x'))
        # Named in the args: what crosses the daemon's channel.
        self.assertIn("'etc/a'", str(FileNotFoundError(*e.args)))
        # A filename that is no str is left out.
        for bad in (5, None, ['etc/a'], {'etc/a': 1}, True):
            e = self.assertRaises(FileNotFoundError, self.result, 1,
                                  {'error': 'OSError', 'errno': 2,
                                   'strerror': 'x', 'filename': bad})
            self.assertEqual((2, 'x'), e.args)
            self.assertIsNone(e.filename)

    def test_disk_image_refused(self):
        e = self.assertRaises(exception.DiskImageRefused, self.result, 1,
                              {'error': 'DiskImageRefused',
                               'reason': 'directory \'a\' appears twice'})
        self.assertEqual("directory 'a' appears twice", e.kwargs['reason'])
        self.assertNotIsInstance(e, exception.ArchiveError)
        for reason, want in ((5, '5'), (None, 'None')):
            e = self.assertRaises(exception.DiskImageRefused, self.result,
                                  1, {'error': 'DiskImageRefused',
                                      'reason': reason})
            self.assertEqual(want, e.kwargs['reason'])
        e = self.assertRaises(exception.DiskImageRefused, self.result, 1,
                              {'error': 'DiskImageRefused'})
        self.assertEqual('None', e.kwargs['reason'])
        for kind in ('diskimagerefused', 'DiskImage'):
            self.assertRaises(exception.ArchiveError, self.result, 1,
                              {'error': kind, 'reason': 'x'})

    def test_outcome_is_the_child_s_object(self):
        out = json.dumps({'size': 5, 'skipped': 2}).encode() + b'\n'
        self.assertEqual({'size': 5, 'skipped': 2},
                         unpack._outcome(0, out, b''))
        # _result (finish_unpack's): the size alone.
        self.assertEqual(5, self.result(0, out))
        self.assertRaises(exception.DiskImageRefused, unpack._outcome, 1,
                          b'{"error": "DiskImageRefused", "reason": "x"}',
                          b'')

    def test_os_error_without_an_int_errno(self):
        for bad in ('28', None, 28.0, True):
            e = self.assertRaises(exception.ArchiveError, self.result, 1,
                                  {'error': 'OSError', 'errno': bad,
                                   'strerror': 'x'})
            self.assertIn('exit status 1', str(e))

    def test_size_only_with_status_0(self):
        for status in (1, 2, -9):
            e = self.assertRaises(exception.ArchiveError, self.result,
                                  status, {'size': 5})
            self.assertIn('the unpacker failed', str(e))

    def test_status_0_without_a_size(self):
        for out in ({}, {'size': '5'}, {'size': 5.0}, {'size': True},
                    {'size': None}, [5], 5, 'size', {'Size': 5}):
            e = self.assertRaises(exception.ArchiveError, self.result, 0,
                                  out, b'some stderr')
            self.assertIn('exit status 0', str(e))
            self.assertIn('some stderr', str(e))

    def test_garbage(self):
        for out in (b'', b'\n', b'\xff\xfe{"size": 5}', b'not json\n',
                    b'{"size": 5', b'{"size": 5}\ntrailing\n',
                    b'{"size": ' + b'1' * (unpack._MAX_RESULT + 10) + b'}'):
            e = self.assertRaises(exception.ArchiveError, self.result, 0,
                                  out, b'Traceback: boom\n')
            self.assertIn('exit status 0', str(e))
            self.assertIn('Traceback: boom', str(e))

    def test_signal(self):
        e = self.assertRaises(exception.ArchiveError, self.result,
                              -signal.SIGKILL, b'', b'')
        self.assertIn('killed by signal 9', str(e))
        self.assertIn('no message', str(e))

    def test_exit_status_and_stderr_tail(self):
        err = b'HEAD' + b'x' * 5000 + b'\xff the end \n'
        e = self.assertRaises(exception.ArchiveError, self.result, 2,
                              b'', err)
        self.assertIn('exit status 2', str(e))
        self.assertIn('the end', str(e))
        self.assertNotIn('HEAD', str(e))

    def test_unknown_error(self):
        for out in ({'error': 'SystemExit', 'size': 5},
                    {'error': 'MemoryError'}, {'error': None},
                    {'error': 'unsafearchivemember', 'member': 'x'}):
            self.assertRaises(exception.ArchiveError, self.result, 1, out)
        e = self.assertRaises(exception.ArchiveError, self.result, 1,
                              {'error': 'KeyError', 'size': 5})
        self.assertNotIsInstance(e, exception.UnsafeArchiveMember)


class ChildTest(base.TestCase):

    def test_argv(self):
        self.assertEqual(
            [sys.executable, '-m', 'novalxcdriver.unpackchild',
             '--mode', 'tarball', '--max-bytes', '5000', '--max-id', '65535',
             '--ready-fd', '7', '--go-fd', '9'],
            unpack._child_argv(5000, 7, 9))
        self.assertEqual(
            ['--mode', 'tree'], unpack._child_argv(5000, 7, 9, 'tree')[3:5])
        self.assertEqual(65535, ids.UNPACK_IDS - 1)

    def test_env(self):
        for name, value in (('LD_PRELOAD', '/tmp/evil.so'),
                            ('PYTHONPATH', '/tmp/evil'),
                            ('PYTHONSTARTUP', '/tmp/evil.py'),
                            ('PYTHONHOME', '/tmp/evil'),
                            ('PATH', '/tmp/evil:/usr/bin'),
                            ('LIBARCHIVE', '/tmp/evil.so')):
            self.useFixture(fixtures.EnvironmentVariable(name, value))
        env = unpack._child_env()
        self.assertEqual({'PATH', 'LANG', 'PYTHONPATH', 'LIBARCHIVE'},
                         set(env))
        self.assertEqual('/usr/sbin:/usr/bin:/sbin:/bin', env['PATH'])
        # A soname, found in the system's library directories only.
        self.assertRegex(env['LIBARCHIVE'], r'^libarchive\.so\.[0-9]+$')
        for value in env.values():
            self.assertNotIn('evil', value)
        imported = os.path.dirname(os.path.dirname(
            os.path.abspath(novalxcdriver.__file__)))
        self.assertEqual(imported, env['PYTHONPATH'])
        self.assertTrue(os.path.isfile(os.path.join(
            env['PYTHONPATH'], 'novalxcdriver', 'unpackchild.py')))

    def test_no_libarchive_found_leaves_the_child_to_fail_importing(self):
        with mock.patch.object(unpack, 'LIBARCHIVE_SONAME', None):
            self.assertNotIn('LIBARCHIVE', unpack._child_env())

    def test_the_child_loads_libarchive_by_its_soname(self):
        code = 'import libarchive.ffi as f; print(f.libarchive_path)'
        env = unpack._child_env()
        out = subprocess.run([sys.executable, '-c', code], cwd='/',
                             env=dict(env, PYTHONPATH=os.pathsep.join(
                                 sys.path)),
                             check=True, stdout=subprocess.PIPE).stdout
        self.assertEqual(env['LIBARCHIVE'], out.decode().strip())

    def test_the_child_finds_this_code(self):
        # From / with the child's environment: this package (found as
        # import would, without the cost of importing it).
        code = ('import importlib.machinery as m; '
                'print(m.PathFinder.find_spec("novalxcdriver").origin)')
        out = subprocess.run([sys.executable, '-S', '-c', code], cwd='/',
                             env=unpack._child_env(), check=True,
                             stdout=subprocess.PIPE).stdout.decode()
        self.assertEqual(os.path.abspath(novalxcdriver.__file__),
                         out.strip())


# -- for real ------------------------------------------------------------

def _member(name, kind=tarfile.REGTYPE, data=b'', uid=0, gid=0, mode=0o644,
            link=''):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.uid, info.gid, info.mode = uid, gid, mode
    info.linkname = link
    info.mtime = 1700000000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, io.BytesIO(data) if kind == tarfile.REGTYPE else None


def tiny_rootfs():
    """A few members a root unpack must keep as they are."""
    members = [
        _member('.', tarfile.DIRTYPE, mode=0o755),
        _member('usr', tarfile.DIRTYPE, mode=0o755),
        _member('usr/bin', tarfile.DIRTYPE, mode=0o755),
        _member('usr/bin/su', data=b'#!su\n', mode=0o4755),
        _member('usr/bin/wall', data=b'#!wall\n', gid=5, mode=0o2755),
        # tarfile sets a hard link's mode on its inode, as GNU tar
        # writes it: the target's.
        _member('usr/bin/su2', tarfile.LNKTYPE, link='usr/bin/su',
                mode=0o4755),
        _member('bin', tarfile.SYMTYPE, link='usr/bin', mode=0o777),
        _member('home', tarfile.DIRTYPE, mode=0o755),
        _member('home/user', tarfile.DIRTYPE, uid=1000, gid=1000,
                mode=0o750),
        _member('home/user/notes', data=b'hello\n' * 100, uid=1000,
                gid=1000, mode=0o640),
        _member('home/user/top', data=b'x', uid=65535, gid=65535),
        _member('run', tarfile.DIRTYPE, mode=0o755),
        _member('run/initctl', tarfile.FIFOTYPE, mode=0o600),
        _member('tmp', tarfile.DIRTYPE, mode=0o1777),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w|gz',
                      format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, data)
    return buf.getvalue()


def tree(root):
    found = {}
    for top, dirs, files in os.walk(root):
        for name in [''] + dirs + files if top == root else dirs + files:
            path = os.path.join(top, name) if name else top
            st = os.lstat(path)
            found[os.path.relpath(path, root)] = (
                stat.filemode(st.st_mode), st.st_uid, st.st_gid,
                st.st_size if stat.S_ISREG(st.st_mode) else 0,
                st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0,
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else None,
                st.st_mtime if not stat.S_ISLNK(st.st_mode) else 0)
    return found


def mounts_below(path):
    with open('/proc/self/mountinfo') as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == path or p.startswith(path + '/')]


def process_status(pid):
    with open('/proc/%d/status' % pid) as f:
        return {k: v.split() for k, v in
                (line.split(':', 1) for line in f if ':' in line)}


class RealUnpackTest(base.TestCase):
    """start_unpack, the FIFO fed, finish_unpack: a real child and view."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('root only: an idmapped mount and a user '
                          'namespace')
        top = os.path.realpath(tempfile.mkdtemp(prefix='novalxc-unpack-',
                                                dir='/var/tmp'))
        self.addCleanup(shutil.rmtree, top, ignore_errors=True)
        self.state = os.path.join(top, 'state')
        self.lxc = os.path.join(top, 'lxc')
        partial = os.path.join(self.state, 'images', '.partial-%s-%d-x' % (
            uuid.uuid4(), os.getpid()))
        self.rootfs = os.path.join(partial, 'rootfs')
        self.view = os.path.join(partial, 'view')
        os.makedirs(self.rootfs)
        os.makedirs(self.lxc)
        os.chmod(self.rootfs, 0o755)
        spool = os.path.join(self.state, 'spool')
        os.mkdir(spool, 0o755)
        self.fifo = os.path.join(spool, 'unpack-%d-%s.fifo' % (
            os.getpid(), os.urandom(4).hex()))
        os.mkfifo(self.fifo, 0o600)
        self.plain = os.path.join(top, 'plain')
        os.mkdir(self.plain, 0o755)
        libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
        self.addCleanup(lambda: mounts_below(self.view) and libc.umount2(
            os.fsencode(self.view), 2))  # MNT_DETACH
        self.running = self.patch('novalxcdriver.privsep.unpack._running',
                                  new={})
        self.addCleanup(self._kill_left)
        cfg = self.storage_admin_here(self.lxc, self.state)
        # A child that never gets ready fails the test soon.
        cfg.config(group='lxc', command_timeout=10)

    def _kill_left(self):
        for held in self.running.values():
            with contextlib.suppress(OSError):
                held.proc.kill()
            held.proc.wait()

    def test_unpacked_as_root_s_unpack_would(self):
        self.unpack_as_root()

    def test_unpacked_by_a_spare_as_by_a_new_child(self):
        spares = self.patch_object(unpack, '_SPARES', new=unpack._Spares())
        self.addCleanup(self.drop_spare, spares)
        self.flags(spare_unpacker=True, group='lxc')
        # Started with a group the child would inherit: gone once let go.
        groups = os.getgroups()
        os.setgroups([4242])
        try:
            unpack.prepare_spare()
            spare = self.await_spare(spares)
        finally:
            os.setgroups(groups)
        spares._spare = spare
        # The spare's socket, open now, is handed over and closed.
        fds = base.open_fds()
        del fds[spare[1].fileno()]
        self.assertEqual(spare[0].pid, self.unpack_as_root(check_fds=False))
        # Its end asked for the next one, whose socket is the only fd new.
        self.kill_spare(spares)
        self.assertEqual(fds, base.open_fds())

    def await_spare(self, spares):
        """The spare spares started, taken from it."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            spare = spares.take()
            if spare is not None:
                return spare
            time.sleep(0.01)
        self.fail('no spare unpacker within 10 s')

    def drop_spare(self, spares):
        spare = spares.take()
        if spare is not None:
            spare[1].close()
            spare[0].wait(10)

    def kill_spare(self, spares):
        proc, sock = self.await_spare(spares)
        sock.close()
        # Let go (the socket's end without a job): it does nothing.
        self.assertEqual(0, proc.wait(10))

    def flags(self, **kwargs):
        self.useFixture(config_fixture.Config(CONF)).config(**kwargs)

    def unpack_as_root(self, check_fds=True):
        """The unpack checked; its child's pid."""
        data = tiny_rootfs()
        fds = base.open_fds()
        reader = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        writer = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(reader)
        groups = os.getgroups()
        try:
            # Groups the child inherits: gone once it is let go.
            os.setgroups([4242])
            try:
                unpack.start_unpack(self.rootfs, self.fifo, 1 << 20)
            finally:
                os.setgroups(groups)
            os.unlink(self.fifo)
            pid = self.running[self.rootfs].proc.pid
            self.assertEqual([self.view], mounts_below(self.view))
            # Once the daemon let it go: the unpack range's root, no
            # group, no new privileges.
            idmap = ids.unpack_idmap()
            want = {'Uid': [str(idmap.uid_start)] * 4,
                    'Gid': [str(idmap.gid_start)] * 4,
                    'Groups': [], 'NoNewPrivs': ['1']}
            deadline = time.monotonic() + 10
            while True:
                status = process_status(pid)
                got = {k: status.get(k) for k in want}
                if got == want or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            self.assertEqual(want, got)
            # Not dumpable: its /proc files are root's, out of reach of
            # another unpacker of the same host uid.
            self.assertEqual(0, os.stat('/proc/%d/fd' % pid).st_uid)
            with open('/proc/%d/uid_map' % pid) as f:
                self.assertEqual([['0', str(idmap.uid_start), '65536']],
                                 [line.split() for line in f])
            os.set_blocking(writer, True)
            view = memoryview(data)
            while view:
                view = view[os.write(writer, view):]
        finally:
            os.close(writer)
        size = unpack.finish_unpack(self.rootfs, 30)
        self.assertEqual({}, self.running)
        self.assertEqual([], mounts_below(os.path.dirname(self.rootfs)))
        self.assertFalse(os.path.lexists(self.view))
        if check_fds:
            self.assertEqual(fds, base.open_fds())

        plain_size = tarball.unpack_stream(io.BytesIO(data), self.plain,
                                           1 << 20,
                                           max_id=ids.UNPACK_IDS - 1)
        self.assertEqual(plain_size, size)
        got, want = tree(self.rootfs), tree(self.plain)
        self.assertEqual(want, got)
        self.assertEqual(('-rwsr-xr-x', 0, 0), got['usr/bin/su'][:3])
        self.assertEqual(('-rwxr-sr-x', 0, 5), got['usr/bin/wall'][:3])
        self.assertEqual(2, got['usr/bin/su2'][4])
        self.assertEqual((1000, 1000), got['home/user/notes'][1:3])
        self.assertEqual((65535, 65535), got['home/user/top'][1:3])
        self.assertEqual('prw-------', got['run/initctl'][0])
        self.assertEqual('usr/bin', got['bin'][5])
        self.assertEqual('drwxrwxrwt', got['tmp'][0])
        return pid


MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096  # sys/mount.h


class RealCopyTest(base.TestCase):
    """copy_partition of a read-only bind mount: a real child and views."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('root only: idmapped mounts and a user namespace')
        top = os.path.realpath(tempfile.mkdtemp(prefix='novalxc-copy-',
                                                dir='/var/tmp'))
        self.addCleanup(shutil.rmtree, top, ignore_errors=True)
        state = os.path.join(top, 'state')
        lxc = os.path.join(top, 'lxc')
        self.partial = os.path.join(state, 'images', '.partial-%s-%d-x' % (
            uuid.uuid4(), os.getpid()))
        self.rootfs = os.path.join(self.partial, 'rootfs')
        self.mnt = os.path.join(self.partial, 'mnt')
        self.work = os.path.join(self.partial, 'copy')
        os.makedirs(self.rootfs)
        os.chmod(self.rootfs, 0o755)
        os.mkdir(self.mnt, 0o700)
        os.makedirs(lxc)
        # The partition's files, bind-mounted read-only on mnt.
        self.image = os.path.join(top, 'image')
        self.libc = ctypes.CDLL(ctypes.util.find_library('c'),
                                use_errno=True)
        self.addCleanup(self._unmount_all)
        self.running = self.patch('novalxcdriver.privsep.unpack._running',
                                  new={})
        cfg = self.storage_admin_here(lxc, state)
        cfg.config(group='lxc', command_timeout=10)

    def _unmount_all(self):
        for point in reversed(mounts_below(self.partial)):
            self.libc.umount2(os.fsencode(point), 2)  # MNT_DETACH

    def _mount(self, source, flags):
        if self.libc.mount(source and os.fsencode(source),
                           os.fsencode(self.mnt), None, flags, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), self.mnt)

    def mount_image(self, read_only=True):
        self._mount(self.image, MS_BIND)
        if read_only:
            self._mount(None, MS_REMOUNT | MS_BIND | MS_RDONLY)

    def make_image(self):
        """A small root filesystem; its bytes of file data."""
        img = self.image
        os.mkdir(img, 0o755)
        for path, mode, owner in (
                ('etc', 0o755, 0), ('usr', 0o755, 0),
                ('usr/bin', 0o755, 0), ('home', 0o755, 0),
                ('home/user', 0o750, 1000), ('run', 0o755, 0),
                ('dev', 0o755, 0), ('tmp', 0o1777, 0)):
            os.mkdir(os.path.join(img, path))
            os.chmod(os.path.join(img, path), mode)
            os.chown(os.path.join(img, path), owner, owner)
        size = 0
        for path, data, mode, uid, gid in (
                ('etc/hostname', b'box\n', 0o644, 0, 0),
                ('usr/bin/su', b'#!su\n', 0o4755, 0, 0),
                ('usr/bin/wall', b'#!wall\n', 0o2755, 0, 5),
                ('home/user/notes', b'hello\n' * 100, 0o640, 1000, 1000),
                ('home/user/top', b'x', 0o644, 65535, 65535),
                # Beyond the range: read as the overflow ids.
                ('home/user/far', b'far', 0o644, 70000, 70000)):
            full = os.path.join(img, path)
            with open(full, 'wb') as f:
                f.write(data)
            os.chown(full, uid, gid)
            os.chmod(full, mode)
            size += len(data)
        os.link(os.path.join(img, 'usr/bin/su'),
                os.path.join(img, 'usr/bin/su2'))
        os.symlink('usr/bin', os.path.join(img, 'bin'))
        os.mkfifo(os.path.join(img, 'run/initctl'), 0o600)
        # Skipped: LXC makes /dev.
        os.mknod(os.path.join(img, 'dev/null'), stat.S_IFCHR | 0o666,
                 os.makedev(1, 3))
        for top, dirs, files in os.walk(img, topdown=False):
            for name in dirs + files + ([''] if top == img else []):
                os.utime(os.path.join(top, name) if name else top,
                         (1700000000, 1700000000), follow_symlinks=False)
        return size

    def test_copied_as_root_s_copy_would(self):
        size = self.make_image()
        self.mount_image()
        fds = base.open_fds()
        self.assertEqual((size, 1),
                         unpack.copy_partition(self.rootfs, 1 << 20, 30))
        self.assertEqual({}, self.running)
        # The views gone, the partition still mounted.
        self.assertEqual([self.mnt], mounts_below(self.partial))
        self.assertFalse(os.path.lexists(self.work))
        self.assertEqual(fds, base.open_fds())

        with open('/proc/sys/kernel/overflowuid') as f:
            overflow = int(f.read())
        want = tree(self.image)
        del want['dev/null']
        want['home/user/far'] = want['home/user/far'][:1] + (
            overflow, overflow) + want['home/user/far'][3:]
        got = tree(self.rootfs)
        self.assertEqual(want, got)
        self.assertEqual(('-rwsr-xr-x', 0, 0), got['usr/bin/su'][:3])
        self.assertEqual(('-rwxr-sr-x', 0, 5), got['usr/bin/wall'][:3])
        self.assertEqual(2, got['usr/bin/su2'][4])
        self.assertEqual((1000, 1000), got['home/user/notes'][1:3])
        self.assertEqual((65535, 65535), got['home/user/top'][1:3])

    def test_the_partition_must_be_mounted_read_only(self):
        self.make_image()
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              unpack.copy_partition, self.rootfs, 100, 10)
        self.assertIn('nothing is mounted on %s' % self.mnt, str(e))
        self.mount_image(read_only=False)
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              unpack.copy_partition, self.rootfs, 100, 10)
        self.assertIn('is mounted read-write', str(e))
        self.assertEqual([self.mnt], mounts_below(self.partial))
        self.assertEqual([], os.listdir(self.rootfs))
        self.assertFalse(os.path.lexists(self.work))
