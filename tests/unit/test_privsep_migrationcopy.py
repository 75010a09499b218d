"""privsep.migrationcopy: the disks a migration's destination receives.

receive_disks runs here in-process (client mode off, storage_admin_here)
on a temporary tree: its driver roots (state, lxc) hold the new root
(``state/rootfs/3``), and the local source (``src/rootfs/5``) is outside
them, as another service's root would be. What a refusal or a failure
leaves is the whole temporary tree as it was, and this process's fds and
children.

The local copy needs root (a source of root's alone); the ssh copy runs
a fake ssh (a shell printing a tar file made by GNU tar) and, as root
with the unpack range in /etc/subuid, the real confined child; its other
tests mock the child (unpack._start, unpack._wait).
"""

import errno
import os
import shlex
import stat
import subprocess
import tarfile
import threading
import time
from unittest import mock

import fixtures
from oslo_config import cfg
from oslo_config import fixture as config_fixture

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import privsep
from novalxcdriver.privsep import disks
from novalxcdriver.privsep import imagecache
from novalxcdriver.privsep import migrationcopy
from novalxcdriver.privsep import rootdirs
from novalxcdriver.privsep import unpack
from tests.tar_members import directory
from tests.tar_members import hardlink
from tests.tar_members import info as tar_info
from tests.tar_members import reg
from tests.tar_members import symlink
from tests.unit import base

CONF = conf.CONF
KiB = 1024
MiB = 1024 * KiB
TOKEN = '4c1f6a4e-2b7d-4f0e-9a51-0d3c2b1a9e87'
IP = '192.0.2.10'
REMOTE = '/var/lib/novalxc/rootfs/5'
NAMES = ['root.img', 'ephemeral.img']
_SSH_COMMAND = migrationcopy.ssh_command


def sparse_file(path, size, blocks, mode=0o600):
    """A file of size bytes, holes but for blocks {offset: bytes}."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.ftruncate(fd, size)
        for offset, data in blocks.items():
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def children():
    """Pids of this process's children, zombies included (sorted)."""
    found = []
    me = os.getpid()
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(name))
    return sorted(found)


