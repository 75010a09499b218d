"""unpackchild: the confined unpacker's own program, in process.

run() with confine mocked unpacks a real tarball from a stdin stand-in
into a temporary working directory; confine() runs with a fake libc
(prctl, unshare), os.setgroups/setresgid/setresuid mocked and real pipes
for its ready/go handshake. The real child, in a real user namespace:
test_privsep_unpack.RealUnpackTest.
"""

import errno
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from unittest import mock

import fixtures

from novalxcdriver import exception
from novalxcdriver.privsep import unpack
from novalxcdriver import refusal
from novalxcdriver import unpackchild
from tests.unit import base

ARGV = ['--max-bytes', '100000', '--max-id', '65535', '--ready-fd', '5',
        '--go-fd', '6']


def member(name, data=b'', kind=tarfile.REGTYPE, uid=0, gid=0, mode=0o644,
           link=''):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.uid, info.gid, info.mode, info.linkname = uid, gid, mode, link
    info.mtime = 1700000000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, io.BytesIO(data) if kind == tarfile.REGTYPE else None


def archive(*members, mode='w'):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode,
                      format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, data)
    return buf.getvalue()


class RunTest(base.TestCase):

    def setUp(self):
        super().setUp()
        top = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.cwd = os.path.join(top, 'view')
        os.mkdir(self.cwd)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.cwd)
        self.top = top
        self.libc = mock.sentinel.libc
        self.patch_object(unpackchild, '_libc', return_value=self.libc)
        self.stdin = None
        self.read_at_confine = []
        self.confine = self.patch_object(
            unpackchild, 'confine',
            side_effect=lambda *a: self.read_at_confine.append(
                self.stdin.buffer.tell()))

    def feed(self, data):
        self.stdin = mock.Mock(spec=['buffer'])
        self.stdin.buffer = io.BytesIO(data)
        self.patch('sys.stdin', new=self.stdin)

    def run_child(self, argv=ARGV):
        status, result = unpackchild.run(argv)
        # What main prints.
        self.assertEqual(result, json.loads(json.dumps(result)))
        return status, result

    def test_unpacked_into_its_working_directory(self):
        self.feed(archive(member('etc', kind=tarfile.DIRTYPE, mode=0o755),
                          member('etc/hostname', b'box\n'),
                          member('etc/motd', b'hello', uid=1000, gid=1000),
                          member('bin', kind=tarfile.SYMTYPE,
                                 link='usr/bin')))
        self.assertEqual((0, {'size': 9}), self.run_child())
        # Confined first, before a byte of the tarball was read.
        self.confine.assert_called_once_with(self.libc, 5, 6)
        self.assertEqual([0], self.read_at_confine)
        with open(os.path.join(self.cwd, 'etc', 'hostname'), 'rb') as f:
            self.assertEqual(b'box\n', f.read())
        self.assertEqual('usr/bin', os.readlink(os.path.join(self.cwd,
                                                             'bin')))
        if os.geteuid() == 0:
            st = os.lstat(os.path.join(self.cwd, 'etc', 'motd'))
            self.assertEqual((1000, 1000), (st.st_uid, st.st_gid))
        self.assertEqual(['view'], os.listdir(self.top))

    def test_compressed(self):
        self.feed(archive(member('a', b'xyz'), mode='w:xz'))
        self.assertEqual((0, {'size': 3}), self.run_child())

    def test_the_daemon_s_argv(self):
        self.feed(archive(member('a', b'xyz')))
        stream = self.patch_object(unpackchild.tarball, 'unpack_stream',
                                   return_value=3)
        argv = unpack._child_argv(4096, 11, 12)
        self.assertEqual(['-m', unpackchild.__name__], argv[1:3])
        self.assertEqual((0, {'size': 3}), self.run_child(argv[3:]))
        self.confine.assert_called_once_with(self.libc, 11, 12)
        stream.assert_called_once_with(self.stdin.buffer, '.', 4096,
                                       max_id=65535)

    def test_tarball_without_a_mode(self):
        # ARGV has no --mode: a tarball on stdin, as before modes.
        self.assertNotIn('--mode', ARGV)
        self.feed(archive(member('a', b'xyz')))
        stream = self.patch_object(unpackchild.tarball, 'unpack_stream',
                                   return_value=3)
        copy_tree = self.patch_object(unpackchild.treecopy, 'copy_tree')
        self.assertEqual((0, {'size': 3}), self.run_child(ARGV))
        stream.assert_called_once_with(self.stdin.buffer, '.', 100000,
                                       max_id=65535)
        copy_tree.assert_not_called()
        self.assertEqual(
            ['--mode', 'tarball'], unpack._child_argv(1, 2, 3)[3:5])

    def test_missing_arguments(self):
        self.patch('sys.stderr', new=io.StringIO())
        for i in range(0, len(ARGV), 2):
            self.assertRaises(SystemExit, unpackchild.run,
                              ARGV[:i] + ARGV[i + 2:])
        self.confine.assert_not_called()

    def assertNothingUnpacked(self):
        self.assertEqual([], os.listdir(self.cwd))
        self.assertEqual(['view'], os.listdir(self.top))

    def test_a_member_climbing_out(self):
        for name in ('../x', '/x', 'a/../../x'):
            self.feed(archive(member(name, b'evil')))
            status, result = self.run_child()
            self.assertEqual(1, status)
            self.assertEqual({'error', 'member', 'reason'}, set(result))
            self.assertEqual('UnsafeArchiveMember', result['error'])
            self.assertEqual(name, result['member'])
            self.assertIsInstance(result['reason'], str)
            self.assertTrue(result['reason'])
            self.assertNothingUnpacked()

    def test_garbage(self):
        for data in (b'', b'not a tarball ' * 100, b'\x1f\x8b' + b'x' * 600):
            self.feed(data)
            status, result = self.run_child()
            self.assertEqual(1, status)
            self.assertEqual('ArchiveError', result['error'])
            self.assertEqual({'error', 'reason'}, set(result))
            self.assertIn('archive', result['reason'])
        self.assertNothingUnpacked()

    def test_owners_above_max_id(self):
        for uid, gid in ((65536, 0), (0, 65536), (1 << 20, 1 << 20)):
            self.feed(archive(member('a', b'x', uid=uid, gid=gid)))
            status, result = self.run_child()
            self.assertEqual((1, 'UnsafeArchiveMember', 'a'),
                             (status, result['error'], result['member']))
            self.assertIn('65535', result['reason'])
            self.assertNothingUnpacked()
        # The highest mapped id is fine.
        self.feed(archive(member('a', b'x', uid=65535, gid=65535)))
        self.assertEqual((0, {'size': 1}), self.run_child())

    def test_too_many_bytes(self):
        self.feed(archive(member('a', b'x' * 100001)))
        status, result = self.run_child()
        self.assertEqual((1, 'UnsafeArchiveMember'),
                         (status, result['error']))

    def test_confine_fails(self):
        self.feed(archive(member('a', b'x')))
        self.confine.side_effect = OSError(
            errno.EPERM, 'unshare(CLONE_NEWUSER): Operation not permitted')
        self.assertEqual(
            (1, {'error': 'OSError', 'errno': errno.EPERM,
                 'strerror': 'unshare(CLONE_NEWUSER): Operation not '
                             'permitted'}),
            self.run_child())
        self.assertEqual(0, self.stdin.buffer.tell())
        self.assertNothingUnpacked()
        # Its own refusals carry no errno.
        self.confine.side_effect = OSError(0, 'threads were started')
        self.assertEqual(
            (1, {'error': 'OSError', 'errno': 0,
                 'strerror': 'threads were started'}), self.run_child())
        self.assertNothingUnpacked()

    def test_an_os_error_without_errno(self):
        self.feed(archive(member('a', b'x')))
        self.confine.side_effect = OSError('no errno here')
        status, result = self.run_child()
        self.assertEqual((1, {'error': 'OSError', 'errno': 0,
                              'strerror': 'no errno here'}),
                         (status, result))
        # Still an OSError for the daemon's caller.
        e = self.assertRaises(OSError, unpack._outcome, status,
                              json.dumps(result).encode(), b'')
        self.assertEqual(0, e.errno)

    def test_writing_fails(self):
        self.feed(archive(member('a', b'x')))
        self.patch_object(unpackchild.tarball, 'unpack_stream',
                          side_effect=OSError(errno.ENOSPC, 'No space'))
        self.assertEqual((1, {'error': 'OSError', 'errno': errno.ENOSPC,
                              'strerror': 'No space'}), self.run_child())

    def test_results_are_what_unpack_reads(self):
        # Each outcome of run() as the daemon's _outcome takes it.
        self.feed(archive(member('a', b'abc')))
        status, result = self.run_child()
        self.assertEqual(3, unpack._outcome(
            status, json.dumps(result).encode() + b'\n', b'')['size'])
        self.feed(archive(member('../a', b'abc')))
        status, result = self.run_child()
        e = self.assertRaises(exception.UnsafeArchiveMember,
                              unpack._outcome, status,
                              json.dumps(result).encode(), b'')
        self.assertEqual('../a', e.kwargs['member'])
        self.feed(b'junk' * 200)
        status, result = self.run_child()
        self.assertRaises(exception.ArchiveError, unpack._outcome,
                          status, json.dumps(result).encode(), b'')
        self.confine.side_effect = OSError(errno.EPERM, 'no')
        status, result = self.run_child()
        e = self.assertRaises(OSError, unpack._outcome,
                              status, json.dumps(result).encode(), b'')
        self.assertEqual(errno.EPERM, e.errno)


