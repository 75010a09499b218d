"""privsep.rootdirs: a root's directory, its mount points, its removal.

Entry points run here in-process (client mode off) against temporary
driver roots (state and lxc), on a real tree: only the daemon's mount
table (mount.mounts) is mocked, a list of paths the test sets. What a
refusal leaves is the whole temporary tree as it was (modes, inodes,
mtimes, contents, links' targets) and this process's fds. The tests run
in the temporary directory (relative paths land in it), and rmtree fails
a test rather than delete anything outside it, should a check ever let
'/' through.
"""

import os
import shutil
import stat

import fixtures
from oslo_utils import uuidutils

from novalxcdriver import exception
from novalxcdriver.privsep import rootdirs
from tests.unit import base

# Cids that are not ASCII digits (str.isdigit takes the last two).
BAD_CIDS = ('abc', '-3', '+3', '3 ', ' 3', '3\n', '3a', '0x3', '3.0',
            '\u00b2', '\u0663')
# Host paths, only ever checked or given to remove_root (whose rmtree is
# guarded): nothing is made there even if a check failed.
HOST = ('/', '/rootfs/3', '/rootfs/3/rescue', '/etc', '/tmp')
_RMTREE = shutil.rmtree


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def _write(path, text='x'):
    with open(path, 'w') as f:
        f.write(text)


def _read(path):
    with open(path) as f:
        return f.read()


class _Base(base.TestCase):
    """Driver roots state and lxc, empty; a tree outside them."""

    def setUp(self):
        super().setUp()
        # Umask 0: the modes are the entry points' own (restored at the
        # end, whatever an entry point set).
        self.addCleanup(os.umask, os.umask(0))
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.tmp)
        self.patch_object(rootdirs.shutil, 'rmtree', side_effect=self._rmtree)
        self.state = os.path.join(self.tmp, 'state')
        self.lxc = os.path.join(self.tmp, 'lxc')
        os.mkdir(self.state, 0o755)
        os.mkdir(self.lxc, 0o755)
        self.storage_admin_here(self.lxc, self.state)
        self.rootfs = os.path.join(self.state, 'rootfs')
        # A server root's path, and its rescue root's (not made).
        self.root = os.path.join(self.rootfs, '3')
        self.rescue = os.path.join(self.root, 'rescue')
        # Not a driver root: what is refused there must stay as it is.
        self.outside = os.path.join(self.tmp, 'outside')
        os.makedirs(os.path.join(self.outside, 'rootfs', '3'))
        _write(os.path.join(self.outside, 'rootfs', '3', 'keep'), 'keep')
        self.mounted = []
        self.mounts = self.patch_object(
            rootdirs.mount, 'mounts', side_effect=lambda: list(self.mounted))

    def _rmtree(self, path, *args, **kwargs):
        if not isinstance(path, str) or \
                not os.path.abspath(path).startswith(self.tmp + '/'):
            raise AssertionError('rmtree(%r) outside the test\'s tree'
                                 % (path,))
        return _RMTREE(path, *args, **kwargs)

    def tree(self):
        """Every path under the temporary directory, as it is."""
        return base.tree_state(self.tmp, contents=True)

    def listing(self, top):
        """{path relative to top: 'd' or 'f', and its mode} below top."""
        found = {}
        for d, dirs, files in os.walk(top):
            for name in dirs + files:
                path = os.path.join(d, name)
                kind = 'd' if name in dirs else 'f'
                found[os.path.relpath(path, top)] = (kind, _mode(path))
        return found

    def refused(self, fn, *args, match=None, before=None):
        """fn(*args) is refused and touches nothing; the message.

        :param before: the tree before, if the test took it already.
        """
        if before is None:
            before = self.tree()
        fds = base.open_fds()
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, *args)
        if match is not None:
            self.assertIn(match, str(e))
        self.assertEqual(before, self.tree(), args)
        self.assertEqual(fds, base.open_fds(), args)
        self.mounts.assert_not_called()
        return str(e)

    def make_server_root(self, root=None, rescue=False):
        """A root's directory as make_root leaves it, with a file."""
        root = root or self.root
        os.makedirs(os.path.dirname(root), 0o711, exist_ok=True)
        os.mkdir(root, 0o711)
        for name in ('lower', 'merged'):
            os.mkdir(os.path.join(root, name), 0o755)
        _write(os.path.join(root, 'root.img'), 'image')
        if rescue:
            self.make_server_root(os.path.join(root, 'rescue'))
        return root