def trusted_from_root(path):
    """Whether _trusted_dir's rule holds for path's directories."""
    parts = path.strip('/').split('/')
    for i in range(len(parts) + 1):
        st = os.lstat('/' + '/'.join(parts[:i]))
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or (
                st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            return False
    return True


class _Base(base.TestCase):
    """Driver roots state and lxc; the new root; a local source outside."""

    def setUp(self):
        super().setUp()
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.state = os.path.join(self.tmp, 'state')
        self.lxc = os.path.join(self.tmp, 'lxc')
        os.mkdir(self.state, 0o755)
        os.mkdir(self.lxc, 0o755)
        self.cfg = self.storage_admin_here(self.lxc, self.state)
        self.cfg.config(group='lxc', command_timeout=10)
        self.root = os.path.join(self.state, 'rootfs', '3')
        os.makedirs(self.root, 0o711)
        os.chmod(os.path.dirname(self.root), 0o711)
        os.chmod(self.root, 0o711)
        self.src_top = os.path.join(self.tmp, 'src')
        self.source = os.path.join(self.src_top, 'rootfs', '5')
        os.makedirs(self.source)
        for path in (self.src_top, os.path.dirname(self.source)):
            os.chmod(path, 0o755)
        os.chmod(self.source, 0o711)
        self.token_path = os.path.join(self.source, rootdirs.TOKEN)
        with open(self.token_path, 'w') as f:
            f.write(TOKEN + '\n')
        os.chmod(self.token_path, 0o600)
        self.disks = {
            'root.img': (4 * MiB, {8 * KiB: os.urandom(4 * KiB),
                                   3 * MiB: b'root'}),
            'ephemeral.img': (2 * MiB, {MiB + 1: b'ephemeral'})}
        for name, (size, blocks) in self.disks.items():
            sparse_file(os.path.join(self.source, name), size, blocks)

    def args(self, **kwargs):
        """receive_disks' arguments: a good local call, but for kwargs."""
        values = dict(root=self.root, names=list(NAMES), source=self.source,
                      token=TOKEN, source_ip=IP, transport='local',
                      max_bytes=1 << 30, timeout=60)
        values.update(kwargs)
        return [values[k] for k in ('root', 'names', 'source', 'token',
                                    'source_ip', 'transport', 'max_bytes',
                                    'timeout')]

    def receive(self, **kwargs):
        return migrationcopy.receive_disks(*self.args(**kwargs))

    def tree(self, strict=True):
        """The tree as it is (without the disks' bytes: mtimes tell).

        :param strict: else without the new root's mtime, which a file
            made and removed there changes.
        """
        found = base.tree_state(self.tmp)
        if not strict:
            mode, size, _mtime, ino, what = found[self.root]
            found[self.root] = (mode, size, None, ino, what)
        return found

    def failed(self, error, match=None, strict=False, **kwargs):
        """receive(**kwargs) raises error, leaves nothing; the error.

        :param strict: and nothing was made meanwhile either.
        """
        before = self.tree(strict)
        fds = base.open_fds()
        pids = children()
        e = self.assertRaises(error, self.receive, **kwargs)
        if match is not None:
            self.assertIn(match, str(e))
        self.assertEqual(before, self.tree(strict), kwargs)
        self.assertEqual(fds, base.open_fds(), kwargs)
        self.assertEqual(pids, children(), kwargs)
        return e

    def refused(self, match=None, strict=False, **kwargs):
        return self.failed(exception.PrivilegedCallRefused, match, strict,
                           **kwargs)

    def assertReceived(self, names, sizes):
        self.assertEqual({n: self.disks[n][0] for n in names}, sizes)
        self.assertEqual(sorted(names), sorted(os.listdir(self.root)))
        for name in names:
            path = os.path.join(self.root, name)
            st = os.lstat(path)
            self.assertEqual((stat.S_IFREG | 0o600, 0, 0),
                             (st.st_mode, st.st_uid, st.st_gid), name)
            # Not assertEqual: a diff of megabytes tells nothing.
            self.assertTrue(read(os.path.join(self.source, name)) ==
                            read(path), name)
            # Holes kept: a chunk of data at most for each piece.
            self.assertLessEqual(st.st_blocks * 512,
                                 len(self.disks[name][1]) * MiB, name)


class ChecksTest(_Base):
    """Every argument checked before anything is made."""

    def refused(self, match=None, **kwargs):
        return super().refused(match, strict=True, **kwargs)

    def test_good_arguments_pass(self):
        for kwargs in ({}, {'names': ['root.img']},
                       {'names': ['ephemeral.img']}, {'names': ('root.img',)},
                       {'names': ['ephemeral.img', 'root.img']},
                       {'source': '/a-b_c+d.e/F9/rootfs/0123'},
                       {'source_ip': '2001:db8::1'}, {'source_ip': '::1'},
                       {'transport': 'ssh'}, {'max_bytes': 1},
                       {'timeout': 1}, {'timeout': migrationcopy.MAX_TIMEOUT},
                       {'max_bytes': 1 << 50},
                       {'root': os.path.join(self.lxc, 'rootfs', '0')}):
            self.assertIsNone(migrationcopy._check('c', *self.args(**kwargs)),
                              kwargs)

    def test_the_root(self):
        outside = os.path.join(self.tmp, 'outside', 'rootfs', '3')
        os.makedirs(outside)
        os.symlink('3', os.path.join(self.state, 'rootfs', '7'))
        for root in (outside, self.source, self.state, self.tmp,
                     os.path.join(self.state, 'rootfs'),
                     os.path.join(self.state, 'rootfs', 'x'),
                     os.path.join(self.state, 'rootfs', '3a'),
                     os.path.join(self.state, 'rootfs', '7'),
                     os.path.join(self.root, 'rescue'),
                     os.path.join(self.state, 'other', '3'),
                     os.path.join(self.state, '3'), self.root + '/',
                     self.root + '/.', 'state/rootfs/3', '/rootfs/3', '/',
                     None, 3, os.fsencode(self.root), [self.root]):
            self.refused(root=root)
        self.assertIn('receive_disks refused: %s is not below a driver root'
                      % outside, str(self.refused(root=outside)))

    def test_the_names(self):
        for names in ([], (), ['root.img', 'root.img'], ['swap.img'],
                      ['root.img', 'swap.img'], 'root.img', None,
                      {'root.img'}, [b'root.img'], [None], ['../root.img'],
                      ['ROOT.IMG'], ['root.img', 'ephemeral.img', 'root.img'],
                      ['./root.img'], ['root'], {'root.img': 1}):
            msg = str(self.refused(names=names))
            self.assertIn('are not distinct disks of root.img, '
                          'ephemeral.img', msg)

    def test_names_that_are_no_set(self):
        # Their items are checked before set() hashes them.
        self.failed(exception.PrivilegedCallRefused, strict=True,
                    names=[['root.img']])

    def test_the_source(self):
        for source in ('src/rootfs/5', '/x/rootfs/a', '/x/other/5',
                       '/x/rootfs/5/', '/x/./rootfs/5', '/x/../rootfs/5',
                       '/x/rootfs/5/rescue', '/x/rootfs/5\n', '/x/rootfs/',
                       '/x//rootfs/5', None, 5, os.fsencode(self.source),
                       '/x/rootfs/5\0'):
            self.assertIn('is not shaped as a root\'s directory',
                          str(self.refused(source=source)), source)
        for source in ('/x y/rootfs/5', "/x'y/rootfs/5", '/x"y/rootfs/5',
                       '/x$y/rootfs/5', '/$(id)/rootfs/5', '/x`id`/rootfs/5',
                       '/x\ny/rootfs/5', '/x;y/rootfs/5', '/x\ty/rootfs/5',
                       '/x\\y/rootfs/5', '/x*/rootfs/5', '/x&y/rootfs/5',
                       '/x|y/rootfs/5', '/x>y/rootfs/5', '/~x/rootfs/5',
                       '/\u00e9/rootfs/5', '/x:y/rootfs/5'):
            self.assertIn('holds characters a migration\'s path never has',
                          str(self.refused(source=source)), source)

    def test_the_token(self):
        for token in ('', None, 5, TOKEN.encode(), [TOKEN]):
            self.assertIn('is not a non-empty str',
                          str(self.refused(token=token)))

    def test_the_source_ip(self):
        for source_ip in ('host.example', '-oProxyCommand=x', '', None,
                          '1.2.3', '192.0.2.1 ', ' 192.0.2.1', '192.0.2.1\n',
                          '[::1]', 'localhost', '256.1.1.1', '192.0.2.1:22',
                          'root@192.0.2.1', '192.0.2.1 -oProxyCommand=x',
                          '010.0.0.1'):
            self.assertIn('is no IP address',
                          str(self.refused(source_ip=source_ip)), source_ip)
        # ssh's or local: whichever the transport.
        self.refused(source_ip='host.example', transport='ssh')

    def test_the_transport(self):
        for transport in ('rsync', 'LOCAL', 'ssh ', '', None, 1, ['ssh']):
            self.assertIn('is not one of local, ssh',
                          str(self.refused(transport=transport)))

    def test_max_bytes_and_timeout(self):
        for value in (0, -1, True, False, 1.5, 10.0, '5', None):
            self.assertIn('max_bytes %r is not a positive int' % (value,),
                          str(self.refused(max_bytes=value)))
            self.assertIn('timeout %r is not a positive int' % (value,),
                          str(self.refused(timeout=value)))

    def test_at_most_a_day(self):
        self.assertEqual(86400, migrationcopy.MAX_TIMEOUT)
        msg = self.refused(timeout=86401)
        self.assertIn('timeout 86401 is above 86400 s', str(msg))


class _Local(_Base):
    """Local copies: as root, from a source of root's alone."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('root only: a source of root\'s')
        if not trusted_from_root(self.tmp):
            self.skipTest('%s is not reached through directories of '
                          'root\'s alone' % self.tmp)


class LocalTest(_Local):

    def test_the_disks_copied(self):
        fds = base.open_fds()
        sizes = self.receive()
        self.assertReceived(NAMES, sizes)
        self.assertEqual(fds, base.open_fds())
        # The source as it was: token, disks.
        self.assertEqual(TOKEN + '\n', read(self.token_path).decode())
        self.assertEqual(
            ['ephemeral.img', 'migration-token', 'root.img'],
            sorted(os.listdir(self.source)))

    def test_one_disk(self):
        self.assertReceived(['ephemeral.img'],
                            self.receive(names=['ephemeral.img']))

    def test_the_process_umask_does_not_matter(self):
        self.addCleanup(os.umask, os.umask(0))
        self.assertReceived(NAMES, self.receive())

    def test_data_synced_before_the_answer(self):
        synced = []
        real = os.fsync

        def fsync(fd):
            st = os.fstat(fd)
            synced.append((st.st_ino, stat.S_ISDIR(st.st_mode)))
            return real(fd)
        self.patch_object(migrationcopy.os, 'fsync', side_effect=fsync)
        self.receive()
        want = [(os.stat(os.path.join(self.root, n)).st_ino, False)
                for n in NAMES] + [(os.stat(self.root).st_ino, True)]
        self.assertEqual(want, synced)

    def test_at_max_bytes(self):
        self.assertReceived(NAMES, self.receive(max_bytes=4 * MiB))

    def test_larger_than_max_bytes(self):
        e = self.failed(exception.MigrationDiskRefused,
                        max_bytes=4 * MiB - 1)
        self.assertIn('Disk %s of the migration\'s source was not copied: '
                      '%d bytes, above the %d allowed'
                      % (os.path.join(self.source, 'root.img'), 4 * MiB,
                         4 * MiB - 1), str(e))
        # The second disk: the first one copied is removed too.
        e = self.failed(exception.MigrationDiskRefused, max_bytes=2 * MiB,
                        names=['ephemeral.img', 'root.img'])
        self.assertIn('root.img', str(e))

    def test_a_sticky_world_writable_directory_on_the_way(self):
        os.chmod(self.src_top, 0o1777)
        self.assertReceived(NAMES, self.receive())

    def test_a_sticky_group_writable_directory_on_the_way(self):
        os.chmod(os.path.dirname(self.source), 0o1775)
        self.assertReceived(NAMES, self.receive())

    def test_the_copy_fails(self):
        self.patch_object(migrationcopy.disks, 'copy_fd_sparse',
                          side_effect=[None, OSError(errno.ENOSPC, 'full')])
        e = self.failed(OSError)
        self.assertEqual(errno.ENOSPC, e.errno)
        self.assertEqual([], os.listdir(self.root))

    def test_the_copy_is_disks_own(self):
        copy = self.patch_object(migrationcopy.disks, 'copy_fd_sparse',
                                 wraps=disks.copy_fd_sparse)
        self.receive()
        self.assertEqual(2, copy.call_count)


class LocalTokenTest(_Local):

    def test_no_token(self):
        os.unlink(self.token_path)
        self.refused('does not hold this migration\'s token')

    def test_another_token(self):
        self.refused('does not hold this migration\'s token',
                     token='5d2f6a4e-2b7d-4f0e-9a51-0d3c2b1a9e87')
        self.refused(token=TOKEN[:-1])
        self.refused(token=TOKEN + 'x')

    def test_a_token_through_a_link(self):
        os.rename(self.token_path, os.path.join(self.tmp, 'token'))
        os.symlink(os.path.join(self.tmp, 'token'), self.token_path)
        self.refused('does not hold this migration\'s token')

    def test_an_empty_token_file(self):
        with open(self.token_path, 'w'):
            pass
        self.refused('does not hold this migration\'s token')


class LocalPathTest(_Local):
    """The way from / to the source: root's alone, no link."""

    def test_a_symlink_on_the_way(self):
        os.rename(self.src_top, os.path.join(self.tmp, 'real'))
        os.symlink('real', self.src_top)
        msg = str(self.refused())
        self.assertIn('src is no directory reached without a link', msg)

    def test_the_source_a_symlink(self):
        os.rename(self.source, self.source + '0')
        os.symlink('50', self.source)
        self.refused('5 is no directory reached without a link')

    def test_a_missing_source(self):
        self.refused('no directory reached without a link',
                     source=os.path.join(self.src_top, 'rootfs', '6'))

    def test_a_file_on_the_way(self):
        os.rename(self.src_top, os.path.join(self.tmp, 'moved'))
        with open(self.src_top, 'w'):
            pass
        self.refused('no directory reached without a link')

    def test_a_directory_of_another_owner(self):
        for path in (self.src_top, os.path.dirname(self.source),
                     self.source):
            os.chown(path, 65534, 0)
            msg = str(self.refused())
            self.assertIn('%s is not root\'s alone (owner 65534' %
                          os.path.basename(path), msg)
            os.chown(path, 0, 0)
        # Another group is no owner.
        os.chown(self.src_top, 0, 65534)
        self.assertReceived(NAMES, self.receive())

    def test_a_directory_others_may_write_to(self):
        for path in (self.src_top, os.path.dirname(self.source),
                     self.source):
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            for bad in (0o775, 0o757, 0o777, 0o770, 0o703):
                os.chmod(path, bad)
                msg = str(self.refused())
                self.assertIn('is not root\'s alone (owner 0, mode %o)'
                              % bad, msg)
            os.chmod(path, mode)

    def test_slash_too(self):
        # / as if others could write to it (a test cannot make it so).
        slash = os.stat('/')
        real = os.fstat

        def fstat(fd):
            st = real(fd)
            if (st.st_dev, st.st_ino) == (slash.st_dev, slash.st_ino):
                return os.stat_result((st.st_mode | 0o002,) + tuple(st)[1:])
            return st
        self.patch_object(migrationcopy.os, 'fstat', side_effect=fstat)
        self.refused(': / is not root\'s alone (owner 0, mode %o)'
                     % (stat.S_IMODE(slash.st_mode) | 0o002))

    def test_the_top_of_the_temporary_tree(self):
        # Every step from /: the test's own directory too.
        os.chmod(self.tmp, 0o777)
        self.addCleanup(os.chmod, self.tmp, 0o700)
        self.refused('is not root\'s alone')


class LocalDiskTest(_Local):
    """A disk of the source that is not a regular file of its own."""

    def test_a_missing_disk(self):
        os.unlink(os.path.join(self.source, 'ephemeral.img'))
        e = self.failed(exception.MigrationDiskRefused)
        self.assertIn('ephemeral.img', str(e))

    def test_a_symlink(self):
        target = os.path.join(self.tmp, 'secret')
        with open(target, 'w') as f:
            f.write('secret')
        os.unlink(os.path.join(self.source, 'root.img'))
        os.symlink(target, os.path.join(self.source, 'root.img'))
        self.failed(exception.MigrationDiskRefused,
                    'root.img of the migration\'s source was not copied')
        self.assertEqual('secret', read(target).decode())

    def test_a_fifo(self):
        fifo = os.path.join(self.source, 'ephemeral.img')
        os.unlink(fifo)
        os.mkfifo(fifo, 0o600)
        done = threading.Event()

        def writer():
            # Should the open wait for a writer: one, a second later, so
            # that the test fails rather than hangs.
            if done.wait(1):
                return
            while not done.is_set():
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    return
                except OSError:
                    time.sleep(0.01)
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            start = time.monotonic()
            self.failed(exception.MigrationDiskRefused, 'not a regular file')
            took = time.monotonic() - start
        finally:
            done.set()
            thread.join()
        self.assertLess(took, 1)

    def test_a_directory(self):
        os.unlink(os.path.join(self.source, 'root.img'))
        os.mkdir(os.path.join(self.source, 'root.img'))
        self.failed(exception.MigrationDiskRefused, 'not a regular file')


class ExistingTest(_Local):
    """A disk already in the new root: left as it is."""

    def test_the_first_exists(self):
        path = os.path.join(self.root, 'root.img')
        with open(path, 'w') as f:
            f.write('mine')
        self.failed(FileExistsError)
        self.assertEqual(['root.img'], os.listdir(self.root))

    def test_the_second_exists(self):
        path = os.path.join(self.root, 'ephemeral.img')
        os.symlink('/etc/passwd', path)
        # Made, then removed: root.img; the link left.
        self.failed(FileExistsError)
        self.assertEqual('/etc/passwd', os.readlink(path))

    def test_a_dangling_link(self):
        path = os.path.join(self.root, 'root.img')
        target = os.path.join(self.tmp, 'nowhere')
        os.symlink(target, path)
        self.failed(FileExistsError)
        self.assertFalse(os.path.lexists(target))


# -- ssh ------------------------------------------------------------------

class SSHCommandTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(CONF))

    def test_defaults(self):
        self.assertEqual(
            ['ssh', '-T', '-o', 'BatchMode=yes', '-p', '22', '--', IP],
            migrationcopy.ssh_command(IP))

    def test_of_the_config(self):
        self.cfg.config(group='lxc', migration_ssh_port=2222,
                        migration_ssh_user='nova',
                        migration_ssh_options=[
                            'IdentityFile=/etc/nova/migration-key',
                            'StrictHostKeyChecking=yes',
                            'UserKnownHostsFile=/etc/ssh/kh'])
        self.assertEqual(
            ['ssh', '-T', '-o', 'BatchMode=yes', '-p', '2222',
             '-o', 'IdentityFile=/etc/nova/migration-key',
             '-o', 'StrictHostKeyChecking=yes',
             '-o', 'UserKnownHostsFile=/etc/ssh/kh', '--', 'nova@' + IP],
            migrationcopy.ssh_command(IP))

    def test_ipv6_unbracketed(self):
        self.cfg.config(group='lxc', migration_ssh_user='nova')
        self.assertEqual(['--', 'nova@2001:db8::1'],
                         migrationcopy.ssh_command('2001:db8::1')[-2:])
        self.cfg.config(group='lxc', migration_ssh_user='')
        self.assertEqual(['--', '2001:db8::1'],
                         migrationcopy.ssh_command('2001:db8::1')[-2:])

    def test_bad_options(self):
        for option in ('ProxyCommand=sh -c x', 'Proxy Command=x',
                       'A="b"', "A='b'", 'A=b\\c', '=x', 'A', 'A=', '1A=b',
                       '-oA=b', 'A=b\n', 'A=b\t', ' A=b', 'A-B=c', 'A =b',
                       'A=b c'):
            self.cfg.config(group='lxc',
                            migration_ssh_options=['BatchMode=yes', option])
            e = self.assertRaises(exception.InvalidSSHOption,
                                  migrationcopy.ssh_command, IP)
            self.assertEqual(option, e.kwargs['option'])

    def test_tar_command(self):
        self.assertEqual(
            'tar --create --sparse --numeric-owner --file=- '
            '--directory=/var/lib/novalxc/rootfs/5 -- root.img '
            'ephemeral.img', migrationcopy.tar_command(REMOTE, NAMES))
        self.assertEqual(
            "tar --create --sparse --numeric-owner --file=- "
            "--directory='/a b/rootfs/5' -- root.img",
            migrationcopy.tar_command('/a b/rootfs/5', ['root.img']))

    def test_tar_command_quotes(self):
        for source in ("/a'b/$(id)/rootfs/5", '/a;b`c`\n/rootfs/5',
                       '/-x/*/rootfs/5'):
            names = ['-P', '$(reboot)', "a'b", 'x y']
            self.assertEqual(
                ['tar', '--create', '--sparse', '--numeric-owner',
                 '--file=-', '--directory=' + source, '--'] + names,
                shlex.split(migrationcopy.tar_command(source, names)))