class FailureTest(base.TestCase):
    """failure(): what the child prints, and what the daemon raises."""

    def test_each_refusal_is_raised_again_as_nova_s(self):
        for error, kind in (
                (refusal.ArchiveError(reason='not a tar archive'),
                 exception.ArchiveError),
                (refusal.UnsafeArchiveMember(member='../a', reason='up'),
                 exception.UnsafeArchiveMember),
                (refusal.DiskImageRefused(reason='too big'),
                 exception.DiskImageRefused)):
            out = json.dumps(unpackchild.failure(error)).encode() + b'\n'
            raised = self.assertRaises(kind, unpack._outcome, 1, out, b'')
            # One message on both sides of the child's stdout.
            self.assertEqual(str(error), str(raised))
            self.assertEqual(error.kwargs, {
                k: v for k, v in raised.kwargs.items() if k != 'code'})
            self.assertIsInstance(raised, exception.NovaLXCError)

    def test_the_child_starts_without_nova(self):
        # nova.exception (oslo.log, oslo.config, webob) was 0.13 s of
        # each unpacker's start: nothing of it may come back in.
        code = ('import sys; import novalxcdriver.unpackchild; '
                'print(" ".join(sorted(m for m in sys.modules if '
                'm.split(".")[0] in ("nova", "oslo_log", "oslo_config", '
                '"oslo_privsep", "webob", "eventlet"))))')
        out = subprocess.run([sys.executable, '-c', code], check=True,
                             capture_output=True, text=True).stdout
        self.assertEqual('', out.strip())