class ChecksTest(_Base):
    """What is refused as a root's directory, by every entry point."""

    def setUp(self):
        super().setUp()
        self.make_bad_roots()

    def make_bad_roots(self):
        """A server root with its rescue, and the paths bad_roots names.

        What each refused path would need to be made or removed: all
        there.
        """
        s = self.state
        self.make_server_root(rescue=True)
        for cid in BAD_CIDS:
            os.makedirs(os.path.join(self.rootfs, cid))
        for d in (('other', '3'), ('sub', 'rootfs', '3'),
                  ('rootfs', '3', 'root'), ('rootfs', '3', 'x', 'rescue'),
                  ('rootfs', '3', 'rescue', 'rescue'), ('rootfs', 'rescue'),
                  ('rescue',), ('rootfs', '3', '4')):
            os.makedirs(os.path.join(s, *d), exist_ok=True)
        # rootfs/7 is rootfs/3 through a symlink; lxc's rootfs is another
        # tree's (its 3 exists there, its 4 does not).
        os.symlink('3', os.path.join(self.rootfs, '7'))
        os.symlink(os.path.join(self.outside, 'rootfs'),
                   os.path.join(self.lxc, 'rootfs'))

    def bad_roots(self):
        r = self.root
        s = self.state
        return [
            # Outside the driver roots, or one itself, or its rootfs.
            os.path.join(self.outside, 'rootfs', '3'),
            os.path.join(self.outside, 'rootfs', '4'),
            os.path.join(self.tmp, 'rootfs', '3'),
            self.tmp, s, self.lxc, self.rootfs, self.outside,
            # Not absolute (the cwd is self.tmp) or not normalized.
            'state/rootfs/3', 'state/rootfs/4', 'state/rootfs/3/rescue',
            'rootfs/3', '3', '', './state/rootfs/3',
            s + '/rootfs/x/../3', r + '/../3', r + '/', r + '/.',
            s + '//rootfs/3', s + '/./rootfs/3', self.rootfs + '/',
            r + '/rescue/', r + '/./rescue', r + '//rescue',
            # Through a symlink: the cid, the rootfs directory.
            os.path.join(self.rootfs, '7'),
            os.path.join(self.rootfs, '7', 'rescue'),
            os.path.join(self.lxc, 'rootfs', '3'),
            os.path.join(self.lxc, 'rootfs', '4'),
            os.path.join(self.lxc, 'rootfs', '3', 'rescue'),
            # Its parent not named rootfs, or not directly under a root.
            os.path.join(s, 'other', '3'), os.path.join(s, '3'),
            os.path.join(s, 'sub', 'rootfs', '3'),
            os.path.join(r, 'rootfs', '4'), os.path.join(r, '4'),
            os.path.join(s, 'ROOTFS', '3'),
        ] + [
            # The cid not ASCII digits.
            os.path.join(self.rootfs, cid) for cid in BAD_CIDS
        ] + [
            os.path.join(self.rootfs, cid, 'rescue') for cid in BAD_CIDS
        ] + [
            # rescue only directly under a cid's directory.
            os.path.join(self.rootfs, 'rescue'), os.path.join(s, 'rescue'),
            os.path.join(r, 'x', 'rescue'), os.path.join(r, 'root'),
            os.path.join(self.rescue, 'rescue'), os.path.join(r, 'Rescue'),
            os.path.join(r, 'rescue2'), os.path.join(r, 'lower'),
            # NUL.
            r + '\0', r + '\0/x', self.rescue + '\0',
            # Not a str.
            None, 3, 3.0, os.fsencode(r), [r], (r,),
        ]

    def test_check_root_dir_accepts(self):
        # Whether it exists or not.
        for path in (self.root, os.path.join(self.rootfs, '0'),
                     os.path.join(self.rootfs, '0123456789')):
            self.assertIsNone(rootdirs.check_root_dir('c', path))
            self.assertIsNone(rootdirs.check_root_dir('c', path,
                                                      rescue_too=True))
        self.assertIsNone(rootdirs.check_root_dir('c', self.rescue,
                                                  rescue_too=True))
        # In the other root, and a root that does not exist yet.
        os.unlink(os.path.join(self.lxc, 'rootfs'))
        for path in (os.path.join(self.lxc, 'rootfs', '5'),
                     os.path.join(self.lxc, 'rootfs', '5', 'rescue')):
            self.assertIsNone(rootdirs.check_root_dir('c', path,
                                                      rescue_too=True))

    def test_check_root_dir(self):
        for path in self.bad_roots() + list(HOST):
            self.refused(rootdirs.check_root_dir, 'c', path)
            self.refused(rootdirs.check_root_dir, 'c', path, True)
        msg = self.refused(rootdirs.check_root_dir, 'the_call',
                           os.path.join(self.state, 'other', '3'))
        self.assertIn('the_call', msg)

    def test_rescue_only_with_rescue_too(self):
        self.refused(rootdirs.check_root_dir, 'c', self.rescue,
                     match='not a root')
        self.refused(rootdirs.check_root_dir, 'c', self.rescue, False)
        self.assertIsNone(rootdirs.check_root_dir('c', self.rescue, True))

    def test_make_root(self):
        for path in self.bad_roots() + ['/']:
            self.refused(rootdirs.make_root, path, False)
            self.refused(rootdirs.make_root, path, True)

    def test_make_mountpoint(self):
        for path in self.bad_roots():
            if isinstance(path, str):
                for name in rootdirs.MOUNTPOINTS:
                    self.refused(rootdirs.make_mountpoint,
                                 path + '/' + name)
            else:
                self.refused(rootdirs.make_mountpoint, path)

    def test_remove_root(self):
        for path in self.bad_roots() + list(HOST):
            self.refused(rootdirs.remove_root, path)
        self.assertEqual('keep', _read(os.path.join(
            self.outside, 'rootfs', '3', 'keep')))