def fake_ssh(script, *args):
    """A stand-in for ssh: sh running script; $0 will be tar's command."""
    return mock.Mock(return_value=['sh', '-c', script] + list(args))


class _SSH(_Base):

    def setUp(self):
        super().setUp()
        self.ssh_command = self.patch_object(migrationcopy, 'ssh_command',
                                             new=fake_ssh('exit 0'))

    def receive(self, **kwargs):
        kwargs.setdefault('transport', 'ssh')
        kwargs.setdefault('source', REMOTE)
        return super().receive(**kwargs)


class SSHMockedChildTest(_SSH):
    """_ssh around a mocked child (unpack._start, unpack._wait)."""

    def setUp(self):
        super().setUp()
        self.held = mock.Mock(name='held')
        self.started = []
        self.start = self.patch_object(unpack, '_start',
                                       side_effect=self._start)
        self.result = {'size': 0, 'sizes': {'root.img': 4 * MiB,
                                            'ephemeral.img': 2 * MiB}}
        self.wait = self.patch_object(unpack, '_wait',
                                      side_effect=lambda *a: self.result)

    def _start(self, call, dirs, mounts, open_stdin, mode, max_bytes,
               extra_argv=(), pass_fds=()):
        stdin = open_stdin()
        try:
            self.started.append({
                'stdin': stat.S_ISFIFO(os.fstat(stdin).st_mode),
                'files': {fd: os.fstat(fd).st_ino for fd in pass_fds}})
        finally:
            os.close(stdin)
        return self.held

    def test_the_child_is_given_the_files(self):
        self.assertEqual(self.result['sizes'],
                         self.receive(max_bytes=4 * MiB, timeout=7))
        fds = [fd for fd in self.started[0]['files']]
        self.assertEqual(2, len(fds))
        self.start.assert_called_once_with(
            'receive_disks', [], [], mock.ANY, 'disks', 4 * MiB,
            extra_argv=['--disk', 'root.img=%d' % fds[0],
                        '--disk', 'ephemeral.img=%d' % fds[1]],
            pass_fds=tuple(fds))
        inodes = [os.stat(os.path.join(self.root, n)).st_ino for n in NAMES]
        self.assertEqual(inodes, list(self.started[0]['files'].values()))
        self.assertTrue(self.started[0]['stdin'])
        # Seconds per disk.
        self.wait.assert_called_once_with(self.held, 14, mock.ANY)
        late = self.wait.call_args[0][2]()
        self.assertIsInstance(late, exception.CommandTimedOut)
        self.assertEqual(14, late.kwargs['timeout'])
        for name in NAMES:
            self.assertEqual(
                (stat.S_IFREG | 0o600, 0),
                (os.lstat(os.path.join(self.root, name)).st_mode,
                 os.lstat(os.path.join(self.root, name)).st_size))

    def test_the_sizes_the_child_reports(self):
        for sizes in (None, {}, [], 5, {'root.img': 4 * MiB},
                      {'root.img': 1, 'ephemeral.img': -1},
                      {'root.img': 1, 'ephemeral.img': True},
                      {'root.img': 1, 'ephemeral.img': 1.0},
                      {'root.img': 1, 'ephemeral.img': '1'},
                      {'root.img': 1, 'ephemeral.img': (1 << 30) + 1},
                      {'root.img': 1, 'ephemeral.img': 1, 'swap.img': 1},
                      {'root.img': 1, 'swap.img': 1}):
            self.result = {'size': 0, 'sizes': sizes}
            e = self.failed(exception.ArchiveError)
            self.assertIn('reported sizes %r' % (sizes,), str(e))
        self.result = {'size': 0}
        self.failed(exception.ArchiveError)
        # The limit itself, and zero: taken.
        self.result = {'size': 0, 'sizes': {'root.img': 1 << 30,
                                            'ephemeral.img': 0}}
        self.assertEqual(self.result['sizes'], self.receive())

    def test_the_child_fails(self):
        for error in (exception.UnsafeArchiveMember(member='x', reason='y'),
                      exception.ArchiveError(reason='cut'),
                      OSError(errno.ENOSPC, 'full'),
                      exception.CommandTimedOut(cmd='ssh', timeout=1)):
            self.wait.side_effect = error
            self.assertIs(error, self.failed(type(error)))

    def test_the_child_cannot_start(self):
        self.ssh_command.return_value = ['sh', '-c', 'exec sleep 60']
        self.start.side_effect = exception.IdmapUnavailable(reason='none')
        self.failed(exception.IdmapUnavailable)
        self.wait.assert_not_called()

    def test_ssh_fails_the_child_too(self):
        self.ssh_command.return_value = [
            'sh', '-c', 'echo "Connection refused" >&2; exit 255']
        self.wait.side_effect = exception.ArchiveError(reason='empty')
        e = self.failed(exception.CommandFailed)
        self.assertEqual(255, e.kwargs['exit_code'])
        self.assertEqual('Connection refused', e.kwargs['stderr'])

    def test_ssh_fails_the_child_not(self):
        self.ssh_command.return_value = ['sh', '-c', 'exit 3']
        e = self.failed(exception.CommandFailed)
        self.assertEqual(3, e.kwargs['exit_code'])

    def test_ssh_killed(self):
        self.ssh_command.return_value = ['sh', '-c', 'kill -TERM $$']
        e = self.failed(exception.CommandFailed)
        self.assertEqual(-15, e.kwargs['exit_code'])

    def test_ssh_s_last_words(self):
        self.ssh_command.return_value = [
            'sh', '-c', 'head -c 5000 /dev/zero | tr "\\0" a >&2; '
            'echo END >&2; exit 1']
        e = self.failed(exception.CommandFailed)
        self.assertEqual(2000 - 1, len(e.kwargs['stderr']))
        self.assertTrue(e.kwargs['stderr'].endswith('aaaEND'))

    def test_ssh_s_command(self):
        argv = ['ssh', '-T', '-o', 'BatchMode=yes', '-p', '22', '--', IP]
        self.ssh_command.return_value = argv
        popen = self.patch_object(migrationcopy.subprocess, 'Popen')
        popen.return_value.returncode = 0
        popen.return_value.poll.return_value = 0
        self.start.side_effect = None
        self.start.return_value = self.held
        self.receive()
        self.ssh_command.assert_called_once_with(IP)
        self.assertEqual(
            argv + [migrationcopy.tar_command(REMOTE, NAMES)],
            popen.call_args[0][0])
        kwargs = popen.call_args[1]
        self.assertEqual((subprocess.DEVNULL, subprocess.PIPE, True, 0o077),
                         (kwargs['stdin'], kwargs['stdout'],
                          kwargs['close_fds'], kwargs['umask']))
        popen.return_value.stdout.close.assert_called_once_with()

    def test_the_config_s_options_are_used(self):
        self.patch_object(migrationcopy, 'ssh_command', new=_SSH_COMMAND)
        self.cfg.config(group='lxc', migration_ssh_options=['A B=c'])
        self.failed(exception.InvalidSSHOption)
        self.start.assert_not_called()


