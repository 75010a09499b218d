"""privsep.qemuimg: qemu-img on a fetched qcow2, as a helper id of its own.

The entry points run here in-process (client mode off, storage_admin_here)
on a temporary driver root; subprocess.run is mocked, and the mock looks,
while "qemu-img runs", at what it was handed: the argv, the fds behind
its /dev/fd/N names and their owners. What is asserted is what each entry
point refuses before touching anything, what it hands qemu-img and what
every outcome leaves: files root's again, no raw image after a failure,
no fd.

Not root, the files show as root's (_FakeOwners): chown and fchown are
recorded instead of made. RealQemuImgTest (root only) runs the real
setpriv, prlimit and qemu-img on a real qcow2 under /var/tmp.
"""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid

import fixtures

from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import privsep
from novalxcdriver.privsep import qemuimg
from tests.unit import base

IMAGE = '0b5e8d6c-3f1a-4c2e-9d7b-1a2b3c4d5e6f'
PARTIAL = '.partial-%s-1234-ab_C9' % IMAGE
# Distinct uid and gid starts: a swap shows.
IDMAP = ids.Idmap(uid_start=1000034400, gid_start=2000034400, size=64)
R, G = IDMAP.uid_start, IDMAP.gid_start
OTHER = 1234
# Distinct limits: a swap shows.
TIMEOUT = 61
CPU = 37
AS = (1 << 30) + 5
VSIZE = (3 << 20) + 512
MAX = 1 << 30
ARCHIVE_DATA = b'QFI\xfb' + bytes(range(256)) * 4
ENV = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C', 'LC_ALL': 'C'}
PREFIX = ['setpriv', '--reuid', str(R), '--regid', str(G), '--clear-groups',
          '--no-new-privs', '--pdeathsig', 'KILL', '--',
          'prlimit', '--cpu=%d' % CPU, '--as=%d' % AS, '--']
INFO_JSON = b'{\n    "virtual-size": 3146240,\n    "format": "qcow2"\n}\n'
BAD_LIMITS = (0, -1, -(1 << 40), True, False, 1.5, 10.0, '10', b'10', None,
              [10])


def bad_uuids():
    """IMAGE with one group of its five amiss: upper case, length, digit."""
    groups = IMAGE.split('-')
    for i, group in enumerate(groups):
        for bad in (group[:-1] + group[-1].upper(),
                    group[:-1], group + 'a', group[:-1] + 'g',
                    group[:-1] + '_'):
            yield '-'.join(groups[:i] + [bad] + groups[i + 1:])


def access_mode(fd):
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


class _FakeOwners(fixtures.Fixture):
    """Not root: this user's files show as root's, chowns are recorded.

    os.stat, os.lstat and os.fstat give a file this user owns as 0:0, or
    as what a chown, lchown or fchown here gave it (by device and inode);
    those make no change on the disk.
    """

    _STAT_EXTRA = ('st_atime', 'st_mtime', 'st_ctime', 'st_atime_ns',
                   'st_mtime_ns', 'st_ctime_ns', 'st_blksize', 'st_blocks',
                   'st_rdev')

    def _setUp(self):
        self.me = os.geteuid()
        self.owners = {}
        self.real = {n: getattr(os, n) for n in ('stat', 'lstat', 'fstat')}
        for name in ('stat', 'lstat', 'fstat'):
            self.useFixture(fixtures.MockPatchObject(
                os, name, new=self._faked(self.real[name])))
        self.useFixture(fixtures.MockPatchObject(os, 'chown',
                                                 new=self._chown))
        self.useFixture(fixtures.MockPatchObject(
            os, 'lchown', new=lambda p, u, g: self._chown(
                p, u, g, follow_symlinks=False)))
        self.useFixture(fixtures.MockPatchObject(os, 'fchown',
                                                 new=self._fchown))

    def _shown(self, st):
        uid, gid = self.owners.get(
            (st.st_dev, st.st_ino),
            (0, 0) if st.st_uid == self.me else (st.st_uid, st.st_gid))
        return os.stat_result(
            tuple(st[:4]) + (uid, gid) + tuple(st[6:]),
            {k: getattr(st, k) for k in self._STAT_EXTRA})

    def _faked(self, real):
        def faked(*args, **kwargs):
            return self._shown(real(*args, **kwargs))
        return faked

    def _record(self, st, uid, gid):
        shown = self._shown(st)
        self.owners[(st.st_dev, st.st_ino)] = (
            shown.st_uid if uid == -1 else uid,
            shown.st_gid if gid == -1 else gid)

    def _chown(self, path, uid, gid, *, dir_fd=None, follow_symlinks=True):
        real = self.real['stat'] if follow_symlinks else self.real['lstat']
        self._record(real(path), uid, gid)

    def _fchown(self, fd, uid, gid):
        self._record(self.real['fstat'](fd), uid, gid)