class MakeRootTest(_Base):

    def test_a_server_root(self):
        self.assertIsNone(rootdirs.make_root(self.root, False))
        self.assertEqual({'rootfs': ('d', 0o711),
                          'rootfs/3': ('d', 0o711),
                          'rootfs/3/lower': ('d', 0o755),
                          'rootfs/3/merged': ('d', 0o755)},
                         self.listing(self.state))

    def test_with_its_disk_mountpoint(self):
        rootdirs.make_root(self.root, True)
        self.assertEqual({'lower': ('d', 0o755), 'merged': ('d', 0o755),
                          'root': ('d', 0o755)},
                         self.listing(self.root))
        self.assertEqual(0o711, _mode(self.root))
        self.assertEqual(0o711, _mode(self.rootfs))

    def test_in_either_driver_root(self):
        path = os.path.join(self.lxc, 'rootfs', '0')
        rootdirs.make_root(path, False)
        self.assertEqual({'rootfs': ('d', 0o711),
                          'rootfs/0': ('d', 0o711),
                          'rootfs/0/lower': ('d', 0o755),
                          'rootfs/0/merged': ('d', 0o755)},
                         self.listing(self.lxc))
        self.assertEqual({}, self.listing(self.state))

    def test_an_existing_rootfs_directory_is_left(self):
        os.mkdir(self.rootfs, 0o750)
        other = self.make_server_root(os.path.join(self.rootfs, '5'))
        os.chmod(other, 0o700)
        before = self.tree()
        rootdirs.make_root(self.root, False)
        self.assertEqual(0o750, _mode(self.rootfs))
        self.assertEqual(0o711, _mode(self.root))
        after = self.tree()
        for path in before:
            if path != self.rootfs:   # its mtime: 3 was made in it
                self.assertEqual(before[path], after[path], path)

    def test_an_existing_root_is_left(self):
        # Someone's: mode, contents, and no layer added to it.
        os.makedirs(self.root, 0o700)
        os.chmod(self.rootfs, 0o755)
        _write(os.path.join(self.root, 'mine'), 'mine')
        before = self.tree()
        for disk_mountpoint in (False, True):
            self.assertRaises(FileExistsError, rootdirs.make_root,
                              self.root, disk_mountpoint)
            self.assertEqual(before, self.tree())
        self.assertEqual(['mine'], os.listdir(self.root))
        self.assertEqual(0o700, _mode(self.root))
        self.assertEqual(0o755, _mode(self.rootfs))
        # A rescue root too.
        os.mkdir(self.rescue, 0o700)
        before = self.tree()
        self.assertRaises(FileExistsError, rootdirs.make_root, self.rescue,
                          False)
        self.assertEqual(before, self.tree())

    def test_an_existing_file_or_link_is_left(self):
        os.mkdir(self.rootfs, 0o711)
        _write(self.root, 'a file')
        os.chmod(self.root, 0o600)
        before = self.tree()
        self.assertRaises(FileExistsError, rootdirs.make_root, self.root,
                          True)
        self.assertEqual(before, self.tree())
        # A dangling symlink: refused, nothing made where it points.
        os.unlink(self.root)
        target = os.path.join(self.outside, 'made')
        os.symlink(target, self.root)
        self.refused(rootdirs.make_root, self.root, False, match='symlink')
        self.assertFalse(os.path.lexists(target))

    def test_a_rescue_root_in_its_server_root(self):
        rootdirs.make_root(self.root, False)
        server = self.listing(self.root)
        rootdirs.make_root(self.rescue, False)
        self.assertEqual({'lower': ('d', 0o755), 'merged': ('d', 0o755)},
                         self.listing(self.rescue))
        self.assertEqual(0o711, _mode(self.rescue))
        self.assertEqual(dict(server, rescue=('d', 0o711),
                              **{'rescue/lower': ('d', 0o755),
                                 'rescue/merged': ('d', 0o755)}),
                         self.listing(self.root))
        self.assertRaises(FileExistsError, rootdirs.make_root, self.rescue,
                          True)

    def test_a_rescue_root_with_its_disk_mountpoint(self):
        self.make_server_root()
        rootdirs.make_root(self.rescue, True)
        self.assertEqual({'lower': ('d', 0o755), 'merged': ('d', 0o755),
                          'root': ('d', 0o755)},
                         self.listing(self.rescue))

    def test_a_rescue_root_needs_its_server_root(self):
        # Nothing is made for it: not its server root, nor rootfs.
        for made in ((), (self.rootfs,)):
            for d in made:
                os.mkdir(d, 0o711)
            before = self.tree()
            for disk_mountpoint in (False, True):
                self.assertRaises(FileNotFoundError, rootdirs.make_root,
                                  self.rescue, disk_mountpoint)
                self.assertEqual(before, self.tree())
        self.assertFalse(os.path.lexists(self.root))

    def test_disk_mountpoint_is_a_bool(self):
        for value in (1, 0, 'yes', '', 'True', None, 1.0, [], [True]):
            msg = self.refused(rootdirs.make_root, self.root, value)
            self.assertIn(repr(value), msg)
            self.assertIn('make_root', msg)
        self.make_server_root()
        for value in (1, 'yes', None):
            self.refused(rootdirs.make_root, self.rescue, value)

    def test_a_missing_driver_root_is_not_made_writable_by_others(self):
        # The daemon's umask, not the caller's (0 here), for what makedirs
        # makes with its default mode.
        os.rmdir(self.state)
        rootdirs.make_root(self.root, False)
        self.assertEqual(0, _mode(self.state) & 0o022)
        self.assertEqual(0o711, _mode(self.rootfs))
        self.assertEqual(0o711, _mode(self.root))


class MakeMountpointTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_server_root(rescue=True)

    def test_root_and_ephemeral(self):
        for top in (self.root, self.rescue):
            before = self.listing(top)
            for name in ('root', 'ephemeral'):
                path = os.path.join(top, name)
                self.assertIsNone(rootdirs.make_mountpoint(path))
                self.assertTrue(stat.S_ISDIR(os.lstat(path).st_mode))
                self.assertEqual(0o755, _mode(path))
            self.assertEqual(dict(before, root=('d', 0o755),
                                  ephemeral=('d', 0o755)),
                             self.listing(top))
        self.assertEqual(0o711, _mode(self.root))
        self.assertEqual(0o711, _mode(self.rescue))

    def test_in_the_other_driver_root(self):
        root = self.make_server_root(os.path.join(self.lxc, 'rootfs', '0'))
        rootdirs.make_mountpoint(os.path.join(root, 'ephemeral'))
        self.assertEqual(0o755, _mode(os.path.join(root, 'ephemeral')))

    def test_an_existing_one_is_left(self):
        path = os.path.join(self.root, 'root')
        os.mkdir(path, 0o700)
        _write(os.path.join(path, 'etc'), 'mine')
        before = self.tree()
        for _twice in range(2):
            self.assertIsNone(rootdirs.make_mountpoint(path))
            self.assertEqual(before, self.tree())
        # And one this made, again.
        path = os.path.join(self.rescue, 'ephemeral')
        rootdirs.make_mountpoint(path)
        before = self.tree()
        rootdirs.make_mountpoint(path)
        self.assertEqual(before, self.tree())

    def test_a_file_in_its_place_is_left(self):
        path = os.path.join(self.root, 'ephemeral')
        _write(path, 'not a directory')
        before = self.tree()
        self.assertRaises(FileExistsError, rootdirs.make_mountpoint, path)
        self.assertEqual(before, self.tree())

    def test_other_names(self):
        for top in (self.root, self.rescue):
            for name in ('upper', 'work', 'lower', 'merged', 'rescue',
                         'root.img', '..', '.', '', 'root/x', 'root/root',
                         'ephemeral/x', 'x/root', 'rescue/x/root',
                         'lower/ephemeral', 'Root', 'root ', 'root\n',
                         'ephemeral2', 'root/', 'root/.', 'root/..',
                         '/root', './root', 'x/../root', 'root\0'):
                os.makedirs(os.path.join(top, 'x'), exist_ok=True)
                os.makedirs(os.path.join(top, 'root'), exist_ok=True)
                self.refused(rootdirs.make_mountpoint, top + '/' + name)
        for value in (None, 3, b'root', os.fsencode(self.root + '/root'),
                      [self.root + '/root']):
            self.refused(rootdirs.make_mountpoint, value)

    def test_through_a_symlink(self):
        target = os.path.join(self.outside, 'target')
        os.mkdir(target, 0o700)
        os.symlink(target, os.path.join(self.root, 'root'))
        os.symlink(os.path.join(self.outside, 'missing'),
                   os.path.join(self.root, 'ephemeral'))
        for name in ('root', 'ephemeral'):
            self.refused(rootdirs.make_mountpoint,
                         os.path.join(self.root, name),
                         match='symlink')
        self.assertFalse(os.path.lexists(os.path.join(self.outside,
                                                      'missing')))
        self.assertEqual(0o700, _mode(target))


class RemoveRootTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_server_root(rescue=True)
        self.other = self.make_server_root(os.path.join(self.rootfs, '30'))
        r = self.root
        os.makedirs(os.path.join(r, 'upper', 'etc', 'deep', 'er'))
        _write(os.path.join(r, 'upper', 'etc', 'deep', 'er', 'f'))
        os.mkdir(os.path.join(r, 'root'), 0o755)
        os.mkdir(os.path.join(r, 'empty'), 0o700)
        _write(os.path.join(r, 'root', 'private'))
        os.chmod(os.path.join(r, 'root', 'private'), 0)
        # Links out of the tree: to a directory, a file; dangling.
        self.victim = os.path.join(self.outside, 'victim')
        os.mkdir(self.victim)
        _write(os.path.join(self.victim, 'file'), 'keep')
        os.symlink(self.victim, os.path.join(r, 'upper', 'to-dir'))
        os.symlink(os.path.join(self.victim, 'file'),
                   os.path.join(r, 'upper', 'etc', 'to-file'))
        os.symlink('/nonexistent', os.path.join(r, 'dangling'))
        os.symlink(self.outside, os.path.join(self.rescue, 'out'))
        os.mkfifo(os.path.join(r, 'fifo'))

    def assertOthersKept(self, before):
        """What is not below self.root is as it was (its parent aside)."""
        after = self.tree()
        for path, seen in before.items():
            if path == self.rootfs:
                continue
            if path == self.root or path.startswith(self.root + '/'):
                continue
            self.assertEqual(seen, after.get(path), path)
        self.assertEqual(['file'], os.listdir(self.victim))
        self.assertEqual('keep', _read(os.path.join(self.victim, 'file')))

    def test_deletes_the_whole_tree(self):
        before = self.tree()
        self.assertIs(True, rootdirs.remove_root(self.root))
        self.assertFalse(os.path.lexists(self.root))
        self.assertEqual(['30'], os.listdir(self.rootfs))
        self.assertOthersKept(before)
        self.assertEqual(
            {p for p in before if not p.startswith(self.root + '/') and
             p != self.root}, set(self.tree()))
        self.mounts.assert_called_once_with()

    def test_a_rescue_root(self):
        before = self.tree()
        self.assertIs(True, rootdirs.remove_root(self.rescue))
        self.assertFalse(os.path.lexists(self.rescue))
        after = self.tree()
        for path in before:
            if path.startswith(self.rescue + '/') or path == self.rescue:
                continue
            if path != self.root:   # its mtime
                self.assertEqual(before[path], after[path], path)
        self.assertEqual(['file'], os.listdir(self.victim))
        self.assertTrue(os.path.isdir(self.outside))

    def test_a_missing_one(self):
        before = self.tree()
        for path in (os.path.join(self.rootfs, '4'),
                     os.path.join(self.rootfs, '4', 'rescue'),
                     os.path.join(self.lxc, 'rootfs', '3'),
                     os.path.join(self.other, 'rescue')):
            self.assertIs(False, rootdirs.remove_root(path))
        self.assertEqual(before, self.tree())
        # And once removed.
        self.assertIs(True, rootdirs.remove_root(self.root))
        self.assertIs(False, rootdirs.remove_root(self.root))
        self.assertIs(False, rootdirs.remove_root(self.rescue))

    def refused_mounted(self, path, *points):
        before = self.tree()
        e = self.assertRaises(exception.MountFailed, rootdirs.remove_root,
                              path)
        self.assertEqual(before, self.tree())
        msg = str(e)
        self.assertIn(path, msg)
        for point in points:
            self.assertIn(point, msg)
        return msg

    def test_mounted_on_itself(self):
        for path in (self.root, self.rescue):
            self.mounted = ['/proc', path, '/sys']
            msg = self.refused_mounted(path, path)
            self.assertNotIn('/proc', msg)

    def test_mounted_below_it(self):
        deep = os.path.join(self.root, 'upper', 'etc', 'deep', 'er')
        points = [os.path.join(self.root, 'root'),
                  os.path.join(self.rescue, 'merged'), deep]
        self.mounted = ['/', self.state] + points
        msg = self.refused_mounted(self.root, *points)
        # Named in order.
        self.assertIn('still mounted: ' + ', '.join(sorted(points)), msg)
        # One stacked on another.
        self.mounted = points[:1] * 2
        self.refused_mounted(self.root, points[0])
        # A rescue root's, for it and its server root.
        self.mounted = [os.path.join(self.rescue, 'merged')]
        self.refused_mounted(self.rescue, self.mounted[0])
        self.refused_mounted(self.root, self.mounted[0])
        # Even where nothing exists (a mount table is what counts).
        self.mounted = [os.path.join(self.root, 'gone', 'x')]
        self.refused_mounted(self.root, self.mounted[0])

    def test_mounts_elsewhere_do_not_block(self):
        r = self.root
        self.mounted = ['/', self.tmp, self.state, self.rootfs,
                        r + '0', r + '-x', r + '0/root', self.other,
                        os.path.join(self.other, 'root'), r + 'escue',
                        os.path.join(self.lxc, 'rootfs', '3')]
        # A server root's mounts outside its rescue root let the rescue
        # root go.
        self.mounted += [os.path.join(r, 'root'), self.rescue + '0',
                         self.rescue + '-x', r + '/rescu']
        self.assertIs(True, rootdirs.remove_root(self.rescue))
        self.mounted = self.mounted[:-4]
        self.assertIs(True, rootdirs.remove_root(r))
        self.assertFalse(os.path.lexists(r))
        self.assertTrue(os.path.isdir(os.path.join(self.other, 'lower')))

    def test_refused_keeps_everything(self):
        r = self.root
        for path in ('/', self.tmp, self.state, self.lxc, self.rootfs,
                     r + '/', r + '/root', r + '/upper', r + '/fifo',
                     r + '/dangling', r + '/upper/to-dir',
                     self.rescue + '/out', self.rescue + '/rescue',
                     self.victim, os.path.join(self.outside, 'rootfs', '3'),
                     'state/rootfs/3', 'state/rootfs/3/rescue', r + '\0',
                     None, os.fsencode(r)):
            self.refused(rootdirs.remove_root, path)