def _tar_file(path, members):
    with tarfile.open(path, 'w', format=tarfile.GNU_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, data)


class SSHTest(_SSH):
    """The real confined child reads what the fake ssh prints."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('root only: the child\'s user namespace')
        try:
            ids.unpack_idmap()
        except exception.IdmapUnavailable as e:
            self.skipTest(str(e))
        # Not in the tree failed() watches.
        self.stream = os.path.join(
            self.useFixture(fixtures.TempDir()).path, 'stream.tar')
        # Prints the stream; keeps the remote command it was given.
        self.ssh_command.return_value = [
            'sh', '-c', 'printf %s "$1" > "$0.cmd"; exec cat -- "$0"',
            self.stream]
        self.ssh_command.side_effect = None

    def gnu_tar(self, *names):
        with open(self.stream, 'wb') as f:
            subprocess.run(['tar', '--create', '--sparse', '--numeric-owner',
                            '--file=-', '--directory=' + self.source, '--']
                           + list(names), check=True, stdout=f)

    def test_the_disks_received(self):
        self.gnu_tar('ephemeral.img', 'root.img')
        fds = base.open_fds()
        pids = children()
        sizes = self.receive()
        self.assertReceived(NAMES, sizes)
        self.assertEqual(fds, base.open_fds())
        self.assertEqual(pids, children())
        self.assertEqual(migrationcopy.tar_command(REMOTE, NAMES),
                         read(self.stream + '.cmd').decode())

    def test_a_hostile_stream(self):
        for members, member in (
                ([reg('root.img', b'r'), reg('ephemeral.img', b'e'),
                  reg('extra', b'x')], 'extra'),
                ([reg('swap.img', b's')], 'swap.img'),
                ([reg('root.img', b'r'),
                  symlink('ephemeral.img', '/etc/shadow')], 'ephemeral.img')):
            _tar_file(self.stream, members)
            e = self.failed(exception.UnsafeArchiveMember)
            self.assertEqual(member, e.kwargs['member'])

    def test_above_max_bytes(self):
        self.gnu_tar('root.img', 'ephemeral.img')
        e = self.failed(exception.UnsafeArchiveMember, max_bytes=2 * MiB)
        self.assertEqual('root.img', e.kwargs['member'])

    def test_a_stream_cut_short(self):
        _tar_file(self.stream, [reg('root.img', b'r')])
        e = self.failed(exception.ArchiveError)
        self.assertIn('lacks ephemeral.img', str(e))

    def test_ssh_fails(self):
        self.ssh_command.return_value = [
            'sh', '-c', 'echo "Permission denied (publickey)." >&2; '
            'exit 255']
        e = self.failed(exception.CommandFailed)
        self.assertEqual(255, e.kwargs['exit_code'])
        self.assertEqual('Permission denied (publickey).',
                         e.kwargs['stderr'])
        self.assertIn('exit 255', e.kwargs['cmd'])

    def test_ssh_stalls(self):
        self.ssh_command.return_value = ['sh', '-c', 'exec sleep 60']
        start = time.monotonic()
        e = self.failed(exception.CommandTimedOut, timeout=1,
                        names=['root.img'])
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(1, e.kwargs['timeout'])


# -- the daemon's config ----------------------------------------------------

class RootsConfigTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.storage_admin_here('/srv/lxc', '/srv/state')

    def lines(self):
        return privsep._roots_config(CONF).splitlines()

    def test_the_migration_s_ssh_options(self):
        self.cfg.config(group='lxc', migration_ssh_user='nova',
                        migration_ssh_port=2222,
                        migration_ssh_options=['IdentityFile=/k',
                                               'StrictHostKeyChecking=yes'])
        self.assertEqual(
            ['[lxc]', 'lxc_path = /srv/lxc', 'state_path = /srv/state',
             'extra_driver_roots = /srv/lxc,/srv/state',
             'migration_ssh_user = nova', 'migration_ssh_port = 2222',
             'migration_ssh_options = IdentityFile=/k,'
             'StrictHostKeyChecking=yes'], self.lines())

    def test_defaults(self):
        self.assertEqual(['migration_ssh_user = ', 'migration_ssh_port = 22',
                          'migration_ssh_options = '], self.lines()[4:])

    def test_read_back_as_the_daemon_does(self):
        self.cfg.config(group='lxc', migration_ssh_user='nova',
                        migration_ssh_port=2200,
                        migration_ssh_options=['A=b', 'C=/d/e'])
        tmp = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(tmp, 'roots.conf')
        with open(path, 'w') as f:
            f.write(privsep._roots_config(CONF))
        other = cfg.ConfigOpts()
        conf.register_opts(other)
        other(['--config-file', path], project='test')
        self.assertEqual(('nova', 2200, ['A=b', 'C=/d/e']),
                         (other.lxc.migration_ssh_user,
                          other.lxc.migration_ssh_port,
                          other.lxc.migration_ssh_options))

    def test_a_dollar_is_left_out(self):
        # oslo.config would substitute it ($$ too, in a list's items).
        self.cfg.config(group='lxc', migration_ssh_user='no$$va',
                        migration_ssh_options=['A=$$b'])
        self.assertEqual(('no$va', ['A=$b']),
                         (CONF.lxc.migration_ssh_user,
                          CONF.lxc.migration_ssh_options))
        self.assertEqual(['migration_ssh_port = 22'], self.lines()[4:])

    def test_what_a_line_cannot_hold_is_left_out(self):
        self.cfg.config(group='lxc', migration_ssh_user='a\nb',
                        migration_ssh_options=['A=b,c', 'D=e'])
        self.assertEqual(['migration_ssh_port = 22'], self.lines()[4:])
        for user in (' nova', 'nova ', 'a\rb'):
            self.cfg.config(group='lxc', migration_ssh_user=user,
                            migration_ssh_options=['A=b'])
            self.assertEqual(['migration_ssh_port = 22',
                              'migration_ssh_options = A=b'],
                             self.lines()[4:], repr(user))


class RefreshRootDaemonsTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.storage_admin_here('/srv/lxc', '/srv/state')
        self.now = privsep._roots_config(CONF)

    def context(self, uses_roots=True, running=True, root_mode=True,
                started=None):
        ctx = mock.Mock(uses_roots=uses_roots,
                        channel=object() if running else None,
                        started_config=self.now if started is None
                        else started)
        ctx.root_mode.return_value = root_mode
        return ctx

    def test_only_a_root_daemon_of_another_config_stops(self):
        stale = self.context(started='[lxc]\nold\n')
        contexts = [self.context(),
                    stale,
                    self.context(started='x', running=False),
                    self.context(started='x', root_mode=False),
                    self.context(started='x', uses_roots=False)]
        self.patch_object(privsep, 'CONTEXTS', new=tuple(contexts))
        privsep.refresh_root_daemons()
        self.assertEqual([False, True, False, False, False],
                         [c.stop.called for c in contexts])

    def test_a_changed_option_stops_it(self):
        ctx = self.context()
        self.patch_object(privsep, 'CONTEXTS', new=(ctx,))
        privsep.refresh_root_daemons()
        ctx.stop.assert_not_called()
        self.cfg.config(group='lxc', migration_ssh_port=2222)
        privsep.refresh_root_daemons()
        ctx.stop.assert_called_once_with()

    def test_a_start_keeps_its_config(self):
        seen = []
        self.patch_object(privsep.priv_context.PrivContext, 'start',
                          side_effect=lambda method: seen.append(method))
        ctx = privsep.storage_admin
        self.addCleanup(setattr, ctx, 'started_config', None)
        stop = self.patch_object(ctx, 'stop')
        self.patch_object(ctx, 'channel', new=object())
        with mock.patch('os.geteuid', return_value=0):
            ctx.start()
            self.assertEqual(self.now, ctx.started_config)
            privsep.refresh_root_daemons()
            stop.assert_not_called()
            self.cfg.config(group='lxc', migration_ssh_user='other')
            privsep.refresh_root_daemons()
        stop.assert_called_once_with()
        self.assertEqual(1, len(seen))


# -- trees: receive_upper, receive_image ------------------------------------

IMAGE_ID = '0b5d4c1e-7f3a-4b2c-9d8e-1a2b3c4d5e6f'
OTHER_IMAGE_ID = '9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f'
REMOTE_ENTRY = '/var/lib/novalxc/images/' + IMAGE_ID
# security.capability v2 of cap_net_raw=ep (tests/functional/
# test_snapshot.py).
CAP_NET_RAW_V2 = (b'\x01\x00\x00\x02' + (1 << 13).to_bytes(4, 'little') +
                  b'\x00' * 12)
OPAQUE = 'trusted.overlay.opaque'


class Reached(Exception):
    """Raised where a call's checks are over (accepted arguments)."""


def snapshot(top):
    """{relative path: (mode, uid, gid, rdev, content, xattrs, links)}.

    content: a regular file's bytes, a symlink's target; xattrs: every
    attribute (trusted.* too); links: the names of a non-directory's inode.
    """
    stats = {}
    for parent, dirs, files in os.walk(top):
        if parent == top:
            stats['.'] = os.lstat(top)
        for name in dirs + files:
            path = os.path.join(parent, name)
            stats[os.path.relpath(path, top)] = os.lstat(path)
    groups = {}
    for rel, st in stats.items():
        groups.setdefault(st.st_ino, []).append(rel)
    found = {}
    for rel, st in stats.items():
        path = os.path.join(top, rel)
        content = None
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            content = read(path)
        xattrs = {n: os.getxattr(path, n, follow_symlinks=False)
                  for n in os.listxattr(path, follow_symlinks=False)}
        links = None if stat.S_ISDIR(st.st_mode) else sorted(
            groups[st.st_ino])
        found[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid,
                      (os.major(st.st_rdev), os.minor(st.st_rdev)),
                      content, xattrs, links)
    return found