class _Base(base.TestCase):
    """A driver root (state) with an image cache partial holding archive.

    subprocess.run is self.run: it records what it is handed (self.seen)
    and then returns self.result's (returncode, stdout, stderr), or
    raises self.result when it is an exception.
    """

    def setUp(self):
        super().setUp()
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.state = os.path.join(self.tmp, 'state')
        self.lxc = os.path.join(self.tmp, 'lxc')
        self.images = os.path.join(self.state, 'images')
        os.makedirs(self.images)
        os.makedirs(self.lxc)
        if os.geteuid() != 0:
            self.useFixture(_FakeOwners())
        self.cfg = self.storage_admin_here(self.lxc, self.state)
        self.idmap = self.patch('novalxcdriver.ids.helper_ids',
                                return_value=IDMAP)
        self.partial = self.make_partial(os.path.join(self.images, PARTIAL))
        self.seen = []
        self.result = (0, INFO_JSON, b'')
        self.run = self.patch('novalxcdriver.privsep.qemuimg.subprocess.run',
                              side_effect=self._run)

    @property
    def archive(self):
        return os.path.join(self.partial, qemuimg.ARCHIVE)

    @property
    def raw(self):
        return os.path.join(self.partial, qemuimg.RAW)

    def make_partial(self, path, mode=0o700, archive=True):
        """A directory of root's (mode) holding a root's 0644 archive."""
        os.mkdir(path)
        os.chmod(path, mode)
        if archive:
            self.write(os.path.join(path, qemuimg.ARCHIVE))
        return path

    @staticmethod
    def write(path, data=ARCHIVE_DATA, mode=0o644):
        with open(path, 'xb') as f:
            f.write(data)
        os.chmod(path, mode)

    def _run(self, argv, **kwargs):
        fds = {}
        for fd in kwargs.get('pass_fds', ()):
            st = os.fstat(fd)
            fds[fd] = {'path': os.readlink('/proc/self/fd/%d' % fd),
                       'owner': (st.st_uid, st.st_gid),
                       'mode': stat.S_IMODE(st.st_mode),
                       'size': st.st_size,
                       'access': access_mode(fd),
                       'inheritable': os.get_inheritable(fd)}
        st = os.lstat(self.partial)
        self.seen.append({
            'argv': argv, 'kwargs': kwargs, 'fds': fds,
            'partial': (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid),
            'listing': sorted(os.listdir(self.partial))})
        if isinstance(self.result, BaseException):
            raise self.result
        returncode, stdout, stderr = self.result
        return subprocess.CompletedProcess(argv, returncode, stdout, stderr)

    def tree(self, ctime=True):
        """tree_state with contents, owners and ctimes.

        :param ctime: False: without ctimes, nor directories' mtimes
            (a file made and removed in one, a file chowned and chowned
            back, show there).
        """
        found = {}
        for path, state in base.tree_state(self.tmp, contents=True).items():
            st = os.lstat(path)
            if ctime:
                found[path] = state + (st.st_uid, st.st_gid, st.st_ctime_ns)
            else:
                if stat.S_ISDIR(st.st_mode):
                    state = state[:2] + (None,) + state[3:]
                found[path] = state + (st.st_uid, st.st_gid)
        return found

    def owner(self, path):
        st = os.lstat(path)
        return st.st_uid, st.st_gid

    def info(self, partial=None, timeout=TIMEOUT, cpu_time=CPU,
             address_space=AS):
        return qemuimg.qcow2_info(partial or self.partial, timeout,
                                  cpu_time, address_space)

    def convert(self, partial=None, virtual_size=VSIZE, max_bytes=MAX,
                timeout=TIMEOUT, cpu_time=CPU, address_space=AS):
        return qemuimg.qcow2_convert(partial or self.partial, virtual_size,
                                     max_bytes, timeout, cpu_time,
                                     address_space)

    def refused(self, fn, call, **kwargs):
        """fn(**kwargs) is refused, having changed, run and held nothing."""
        before = self.tree()
        fds = base.open_fds()
        runs = self.run.call_count
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, **kwargs)
        self.assertEqual(runs, self.run.call_count)
        self.assertEqual(before, self.tree())
        self.assertEqual(fds, base.open_fds())
        self.assertIn(call + ' refused: ', str(e))
        return str(e)

    def both_refuse(self, **kwargs):
        """Both entry points refuse; qcow2_convert's message."""
        self.refused(self.info, 'qcow2_info', **kwargs)
        return self.refused(self.convert, 'qcow2_convert', **kwargs)

    def accepted(self):
        """Both entry points run qemu-img for self.partial (control)."""
        runs = self.run.call_count
        self.result = (0, INFO_JSON, b'')
        self.assertEqual(INFO_JSON.decode(), self.info())
        self.convert()
        os.unlink(self.raw)
        self.assertEqual(runs + 2, self.run.call_count)


class EntryPointsTest(base.TestCase):

    def test_every_entry_point_is_covered(self):
        # A new entry point needs its checks tested here.
        names = {n for n, f in vars(qemuimg).items()
                 if privsep.storage_admin.is_entrypoint(f)}
        self.assertEqual({'qcow2_info', 'qcow2_convert'}, names)


class ConfinedArgvTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.idmap = self.patch('novalxcdriver.ids.helper_ids',
                                return_value=IDMAP)

    def test_prefix(self):
        argv = ('qemu-img', 'info', '/dev/fd/5')
        self.assertEqual(PREFIX + list(argv),
                         qemuimg.confined_argv(argv, CPU, AS))
        self.idmap.assert_called_once_with()

    def test_argv_list_left_alone(self):
        argv = ['true']
        got = qemuimg.confined_argv(argv, 1, 2)
        self.assertEqual(['true'], argv)
        self.assertEqual(['--cpu=1', '--as=2', '--', 'true'], got[-4:])
        self.assertIsNot(argv, got)

    def test_idmap_unavailable(self):
        self.idmap.side_effect = exception.IdmapUnavailable(reason='x')
        self.assertRaises(exception.IdmapUnavailable,
                          qemuimg.confined_argv, ['true'], 1, 2)