class RootIdsTest(_Base):

    def test_none_before_any_root(self):
        self.assertEqual([], rootdirs.root_ids(self.rootfs))

    def test_ids_of_the_roots_only(self):
        for name in ('12', '3', '0'):
            self.make_server_root(os.path.join(self.rootfs, name))
        # Not a root's name: left out (str.isdigit takes '\u00b2').
        for name in ('x', '\u00b2', '-1', '4.tmp'):
            os.mkdir(os.path.join(self.rootfs, name))
        self.assertEqual([0, 3, 12], rootdirs.root_ids(self.rootfs))

    def test_refused_elsewhere(self):
        for top in (self.state, os.path.join(self.outside, 'rootfs'),
                    os.path.join(self.lxc, 'x', 'rootfs'), 'rootfs',
                    self.rootfs + '/', os.path.join(self.state, 'roots')):
            self.refused(rootdirs.root_ids, top)

    def test_refused_through_a_symlink(self):
        os.symlink(os.path.join(self.outside, 'rootfs'), self.rootfs)
        self.refused(rootdirs.root_ids, self.rootfs,
                     match='goes through a symlink')


class SymlinkedDriverRootTest(_Base):
    """A driver root that is a symlink (/var/lib/nova -> /srv/nova).

    The mount table names resolved paths: a mount below the root must
    still block its removal.
    """

    def setUp(self):
        super().setUp()
        self.real = os.path.join(self.tmp, 'srv-state')
        os.mkdir(self.real, 0o755)
        self.link = os.path.join(self.tmp, 'state-link')
        os.symlink(self.real, self.link)
        self.storage_admin_here(self.lxc, self.link)

    def test_a_mount_named_by_its_real_path_blocks_the_removal(self):
        root = os.path.join(self.link, 'rootfs', '3')
        rootdirs.make_root(root, False)
        _write(os.path.join(root, 'root.img'), 'disk')
        self.mounted = [os.path.join(self.real, 'rootfs', '3', 'root')]
        before = self.tree()
        e = self.assertRaises(exception.MountFailed, rootdirs.remove_root,
                              root)
        self.assertIn(self.mounted[0], str(e))
        self.assertEqual(before, self.tree())
        self.mounted = []
        self.assertTrue(rootdirs.remove_root(root))
        self.assertFalse(os.path.lexists(root))


class MakeMountpointOfAMissingRootTest(_Base):

    def test_never_makes_the_root_s_directory(self):
        before = self.tree()
        self.assertRaises(FileNotFoundError, rootdirs.make_mountpoint,
                          os.path.join(self.root, 'root'))
        self.assertEqual(before, self.tree())
        self.assertFalse(os.path.lexists(self.rootfs))