def mounts_below(top):
    """Mount points at or below top (/proc/self/mountinfo)."""
    found = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            point = line.split()[4].encode().decode('unicode_escape')
            if point == top or point.startswith(top.rstrip('/') + '/'):
                found.append(point)
    return found


def _pax_file(path, members):
    with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, data)


def whiteout(name, **kwargs):
    return tar_info(name, tarfile.CHRTYPE, mode=0o600, devmajor=0,
                    devminor=0, **kwargs), None


def container_idmap():
    """[uid, gid, size] at the start of root's ranges; None if unpacker's."""
    (uid, uids), (gid, gids) = ids.read_subordinate_ranges()
    unpacker = ids.unpack_idmap()
    # gid's start another than uid's: neither stands for the other.
    if min(uids, gids) < 3 * ids.UNPACK_IDS or \
            uid + ids.UNPACK_IDS > unpacker.uid_start or \
            gid + 2 * ids.UNPACK_IDS > unpacker.gid_start:
        return None
    return [uid, gid + ids.UNPACK_IDS, ids.UNPACK_IDS]


class _Trees(_Base):
    """The process umask kept (the entry points set the daemon's)."""

    def setUp(self):
        super().setUp()
        umask = os.umask(0o022)
        os.umask(umask)
        self.addCleanup(os.umask, umask)
        self.running = self.patch('novalxcdriver.privsep.unpack._running',
                                  new={})

    def failed(self, error, match=None, strict=False, **kwargs):
        e = super().failed(error, match, strict, **kwargs)
        self.assertEqual({}, self.running)
        self.assertEqual([], mounts_below(self.tmp))
        return e


class _Upper(_Trees):
    """receive_upper: root/upper of the source, in a container's range."""

    IDMAP = [100000, 100000, 65536]

    def setUp(self):
        super().setUp()
        self.dest = os.path.join(self.root, migrationcopy.ROOT_DIR)

    def args(self, **kwargs):
        values = dict(root=self.root, source=self.source, token=TOKEN,
                      source_ip=IP, transport='local',
                      idmap=list(self.IDMAP), max_bytes=1 << 30,
                      timeout=60)
        values.update(kwargs)
        return [values[k] for k in ('root', 'source', 'token', 'source_ip',
                                    'transport', 'idmap', 'max_bytes',
                                    'timeout')]

    def receive(self, **kwargs):
        return migrationcopy.receive_upper(*self.args(**kwargs))


class UpperChecksTest(_Upper):
    """receive_upper's arguments, each checked before anything is made."""

    def setUp(self):
        super().setUp()
        try:
            self.unpacker = ids.unpack_idmap()
            idmap = container_idmap()
        except exception.IdmapUnavailable as e:
            self.skipTest(str(e))
        if idmap is None:
            self.skipTest('root\'s ranges hold no container range')
        self.IDMAP = idmap
        self.start = self.patch_object(migrationcopy, '_through_child',
                                       side_effect=Reached)

    def refused(self, match=None, **kwargs):
        e = super().refused(match, strict=True, **kwargs)
        self.start.assert_not_called()
        return e

    def accepted(self, **kwargs):
        # Checks passed: root/upper and root/work made, then removed.
        if os.geteuid() != 0:
            self.skipTest('root only: the layers chowned')
        kwargs.setdefault('transport', 'ssh')
        e = self.failed(kwargs.pop('error', Reached), **kwargs)
        self.assertFalse(os.path.lexists(self.dest))
        return e

    def test_good_arguments_pass(self):
        uid, gid, size = self.IDMAP
        below = self.unpacker.uid_start - size
        os.makedirs(os.path.join(self.lxc, 'rootfs', '0'))
        for kwargs in ({}, {'source': '/a-b_c+d.e/F9/rootfs/0123'},
                       {'source_ip': '2001:db8::1'}, {'max_bytes': 1},
                       {'timeout': 1}, {'timeout': migrationcopy.MAX_TIMEOUT},
                       {'idmap': (uid, gid, size)},
                       {'idmap': [uid + 1, gid + 7, ids.UNPACK_IDS]},
                       # Just below the unpack range.
                       {'idmap': [below, self.unpacker.gid_start - size,
                                  size]},
                       {}):
            self.accepted(**kwargs)
        # The tree's mtime tells: self.root's is not compared.
        self.root = os.path.join(self.lxc, 'rootfs', '0')
        self.dest = os.path.join(self.root, migrationcopy.ROOT_DIR)
        self.accepted()
        self.assertEqual(11, self.start.call_count)

    def test_what_the_child_reports(self):
        self.start.side_effect = None
        for result in ({'size': 0}, {'size': 0, 'opaque': None},
                       {'size': 0, 'opaque': 'etc'},
                       {'size': 0, 'opaque': ('etc',)},
                       {'size': 0, 'opaque': ['../etc']},
                       {'size': 0, 'opaque': ['.', None]}):
            self.start.return_value = result
            e = self.accepted(error=exception.ArchiveError)
            self.assertIn('the receiver reported opaque', str(e))
        self.start.return_value = {'size': 7, 'opaque': ['.']}
        self.assertEqual(7, self.receive(transport='ssh'))
        self.assertEqual(b'y', os.getxattr(
            os.path.join(self.dest, migrationcopy.UPPER), OPAQUE))

    def test_the_root(self):
        os.symlink('3', os.path.join(self.state, 'rootfs', '7'))
        for root in (self.source, self.state, self.tmp,
                     os.path.join(self.state, 'rootfs'),
                     os.path.join(self.state, 'rootfs', '3a'),
                     os.path.join(self.state, 'rootfs', '7'),
                     os.path.join(self.root, 'rescue'), self.dest,
                     os.path.join(self.state, '3'), self.root + '/',
                     'state/rootfs/3', '/', None, 3,
                     os.fsencode(self.root), [self.root]):
            self.refused(root=root)

    def test_the_source(self):
        for source in ('src/rootfs/5', '/x/rootfs/a', '/x/other/5',
                       '/x/rootfs/5/', '/x/../rootfs/5', '/x//rootfs/5',
                       '/x/rootfs/5/root', None, os.fsencode(self.source),
                       '/x y/rootfs/5', '/$(id)/rootfs/5', "/x'/rootfs/5",
                       '/x\n/rootfs/5', '/x/rootfs/5\0'):
            self.refused(source=source, transport='ssh')
            self.refused(source=source)

    def test_the_token(self):
        for token in ('', None, 5, TOKEN.encode()):
            self.refused('is not a non-empty str', token=token)

    def test_the_source_ip_and_transport(self):
        for source_ip in ('host.example', '', None, '192.0.2.1 -oX=y',
                          '[::1]', 'fe80::1%eth0', 3221226122,
                          b'\xc0\x00\x02\x0a'):
            self.refused('is no IP address', source_ip=source_ip)
        for transport in ('rsync', 'SSH', '', None):
            self.refused('is not one of local, ssh', transport=transport)

    def test_ints_and_timeout(self):
        for value in (0, -1, True, 1.5, '5', None):
            self.refused('max_bytes %r is not a positive int' % (value,),
                         max_bytes=value)
            self.refused('timeout %r is not a positive int' % (value,),
                         timeout=value)
        self.refused('timeout 86401 is above 86400 s', timeout=86401)

    def test_the_idmap_shape(self):
        uid, gid, size = self.IDMAP
        for idmap in (None, [uid, gid], [uid, gid, size, 0], '1,2,3',
                      [str(uid), gid, size], [uid, gid, float(size)],
                      [uid, True, size], [uid, gid, 0], [uid, gid, -1],
                      {uid: gid}):
            self.refused('is not [uid_start, gid_start, size]', idmap=idmap)

    def test_outside_root_s_ranges(self):
        (suid, suids), (sgid, sgids) = ids.read_subordinate_ranges()
        for idmap in ([0, sgid, 65536], [suid, 0, 65536],
                      [suid - 1, sgid, 2], [suid, sgid - 1, 2],
                      [suid + suids - 1, sgid, 2],
                      [suid, sgid + sgids - 1, 2],
                      [suid + suids, sgid + sgids, 1],
                      [suid, sgid, max(suids, sgids) + 1]):
            self.refused('is not inside root\'s subordinate ids',
                         idmap=idmap)

    def test_fewer_ids_than_the_child_maps(self):
        # The view shifts 65536 ids: a smaller idmap would let owners
        # beyond it through (found by a probe: +5000 of a 1000-id map).
        uid, gid, _size = self.IDMAP
        for size in (1, 1000, ids.UNPACK_IDS - 1):
            self.refused('holds fewer than %d ids' % ids.UNPACK_IDS,
                         idmap=[uid, gid, size])

    def test_overlapping_the_unpack_range(self):
        u = self.unpacker
        uid, gid, size = self.IDMAP
        for idmap in (u.fields(), [u.uid_start, gid, 1],
                      [uid, u.gid_start, 1],
                      [u.uid_start - 1, gid, 2], [uid, u.gid_start - 1, 2],
                      [u.uid_start + u.size - 1, gid, 1],
                      [uid, u.gid_start + u.size - 1, 1],
                      [u.uid_start - 10, u.gid_start - 10, 11]):
            self.refused('overlaps the unpack range', idmap=idmap)