class CheckPartialTest(_Base):
    """check_partial, through both entry points."""

    def test_a_partial_in_either_driver_root(self):
        self.accepted()
        self.partial = self.make_partial(os.path.join(
            self.lxc, 'images'), mode=0o755, archive=False)
        self.partial = self.make_partial(os.path.join(
            self.lxc, 'images', '.partial-%s-0-%s' % (IMAGE, 'Z_9' * 21 +
                                                      'z')))
        self.accepted()

    def test_a_partial_in_an_extra_driver_root(self):
        extra = os.path.join(self.tmp, 'extra')
        os.makedirs(os.path.join(extra, 'images'))
        self.cfg.config(group='lxc', extra_driver_roots=[extra])
        self.partial = self.make_partial(
            os.path.join(extra, 'images', PARTIAL))
        self.accepted()

    def test_outside_the_driver_roots(self):
        other = os.path.join(self.tmp, 'other', 'images')
        os.makedirs(other)
        partial = self.make_partial(os.path.join(other, PARTIAL))
        msg = self.both_refuse(partial=partial)
        self.assertIn('not below a driver root', msg)

    def test_not_absolute_normalized(self):
        for partial in (os.path.relpath(self.partial),
                        'images/' + PARTIAL,
                        self.partial + '/',
                        os.path.join(self.images, '..', 'images', PARTIAL),
                        self.state + '//images/' + PARTIAL,
                        self.partial + '\0',
                        os.fsencode(self.partial)):
            msg = self.both_refuse(partial=partial)
            self.assertIn('not an absolute normalized path', msg)

    def test_not_a_partial_s_name(self):
        names = (
            'images',
            'images/foo',
            'images/' + IMAGE,
            'images/.partial-x',
            'images/.partial-%s' % IMAGE,
            'images/.partial-%s-1234' % IMAGE,
            'images/.partial-%s-1234-' % IMAGE,
            'images/.partial-%s--x' % IMAGE,
            'images/.partial-%s-12a4-x' % IMAGE,
            'images/.partial-%s-1234-a.b' % IMAGE,
            'images/.partial-%s-1234-a-b' % IMAGE,
            'images/.partial-%s-1234-%s' % (IMAGE, 'a' * 65),
            'images/.partial-%s-1234-x\n' % IMAGE,
            'images/.partial-%s-1234-x ' % IMAGE,
            'images/.partial-%s-1234-x' % IMAGE.upper(),
            'images/_partial-%s-1234-x' % IMAGE,
            'images/.partial-%s-1234-x' % IMAGE.replace('-', ''),
            'images/.partial-%s-1234-x' % IMAGE[:-1],
            'images/.partial-%sa-1234-x' % IMAGE,
            'images/partial-%s-1234-x' % IMAGE,
            'images/x.partial-%s-1234-x' % IMAGE,
            'images/.partial_%s-1234-x' % IMAGE,
            'foo/.partial-%s-1234-x' % IMAGE,
            '.partial-%s-1234-x' % IMAGE,
            'images/images/.partial-%s-1234-x' % IMAGE,
            'foo/images/.partial-%s-1234-x' % IMAGE,
        ) + tuple('images/.partial-%s-1234-x' % u for u in bad_uuids())
        for name in names:
            path = os.path.join(self.state, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.lexists(path):
                self.make_partial(path)
            msg = self.both_refuse(partial=path)
            self.assertIn('is not an image cache partial', msg)

    def test_below_a_partial(self):
        for name in ('rootfs', 'view', qemuimg.ARCHIVE):
            path = os.path.join(self.partial, name)
            if name != qemuimg.ARCHIVE:
                self.make_partial(path)
            msg = self.both_refuse(partial=path)
            self.assertIn('is not an image cache partial', msg)

    def test_a_driver_root_itself(self):
        for path in (self.state, self.lxc, self.images):
            self.both_refuse(partial=path)

    def test_symlinked_partial(self):
        link = os.path.join(self.images, '.partial-%s-1-link' % IMAGE)
        os.symlink(self.partial, link)
        msg = self.both_refuse(partial=link)
        self.assertIn('goes through a symlink', msg)
        link = os.path.join(self.images, '.partial-%s-2-link' % IMAGE)
        os.symlink(PARTIAL, link)
        self.both_refuse(partial=link)

    def test_symlinked_parent(self):
        # <lxc>/images -> <state>/images: the partial is a good one, but
        # reached through a symlink.
        os.symlink(self.images, os.path.join(self.lxc, 'images'))
        msg = self.both_refuse(
            partial=os.path.join(self.lxc, 'images', PARTIAL))
        self.assertIn('goes through a symlink', msg)

    def test_missing(self):
        msg = self.both_refuse(partial=os.path.join(
            self.images, '.partial-%s-1-gone' % IMAGE))
        self.assertIn('does not exist', msg)

    def test_not_a_directory(self):
        path = os.path.join(self.images, '.partial-%s-1-file' % IMAGE)
        self.write(path, mode=0o600)
        msg = self.both_refuse(partial=path)
        self.assertIn('is not a directory of root\'s, 0700', msg)
        fifo = os.path.join(self.images, '.partial-%s-1-fifo' % IMAGE)
        os.mkfifo(fifo, 0o600)
        self.both_refuse(partial=fifo)

    def test_owned_by_another_user(self):
        os.chown(self.partial, OTHER, 0)
        msg = self.both_refuse()
        self.assertIn('is not a directory of root\'s, 0700', msg)
        os.chown(self.partial, R, G)
        self.both_refuse()
        os.chown(self.partial, 0, 0)
        self.accepted()

    def test_mode_bits_for_group_or_others(self):
        for bit in (0o040, 0o020, 0o010, 0o004, 0o002, 0o001):
            os.chmod(self.partial, 0o700 | bit)
            msg = self.both_refuse()
            self.assertIn('is not a directory of root\'s, 0700', msg)
        os.chmod(self.partial, 0o755)
        self.both_refuse()
        os.chmod(self.partial, 0o700)
        self.accepted()


class CheckLimitsTest(_Base):

    def test_limits(self):
        for name in ('timeout', 'cpu_time', 'address_space'):
            for value in BAD_LIMITS:
                msg = self.both_refuse(**{name: value})
                self.assertIn('%s %r is not a positive int' % (name, value),
                              msg)

    def test_sizes(self):
        for name in ('virtual_size', 'max_bytes'):
            for value in BAD_LIMITS:
                msg = self.refused(self.convert, 'qcow2_convert',
                                   **{name: value})
                self.assertIn('%s %r is not a positive int' % (name, value),
                              msg)

    def test_virtual_size_above_max_bytes(self):
        msg = self.refused(self.convert, 'qcow2_convert',
                           virtual_size=MAX + 1)
        self.assertIn('virtual_size %d is above max_bytes %d'
                      % (MAX + 1, MAX), msg)
        self.refused(self.convert, 'qcow2_convert', virtual_size=2,
                     max_bytes=1)

    def test_smallest_limits(self):
        self.info(timeout=1, cpu_time=1, address_space=1)
        self.convert(virtual_size=1, max_bytes=1, timeout=1, cpu_time=1,
                     address_space=1)
        self.assertEqual(1, os.lstat(self.raw).st_size)
        os.unlink(self.raw)
        self.convert(virtual_size=MAX, max_bytes=MAX)
        self.assertEqual(MAX, os.lstat(self.raw).st_size)
        self.assertEqual(3, self.run.call_count)
        self.assertEqual(['--cpu=1', '--as=1', '--'],
                         self.seen[0]['argv'][11:14])
        self.assertEqual(1, self.seen[0]['kwargs']['timeout'])

    def test_the_partial_is_checked_first(self):
        msg = self.both_refuse(partial=os.path.join(self.images, 'foo'),
                               timeout=0)
        self.assertIn('is not an image cache partial', msg)


class OpenArchiveTest(_Base):
    """_open_archive, through both entry points."""

    def setUp(self):
        super().setUp()
        os.unlink(self.archive)

    def test_missing(self):
        msg = self.both_refuse()
        self.assertIn('%s does not exist' % self.archive, msg)

    def test_symlink_to_a_file(self):
        real = os.path.join(self.partial, 'real')
        self.write(real)
        os.symlink('real', self.archive)
        msg = self.both_refuse()
        self.assertIn('%s cannot be opened' % self.archive, msg)
        os.unlink(self.archive)
        os.symlink(real, self.archive)
        self.both_refuse()

    def test_dangling_symlink(self):
        os.symlink('gone', self.archive)
        self.both_refuse()

    def test_directory(self):
        os.mkdir(self.archive, 0o700)
        msg = self.both_refuse()
        self.assertIn('is not a regular file of root\'s with one link', msg)

    def test_fifo(self):
        # Opened without blocking: a FIFO nobody writes to is refused
        # rather than waited on (gently stopped here if it is not).
        self.useFixture(fixtures.Timeout(10, gentle=True))
        os.mkfifo(self.archive, 0o600)
        msg = self.both_refuse()
        self.assertIn('is not a regular file of root\'s with one link', msg)

    def test_socket(self):
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        sock.bind(self.archive)
        self.both_refuse()

    def test_two_links(self):
        self.write(self.archive)
        os.link(self.archive, os.path.join(self.partial, 'other'))
        msg = self.both_refuse()
        self.assertIn('is not a regular file of root\'s with one link', msg)
        os.link(self.archive, os.path.join(self.images, 'third'))
        self.both_refuse()
        os.unlink(os.path.join(self.partial, 'other'))
        os.unlink(os.path.join(self.images, 'third'))
        self.accepted()

    def test_owned_by_another_user(self):
        self.write(self.archive)
        # Below or above the helpers' ids (R + 64 is the unpack range's
        # root), their gid, others.
        for uid in (OTHER, G, R - 1, R + 64, 65534):
            os.chown(self.archive, uid, 0)
            msg = self.both_refuse()
            self.assertIn('is not a regular file of root\'s with one link',
                          msg)

    def test_owned_by_root_or_the_range_s_root(self):
        self.write(self.archive)
        for owner in ((0, 0), (R, G), (0, G), (R, 0), (0, OTHER),
                      (R + 1, G + 1), (R + 63, G + 63)):
            os.chown(self.archive, *owner)
            self.accepted()
            # Root's after each.
            self.assertEqual((0, 0), self.owner(self.archive))
            self.run.reset_mock()

    def test_idmap_unavailable(self):
        self.write(self.archive)
        self.idmap.side_effect = exception.IdmapUnavailable(reason='no')
        for fn in (self.info, self.convert):
            before = self.tree()
            fds = base.open_fds()
            self.assertRaises(exception.IdmapUnavailable, fn)
            self.run.assert_not_called()
            self.assertEqual(before, self.tree())
            self.assertEqual(fds, base.open_fds())

    def test_raw_image_exists_already(self):
        self.write(self.archive)
        self.write(self.raw, b'not yours', mode=0o600)
        msg = self.refused(self.convert, 'qcow2_convert')
        self.assertIn('%s exists already' % self.raw, msg)
        os.unlink(self.raw)
        for target in ('gone', qemuimg.ARCHIVE):
            os.symlink(target, self.raw)
            msg = self.refused(self.convert, 'qcow2_convert')
            self.assertIn('%s exists already' % self.raw, msg)
            os.unlink(self.raw)
        os.mkdir(self.raw)
        self.refused(self.convert, 'qcow2_convert')


class _Succeeds(_Base):

    def setUp(self):
        super().setUp()
        # Not inherited by qemu-img.
        self.useFixture(fixtures.EnvironmentVariable('LD_PRELOAD',
                                                     '/nowhere/evil.so'))
        self.useFixture(fixtures.EnvironmentVariable('QEMU_IMG_EVIL', 'x'))

    def assertKwargs(self, seen, fds):
        kwargs = dict(seen['kwargs'])
        self.assertEqual(tuple(fds), tuple(kwargs.pop('pass_fds')))
        self.assertEqual({'stdin': subprocess.DEVNULL,
                          'capture_output': True, 'timeout': TIMEOUT,
                          'close_fds': True, 'env': ENV, 'cwd': '/',
                          'umask': 0o077}, kwargs)
        self.assertNotIn('LD_PRELOAD', seen['kwargs']['env'])
        # The partial as it was: root's, 0700.
        self.assertEqual((0o700, 0, 0), seen['partial'])


class InfoTest(_Succeeds):

    def test_run_as_the_range_s_root(self):
        fds = base.open_fds()
        before = self.tree(ctime=False)
        self.assertEqual(INFO_JSON.decode(), self.info())
        [seen] = self.seen
        [fd] = seen['kwargs']['pass_fds']
        self.assertEqual(
            PREFIX + ['qemu-img', 'info', '-f', 'qcow2', '--output=json',
                      '/dev/fd/%d' % fd], seen['argv'])
        self.assertKwargs(seen, [fd])
        # qemu-img opens the archive again, as its owner for the run.
        self.assertEqual({fd: {'path': self.archive, 'owner': (R, G),
                               'mode': 0o644, 'size': len(ARCHIVE_DATA),
                               'access': os.O_RDONLY,
                               'inheritable': False}}, seen['fds'])
        self.assertEqual([qemuimg.ARCHIVE], seen['listing'])
        # Root's again after; nothing else changed, no fd left.
        self.assertEqual((0, 0), self.owner(self.archive))
        self.assertEqual(before, self.tree(ctime=False))
        self.assertEqual(fds, base.open_fds())

    def test_stdout_is_the_answer(self):
        self.result = (0, b'{"a": "\xc3\xa9"}', b'a warning\n')
        self.assertEqual('{"a": "\xe9"}', self.info())

    def test_idmap_read_for_the_call(self):
        self.info()
        self.assertTrue(self.idmap.called)
        for args in self.idmap.call_args_list:
            self.assertEqual(((), {}), tuple(args))


class SlotTest(_Succeeds):
    """Each qemu-img running at a time has helper ids of its own."""

    def test_concurrent_runs_have_distinct_ids(self):
        # A run that starts while another runs (the daemon's threads):
        # the second gets slot 1, the first's slot comes back after.
        nested = []

        def run(argv, **kwargs):
            if not nested:
                nested.append(True)
                self.info()
            return self._run(argv, **kwargs)

        self.run.side_effect = run
        self.info()
        outer, inner = self.seen[1], self.seen[0]
        self.assertEqual(['--reuid', str(R), '--regid', str(G)],
                         outer['argv'][1:5])
        self.assertEqual(['--reuid', str(R + 1), '--regid', str(G + 1)],
                         inner['argv'][1:5])
        [fd] = inner['kwargs']['pass_fds']
        self.assertEqual((R + 1, G + 1), inner['fds'][fd]['owner'])
        self.assertEqual((0, 0), self.owner(self.archive))
        # Both free again: the next run is slot 0.
        self.run.side_effect = self._run
        self.info()
        self.assertEqual(str(R), self.seen[-1]['argv'][2])
        self.assertEqual(set(), qemuimg._slots_used)

    def test_a_failed_run_frees_its_slot(self):
        self.result = (1, b'', b'boom')
        self.assertRaises(exception.CommandFailed, self.info)
        self.result = subprocess.TimeoutExpired('qemu-img', TIMEOUT)
        self.assertRaises(exception.CommandTimedOut, self.convert)
        self.assertEqual(set(), qemuimg._slots_used)
        self.result = (0, INFO_JSON, b'')
        self.info()
        self.assertEqual(str(R), self.seen[-1]['argv'][2])

    def test_all_slots_taken_refused(self):
        self.patch('novalxcdriver.privsep.qemuimg._slots_used',
                   new=set(range(ids.HELPER_IDS)))
        fds = base.open_fds()
        for fn in (self.info, self.convert):
            e = self.assertRaises(exception.PrivilegedCallRefused, fn)
            self.assertIn('more than 64 qemu-img runs at once', str(e))
        self.run.assert_not_called()
        self.assertEqual((0, 0), self.owner(self.archive))
        self.assertFalse(os.path.exists(self.raw))
        self.assertEqual(fds, base.open_fds())

    def test_the_last_slot(self):
        self.patch('novalxcdriver.privsep.qemuimg._slots_used',
                   new=set(range(ids.HELPER_IDS - 1)))
        self.info()
        self.assertEqual(['--reuid', str(R + 63), '--regid', str(G + 63)],
                         self.seen[-1]['argv'][1:5])


class ConvertTest(_Succeeds):

    def test_run_as_the_range_s_root(self):
        fds = base.open_fds()
        before = self.tree(ctime=False)
        self.assertIsNone(self.convert())
        [seen] = self.seen
        fd, out = seen['kwargs']['pass_fds']
        self.assertEqual(
            PREFIX + ['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw',
                      '-n', '--target-is-zero', '/dev/fd/%d' % fd,
                      '/dev/fd/%d' % out], seen['argv'])
        self.assertKwargs(seen, [fd, out])
        # The archive and the raw image, made VSIZE long before, both the
        # range root's for the run.
        self.assertEqual({
            fd: {'path': self.archive, 'owner': (R, G), 'mode': 0o644,
                 'size': len(ARCHIVE_DATA), 'access': os.O_RDONLY,
                 'inheritable': False},
            out: {'path': self.raw, 'owner': (R, G), 'mode': 0o600,
                  'size': VSIZE, 'access': os.O_RDWR,
                  'inheritable': False}}, seen['fds'])
        self.assertEqual([qemuimg.ARCHIVE, qemuimg.RAW], seen['listing'])
        # Both root's again; the raw image sparse, root's 0600.
        self.assertEqual((0, 0), self.owner(self.archive))
        st = os.lstat(self.raw)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(0o600, stat.S_IMODE(st.st_mode))
        self.assertEqual((0, 0), (st.st_uid, st.st_gid))
        self.assertEqual(VSIZE, st.st_size)
        self.assertEqual(0, st.st_blocks)
        self.assertEqual(1, st.st_nlink)
        after = self.tree(ctime=False)
        del after[self.raw]
        self.assertEqual(before, after)
        self.assertEqual(fds, base.open_fds())

    def test_the_raw_image_s_mode_whatever_the_umask(self):
        old = os.umask(0)
        try:
            self.convert()
        finally:
            os.umask(old)
        self.assertEqual(0o600, stat.S_IMODE(os.lstat(self.raw).st_mode))
        self.assertEqual(0o600, self.seen[0]['fds'][
            self.seen[0]['kwargs']['pass_fds'][1]]['mode'])

    def test_what_qemu_img_wrote_stays(self):
        def write(argv, **kwargs):
            out = kwargs['pass_fds'][1]
            os.pwrite(out, b'data', 1 << 20)
            return subprocess.CompletedProcess(argv, 0, b'', b'')
        self.run.side_effect = write
        self.convert()
        with open(self.raw, 'rb') as f:
            data = f.read()
        self.assertEqual(VSIZE, len(data))
        self.assertEqual(b'data', data[1 << 20:(1 << 20) + 4])
        self.assertEqual(b'', data.replace(b'\0', b'').replace(b'data', b''))

    def test_give_back_failing_gives_back_the_rest(self):
        log = self.useFixture(fixtures.FakeLogger(
            name='novalxcdriver.privsep.qemuimg'))
        real = os.fchown
        calls = []

        def fchown(fd, uid, gid):
            path = os.readlink('/proc/self/fd/%d' % fd)
            calls.append((path, uid, gid))
            if path == self.archive and (uid, gid) == (0, 0):
                raise OSError(errno.EIO, 'I/O error')
            return real(fd, uid, gid)
        self.patch_object(os, 'fchown', new=fchown)
        fds = base.open_fds()
        self.convert()
        self.assertEqual([(self.archive, R, G), (self.raw, R, G),
                          (self.archive, 0, 0), (self.raw, 0, 0)], calls)
        self.assertEqual((R, G), self.owner(self.archive))
        self.assertEqual((0, 0), self.owner(self.raw))
        self.assertIn('Cannot give fd', log.output)
        self.assertEqual(fds, base.open_fds())


class _Fails:
    """Each way qemu-img fails, for one entry point (self.call): a mixin."""

    def assertLeftAsItWas(self, before, fds):
        self.assertEqual(before, self.tree(ctime=False))
        self.assertEqual((0, 0), self.owner(self.archive))
        self.assertFalse(os.path.lexists(self.raw))
        self.assertEqual(fds, base.open_fds())

    def fails(self, exc_class):
        before = self.tree(ctime=False)
        fds = base.open_fds()
        e = self.assertRaises(exc_class, self.call)
        self.assertEqual(1, self.run.call_count)
        # The run had the files as the range root's.
        self.assertEqual({(R, G)}, {f['owner']
                                    for f in self.seen[0]['fds'].values()})
        self.assertLeftAsItWas(before, fds)
        return e

    def cmd(self):
        return ' '.join(self.seen[0]['argv'][len(PREFIX):])

    def test_non_zero_exit(self):
        self.result = (1, b'', b'\nqemu-img: Could not open: bad\n\n')
        e = self.fails(exception.CommandFailed)
        self.assertEqual(1, e.kwargs['exit_code'])
        self.assertEqual('qemu-img: Could not open: bad',
                         e.kwargs['stderr'])
        self.assertEqual(self.cmd(), e.kwargs['cmd'])
        self.assertIn('/dev/fd/', e.kwargs['cmd'])

    def test_stderr_s_tail(self):
        # The last 4000 bytes, stripped.
        tail = b'y' * 3990 + b'the end'
        self.result = (2, INFO_JSON, b'x' * 10000 + b' ' + tail + b' \n')
        e = self.fails(exception.CommandFailed)
        self.assertEqual(2, e.kwargs['exit_code'])
        self.assertEqual(tail.decode(), e.kwargs['stderr'])

    def test_undecodable_stderr(self):
        self.result = (1, b'', b'bad \xff byte')
        e = self.fails(exception.CommandFailed)
        self.assertEqual('bad \udcff byte', e.kwargs['stderr'])

    def test_killed_by_a_signal(self):
        # SIGXCPU: the CPU time limit.
        self.result = (-24, b'', b'')
        e = self.fails(exception.CommandFailed)
        self.assertEqual(-24, e.kwargs['exit_code'])
        self.assertEqual('', e.kwargs['stderr'])

    def test_timed_out(self):
        self.result = subprocess.TimeoutExpired(['setpriv'], TIMEOUT)
        e = self.fails(exception.CommandTimedOut)
        self.assertEqual(TIMEOUT, e.kwargs['timeout'])
        self.assertEqual(self.cmd(), e.kwargs['cmd'])

    def test_cannot_start(self):
        self.result = FileNotFoundError(errno.ENOENT, 'No such file',
                                        'setpriv')
        self.fails(FileNotFoundError)

    def test_interrupted(self):
        class Stop(BaseException):
            pass
        self.result = Stop()
        self.fails(Stop)


class InfoFailsTest(_Fails, _Base):

    def call(self):
        return self.info()


class ConvertFailsTest(_Fails, _Base):

    def call(self):
        return self.convert()

    def test_raw_image_not_made(self):
        # e.g. ENOSPC: nothing run, nothing given, the file removed.
        lengths = []

        def ftruncate(fd, length):
            lengths.append(length)
            raise OSError(errno.ENOSPC, 'No space left on device')
        self.patch_object(os, 'ftruncate', new=ftruncate)
        before = self.tree(ctime=False)
        archive = os.lstat(self.archive).st_ctime_ns
        fds = base.open_fds()
        e = self.assertRaises(OSError, self.call)
        self.assertEqual(errno.ENOSPC, e.errno)
        self.assertEqual([VSIZE], lengths)
        self.run.assert_not_called()
        self.assertLeftAsItWas(before, fds)
        # Never given.
        self.assertEqual(archive, os.lstat(self.archive).st_ctime_ns)

    def test_give_fails(self):
        # The raw image cannot be given: the archive is given back.
        real = os.fchown

        def fchown(fd, uid, gid):
            if os.readlink('/proc/self/fd/%d' % fd) == self.raw and \
                    uid == R:
                raise OSError(errno.EPERM, 'Operation not permitted')
            return real(fd, uid, gid)
        self.patch_object(os, 'fchown', new=fchown)
        before = self.tree(ctime=False)
        fds = base.open_fds()
        self.assertRaises(OSError, self.call)
        self.run.assert_not_called()
        self.assertLeftAsItWas(before, fds)


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _tool(name):
    return shutil.which(name, path='/usr/sbin:/usr/bin:/sbin:/bin')


class RealQemuImgTest(base.TestCase):
    """The real setpriv, prlimit and qemu-img on a real qcow2."""

    SIZE = 64 << 20

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('root only: qemu-img runs as a helper id')
        missing = [t for t in ('qemu-img', 'setpriv', 'prlimit')
                   if not _tool(t)]
        if missing:
            self.skipTest('%s missing' % ', '.join(missing))
        try:
            self.idmap = ids.helper_ids()
        except exception.IdmapUnavailable as e:
            self.skipTest('no helper ids: %s' % e)
        self.top = os.path.realpath(tempfile.mkdtemp(
            prefix='novalxc-qemuimg-', dir='/var/tmp'))
        self.addCleanup(shutil.rmtree, self.top, ignore_errors=True)
        # Searchable by anyone down to the partial (root's 0700): what
        # keeps the range's root from a file is the file's own mode.
        os.chmod(self.top, 0o755)
        self.state = os.path.join(self.top, 'state')
        self.lxc = os.path.join(self.top, 'lxc')
        os.makedirs(os.path.join(self.state, 'images'), mode=0o755)
        os.makedirs(self.lxc, mode=0o755)
        os.chmod(self.state, 0o755)
        os.chmod(os.path.join(self.state, 'images'), 0o755)
        self.partial = os.path.join(self.state, 'images', '.partial-%s-%d-x'
                                    % (uuid.uuid4(), os.getpid()))
        os.mkdir(self.partial, 0o700)
        self.archive = os.path.join(self.partial, qemuimg.ARCHIVE)
        self.raw = os.path.join(self.partial, qemuimg.RAW)
        self.storage_admin_here(self.lxc, self.state)

    def qemu_img(self, *args):
        subprocess.run(['qemu-img'] + list(args), check=True,
                       capture_output=True, stdin=subprocess.DEVNULL)

    def source(self, path, chunks):
        """A raw file of SIZE bytes holding chunks ({offset: bytes})."""
        with open(path, 'wb') as f:
            f.truncate(self.SIZE)
            for offset, data in chunks.items():
                f.seek(offset)
                f.write(data)
        return path

    def assertRootS(self, path, mode=None):
        st = os.lstat(path)
        self.assertEqual((0, 0), (st.st_uid, st.st_gid))
        if mode is not None:
            self.assertEqual(mode, stat.S_IMODE(st.st_mode))

    def test_info_and_convert(self):
        src = self.source(os.path.join(self.top, 'src.raw'), {
            1 << 20: os.urandom(64 << 10), 40 << 20: b'\xab' * (64 << 10),
            self.SIZE - 512: b'end' * 100})
        self.qemu_img('convert', '-f', 'raw', '-O', 'qcow2', src,
                      self.archive)
        fds = base.open_fds()
        info = json.loads(qemuimg.qcow2_info(self.partial, 60, 30, 1 << 30))
        self.assertEqual(self.SIZE, info['virtual-size'])
        self.assertEqual('qcow2', info['format'])
        self.assertNotIn('backing-filename', info)
        self.assertRootS(self.archive, 0o644)
        self.assertFalse(os.path.lexists(self.raw))
        self.assertIsNone(qemuimg.qcow2_convert(
            self.partial, self.SIZE, 1 << 30, 60, 30, 1 << 30))
        self.assertEqual(fds, base.open_fds())
        self.assertRootS(self.archive, 0o644)
        self.assertRootS(self.raw, 0o600)
        self.assertRootS(self.partial, 0o700)
        st = os.lstat(self.raw)
        self.assertEqual(self.SIZE, st.st_size)
        # Sparse: the holes kept.
        self.assertLess(st.st_blocks * 512, 4 << 20)
        subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2',
                        self.raw, self.archive], check=True,
                       capture_output=True)
        self.assertEqual(digest(src), digest(self.raw))
        self.assertEqual(sorted([qemuimg.ARCHIVE, qemuimg.RAW]),
                         sorted(os.listdir(self.partial)))

    def backed(self, mode):
        backing = self.source(os.path.join(self.top, 'backing.raw'),
                              {0: b'secret' * 1000})
        os.chmod(backing, mode)
        self.qemu_img('create', '-f', 'qcow2', '-b', backing, '-F', 'raw',
                      self.archive, str(self.SIZE))
        return backing

    def test_backing_file_root_s_only(self):
        # qemu-img runs as the range's root: a root-only file is out of
        # its reach, even named in the image.
        self.backed(0o600)
        fds = base.open_fds()
        e = self.assertRaises(exception.CommandFailed, qemuimg.qcow2_convert,
                              self.partial, self.SIZE, 1 << 30, 60, 30,
                              1 << 30)
        self.assertIn('Permission denied', str(e))
        self.assertFalse(os.path.lexists(self.raw))
        self.assertEqual([qemuimg.ARCHIVE], os.listdir(self.partial))
        self.assertRootS(self.archive, 0o644)
        self.assertEqual(fds, base.open_fds())

    def test_backing_file_anyone_may_read(self):
        # The control: the same image, its backing file readable by all.
        self.backed(0o644)
        qemuimg.qcow2_convert(self.partial, self.SIZE, 1 << 30, 60, 30,
                              1 << 30)
        with open(self.raw, 'rb') as f:
            self.assertEqual(b'secret' * 1000, f.read(6000))
        self.assertRootS(self.raw, 0o600)
        self.assertRootS(self.archive, 0o644)

    def test_address_space_limit(self):
        # Too little address space for qemu-img to start: prlimit's.
        self.qemu_img('create', '-q', '-f', 'qcow2', self.archive,
                      str(self.SIZE))
        fds = base.open_fds()
        self.assertRaises(exception.CommandFailed, qemuimg.qcow2_info,
                          self.partial, 60, 30, 1 << 20)
        self.assertRaises(exception.CommandFailed, qemuimg.qcow2_convert,
                          self.partial, self.SIZE, 1 << 30, 60, 30, 1 << 20)
        self.assertFalse(os.path.lexists(self.raw))
        self.assertRootS(self.archive)
        self.assertEqual(fds, base.open_fds())
