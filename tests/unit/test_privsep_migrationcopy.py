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
from novalxcdriver.privsep import migrationcopy
from novalxcdriver.privsep import rootdirs
from novalxcdriver.privsep import unpack
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
        # Nothing made; TypeError for now (set() of the names comes
        # before their items' check).
        self.failed((exception.PrivilegedCallRefused, TypeError),
                    strict=True, names=[['root.img']])

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