class _RealUpper(_Upper):
    """The source's root/upper as overlayfs leaves it; the real child."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('root only: owners, whiteouts, trusted.*')
        if not trusted_from_root(self.tmp):
            self.skipTest('%s is not reached through directories of '
                          'root\'s alone' % self.tmp)
        try:
            idmap = container_idmap()
        except exception.IdmapUnavailable as e:
            self.skipTest(str(e))
        if idmap is None:
            self.skipTest('root\'s ranges hold no container range')
        self.IDMAP = idmap
        self.uid, self.gid = idmap[:2]
        self.addCleanup(self._unmount_left)
        top = os.path.join(self.source, migrationcopy.ROOT_DIR)
        os.mkdir(top, 0o755)
        self.upper = os.path.join(top, migrationcopy.UPPER)
        self.make_upper(self.upper)
        # Not in the tree failed() watches.
        self.stream = os.path.join(
            self.useFixture(fixtures.TempDir()).path, 'stream.tar')

    def _unmount_left(self):
        for point in reversed(mounts_below(self.tmp)):
            subprocess.run(['umount', '--lazy', point], check=False)

    def own(self, path, n=0):
        os.chown(path, self.uid + n, self.gid + n, follow_symlinks=False)

    def make_upper(self, upper):
        def mkdir(rel, n=0, mode=0o755):
            path = os.path.join(upper, rel)
            os.mkdir(path, mode)
            self.own(path, n)
            os.chmod(path, mode)
            return path

        def mkfile(rel, data, n=0, mode=0o644):
            path = os.path.join(upper, rel)
            with open(path, 'wb') as f:
                f.write(data)
            self.own(path, n)
            os.chmod(path, mode)
            return path
        mkdir('')
        os.setxattr(upper, 'trusted.overlay.impure', b'y')
        mkfile('f0', b'zero\n')
        os.setxattr(os.path.join(upper, 'f0'), 'user.note', b'kept')
        mkdir('home')
        mkdir('home/u', 1000, 0o750)
        mkfile('home/u/f', b'user data', 1000, 0o600)
        # The range's last id.
        mkfile('home/top', b'', ids.UNPACK_IDS - 1)
        # overlayfs makes whiteouts as its mounter, the host's root.
        os.mknod(os.path.join(upper, 'gone'), stat.S_IFCHR | 0o600,
                 os.makedev(0, 0))
        etc = mkdir('etc')
        os.setxattr(etc, OPAQUE, b'y')
        os.link(os.path.join(upper, 'gone'),
                os.path.join(upper, 'etc', 'gone-too'))
        var = mkdir('var')
        os.setxattr(var, 'trusted.overlay.origin', b'\x00\xfb\x21')
        mkdir('var/lib')
        os.symlink('/etc/passwd', os.path.join(upper, 'lnk'))
        self.own(os.path.join(upper, 'lnk'))
        mkdir('bin')
        mkfile('bin/su', b'#!/bin/sh\n', 0, 0o4755)
        mkfile('bin/sg', b'sg', 0, 0o2755)

    def expected(self):
        """The source's upper as the destination's should be."""
        want = snapshot(self.upper)
        for rel in ('gone', 'etc/gone-too'):
            # GNU tar sends each name of a device as a device of its own,
            # hard links or not.
            mode, _u, _g, rdev, content, xattrs, _links = want[rel]
            want[rel] = (mode, self.uid, self.gid, rdev, content, xattrs,
                         [rel])
        for rel, value in want.items():
            value[5].pop('trusted.overlay.origin', None)
            value[5].pop('trusted.overlay.impure', None)
        return want

    def assertReceived(self, size):
        upper = os.path.join(self.dest, migrationcopy.UPPER)
        got = snapshot(upper)
        self.assertEqual(self.expected(), got)
        self.assertEqual(len(b'zero\n') + len(b'user data') +
                         len(b'#!/bin/sh\n') + len(b'sg'), size)
        # Spot checks of what the comparison covers.
        self.assertEqual(('crw-------', self.uid, self.gid, (0, 0)),
                         got['gone'][:4])
        self.assertEqual((self.uid + 1000, self.gid + 1000),
                         got['home/u/f'][1:3])
        self.assertEqual((self.uid + 65535, self.gid + 65535),
                         got['home/top'][1:3])
        self.assertEqual('-rwsr-xr-x', got['bin/su'][0])
        self.assertEqual('-rwxr-sr-x', got['bin/sg'][0])
        self.assertEqual({'user.note': b'kept'}, got['f0'][5])
        self.assertEqual('/etc/passwd', got['lnk'][4])
        marked = sorted(rel for rel, v in got.items()
                        if any(n.startswith('trusted.') for n in v[5]))
        self.assertEqual(['etc'], marked)
        self.assertEqual({OPAQUE: b'y'}, got['etc'][5])
        # The layers' directory, work, no view, no mount.
        st = os.lstat(self.dest)
        self.assertEqual((stat.S_IFDIR | 0o755, 0, 0),
                         (st.st_mode, st.st_uid, st.st_gid))
        self.assertEqual([migrationcopy.UPPER, migrationcopy.WORK],
                         sorted(os.listdir(self.dest)))
        work = os.path.join(self.dest, migrationcopy.WORK)
        st = os.lstat(work)
        self.assertEqual((stat.S_IFDIR | 0o755, self.uid, self.gid),
                         (st.st_mode, st.st_uid, st.st_gid))
        self.assertEqual([], os.listdir(work))
        self.assertEqual([migrationcopy.ROOT_DIR], os.listdir(self.root))
        self.assertEqual([], mounts_below(self.tmp))
        self.assertEqual({}, self.running)

    def gnu_tar(self):
        with open(self.stream, 'wb') as f:
            subprocess.run(['tar'] + list(migrationcopy.UPPER_TAR_OPTIONS) +
                           ['--directory=' + self.upper, '--', '.'],
                           check=True, stdout=f)

    def fake_ssh(self):
        """ssh printing self.stream; keeps the remote command it got."""
        self.patch_object(migrationcopy, 'ssh_command', return_value=[
            'sh', '-c', 'printf %s "$1" > "$0.cmd"; exec cat -- "$0"',
            self.stream])


class UpperTest(_RealUpper):

    def test_local(self):
        fds = base.open_fds()
        pids = children()
        before = snapshot(self.upper)
        # What the daemon does with the child's answer.
        mark = self.patch_object(migrationcopy, '_mark_opaque',
                                 wraps=migrationcopy._mark_opaque)
        self.assertReceived(self.receive())
        mark.assert_called_once_with(
            os.path.join(self.dest, migrationcopy.UPPER), 'etc')
        self.assertEqual(fds, base.open_fds())
        self.assertEqual(pids, children())
        self.assertEqual(before, snapshot(self.upper))
        self.assertFalse(os.path.lexists(
            os.path.join(self.root, migrationcopy.UPPER_VIEW)))

    def test_over_ssh(self):
        self.gnu_tar()
        self.fake_ssh()
        self.assertReceived(self.receive(transport='ssh', source=REMOTE))
        self.assertEqual(
            migrationcopy.tree_tar_command(
                migrationcopy.UPPER_TAR_OPTIONS, REMOTE + '/root/upper'),
            read(self.stream + '.cmd').decode())
        migrationcopy.ssh_command.assert_called_once_with(IP)

    def test_above_max_bytes(self):
        e = self.failed(exception.UnsafeArchiveMember, max_bytes=10)
        self.assertIn('exceed the limit of 10 bytes', str(e))
        self.assertFalse(os.path.lexists(self.dest))


class UpperRefusedTest(_RealUpper):

    def refused(self, match=None, **kwargs):
        e = super().refused(match, strict=True, **kwargs)
        self.assertFalse(os.path.lexists(self.dest))
        return e

    def test_no_token(self):
        os.unlink(self.token_path)
        self.refused('does not hold this migration\'s token')

    def test_another_token(self):
        self.refused('does not hold this migration\'s token',
                     token=OTHER_IMAGE_ID)

    def test_a_group_writable_directory_on_the_way(self):
        for path in (self.src_top, os.path.dirname(self.source),
                     self.source, os.path.dirname(self.upper)):
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            os.chmod(path, 0o775)
            self.refused('is not root\'s alone (owner 0, mode 775)')
            os.chmod(path, mode)

    def test_root_s_directory_of_another_owner(self):
        top = os.path.dirname(self.upper)
        os.chown(top, self.uid, self.gid)
        self.refused('root is not root\'s alone (owner %d' % self.uid)

    def test_root_s_directory_a_symlink(self):
        top = os.path.dirname(self.upper)
        os.rename(top, top + '2')
        os.symlink('root2', top)
        self.refused('root is no directory reached without a link')

    def test_the_root_dir_exists(self):
        os.mkdir(self.dest, 0o700)
        with open(os.path.join(self.dest, 'mine'), 'w') as f:
            f.write('mine')
        self.failed(FileExistsError, strict=True)
        self.assertEqual(['mine'], os.listdir(self.dest))
        os.unlink(os.path.join(self.dest, 'mine'))
        os.rmdir(self.dest)
        target = os.path.join(self.tmp, 'elsewhere')
        os.symlink(target, self.dest)
        self.failed(FileExistsError, strict=True, transport='ssh')
        self.assertFalse(os.path.lexists(target))


class UpperHostileTest(_RealUpper):
    """A source's stream the child refuses: root/root removed."""

    def setUp(self):
        super().setUp()
        self.fake_ssh()

    def owned(self, n=0, **kwargs):
        return dict(uid=self.uid + n, gid=self.gid + n, **kwargs)

    def hostile(self, members):
        _pax_file(self.stream, [directory('.', **self.owned())] + members)
        e = self.failed(exception.UnsafeArchiveMember, transport='ssh',
                        source=REMOTE)
        self.assertFalse(os.path.lexists(self.dest))
        return e

    def test_names(self):
        for members, name in (
                ([reg('../x', b'x', **self.owned())], '../x'),
                ([reg('f', b'x', **self.owned()),
                  hardlink('h', 'f', **self.owned()),
                  hardlink('g', 'd', **self.owned())], 'g')):
            e = self.hostile(members)
            self.assertEqual(name, e.kwargs['member'], members)

    def test_devices(self):
        for members, name in (
                ([(tar_info('null', tarfile.CHRTYPE, mode=0o600,
                            devmajor=1, devminor=3, **self.owned()),
                   None)], 'null'),
                ([(tar_info('zero', tarfile.CHRTYPE, mode=0o600,
                            devmajor=0, devminor=1, **self.owned()),
                   None)], 'zero'),
                ([(tar_info('blk', tarfile.BLKTYPE, mode=0o600, devmajor=0,
                            devminor=0, **self.owned()), None)], 'blk')):
            e = self.hostile(members)
            self.assertEqual(name, e.kwargs['member'], members)

    def test_owners(self):
        for members, name in (
                # A link to a whiteout shifts no owner (it is one).
                ([whiteout('w'),
                  hardlink('h', 'w', uid=0, gid=0),
                  reg('f', b'x', uid=0, gid=0)], 'f'),
                ([reg('f', b'x', **self.owned(ids.UNPACK_IDS))], 'f'),
                # The uid's offset does not stand for the gid's.
                ([reg('f', b'x', uid=self.uid, gid=self.gid - 1)], 'f')):
            e = self.hostile(members)
            self.assertEqual(name, e.kwargs['member'], members)

    def test_whiteouts_and_hard_links(self):
        _pax_file(self.stream, [
            directory('.', **self.owned()),
            whiteout('w', uid=0, gid=0),
            directory('d', **self.owned()),
            hardlink('d/w2', 'w', uid=0, gid=0),
            hardlink('d/w3', './w', **self.owned(5)),
            reg('f', b'data', **self.owned(7)),
            hardlink('d/f2', 'f', **self.owned(7)),
            # A whiteout's owner is not looked at (the host's root's).
            whiteout('v', uid=1 << 31, gid=5)])
        self.assertEqual(4, self.receive(transport='ssh', source=REMOTE))
        got = snapshot(os.path.join(self.dest, 'upper'))
        self.assertEqual(('crw-------', self.uid, self.gid, (0, 0), None,
                          {}, ['v']), got['v'])
        for rel in ('w', 'd/w2', 'd/w3'):
            # The first name's mode: libarchive links without a chmod.
            self.assertEqual(('crw-------', self.uid, self.gid, (0, 0),
                              None, {}, ['d/w2', 'd/w3', 'w']), got[rel])
        self.assertEqual(('-rw-r--r--', self.uid + 7, self.gid + 7, (0, 0),
                          b'data', {}, ['d/f2', 'f']), got['f'])

    def test_opaque_is_the_directory_s_alone(self):
        # A file's opaque attribute is neither set nor reported; a
        # directory's other values neither.
        _pax_file(self.stream, [
            directory('.', **self.owned()),
            directory('a', **self.owned(pax_headers={
                'SCHILY.xattr.' + OPAQUE: 'y'})),
            directory('b', **self.owned(pax_headers={
                'SCHILY.xattr.' + OPAQUE: 'n'})),
            reg('c', b'', **self.owned(pax_headers={
                'SCHILY.xattr.' + OPAQUE: 'y'})),
            directory('a/d', **self.owned(pax_headers={
                'SCHILY.xattr.' + OPAQUE: 'y'})),
            # The last of a name is what counts.
            directory('e', **self.owned(pax_headers={
                'SCHILY.xattr.' + OPAQUE: 'y'})),
            directory('e', **self.owned())])
        self.receive(transport='ssh', source=REMOTE)
        got = snapshot(os.path.join(self.dest, 'upper'))
        self.assertEqual(['a', 'a/d'], sorted(
            rel for rel, v in got.items() if v[5]))
        self.assertEqual({OPAQUE: b'y'}, got['a/d'][5])