class TokenChecksTest(_Base):
    """What the migration token's entry points refuse, as ChecksTest's.

    Each refused root's directory that exists holds a token file (the
    same token), so that a check letting one through would change the
    tree or find it.
    """

    TOKEN = '11111111-2222-3333-4444-555555555555'
    bad_roots = ChecksTest.bad_roots
    make_bad_roots = ChecksTest.make_bad_roots

    def setUp(self):
        super().setUp()
        self.make_bad_roots()
        for path in self.bad_roots() + [self.root]:
            if isinstance(path, str) and '\0' not in path and \
                    os.path.isdir(path) and not os.path.lexists(
                        os.path.join(path, rootdirs.TOKEN)):
                _write(os.path.join(path, rootdirs.TOKEN), self.TOKEN + '\n')
        os.chmod(os.path.join(self.rescue, rootdirs.TOKEN), 0o600)
        # The server root's own is not refused: never given below.
        self.roots = self.bad_roots() + [self.rescue]
        self.assertTrue(rootdirs.has_token(self.root, self.TOKEN))

    def test_new_token(self):
        before = self.tree()
        for path in self.roots:
            self.refused(rootdirs.new_token, path)
        self.assertEqual(before, self.tree())
        self.assertEqual(self.TOKEN + '\n', _read(os.path.join(
            self.outside, 'rootfs', '3', rootdirs.TOKEN)))

    def test_remove_token(self):
        for path in self.roots:
            self.refused(rootdirs.remove_token, path)
        self.assertEqual(self.TOKEN + '\n', _read(os.path.join(
            self.rescue, rootdirs.TOKEN)))

    def test_has_token(self):
        # Only the shape counts: another driver's root of this machine,
        # through a link or not, is read (nothing changes).
        shaped = [p for p in self.roots if isinstance(p, str) and
                  os.path.isabs(p) and os.path.normpath(p) == p and
                  '\0' not in p and rootdirs.CID_RE.match(
                      os.path.basename(p)) and
                  os.path.basename(os.path.dirname(p)) == 'rootfs']
        self.assertEqual(
            sorted([os.path.join(self.outside, 'rootfs', '3'),
                    os.path.join(self.outside, 'rootfs', '4'),
                    os.path.join(self.tmp, 'rootfs', '3'),
                    os.path.join(self.rootfs, '7'),
                    os.path.join(self.lxc, 'rootfs', '3'),
                    os.path.join(self.lxc, 'rootfs', '4'),
                    os.path.join(self.state, 'sub', 'rootfs', '3'),
                    os.path.join(self.root, 'rootfs', '4')]),
            sorted(shaped))
        before = self.tree()
        found = {p: rootdirs.has_token(p, self.TOKEN) for p in shaped}
        self.assertEqual(before, self.tree())
        self.assertEqual(
            {os.path.join(self.outside, 'rootfs', '3'),
             os.path.join(self.rootfs, '7'),
             os.path.join(self.lxc, 'rootfs', '3'),
             os.path.join(self.state, 'sub', 'rootfs', '3')},
            {p for p, yes in found.items() if yes})
        for path in [p for p in self.roots if p not in shaped] + list(HOST):
            if path in ('/rootfs/3',):
                continue
            msg = self.refused(rootdirs.has_token, path, self.TOKEN)
            self.assertIn('not shaped as a root', msg)
        self.assertIs(False, rootdirs.has_token('/rootfs/3', self.TOKEN))

    def test_the_rescue_root_s(self):
        for fn, args in ((rootdirs.new_token, ()),
                         (rootdirs.remove_token, ())):
            self.refused(fn, self.rescue, *args, match='not a root')
        self.refused(rootdirs.has_token, self.rescue, self.TOKEN,
                     match='not shaped as a root')

    def test_has_token_takes_a_str(self):
        for token in (None, self.TOKEN.encode(), (self.TOKEN + '\n').encode(),
                      3, [self.TOKEN], (self.TOKEN,), {self.TOKEN: 1},
                      bytearray(self.TOKEN.encode()), True):
            msg = self.refused(rootdirs.has_token, self.root, token)
            self.assertIn(repr(token), msg)
        self.assertTrue(rootdirs.has_token(self.root, self.TOKEN))


class NewTokenTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_server_root()
        self.token = os.path.join(self.root, rootdirs.TOKEN)

    def test_a_fresh_token_each_time(self):
        before = self.listing(self.root)
        seen = set()
        for _time in range(3):
            token = rootdirs.new_token(self.root)
            self.assertIsInstance(token, str)
            self.assertTrue(uuidutils.is_uuid_like(token), token)
            self.assertNotIn(token, seen)
            seen.add(token)
            self.assertEqual(token + '\n', _read(self.token))
            self.assertTrue(stat.S_ISREG(os.lstat(self.token).st_mode))
            # Root's alone, whatever the umask (0 here).
            self.assertEqual(0o600, _mode(self.token))
            # Nothing else: no temporary file left.
            self.assertEqual(dict(before, **{rootdirs.TOKEN: ('f', 0o600)}),
                             self.listing(self.root))
            self.assertTrue(rootdirs.has_token(self.root, token))
        for old in seen - {token}:
            self.assertFalse(rootdirs.has_token(self.root, old))

    def test_in_the_other_driver_root(self):
        root = self.make_server_root(os.path.join(self.lxc, 'rootfs', '0'))
        state = base.tree_state(self.state, contents=True)
        token = rootdirs.new_token(root)
        self.assertEqual(token + '\n', _read(os.path.join(root,
                                                          rootdirs.TOKEN)))
        self.assertEqual(state, base.tree_state(self.state, contents=True))

    def test_a_link_at_its_name_is_replaced_not_followed(self):
        target = os.path.join(self.outside, 'rootfs', '3', 'keep')
        os.symlink(target, self.token)
        token = rootdirs.new_token(self.root)
        self.assertFalse(os.path.islink(self.token))
        self.assertEqual(token + '\n', _read(self.token))
        self.assertEqual('keep', _read(target))

    def test_a_missing_root(self):
        before = self.tree()
        self.assertRaises(FileNotFoundError, rootdirs.new_token,
                          os.path.join(self.rootfs, '4'))
        self.assertEqual(before, self.tree())


class RemoveTokenTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_server_root()
        self.token = os.path.join(self.root, rootdirs.TOKEN)

    def test_removed_once(self):
        rootdirs.new_token(self.root)
        before = self.tree()
        self.assertIs(True, rootdirs.remove_token(self.root))
        self.assertFalse(os.path.lexists(self.token))
        after = self.tree()
        self.assertEqual({p for p in before if p != self.token}, set(after))
        for path in after:
            if path != self.root:   # its mtime
                self.assertEqual(before[path], after[path], path)
        for _twice in range(2):
            self.assertIs(False, rootdirs.remove_token(self.root))
        self.assertEqual(after, self.tree())

    def test_none(self):
        before = self.tree()
        self.assertIs(False, rootdirs.remove_token(self.root))
        self.assertIs(False, rootdirs.remove_token(
            os.path.join(self.rootfs, '4')))
        self.assertEqual(before, self.tree())

    def test_a_link_itself(self):
        target = os.path.join(self.outside, 'rootfs', '3', 'keep')
        os.symlink(target, self.token)
        self.assertIs(True, rootdirs.remove_token(self.root))
        self.assertFalse(os.path.lexists(self.token))
        self.assertEqual('keep', _read(target))


class HasTokenTest(_Base):

    TOKEN = '11111111-2222-3333-4444-555555555555'

    def setUp(self):
        super().setUp()
        self.make_server_root()
        self.token = os.path.join(self.root, rootdirs.TOKEN)
        # A FIFO's open must not hold the test (nor the daemon) forever.
        self.useFixture(fixtures.Timeout(10, gentle=True))

    def found(self, token):
        """has_token(self.root, token), which changed nothing."""
        before = self.tree()
        fds = base.open_fds()
        found = rootdirs.has_token(self.root, token)
        self.assertIsInstance(found, bool)
        self.assertEqual(fds, base.open_fds())
        self.assertEqual(before, self.tree())
        self.mounts.assert_not_called()
        return found

    def test_the_token_only(self):
        token = rootdirs.new_token(self.root)
        self.assertIs(True, self.found(token))
        for other in (uuidutils.generate_uuid(), token[:-1], token + '0',
                      token[1:], token.upper(), token + '\n', ' ' + token,
                      token + token, token[:8], '', ' ', '\n',
                      token.replace('-', ''), token + '\0'):
            self.assertIs(False, self.found(other), other)

    def test_more_than_a_token_in_the_file(self):
        token = rootdirs.new_token(self.root)
        for text in (token + '\n' + token + '\n', token + 'x',
                     'x' + token, token + '\n' + 'x' * 100,
                     token * 100):
            _write(self.token, text)
            self.assertIs(False, self.found(token), text)
        # A long token in a file holding it whole.
        long = 'a' * 200
        _write(self.token, long)
        self.assertIs(False, self.found(long))

    def test_an_empty_token(self):
        for text in ('', '\n', ' \n'):
            _write(self.token, text)
            self.assertIs(False, self.found(''), text)
            self.assertIs(False, self.found(' '), text)

    def test_no_file(self):
        self.assertFalse(os.path.lexists(self.token))
        self.assertIs(False, self.found(self.TOKEN))
        # Nor a root's directory.
        self.assertIs(False, rootdirs.has_token(
            os.path.join(self.rootfs, '4'), self.TOKEN))
        self.assertIs(False, rootdirs.has_token(
            os.path.join(self.lxc, 'rootfs', '3'), self.TOKEN))

    def test_a_link_to_a_file_holding_it(self):
        # Anyone's file with the token would do: never followed.
        target = os.path.join(self.outside, 'token')
        _write(target, self.TOKEN + '\n')
        os.symlink(target, self.token)
        self.assertIs(False, self.found(self.TOKEN))
        # Relative, in the root's directory.
        os.unlink(self.token)
        _write(os.path.join(self.root, 'other'), self.TOKEN + '\n')
        os.symlink('other', self.token)
        self.assertIs(False, self.found(self.TOKEN))

    def test_a_fifo(self):
        os.mkfifo(self.token, 0o600)
        self.assertIs(False, self.found(self.TOKEN))
        # Even one a writer holds open with the token in it.
        writer = os.open(self.token, os.O_RDWR | os.O_NONBLOCK)
        self.addCleanup(os.close, writer)
        os.write(writer, (self.TOKEN + '\n').encode())
        self.assertIs(False, self.found(self.TOKEN))

    def test_a_directory(self):
        os.mkdir(self.token, 0o700)
        _write(os.path.join(self.token, self.TOKEN), self.TOKEN)
        self.assertIs(False, self.found(self.TOKEN))