TREE_ARGV = ['--mode', 'tree'] + ARGV


class TreeRunTest(base.TestCase):
    """run() in mode tree: source copied into rootfs, both in its cwd."""

    def setUp(self):
        super().setUp()
        top = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        # As the daemon makes it: the two views in the child's directory.
        self.cwd = os.path.join(top, 'copy')
        self.source = os.path.join(self.cwd, 'source')
        self.rootfs = os.path.join(self.cwd, 'rootfs')
        for path in (self.cwd, self.source, self.rootfs):
            os.mkdir(path, 0o700)
        os.mkdir(os.path.join(self.source, 'etc'), 0o755)
        with open(os.path.join(self.source, 'etc', 'hostname'), 'wb') as f:
            f.write(b'box\n')
        os.symlink('usr/bin', os.path.join(self.source, 'bin'))
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.cwd)
        self.top = top
        self.libc = mock.sentinel.libc
        self.patch_object(unpackchild, '_libc', return_value=self.libc)
        # Not read in mode tree.
        self.stdin = mock.Mock(spec=['buffer'])
        self.stdin.buffer = io.BytesIO(b'never read')
        self.patch('sys.stdin', new=self.stdin)
        self.at_confine = []
        self.confine = self.patch_object(
            unpackchild, 'confine',
            side_effect=lambda *a: self.at_confine.append(
                os.path.isdir(self.rootfs) and os.listdir(self.rootfs)))
        self.stream = self.patch_object(
            unpackchild.tarball, 'unpack_stream',
            side_effect=AssertionError('a tarball unpacked in mode tree'))

    def run_child(self, argv=TREE_ARGV):
        status, result = unpackchild.run(argv)
        self.assertEqual(result, json.loads(json.dumps(result)))
        return status, result

    def test_copied_into_rootfs(self):
        self.assertEqual((0, {'size': 4, 'skipped': 0}), self.run_child())
        # Confined first, before anything was copied.
        self.confine.assert_called_once_with(self.libc, 5, 6)
        self.assertEqual([[]], self.at_confine)
        with open(os.path.join(self.rootfs, 'etc', 'hostname'), 'rb') as f:
            self.assertEqual(b'box\n', f.read())
        self.assertEqual('usr/bin',
                         os.readlink(os.path.join(self.rootfs, 'bin')))
        self.assertEqual(['bin', 'etc'], sorted(os.listdir(self.source)))
        self.assertEqual(['rootfs', 'source'], sorted(os.listdir(self.cwd)))
        self.assertEqual(['copy'], os.listdir(self.top))
        self.assertEqual(0, self.stdin.buffer.tell())

    def test_skipped_counted(self):
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        sock.bind('source/sock')
        self.assertEqual((0, {'size': 4, 'skipped': 1}), self.run_child())
        self.assertFalse(os.path.lexists(os.path.join(self.rootfs, 'sock')))

    def test_the_daemon_s_argv(self):
        copy_tree = self.patch_object(unpackchild.treecopy, 'copy_tree',
                                      return_value=(3, 1))
        argv = unpack._child_argv(4096, 11, 12, 'tree')
        self.assertEqual(['-m', unpackchild.__name__], argv[1:3])
        self.assertEqual((0, {'size': 3, 'skipped': 1}),
                         self.run_child(argv[3:]))
        self.confine.assert_called_once_with(self.libc, 11, 12)
        # Names relative to its working directory: the daemon's views.
        copy_tree.assert_called_once_with('source', 'rootfs', 4096)
        self.assertEqual(
            (unpack.COPY_SOURCE, unpack.COPY_ROOTFS, 4096),
            copy_tree.call_args[0])
        self.stream.assert_not_called()

    def test_copied_once_confined(self):
        seen = []
        self.patch_object(
            unpackchild.treecopy, 'copy_tree',
            side_effect=lambda *a: seen.append(self.confine.called) or
            (0, 0))
        self.assertEqual((0, {'size': 0, 'skipped': 0}), self.run_child())
        self.assertEqual([True], seen)

    def test_confine_fails(self):
        copy_tree = self.patch_object(unpackchild.treecopy, 'copy_tree')
        self.confine.side_effect = OSError(errno.EPERM, 'unshare: no')
        self.assertEqual((1, {'error': 'OSError', 'errno': errno.EPERM,
                              'strerror': 'unshare: no'}), self.run_child())
        copy_tree.assert_not_called()
        self.assertEqual([], os.listdir(self.rootfs))

    def test_every_mode_of_the_daemon_s(self):
        self.patch_object(unpackchild.treecopy, 'copy_tree',
                          return_value=(1, 0))
        self.stream.side_effect = None
        self.stream.return_value = 2
        self.patch_object(unpackchild.diskstream, 'receive',
                          return_value={'root.img': 3, 'ephemeral.img': 4})
        upper = self.patch_object(unpackchild.tarball, 'unpack_upper',
                                  return_value=(5, ['a', 'b/c']))
        got = [self.run_child(['--mode', mode] + ARGV)
               for mode in unpackchild.MODES]
        self.assertEqual(
            [(0, {'size': 2}), (0, {'size': 1, 'skipped': 0}),
             (0, {'size': 7, 'sizes': {'root.img': 3, 'ephemeral.img': 4}}),
             (0, {'size': 5, 'opaque': ['a', 'b/c']})],
            got)
        self.assertEqual(('tarball', 'tree', 'disks', 'upper'),
                         unpackchild.MODES)
        self.assertEqual((0, 0), upper.call_args.args[3:5])
        self.run_child(['--mode', 'upper', '--uid-offset', '231072',
                        '--gid-offset', '7'] + ARGV)
        self.assertEqual((231072, 7), upper.call_args.args[3:5])

    def test_the_new_tree_written_back_as_it_is_written(self):
        synced = []
        self.patch_object(unpackchild, 'syncfs', side_effect=lambda fd:
                          synced.append(os.readlink('/proc/self/fd/%d' % fd)))
        self.patch_object(unpackchild.Writeback, 'INTERVAL', 0.02)

        def slow(result):
            return lambda *a, **k: time.sleep(0.2) or result
        self.patch_object(unpackchild.treecopy, 'copy_tree',
                          side_effect=slow((1, 0)))
        self.stream.side_effect = slow(2)
        self.patch_object(unpackchild.diskstream, 'receive',
                          side_effect=slow({'root.img': 3}))
        self.patch_object(unpackchild.tarball, 'unpack_upper',
                          side_effect=slow((5, [])))
        for mode, where in (('tarball', self.cwd), ('tree', self.rootfs),
                            ('upper', self.cwd), ('disks', None)):
            del synced[:]
            self.assertEqual(0, self.run_child(['--mode', mode] + ARGV)[0])
            done = len(synced)
            time.sleep(0.1)
            # Not after the unpack: the thread has ended.
            self.assertEqual(done, len(synced))
            self.assertNotIn('writeback',
                             [t.name for t in threading.enumerate()])
            if where is None:
                # The daemon syncs the disks' files it handed over.
                self.assertEqual([], synced)
            else:
                self.assertGreaterEqual(len(synced), 3, mode)
                self.assertEqual({where}, set(synced))

    def test_a_failed_writeback_changes_nothing(self):
        self.patch_object(unpackchild, 'syncfs',
                          side_effect=OSError(errno.EIO, 'I/O error'))
        self.patch_object(unpackchild.Writeback, 'INTERVAL', 0.01)
        self.patch_object(unpackchild.treecopy, 'copy_tree',
                          side_effect=lambda *a: time.sleep(0.1) or (1, 0))
        self.assertEqual((0, {'size': 1, 'skipped': 0}), self.run_child())
        # Nor a tree the child cannot open: the copy says what is wrong.
        os.rmdir(self.rootfs)
        self.patch_object(unpackchild.treecopy, 'copy_tree',
                          side_effect=OSError(errno.ENOENT, 'gone',
                                              'rootfs/etc'))
        self.assertEqual('rootfs/etc', self.run_child()[1]['filename'])

    def test_a_link_in_the_tree_s_place_is_not_synced(self):
        synced = self.patch_object(unpackchild, 'syncfs')
        self.patch_object(unpackchild.Writeback, 'INTERVAL', 0.01)
        self.patch_object(unpackchild.treecopy, 'copy_tree',
                          side_effect=lambda *a: time.sleep(0.1) or (1, 0))
        os.rmdir(self.rootfs)
        os.symlink(self.cwd, self.rootfs)
        self.assertEqual((0, {'size': 1, 'skipped': 0}), self.run_child())
        synced.assert_not_called()

    def test_syncfs(self):
        fd = os.open(self.cwd, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        self.assertIsNone(unpackchild.syncfs(fd))
        e = self.assertRaises(OSError, unpackchild.syncfs, 9999)
        self.assertEqual(errno.EBADF, e.errno)

    def test_an_unknown_mode(self):
        self.patch('sys.stderr', new=io.StringIO())
        copy_tree = self.patch_object(unpackchild.treecopy, 'copy_tree')
        for mode in ('Tree', 'TREE', 'zip', '', 'tree ', 'copy'):
            self.assertRaises(SystemExit, unpackchild.run,
                              ['--mode', mode] + ARGV)
        self.assertRaises(SystemExit, unpackchild.run, ['--mode'] + ARGV)
        self.confine.assert_not_called()
        copy_tree.assert_not_called()

    def test_over_the_limit(self):
        argv = ['--mode', 'tree', '--max-bytes', '3', '--max-id', '65535',
                '--ready-fd', '5', '--go-fd', '6']
        status, result = self.run_child(argv)
        self.assertEqual((1, 'DiskImageRefused', {'error', 'reason'}),
                         (status, result['error'], set(result)))
        self.assertIn('limit of 3 bytes', result['reason'])

    def test_refused(self):
        self.patch_object(unpackchild.treecopy, 'copy_tree',
                          side_effect=refusal.DiskImageRefused(
                              reason="directory 'a' appears twice"))
        self.assertEqual(
            (1, {'error': 'DiskImageRefused',
                 'reason': "directory 'a' appears twice"}),
            self.run_child())

    def test_an_os_error_names_its_file(self):
        # rootfs gone: its first entry cannot be made.
        os.unlink(os.path.join(self.source, 'bin'))
        os.rmdir(self.rootfs)
        status, result = self.run_child()
        self.assertEqual(
            (1, {'error': 'OSError', 'errno': errno.ENOENT,
                 'strerror': os.strerror(errno.ENOENT),
                 'filename': 'rootfs/etc'}), (status, result))
        self.assertEqual([False], self.at_confine)

    def test_an_os_error_s_filename(self):
        copy_tree = self.patch_object(unpackchild.treecopy, 'copy_tree')
        for filename, want in (('rootfs/etc/x', 'rootfs/etc/x'),
                               (b'source/\xff', 'source/\udcff'),
                               ('', '')):
            copy_tree.side_effect = OSError(errno.ENOSPC, 'No space',
                                            filename)
            self.assertEqual((1, {'error': 'OSError', 'errno': errno.ENOSPC,
                                  'strerror': 'No space',
                                  'filename': want}), self.run_child())
        # symlink(2), link(2): the path made is the second, the first is
        # the image's link text.
        copy_tree.side_effect = OSError(errno.EEXIST, 'File exists',
                                        '/etc/shadow', None, 'rootfs/etc/x')
        self.assertEqual((1, {'error': 'OSError', 'errno': errno.EEXIST,
                              'strerror': 'File exists',
                              'filename': 'rootfs/etc/x'}), self.run_child())
        # Without one: no key.
        copy_tree.side_effect = OSError(errno.EIO, 'I/O error')
        self.assertEqual((1, {'error': 'OSError', 'errno': errno.EIO,
                              'strerror': 'I/O error'}), self.run_child())

    def test_results_are_what_copy_partition_reads(self):
        status, result = self.run_child()
        out = json.dumps(result).encode() + b'\n'
        self.assertEqual({'size': 4, 'skipped': 0},
                         unpack._outcome(status, out, b''))
        self.patch_object(unpackchild.treecopy, 'copy_tree',
                          side_effect=refusal.DiskImageRefused(reason='x'))
        status, result = self.run_child()
        e = self.assertRaises(exception.DiskImageRefused, unpack._outcome,
                              status, json.dumps(result).encode(), b'')
        self.assertEqual('x', e.kwargs['reason'])
        self.patch_object(unpackchild.treecopy, 'copy_tree',
                          side_effect=FileNotFoundError(
                              errno.ENOENT, 'gone', 'source/etc/a'))
        status, result = self.run_child()
        e = self.assertRaises(FileNotFoundError, unpack._outcome,
                              status, json.dumps(result).encode(), b'')
        self.assertIn("'source/etc/a'", str(FileNotFoundError(*e.args)))


class ConfineTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.events = []
        self.failing = {}
        self.libc = mock.Mock(spec=['prctl', 'unshare'])
        self.libc.prctl.side_effect = self.call('prctl')
        self.libc.unshare.side_effect = self.call('unshare')
        self.patch_object(unpackchild.ctypes, 'get_errno',
                          return_value=errno.EPERM)
        for name in ('setgroups', 'setresgid', 'setresuid'):
            self.patch('os.' + name, side_effect=self.call(name))
        self.ready_r, self.ready_w = self.pipe()
        self.go_r, self.go_w = self.pipe()
        # The test's process may run threads of its own (other tests').
        self.threads = self.patch_object(unpackchild, 'threading')
        self.threads.active_count.return_value = 1

    def pipe(self):
        fds = os.pipe()
        for fd in fds:
            self.addCleanup(self.close, fd)
        return fds

    def close(self, fd):
        # Only what confine left open: a closed fd's number may be reused.
        if fd not in getattr(self, 'closed', ()):
            os.close(fd)

    def call(self, name):
        def record(*args):
            event = (name,) + args
            if name == 'unshare':
                self.at_unshare = self.readable(self.ready_r)
            if name == 'setgroups':
                self.at_setgroups = (self.readable(self.ready_r),
                                     self.is_open(self.go_r),
                                     self.is_open(self.ready_w))
            self.events.append(event)
            if isinstance(self.failing.get(name), BaseException):
                raise self.failing[name]
            if name in ('prctl', 'unshare'):
                return self.failing.get((name, args[0]), 0)
        return record

    @staticmethod
    def readable(fd):
        return bool(select.select([fd], [], [], 0)[0])

    @staticmethod
    def is_open(fd):
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    def confine(self):
        return unpackchild.confine(self.libc, self.ready_w, self.go_r)

    def ready_bytes(self):
        os.close(self.ready_w)
        self.closed = {self.ready_w}
        return os.read(self.ready_r, 16)

    def test_order(self):
        os.write(self.go_w, b'g')
        self.assertIsNone(self.confine())
        self.assertEqual([
            ('prctl', unpackchild.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0),
            ('unshare', 0x10000000),
            ('setgroups', []),
            ('setresgid', 0, 0, 0),
            ('setresuid', 0, 0, 0),
            ('prctl', 4, 0, 0, 0, 0),
            ('prctl', 38, 1, 0, 0, 0),
        ], self.events)
        self.assertEqual(1, unpackchild.PR_SET_PDEATHSIG)
        self.assertEqual(4, unpackchild.PR_SET_DUMPABLE)
        # 'r' only once unshared; its ids dropped once 'g' was read and
        # both ends closed (nothing of the daemon's kept).
        self.assertFalse(self.at_unshare)
        self.assertEqual((True, False, False), self.at_setgroups)
        self.closed = {self.ready_w, self.go_r}
        self.assertEqual(b'r', os.read(self.ready_r, 16))

    def test_pdeathsig_fails(self):
        os.write(self.go_w, b'g')
        self.failing[('prctl', unpackchild.PR_SET_PDEATHSIG)] = -1
        e = self.assertRaises(OSError, self.confine)
        self.assertEqual(errno.EPERM, e.errno)
        self.assertIn('PR_SET_PDEATHSIG', e.strerror)
        self.assertEqual(['prctl'], [ev[0] for ev in self.events])
        self.assertFalse(self.readable(self.ready_r))

    def test_unshare_fails(self):
        os.write(self.go_w, b'g')
        self.failing[('unshare', 0x10000000)] = -1
        e = self.assertRaises(OSError, self.confine)
        self.assertEqual(errno.EPERM, e.errno)
        self.assertIn('unshare(CLONE_NEWUSER)', e.strerror)
        self.assertIn(os.strerror(errno.EPERM), e.strerror)
        self.assertEqual(['prctl', 'unshare'], [ev[0] for ev in self.events])
        # Nothing written: the daemon maps no namespace.
        self.assertEqual(b'', self.ready_bytes())

    def test_a_wrong_go_byte(self):
        for go in (b'x', b'G', b'\0'):
            self.events[:] = []
            os.write(self.go_w, go)
            self.assertRaises(OSError, self.confine)
            self.assertEqual(['prctl', 'unshare'],
                             [ev[0] for ev in self.events])
        self.assertEqual(b'rrr', self.ready_bytes())

    def test_the_daemon_hung_up(self):
        os.close(self.go_w)
        self.closed = {self.go_w}
        self.assertRaises(OSError, self.confine)
        self.assertEqual(['prctl', 'unshare'], [ev[0] for ev in self.events])

    def test_dumpable_fails(self):
        os.write(self.go_w, b'g')
        self.failing[('prctl', unpackchild.PR_SET_DUMPABLE)] = -1
        e = self.assertRaises(OSError, self.confine)
        self.assertIn('PR_SET_DUMPABLE', e.strerror)
        # Stopped there: no new privileges was not reached either.
        self.assertEqual(('prctl', 4, 0, 0, 0, 0), self.events[-1])
        self.closed = {self.ready_w, self.go_r}

    def test_no_new_privs_fails(self):
        os.write(self.go_w, b'g')
        self.failing[('prctl', unpackchild.PR_SET_NO_NEW_PRIVS)] = -1
        e = self.assertRaises(OSError, self.confine)
        self.assertIn('PR_SET_NO_NEW_PRIVS', e.strerror)
        self.closed = {self.ready_w, self.go_r}

    def test_setresgid_fails(self):
        os.write(self.go_w, b'g')
        self.failing['setresgid'] = PermissionError(errno.EPERM, 'no')
        self.assertRaises(PermissionError, self.confine)
        self.assertNotIn('setresuid', [ev[0] for ev in self.events])
        self.closed = {self.ready_w, self.go_r}

    def test_threads_counted(self):
        self.threads.active_count.return_value = 2
        os.write(self.go_w, b'g')
        e = self.assertRaises(OSError, self.confine)
        self.assertIn('threads', str(e))
        self.assertEqual(['prctl'], [ev[0] for ev in self.events])
        self.assertEqual(b'', self.ready_bytes())

    def test_a_second_thread_running(self):
        # The real count: unshare(2) fails in a threaded process.
        self.patch_object(unpackchild, 'threading', new=threading)
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(stop.set)
        os.write(self.go_w, b'g')
        e = self.assertRaises(OSError, self.confine)
        self.assertIn('threads', str(e))
        self.libc.unshare.assert_not_called()
        self.assertEqual(b'', self.ready_bytes())

    def test_the_real_libc(self):
        libc = unpackchild._libc()
        self.assertTrue(callable(libc.prctl))
        self.assertTrue(callable(libc.unshare))


class MainTest(base.TestCase):

    def printed(self):
        out = io.StringIO()
        self.patch('sys.stdout', new=out)
        status = unpackchild.main()
        lines = out.getvalue().split('\n')
        self.assertEqual('', lines[-1])
        self.assertEqual(2, len(lines))
        return status, json.loads(lines[0])

    def test_one_json_line(self):
        for status, result in (
                (0, {'size': 3}),
                (1, {'error': 'UnsafeArchiveMember', 'member': 'a\nb',
                     'reason': 'x\ny'}),
                (1, {'error': 'OSError', 'errno': 28, 'strerror': 'full'}),
                (0, {'size': 3, 'skipped': 1}),
                (1, {'error': 'DiskImageRefused', 'reason': 'x\ny'}),
                (1, {'error': 'OSError', 'errno': 2, 'strerror': 'gone',
                     'filename': 'source/\udcff\n'})):
            self.patch_object(unpackchild, 'run',
                              return_value=(status, result))
            self.assertEqual((status, result), self.printed())

    def test_with_its_argv(self):
        top = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(top)
        confine = self.patch_object(unpackchild, 'confine')
        stdin = mock.Mock(spec=['buffer'])
        stdin.buffer = io.BytesIO(archive(member('f', b'12345')))
        self.patch('sys.stdin', new=stdin)
        self.patch('sys.argv', new=['unpackchild'] + ARGV)
        self.assertEqual((0, {'size': 5}), self.printed())
        confine.assert_called_once_with(mock.ANY, 5, 6)

    def test_decompressors_loaded_before_confining(self):
        for name in ('bz2', 'gzip', 'lzma', 'zstandard', 'tarball'):
            self.assertIn(name, vars(unpackchild))


def free_fds(n):
    """n fd numbers nothing in this process has open (above all it has)."""
    top = max(base.open_fds()) + 50
    return list(range(top, top + n))


class PlaceTest(base.TestCase):

    def pipe(self):
        r, w = os.pipe()
        self.addCleanup(self.close, r)
        self.addCleanup(self.close, w)
        return r, w

    @staticmethod
    def close(fd):
        try:
            os.close(fd)
        except OSError:
            pass

    def test_each_fd_at_its_number(self):
        r, w = self.pipe()
        targets = free_fds(2)
        for fd in targets:
            self.addCleanup(self.close, fd)
        before = base.open_fds()
        unpackchild.place([r, w], targets)
        after = base.open_fds()
        # Moved, not copied: the old numbers are closed.
        self.assertEqual(set(before) - {r, w} | set(targets), set(after))
        os.write(targets[1], b'x')
        self.assertEqual(b'x', os.read(targets[0], 1))

    def test_a_swap_loses_nothing(self):
        r, w = self.pipe()
        unpackchild.place([r, w], [w, r])
        os.write(r, b'y')
        self.assertEqual(b'y', os.read(w, 1))

    def test_a_target_in_use_is_refused(self):
        r, w = self.pipe()
        busy_r, busy_w = self.pipe()
        target = free_fds(1)[0]
        self.addCleanup(self.close, target)
        before = base.open_fds()
        e = self.assertRaises(OSError, unpackchild.place, [r, w],
                              [target, busy_w])
        self.assertEqual(errno.EBUSY, e.errno)
        # The busy fd is as it was; what was received is closed.
        self.assertEqual(set(before) - {r, w}, set(base.open_fds()))
        os.write(busy_w, b'z')
        self.assertEqual(b'z', os.read(busy_r, 1))


class AwaitJobTest(base.TestCase):
    """A spare's wait for its job, over a real socket pair."""

    def setUp(self):
        super().setUp()
        self.daemon, child = socket.socketpair(socket.AF_UNIX,
                                               socket.SOCK_SEQPACKET)
        self.addCleanup(self.daemon.close)
        self.child_fd = child.detach()
        self.libc = mock.Mock()
        self.libc.prctl.return_value = 0
        self.top = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.addCleanup(os.chdir, os.getcwd())

    def send(self, job, fds):
        socket.send_fds(self.daemon, [json.dumps(job).encode()], fds)

    def assertSocketClosed(self):
        self.assertNotIn(self.child_fd, base.open_fds())

    def test_the_job_s_argv_fds_and_cwd(self):
        r, w = os.pipe()
        targets = free_fds(2)
        for fd in targets:
            self.addCleanup(os.close, fd)
        self.send({'argv': ['--mode', 'tarball'], 'cwd': self.top,
                   'fds': targets}, [r, w])
        os.close(r)
        os.close(w)
        self.assertEqual(['--mode', 'tarball'],
                         unpackchild.await_job(self.libc, self.child_fd))
        self.libc.prctl.assert_called_once_with(
            unpackchild.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        self.assertEqual(self.top, os.getcwd())
        self.assertSocketClosed()
        os.write(targets[1], b'j')
        self.assertEqual(b'j', os.read(targets[0], 1))

    def test_let_go(self):
        self.daemon.close()
        cwd = os.getcwd()
        self.assertIsNone(unpackchild.await_job(self.libc, self.child_fd))
        self.assertEqual(cwd, os.getcwd())
        self.assertSocketClosed()

    def test_not_a_job(self):
        cwd = os.getcwd()
        targets = free_fds(1)
        for job in ({'argv': 'x', 'cwd': self.top, 'fds': targets},
                    {'argv': [], 'cwd': self.top, 'fds': targets * 2},
                    {'argv': [], 'cwd': self.top, 'fds': [-1]},
                    {'argv': [1], 'cwd': self.top, 'fds': targets},
                    {'cwd': self.top, 'fds': targets}, ['x']):
            daemon, child = socket.socketpair(socket.AF_UNIX,
                                              socket.SOCK_SEQPACKET)
            with daemon:
                child_fd = child.detach()
                r, w = os.pipe()
                socket.send_fds(daemon, [json.dumps(job).encode()], [r])
                os.close(r)
                before = base.open_fds()
                e = self.assertRaises(OSError, unpackchild.await_job,
                                      self.libc, child_fd)
                self.assertEqual(errno.EINVAL, e.errno)
                # What came with it is closed, the socket too.
                self.assertEqual(set(before) - {child_fd},
                                 set(base.open_fds()))
                os.close(w)
        self.assertEqual(cwd, os.getcwd())

    def test_pdeathsig_fails(self):
        self.libc.prctl.return_value = -1
        self.assertRaises(OSError, unpackchild.await_job, self.libc,
                          self.child_fd)
        os.close(self.child_fd)

    def test_main_runs_the_job_s_argv(self):
        run = self.patch_object(unpackchild, 'run',
                                return_value=(0, {'size': 1}))
        await_job = self.patch_object(unpackchild, 'await_job',
                                      return_value=ARGV)
        self.patch('sys.stdout', new=io.StringIO())
        os.close(self.child_fd)
        self.assertEqual(0, unpackchild.main(['--spare-fd', '7']))
        await_job.assert_called_once_with(mock.ANY, 7)
        run.assert_called_once_with(ARGV)

    def test_main_let_go_runs_nothing(self):
        run = self.patch_object(unpackchild, 'run')
        self.patch_object(unpackchild, 'await_job', return_value=None)
        out = self.patch('sys.stdout', new=io.StringIO())
        os.close(self.child_fd)
        self.assertEqual(0, unpackchild.main(['--spare-fd', '7']))
        run.assert_not_called()
        self.assertEqual('', out.getvalue())

    def test_main_a_bad_job_fails_as_a_confinement_would(self):
        run = self.patch_object(unpackchild, 'run')
        self.patch_object(unpackchild, 'await_job',
                          side_effect=OSError(errno.EINVAL, 'not a job'))
        out = self.patch('sys.stdout', new=io.StringIO())
        os.close(self.child_fd)
        self.assertEqual(1, unpackchild.main(['--spare-fd', '7']))
        run.assert_not_called()
        self.assertEqual({'error': 'OSError', 'errno': errno.EINVAL,
                          'strerror': 'not a job'}, json.loads(out.getvalue()))

    def test_a_real_spare_let_go_ends_at_once(self):
        os.close(self.child_fd)
        proc, sock = unpack._start_spare()
        try:
            self.assertIsNone(proc.poll())
        finally:
            sock.close()
        self.assertEqual(0, proc.wait(30))

    def test_a_real_spare_dies_with_the_thread_that_started_it(self):
        # PR_SET_PDEATHSIG, set before it waits: it dies when the thread
        # that started it ends (the daemon's keeps one for good), its
        # socket still open (so not for the socket's end).
        os.close(self.child_fd)
        starter = subprocess.run(
            [sys.executable, '-c',
             'import os, threading, time\n'
             'from novalxcdriver.privsep import unpack\n'
             'spares = []\n'
             'def start():\n'
             '    spares.append(unpack._start_spare())\n'
             '    wchan = "/proc/%d/wchan" % spares[0][0].pid\n'
             '    deadline = time.monotonic() + 30\n'
             '    while time.monotonic() < deadline:\n'
             '        with open(wchan) as f:\n'
             '            if "wait_for_more_packets" in f.read():\n'
             '                break\n'
             '        time.sleep(0.01)\n'
             't = threading.Thread(target=start)\n'
             't.start(); t.join()\n'
             'proc, sock = spares[0]\n'
             'try:\n'
             '    print(proc.wait(10))\n'
             'finally:\n'
             '    proc.kill()\n'],
            capture_output=True, check=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        self.assertEqual(str(-signal.SIGKILL), starter.stdout.decode().strip())