class MarkOpaqueTest(base.TestCase):
    """_mark_opaque: what the child reports, never through a link."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('root only: trusted.* attributes')
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.upper = os.path.join(self.tmp, 'upper')
        self.outside = os.path.join(self.tmp, 'outside')
        for path in (self.upper, os.path.join(self.upper, 'a', 'b'),
                     os.path.join(self.outside, 'c')):
            os.makedirs(path)
        with open(os.path.join(self.upper, 'file'), 'w'):
            pass
        os.symlink(self.outside, os.path.join(self.upper, 'link'))
        os.symlink('../../outside', os.path.join(self.upper, 'a', 'rel'))

    def marked(self):
        found = []
        for parent, dirs, files in os.walk(self.tmp):
            for name in ['.'] + dirs + files:
                path = os.path.normpath(os.path.join(parent, name))
                if OPAQUE in os.listxattr(path, follow_symlinks=False):
                    found.append(os.path.relpath(path, self.tmp))
        return sorted(set(found))

    def test_marked(self):
        for rel in ('a', 'a/b/', './a//b/.'):
            migrationcopy._mark_opaque(self.upper, rel)
        self.assertEqual(['upper/a', 'upper/a/b'], self.marked())
        self.assertEqual(b'y', os.getxattr(os.path.join(self.upper, 'a'),
                                           OPAQUE))
        for rel in ('.', ''):
            migrationcopy._mark_opaque(self.upper, rel)
        self.assertEqual(['upper', 'upper/a', 'upper/a/b'], self.marked())

    def test_refused_names(self):
        fds = base.open_fds()
        for rel in ('..', '../outside', 'a/../../outside', 'a/..',
                    '/' + self.outside, '/', 'a\0', '\0', None, b'a', 5,
                    ['a']):
            self.assertRaises(exception.ArchiveError,
                              migrationcopy._mark_opaque, self.upper, rel)
        self.assertEqual([], self.marked())
        self.assertEqual(fds, base.open_fds())

    def test_never_through_a_link(self):
        fds = base.open_fds()
        for rel in ('link', 'link/c', 'a/rel', 'a/rel/c', 'file'):
            e = self.assertRaises(OSError, migrationcopy._mark_opaque,
                                  self.upper, rel)
            self.assertIn(e.errno, (errno.ELOOP, errno.ENOTDIR), rel)
        self.assertRaises(FileNotFoundError, migrationcopy._mark_opaque,
                          self.upper, 'missing')
        # upper itself a link.
        link = os.path.join(self.tmp, 'upper-link')
        os.symlink(self.outside, link)
        e = self.assertRaises(OSError, migrationcopy._mark_opaque, link, 'c')
        self.assertIn(e.errno, (errno.ELOOP, errno.ENOTDIR))
        self.assertEqual([], self.marked())
        self.assertEqual(fds, base.open_fds())


class _Image(_Trees):
    """receive_image: an entry of another cache into a partial here."""

    def setUp(self):
        super().setUp()
        self.images = os.path.join(self.state, 'images')
        self.partial = imagecache.make_partial(self.images, IMAGE_ID)
        self.rootfs = os.path.join(self.partial, imagecache.ROOTFS)
        self.view = os.path.join(self.partial, unpack.VIEW)
        self.entry = os.path.join(self.src_top, 'images', IMAGE_ID)
        os.makedirs(os.path.join(self.entry, imagecache.ROOTFS))
        os.chmod(os.path.join(self.src_top, 'images'), 0o700)
        os.chmod(self.entry, 0o700)

    def tree(self, strict=True):
        """The tree as it is.

        :param strict: else without the rootfs (left to the caller on a
            failure) and the partial's mtime (its view made, removed).
        """
        found = base.tree_state(self.tmp)
        if not strict:
            for path in list(found):
                if path == self.rootfs or path.startswith(self.rootfs + '/'):
                    del found[path]
            mode, size, _mtime, ino, what = found[self.partial]
            found[self.partial] = (mode, size, None, ino, what)
        return found

    def args(self, **kwargs):
        values = dict(rootfs=self.rootfs, source=self.entry,
                      image_id=IMAGE_ID, source_ip=IP, transport='local',
                      max_bytes=1 << 30, timeout=60)
        values.update(kwargs)
        return [values[k] for k in ('rootfs', 'source', 'image_id',
                                    'source_ip', 'transport', 'max_bytes',
                                    'timeout')]

    def receive(self, **kwargs):
        return migrationcopy.receive_image(*self.args(**kwargs))


class ImageChecksTest(_Image):
    """receive_image's arguments, each checked before anything is made."""

    def setUp(self):
        super().setUp()
        self.start = self.patch_object(migrationcopy, '_through_child',
                                       side_effect=Reached)

    def refused(self, match=None, **kwargs):
        e = super().refused(match, strict=True, **kwargs)
        self.start.assert_not_called()
        return e

    def test_good_arguments_pass(self):
        for kwargs in ({'transport': 'ssh'},
                       {'transport': 'ssh',
                        'source': '/a-b_c+d.e/F9/images/' + IMAGE_ID},
                       {'transport': 'ssh', 'source': '/images/' + IMAGE_ID},
                       {'transport': 'ssh', 'source_ip': '2001:db8::1'},
                       {'transport': 'ssh', 'max_bytes': 1, 'timeout': 1},
                       {'transport': 'ssh',
                        'timeout': migrationcopy.MAX_TIMEOUT}):
            self.failed(Reached, strict=True, **kwargs)
        self.assertEqual(6, self.start.call_count)
        # Claimed while the child runs, released after.
        self.start.side_effect = lambda *a: self.assertEqual(
            {self.rootfs: None}, self.running) or {'size': 5}
        self.assertEqual(5, self.receive(transport='ssh'))
        self.assertEqual({}, self.running)

    def test_the_rootfs(self):
        other = imagecache.make_partial(self.images, OTHER_IMAGE_ID)
        with open(os.path.join(other, 'rootfs', 'x'), 'w'):
            pass
        file_rootfs = imagecache.make_partial(self.images, OTHER_IMAGE_ID)
        os.rmdir(os.path.join(file_rootfs, 'rootfs'))
        with open(os.path.join(file_rootfs, 'rootfs'), 'w'):
            pass
        theirs = imagecache.make_partial(self.images, OTHER_IMAGE_ID)
        os.chown(os.path.join(theirs, 'rootfs'), 65534, 0)
        missing = imagecache.make_partial(self.images, OTHER_IMAGE_ID)
        os.rmdir(os.path.join(missing, 'rootfs'))
        for rootfs in (self.partial, self.root, self.rootfs + '/',
                       os.path.join(self.rootfs, 'x'), self.view,
                       os.path.join(self.entry, 'rootfs'),
                       os.path.join(other, 'rootfs'),
                       os.path.join(file_rootfs, 'rootfs'),
                       os.path.join(theirs, 'rootfs'),
                       os.path.join(missing, 'rootfs'),
                       os.path.relpath(self.rootfs), None,
                       os.fsencode(self.rootfs)):
            self.refused(rootfs=rootfs)
        # Being unpacked already.
        self.running[self.rootfs] = None
        e = self.assertRaises(exception.PrivilegedCallRefused, self.receive,
                              transport='ssh')
        self.assertIn('is being unpacked already', str(e))
        self.assertEqual({self.rootfs: None}, self.running)
        self.start.assert_not_called()
        del self.running[self.rootfs]

    def test_the_source(self):
        entry = '/var/lib/novalxc/images/' + IMAGE_ID
        for source in ('var/lib/novalxc/images/' + IMAGE_ID, entry + '/',
                       entry + '/.', entry + '/rootfs',
                       '/var/lib/novalxc/images/' + OTHER_IMAGE_ID,
                       '/var/lib/novalxc/images/' + IMAGE_ID.upper(),
                       '/var/lib/novalxc/image/' + IMAGE_ID,
                       '/var/lib/novalxc/images2/' + IMAGE_ID,
                       '/var/lib/novalxc/' + IMAGE_ID,
                       '/' + IMAGE_ID, '/images/./' + IMAGE_ID,
                       '/x/../images/' + IMAGE_ID, '/x//images/' + IMAGE_ID,
                       '/x y/images/' + IMAGE_ID,
                       '/$(id)/images/' + IMAGE_ID,
                       "/x'/images/" + IMAGE_ID, '/x\n/images/' + IMAGE_ID,
                       '/x;y/images/' + IMAGE_ID, entry + '\0', None, 5,
                       os.fsencode(entry), [entry]):
            self.assertIn('is not shaped as image %s\'s cache entry'
                          % IMAGE_ID,
                          str(self.refused(source=source, transport='ssh')),
                          source)

    def test_the_image_id(self):
        for image_id in (IMAGE_ID.upper(), IMAGE_ID.replace('-', ''),
                         '{%s}' % IMAGE_ID, IMAGE_ID + '\n', IMAGE_ID[:-1],
                         '..', '', None, IMAGE_ID.encode()):
            source = '/x/images/%s' % (image_id,)
            self.assertIn('is not an image id', str(self.refused(
                image_id=image_id, source=source, transport='ssh')))

    def test_the_source_ip_and_transport(self):
        for source_ip in ('host.example', '', None, '192.0.2.1 -oX=y',
                          '[::1]', 'fe80::1%eth0', 3221226122,
                          b'\xc0\x00\x02\x0a'):
            self.refused('is no IP address', source_ip=source_ip)
        for transport in ('rsync', 'SSH', '', None):
            self.refused('is not one of local, ssh', transport=transport)

    def test_ints_and_timeout(self):
        for value in (0, -1, True, 1.5, '5', None):
            self.refused('max_bytes %r is not a positive int' % (value,),
                         max_bytes=value)
            self.refused('timeout %r is not a positive int' % (value,),
                         timeout=value)
        self.refused('timeout 86401 is above 86400 s', timeout=86401)


class _RealImage(_Image):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('root only: owners, the child\'s namespace')
        if not trusted_from_root(self.tmp):
            self.skipTest('%s is not reached through directories of '
                          'root\'s alone' % self.tmp)
        try:
            ids.unpack_idmap()
        except exception.IdmapUnavailable as e:
            self.skipTest(str(e))
        self.addCleanup(self._unmount_left)
        self.src_rootfs = os.path.join(self.entry, imagecache.ROOTFS)
        self.make_entry(self.src_rootfs)
        self.stream = os.path.join(
            self.useFixture(fixtures.TempDir()).path, 'stream.tar')

    def _unmount_left(self):
        for point in reversed(mounts_below(self.tmp)):
            subprocess.run(['umount', '--lazy', point], check=False)

    @staticmethod
    def make_entry(top):
        os.chmod(top, 0o755)
        for rel in ('bin', 'sbin', 'usr/bin', 'home/user'):
            os.makedirs(os.path.join(top, rel), 0o755)
        os.chown(os.path.join(top, 'home/user'), 1000, 1000)

        def mkfile(rel, data, mode=0o644, owner=(0, 0)):
            path = os.path.join(top, rel)
            with open(path, 'wb') as f:
                f.write(data)
            os.chown(path, *owner)
            os.chmod(path, mode)
            return path
        mkfile('bin/busybox', b'\x7fELF busybox', 0o755)
        os.symlink('/bin/busybox', os.path.join(top, 'sbin', 'init'))
        mkfile('usr/bin/su', b'su', 0o4755)
        ping = mkfile('usr/bin/ping', b'ping', 0o755)
        os.setxattr(ping, 'security.capability', CAP_NET_RAW_V2)
        os.link(os.path.join(top, 'bin', 'busybox'),
                os.path.join(top, 'bin', 'sh'))
        mkfile('home/user/notes', b'notes', 0o600, (1000, 1001))
        os.setxattr(os.path.join(top, 'home/user/notes'), 'user.tag',
                    b'v')

    def assertReceived(self, size):
        want, got = snapshot(self.src_rootfs), snapshot(self.rootfs)
        self.assertEqual(want, got)
        self.assertEqual(len(b'\x7fELF busybox') + 2 + 4 + 5, size)
        self.assertEqual({'security.capability': CAP_NET_RAW_V2},
                         got['usr/bin/ping'][5])
        self.assertEqual(['bin/busybox', 'bin/sh'], got['bin/sh'][6])
        self.assertEqual(('-rwsr-xr-x', 0, 0), got['usr/bin/su'][:3])
        self.assertEqual((1000, 1001), got['home/user/notes'][1:3])
        self.assertEqual('/bin/busybox', got['sbin/init'][4])
        self.assertFalse(os.path.lexists(self.view))
        self.assertEqual([imagecache.ROOTFS], os.listdir(self.partial))
        self.assertEqual([], mounts_below(self.tmp))
        self.assertEqual({}, self.running)

    def gnu_tar(self):
        with open(self.stream, 'wb') as f:
            subprocess.run(['tar'] + list(migrationcopy.IMAGE_TAR_OPTIONS) +
                           ['--directory=' + self.src_rootfs, '--', '.'],
                           check=True, stdout=f)

    def fake_ssh(self):
        self.patch_object(migrationcopy, 'ssh_command', return_value=[
            'sh', '-c', 'printf %s "$1" > "$0.cmd"; exec cat -- "$0"',
            self.stream])

    def ssh(self, **kwargs):
        return self.receive(transport='ssh', source=REMOTE_ENTRY, **kwargs)


class ImageTest(_RealImage):

    def test_local(self):
        fds = base.open_fds()
        pids = children()
        before = snapshot(self.src_rootfs)
        self.assertReceived(self.receive())
        self.assertEqual(fds, base.open_fds())
        self.assertEqual(pids, children())
        self.assertEqual(before, snapshot(self.src_rootfs))

    def test_over_ssh(self):
        self.gnu_tar()
        self.fake_ssh()
        self.assertReceived(self.ssh())
        self.assertEqual(
            migrationcopy.tree_tar_command(migrationcopy.IMAGE_TAR_OPTIONS,
                                           REMOTE_ENTRY + '/rootfs'),
            read(self.stream + '.cmd').decode())
        migrationcopy.ssh_command.assert_called_once_with(IP)

    def test_a_hostile_stream_then_another_try(self):
        self.fake_ssh()
        for members, name in (
                # An upper layer's whiteout is no image's file.
                ([(tar_info('null', tarfile.CHRTYPE, mode=0o600,
                            devmajor=0, devminor=0), None)], 'null'),
                ([reg('f', b'x', uid=ids.UNPACK_IDS)], 'f')):
            _pax_file(self.stream, [reg('ok', b'ok')] + members)
            e = self.failed(exception.UnsafeArchiveMember,
                            transport='ssh', source=REMOTE_ENTRY)
            self.assertEqual(name, e.kwargs['member'])
            # What was unpacked is the caller's to remove.
            self.assertEqual(['ok'], os.listdir(self.rootfs))
            os.unlink(os.path.join(self.rootfs, 'ok'))
            self.assertFalse(os.path.lexists(self.view))
        self.gnu_tar()
        self.assertReceived(self.ssh())

    def test_above_max_bytes(self):
        e = self.failed(exception.UnsafeArchiveMember, max_bytes=20)
        self.assertIn('exceed the limit of 20 bytes', str(e))


class ImageSourceRefusedTest(_RealImage):
    """A local entry reached through a link or another's directory."""

    def refused(self, match=None, **kwargs):
        e = super().refused(match, strict=True, **kwargs)
        self.assertEqual([], os.listdir(self.rootfs))
        return e

    def test_a_symlink_on_the_way(self):
        images = os.path.join(self.src_top, 'images')
        os.rename(images, images + '2')
        os.symlink('images2', images)
        self.refused('images is no directory reached without a link')

    def test_the_rootfs_a_symlink(self):
        os.rename(self.src_rootfs, self.src_rootfs + '2')
        os.symlink('rootfs2', self.src_rootfs)
        self.refused('rootfs is no directory reached without a link')

    def test_a_directory_of_another_owner(self):
        for path in (self.src_top, self.entry, self.src_rootfs):
            os.chown(path, 65534, 0)
            self.refused('%s is not root\'s alone (owner 65534'
                         % os.path.basename(path))
            os.chown(path, 0, 0)

    def test_a_directory_others_may_write_to(self):
        for path in (os.path.dirname(self.entry), self.src_rootfs):
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            os.chmod(path, 0o775)
            self.refused('is not root\'s alone (owner 0, mode 775)')
            os.chmod(path, mode)

    def test_a_missing_entry(self):
        other = os.path.join(self.src_top, 'images', OTHER_IMAGE_ID)
        self.refused('no directory reached without a link', source=other,
                     image_id=OTHER_IMAGE_ID)

    def test_the_rootfs_not_empty(self):
        os.mkdir(os.path.join(self.rootfs, 'x'))
        e = self.assertRaises(exception.PrivilegedCallRefused, self.receive)
        self.assertIn('is not empty', str(e))
        self.assertEqual({}, self.running)
        self.assertFalse(os.path.lexists(self.view))
