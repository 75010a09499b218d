"""privsep.replacement: a root's layers renewed in place (Nova's rebuild).

Entry points run here in-process (client mode off) against temporary
driver roots (state and lxc), on a real tree, as in
test_privsep_rootdirs: only the daemon's mount table (mount.mounts, a
list of paths the test sets) and disks.sync_filesystem (a recorder of
what the record's file was when it was called) are mocked. What a
refusal leaves is the whole temporary tree as it was (modes, inodes,
mtimes, contents, links' targets) and this process's fds. The tests run
in the temporary directory (relative paths land in it), and rmtree fails
a test rather than delete anything outside it.
"""

import json
import os
import pathlib
import shutil
import stat

from novalxcdriver import exception
from novalxcdriver.privsep import disks
from novalxcdriver.privsep import replacement
from tests.unit import base
from tests.unit import test_privsep_rootdirs

BAD_CIDS = test_privsep_rootdirs.BAD_CIDS
_mode = test_privsep_rootdirs._mode
_write = test_privsep_rootdirs._write
_read = test_privsep_rootdirs._read
R = replacement.Replacement
RECORD = 'replacing.json'
# Every (layer, suffix) a replacement acts on, written out rather than
# taken from the module: a name added there must fail here.
VALID = (('root/upper', ''), ('root/upper', '.rebuild-old'),
         ('root/work', ''), ('root/work', '.rebuild-old'),
         ('ephemeral.img', ''), ('ephemeral.img', '.rebuild-old'),
         ('config-drive', ''), ('config-drive', '.rebuild-old'),
         ('config-drive', '.rebuild-new'), ('config-drive', '.rebuild-tmp'))
# Names in a root's directory that are not a layer's: never renamed or
# deleted here (whether they exist or not).
NOT_LAYERS = (
    'root/lower', 'root.img', 'config-drive.other',
    'ephemeral.img.rebuild-new', 'ephemeral.img.rebuild-tmp',
    'root/upper.rebuild-tmp', 'root/upper.rebuild-new',
    'root/work.rebuild-new', 'config-drive.rebuild-old.rebuild-old',
    'config-drive.rebuild-new.rebuild-old', 'lower', 'merged', 'root',
    'upper', 'work', 'rescue', 'ephemeral', RECORD, 'migration-token',
    'root/upper/etc', 'root/upper/etc/hostname', 'root/work/work',
    'config-drive/openstack', 'Config-drive', 'config-drive ',
    'config-drive\n', 'config-drive/', 'root/upper/', 'config-drive/.',
    'config-drive.rebuild-', 'config-drive.rebuild-old/',
    'ephemeral.img2', 'xconfig-drive', 'x/config-drive', 'root/x/upper',
    'root/upper/root/upper', 'config-drive\0', 'rescue/config-drive',
    'rescue/root/upper', 'rescue/ephemeral.img', '3/config-drive', '',
    '.', '..', '../config-drive', '../3/config-drive')
DEFAULTS = {'image_id': 'img', 'hostname': 'host', 'ephemeral_gb': 2,
            'config_drive': True}
_SYNC_FILESYSTEM = disks.sync_filesystem


def _at_or_below(path, top):
    return path == top or path.startswith(top + '/')


class _Base(test_privsep_rootdirs._Base):
    """Driver roots state and lxc, empty; a tree outside them.

    As test_privsep_rootdirs' (rmtree guarded, the daemon's mount table
    mocked, refusals checked against the whole tree and the fds), with
    a victim outside the roots and disks.sync_filesystem recorded.
    """

    def setUp(self):
        super().setUp()
        self.victim = os.path.join(self.outside, 'victim')
        os.makedirs(self.victim)
        _write(os.path.join(self.victim, 'keep'), 'keep')
        # (path, the record's text then, or None if there was none).
        self.synced = []
        self.sync = self.patch_object(replacement.disks, 'sync_filesystem',
                                      side_effect=self._sync)

    def _sync(self, path):
        record = os.path.join(path, RECORD)
        self.synced.append(
            (path, _read(record) if os.path.lexists(record) else None))

    def p(self, *names, root=None):
        return os.path.join(root or self.root, *names)

    def refused(self, fn, *args, match=None, before=None):
        """As rootdirs' tests', and nothing synced either."""
        message = super().refused(fn, *args, match=match, before=before)
        self.sync.assert_not_called()
        return message

    def make_layers(self, root=None):
        """A root's directory with all its layers, as a rebuild finds it.

        A tree (upper, with a link out of it), work, files (the disks'
        images) and the config drive (a tree).
        """
        root = root or self.root
        for d in ('lower', 'merged', 'root/upper/etc/deep', 'root/work/work',
                  'config-drive/openstack/latest'):
            os.makedirs(os.path.join(root, d), 0o755, exist_ok=True)
        os.chmod(root, 0o711)
        _write(os.path.join(root, 'root.img'), 'root disk')
        _write(os.path.join(root, 'ephemeral.img'), 'ephemeral disk')
        _write(os.path.join(root, 'root/upper/etc/hostname'), 'old\n')
        _write(os.path.join(root, 'root/upper/etc/deep/f'), 'deep')
        os.symlink(self.victim, os.path.join(root, 'root/upper/etc/out'))
        _write(os.path.join(root, 'config-drive/openstack/latest/'
                                  'meta_data.json'), '{"uuid": "old"}')
        return root

    def make_names(self, root):
        """The names ChecksTest gives below a bad root, small."""
        os.makedirs(os.path.join(root, 'root', 'upper'), 0o755)
        os.makedirs(os.path.join(root, 'config-drive.rebuild-tmp'))
        os.makedirs(os.path.join(root, 'config-drive', 'openstack'))
        for name in ('ephemeral.img', 'ephemeral.img.rebuild-old',
                     'config-drive.rebuild-new'):
            _write(os.path.join(root, name), name)

    def expect(self, before, gone=(), moves=()):
        """before, less what is at or below gone, moves' sources moved."""
        found = {}
        for path, seen in before.items():
            if any(_at_or_below(path, g) for g in gone):
                continue
            for src, dst in moves:
                if _at_or_below(path, src):
                    path = dst + path[len(src):]
                    break
            found[path] = seen
        return found

    def assertTreeIs(self, expected, touched=()):
        """The tree is expected; of touched paths, only mode and inode.

        :param touched: directories whose entries changed (their size
            and mtime), renamed directories.
        """
        after = self.tree()
        self.assertEqual(sorted(expected), sorted(after))
        for path, seen in expected.items():
            if path in touched:
                self.assertEqual((seen[0], seen[3]),
                                 (after[path][0], after[path][3]), path)
            else:
                self.assertEqual(seen, after[path], path)
        self.assertEqual(['keep'], os.listdir(self.victim))
        self.assertEqual('keep', _read(os.path.join(self.victim, 'keep')))


class ChecksTest(_Base):
    """What is refused as a layer's path or a root's, by every entry point.

    Every refused path exists (but for the host's), so that a check that
    let one through would change the tree.
    """

    def setUp(self):
        super().setUp()
        s = self.state
        r = self.make_layers()
        self.make_layers(self.rescue)
        # Every name beside a layer, and names that are not one.
        for d in ('config-drive.rebuild-old', 'config-drive.rebuild-new',
                  'config-drive.rebuild-tmp', 'root/upper.rebuild-old',
                  'root/work.rebuild-old', 'root/upper.rebuild-tmp',
                  'root/upper.rebuild-new', 'root/lower',
                  'config-drive.rebuild-old.rebuild-old', 'x/config-drive',
                  'root/x/upper', '3/config-drive', 'upper', 'work',
                  'root/upper/root/upper', 'config-drive.rebuild-'):
            os.makedirs(self.p(d), exist_ok=True)
            _write(self.p(d, 'f'), d)
        for name in ('ephemeral.img.rebuild-old', 'ephemeral.img.rebuild-new',
                     'ephemeral.img.rebuild-tmp', 'config-drive.other',
                     'ephemeral.img2', 'xconfig-drive', 'Config-drive',
                     'config-drive ', 'config-drive\n', RECORD,
                     'migration-token', 'root/work.rebuild-new',
                     'config-drive.rebuild-new.rebuild-old'):
            _write(self.p(name), name)
        # Other cids, other parents: each with layers.
        for cid in BAD_CIDS:
            self.make_names(os.path.join(self.rootfs, cid))
        for d in (('other', '3'), ('sub', 'rootfs', '3'), ('3',),
                  ('ROOTFS', '3'), ('rootfs',), ()):
            self.make_names(os.path.join(s, *d))
        self.make_names(os.path.join(self.tmp, 'rootfs', '3'))
        self.make_names(os.path.join(r, 'rootfs', '4'))
        self.make_names(os.path.join(r, '4'))
        # Outside the driver roots; lxc's rootfs is a link there (its 3
        # exists, its 4 does not).
        self.make_names(os.path.join(self.outside, 'rootfs', '3'))
        os.symlink(os.path.join(self.outside, 'rootfs'),
                   os.path.join(self.lxc, 'rootfs'))
        # rootfs/7 is rootfs/3 through a link; rootfs/5's root/ is a link
        # out (to a disk's tree); rootfs/6's layers are links out.
        os.symlink('3', os.path.join(self.rootfs, '7'))
        disk = os.path.join(self.outside, 'disk')
        self.make_names(disk)
        os.makedirs(os.path.join(self.rootfs, '5'), 0o711)
        os.symlink(os.path.join(disk, 'root'),
                   os.path.join(self.rootfs, '5', 'root'))
        os.symlink(os.path.join(disk, 'config-drive'),
                   os.path.join(self.rootfs, '5', 'config-drive'))
        six = os.path.join(self.rootfs, '6')
        os.makedirs(os.path.join(six, 'root'), 0o711)
        for layer, suffix in VALID:
            name = layer + suffix
            # Every other one dangling: nothing is made where it points.
            target = os.path.join(disk, name) if suffix in (
                '', '.rebuild-tmp') else os.path.join(self.outside, 'made')
            os.symlink(target, os.path.join(six, name))

    def bad_roots(self):
        """Paths that are not a root's directory that may be replaced."""
        r = self.root
        s = self.state
        return [
            # Outside the driver roots, or one itself, or its rootfs.
            os.path.join(self.outside, 'rootfs', '3'),
            os.path.join(self.outside, 'rootfs', '4'),
            os.path.join(self.tmp, 'rootfs', '3'),
            self.tmp, s, self.lxc, self.rootfs, self.outside,
            os.path.join(self.outside, 'disk'),
            # The host's (none exists).
            '/rootfs/3', '/rootfs/3/rescue', '/',
            # Not absolute (the cwd is self.tmp) or not normalized.
            'state/rootfs/3', 'state/rootfs/3/rescue', 'rootfs/3', '3',
            './state/rootfs/3', s + '/rootfs/x/../3', r + '/../3',
            r + '/.', s + '//rootfs/3', s + '/./rootfs/3',
            r + '/rescue/..', r + '/root/..',
            # Through a link: the cid, the rootfs directory.
            os.path.join(self.rootfs, '7'),
            os.path.join(self.rootfs, '7', 'rescue'),
            os.path.join(self.lxc, 'rootfs', '3'),
            os.path.join(self.lxc, 'rootfs', '4'),
            # Its parent not named rootfs, or not directly under a root.
            os.path.join(s, 'other', '3'), os.path.join(s, '3'),
            os.path.join(s, 'sub', 'rootfs', '3'),
            os.path.join(r, 'rootfs', '4'), os.path.join(r, '4'),
            os.path.join(s, 'ROOTFS', '3'),
            # The rescue root: never replaced.
            self.rescue, os.path.join(self.rootfs, '7', 'rescue'),
            # Below a root's directory.
            os.path.join(r, 'root'), os.path.join(r, 'x'),
            os.path.join(r, 'lower'),
            # NUL.
            r + '\0', self.rescue + '\0',
        ] + [
            # The cid not ASCII digits.
            os.path.join(self.rootfs, cid) for cid in BAD_CIDS
        ]

    def bad_layers(self, names):
        """Paths that are not a layer's of a root that may be replaced.

        A name below each bad root (each of names in turn: all exist
        below the roots that exist), names below a root's directory
        that are not a layer's, paths through a link below the root.
        """
        paths = [root + '/' + names[i % len(names)]
                 for i, root in enumerate(self.bad_roots())]
        paths += [self.p(name) for name in NOT_LAYERS]
        r = self.root
        s = self.state
        paths += [
            # Not normalized, with a layer's name at the end.
            r + '//config-drive', r + '/./config-drive',
            r + '/root/../root/upper', r + '/root//upper',
            r + '/root/./upper', s + '/rootfs/3/../3/config-drive',
            r + '/x/../config-drive', 'state/rootfs/3/config-drive',
            './state/rootfs/3/root/upper']
        # A link below the root: the root's (7), root/ (5), the layer (6).
        for cid in ('6', '7'):
            paths += [os.path.join(self.rootfs, cid, layer + suffix)
                      for layer, suffix in VALID]
        paths += [os.path.join(self.rootfs, '5', name)
                  for name in ('root/upper', 'root/work',
                               'root/upper.rebuild-old', 'config-drive')]
        # Not a str.
        path = self.p('config-drive')
        paths += [None, 3, 3.0, os.fsencode(path), [path], (path,),
                  pathlib.Path(path), pathlib.PurePath(path), {path: 1}]
        return paths

    def test_split_accepts(self):
        for root in (self.root, os.path.join(self.rootfs, '0'),
                     os.path.join(self.rootfs, '0123456789')):
            for layer, suffix in VALID:
                self.assertEqual(
                    (root, layer, suffix),
                    replacement._split('c', root + '/' + layer + suffix))

    def test_split_refuses(self):
        before = self.tree()
        for path in self.bad_layers(['config-drive', 'root/upper']):
            self.refused(replacement._split, 'the_call', path, before=before)
        msg = self.refused(replacement._split, 'the_call',
                           self.p('root.img'))
        self.assertIn('the_call', msg)
        self.assertIn('not a layer', msg)
        msg = self.refused(replacement._split, 'the_call',
                           self.p('config-drive', root=self.rescue))
        self.assertIn('the_call', msg)

    def test_the_rescue_root_s_layers(self):
        before = self.tree()
        for layer, suffix in VALID:
            path = self.p(layer + suffix, root=self.rescue)
            self.assertTrue(os.path.lexists(path) or suffix, path)
            self.refused(replacement._split, 'c', path, before=before)
            for fn in (replacement.remove_layer, replacement.set_aside,
                       replacement.promote):
                self.refused(fn, path, before=before)

    def test_remove_layer(self):
        before = self.tree()
        for path in self.bad_layers(['config-drive',
                                     'ephemeral.img.rebuild-old']):
            self.refused(replacement.remove_layer, path, before=before)

    def test_set_aside(self):
        before = self.tree()
        for path in self.bad_layers(['root/upper', 'ephemeral.img']):
            self.refused(replacement.set_aside, path, before=before)

    def test_promote(self):
        before = self.tree()
        for path in self.bad_layers(['config-drive.rebuild-tmp',
                                     'config-drive.rebuild-new']):
            self.refused(replacement.promote, path, before=before)

    def test_write_record(self):
        text = R(**DEFAULTS).to_json()
        before = self.tree()
        for root in self.bad_roots() + [None, 3, os.fsencode(self.root),
                                        [self.root], pathlib.Path(self.root)]:
            self.refused(replacement.write_record, root, text,
                         before=before)

    def test_remove_record(self):
        before = self.tree()
        for root in self.bad_roots() + [None, 3, os.fsencode(self.root),
                                        [self.root], pathlib.Path(self.root)]:
            self.refused(replacement.remove_record, root, before=before)
        self.assertEqual(RECORD, _read(self.p(RECORD)))


class DeleteTest(_Base):
    """_delete: a tree, a file or a link (never followed), unless mounted."""

    def setUp(self):
        super().setUp()
        self.make_layers()

    def test_a_tree(self):
        before = self.tree()
        path = self.p('root', 'upper')
        self.assertIsNone(replacement._delete(path))
        self.assertTreeIs(self.expect(before, gone=[path]),
                          touched=[self.p('root')])

    def test_a_file(self):
        before = self.tree()
        path = self.p('ephemeral.img')
        replacement._delete(path)
        self.assertTreeIs(self.expect(before, gone=[path]),
                          touched=[self.root])

    def test_links_themselves(self):
        # To a directory, to a file, dangling, a loop.
        names = ('to-dir', 'to-file', 'dangling', 'loop')
        os.symlink(self.victim, self.p('to-dir'))
        os.symlink(os.path.join(self.victim, 'keep'), self.p('to-file'))
        os.symlink(os.path.join(self.outside, 'missing'), self.p('dangling'))
        os.symlink('loop', self.p('loop'))
        before = self.tree()
        for name in names:
            replacement._delete(self.p(name))
        self.assertTreeIs(self.expect(before, gone=[self.p(n) for n in names]),
                          touched=[self.root])
        self.assertFalse(os.path.lexists(os.path.join(self.outside,
                                                      'missing')))

    def test_missing(self):
        before = self.tree()
        replacement._delete(self.p('config-drive.rebuild-old'))
        replacement._delete(self.p('missing', 'below'))
        self.assertEqual(before, self.tree())

    def test_mounted(self):
        path = self.p('config-drive')
        for mounted in ([path], [path + '/openstack/latest'], [path] * 2,
                        ['/', path + '/x/y']):
            self.mounted = mounted
            before = self.tree()
            e = self.assertRaises(exception.MountFailed,
                                  replacement._delete, path)
            self.assertEqual(before, self.tree())
            self.assertIn(path, str(e))
            self.assertIn(mounted[-1], str(e))


class RemoveLayerTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_layers()
        os.mkdir(self.p('config-drive.rebuild-old'))
        _write(self.p('config-drive.rebuild-old', 'f'), 'aside')
        os.mkdir(self.p('root', 'upper.rebuild-old'))
        _write(self.p('ephemeral.img.rebuild-old'), 'aside')

    def test_each_layer_and_name_beside_it(self):
        os.mkdir(self.p('config-drive.rebuild-new'))
        _write(self.p('config-drive.rebuild-tmp'), 'tmp')
        os.mkdir(self.p('root', 'work.rebuild-old'))
        for layer, suffix in VALID:
            path = self.p(layer + suffix)
            self.assertTrue(os.path.lexists(path), path)
            before = self.tree()
            self.assertIsNone(replacement.remove_layer(path))
            self.assertTreeIs(self.expect(before, gone=[path]),
                              touched=[os.path.dirname(path)])
        self.assertEqual(['lower', 'merged', 'root', 'root.img'],
                         sorted(os.listdir(self.root)))
        self.assertEqual([], os.listdir(self.p('root')))
        self.sync.assert_not_called()

    def test_a_tree_with_a_link_out(self):
        path = self.p('root', 'upper')
        before = self.tree()
        replacement.remove_layer(path)
        self.assertTreeIs(self.expect(before, gone=[path]),
                          touched=[self.p('root')])
        self.mounts.assert_called_once_with()

    def test_a_link_loop_is_refused(self):
        # realpath leaves a loop unresolved, equal to itself: check_path
        # looks at each component's type instead.
        path = self.p('config-drive.rebuild-tmp')
        for target in ('config-drive.rebuild-tmp', 'loop-b'):
            os.symlink(target, path)
            if target == 'loop-b':
                os.symlink('config-drive.rebuild-tmp', self.p('loop-b'))
            before = self.tree()
            self.refused(replacement.remove_layer, path, match='symlink')
            self.assertEqual(before, self.tree())
            self.assertTrue(os.path.islink(path))
            os.unlink(path)

    def test_a_link_out_is_refused(self):
        for target in (self.victim, os.path.join(self.victim, 'keep'),
                       os.path.join(self.outside, 'missing')):
            path = self.p('config-drive.rebuild-tmp')
            os.symlink(target, path)
            self.refused(replacement.remove_layer, path, match='symlink')
            os.unlink(path)
        self.assertFalse(os.path.lexists(os.path.join(self.outside,
                                                      'missing')))

    def test_missing(self):
        before = self.tree()
        for path in (self.p('config-drive.rebuild-tmp'),
                     self.p('root', 'work.rebuild-old'),
                     os.path.join(self.rootfs, '4', 'config-drive'),
                     os.path.join(self.lxc, 'rootfs', '0', 'root', 'upper')):
            for _twice in range(2):
                self.assertIsNone(replacement.remove_layer(path))
        self.assertEqual(before, self.tree())
        path = self.p('config-drive.rebuild-old')
        replacement.remove_layer(path)
        after = self.tree()
        self.assertIsNone(replacement.remove_layer(path))
        self.assertEqual(after, self.tree())

    def refused_mounted(self, path, *points):
        before = self.tree()
        e = self.assertRaises(exception.MountFailed,
                              replacement.remove_layer, path)
        self.assertEqual(before, self.tree())
        msg = str(e)
        self.assertIn(path, msg)
        for point in points:
            self.assertIn(point, msg)
        return msg

    def test_mounted_at_or_below(self):
        for path, points in (
                (self.p('config-drive.rebuild-old'),
                 [self.p('config-drive.rebuild-old')]),
                (self.p('root', 'upper'),
                 [self.p('root', 'upper', 'etc', 'deep'),
                  self.p('root', 'upper', 'etc')]),
                (self.p('root', 'upper.rebuild-old'),
                 [self.p('root', 'upper.rebuild-old')] * 2),
                # A file bound there; a point where nothing exists.
                (self.p('ephemeral.img'), [self.p('ephemeral.img')]),
                (self.p('root', 'work'), [self.p('root', 'work', 'gone')])):
            self.mounted = ['/proc', self.p('root')] + points
            msg = self.refused_mounted(path, *points)
            self.assertIn('still mounted: ' + ', '.join(sorted(set(points))),
                          msg)
        # Not even what is missing is "removed" under a mount.
        self.mounted = [self.p('config-drive.rebuild-tmp', 'x')]
        self.refused_mounted(self.p('config-drive.rebuild-tmp'))

    def test_mounts_elsewhere_do_not_block(self):
        r = self.root
        # The root disk (upper's parent), the overlay, the rescue root,
        # names that only begin as the layer's.
        self.mounted = ['/', self.tmp, self.state, self.rootfs, r,
                        self.p('root'), self.p('merged'), self.p('lower'),
                        self.p('ephemeral'), self.rescue + '/merged',
                        self.p('root', 'upperx'), self.p('root', 'upper.x'),
                        self.p('root', 'upper.rebuild-old2'),
                        self.p('config-drive.rebuild-old2'),
                        self.p('config-drive.rebuild'),
                        os.path.join(self.rootfs, '30', 'config-drive'),
                        os.path.join(self.lxc, 'rootfs', '3', 'root',
                                     'upper')]
        for path in (self.p('root', 'upper'), self.p('root', 'upper'
                                                     '.rebuild-old'),
                     self.p('config-drive.rebuild-old'),
                     self.p('config-drive'), self.p('ephemeral.img')):
            replacement.remove_layer(path)
            self.assertFalse(os.path.lexists(path), path)

    def test_in_the_other_driver_root(self):
        root = self.make_layers(os.path.join(self.lxc, 'rootfs', '0'))
        state = base.tree_state(self.state, contents=True)
        replacement.remove_layer(self.p('root', 'upper', root=root))
        self.assertFalse(os.path.lexists(self.p('root', 'upper',
                                                root=root)))
        self.assertEqual(state, base.tree_state(self.state, contents=True))


class SymlinkedDriverRootTest(_Base):
    """A driver root that is a link (/var/lib/nova -> /srv/nova).

    The mount table names resolved paths: a mount there must still block
    a delete.
    """

    def setUp(self):
        super().setUp()
        self.real = os.path.join(self.tmp, 'srv-state')
        os.mkdir(self.real, 0o755)
        self.link = os.path.join(self.tmp, 'state-link')
        os.symlink(self.real, self.link)
        self.storage_admin_here(self.lxc, self.link)
        self.root = self.make_layers(os.path.join(self.link, 'rootfs', '3'))
        os.mkdir(self.p('config-drive.rebuild-old'))

    def test_remove_layer(self):
        path = self.p('root', 'upper')
        real = os.path.join(self.real, 'rootfs', '3', 'root', 'upper', 'etc')
        self.mounted = [real]
        before = self.tree()
        e = self.assertRaises(exception.MountFailed,
                              replacement.remove_layer, path)
        self.assertIn(real, str(e))
        self.assertEqual(before, self.tree())
        self.mounted = []
        replacement.remove_layer(path)
        self.assertFalse(os.path.lexists(path))

    def test_set_aside(self):
        path = self.p('config-drive')
        self.mounted = [os.path.join(self.real, 'rootfs', '3',
                                     'config-drive.rebuild-old')]
        before = self.tree()
        self.assertRaises(exception.MountFailed, replacement.set_aside,
                          path)
        self.assertEqual(before, self.tree())


class SetAsideTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_layers()

    def test_each_layer(self):
        for layer in ('root/upper', 'root/work', 'ephemeral.img',
                      'config-drive'):
            path = self.p(layer)
            aside = path + '.rebuild-old'
            before = self.tree()
            self.assertIsNone(replacement.set_aside(path))
            self.assertTreeIs(self.expect(before, moves=[(path, aside)]),
                              touched=[os.path.dirname(path), aside])
        self.assertEqual('old\n', _read(self.p('root', 'upper.rebuild-old',
                                               'etc', 'hostname')))
        self.assertEqual(['upper.rebuild-old', 'work.rebuild-old'],
                         sorted(os.listdir(self.p('root'))))
        self.sync.assert_not_called()

    def test_an_older_aside_is_deleted_first(self):
        # A tree aside for a tree, a file for a file, a tree for a file.
        os.makedirs(self.p('root', 'upper.rebuild-old', 'older', 'x'))
        _write(self.p('root', 'upper.rebuild-old', 'older', 'x', 'f'))
        _write(self.p('ephemeral.img.rebuild-old'), 'older')
        os.makedirs(self.p('config-drive.rebuild-old', 'older'))
        for layer in ('root/upper', 'ephemeral.img', 'config-drive'):
            path = self.p(layer)
            aside = path + '.rebuild-old'
            before = self.tree()
            replacement.set_aside(path)
            self.assertTreeIs(
                self.expect(before, gone=[aside], moves=[(path, aside)]),
                touched=[os.path.dirname(path), aside])
        self.assertEqual('ephemeral disk',
                         _read(self.p('ephemeral.img.rebuild-old')))

    def test_with_nothing_at_path_only_the_old_aside_goes(self):
        shutil.rmtree(self.p('config-drive'))
        os.mkdir(self.p('config-drive.rebuild-old'))
        _write(self.p('config-drive.rebuild-old', 'f'))
        before = self.tree()
        replacement.set_aside(self.p('config-drive'))
        self.assertTreeIs(
            self.expect(before, gone=[self.p('config-drive.rebuild-old')]),
            touched=[self.root])
        self.assertFalse(os.path.lexists(self.p('config-drive')))
        # Nothing at either.
        before = self.tree()
        for _twice in range(2):
            replacement.set_aside(self.p('config-drive'))
        self.assertEqual(before, self.tree())

    def test_an_old_aside_link_is_deleted_not_followed(self):
        # To a tree out (rmtree never runs through it), dangling (where
        # a directory is then renamed), to a file.
        for layer, target in (
                ('config-drive', self.victim),
                ('root/upper', os.path.join(self.outside, 'missing')),
                ('ephemeral.img', os.path.join(self.victim, 'keep'))):
            path = self.p(layer)
            aside = path + '.rebuild-old'
            os.symlink(target, aside)
            before = self.tree()
            replacement.set_aside(path)
            self.assertTreeIs(
                self.expect(before, gone=[aside], moves=[(path, aside)]),
                touched=[os.path.dirname(path), aside])
            self.assertFalse(os.path.islink(aside))
        self.assertFalse(os.path.lexists(os.path.join(self.outside,
                                                      'missing')))

    def test_a_link_at_the_layer_s_name(self):
        # A link out is refused (a link below the root): its target is
        # never renamed, nor anything deleted.
        shutil.rmtree(self.p('config-drive'))
        os.mkdir(self.p('config-drive.rebuild-old'))
        os.symlink(self.victim, self.p('config-drive'))
        self.refused(replacement.set_aside, self.p('config-drive'),
                     match='symlink')
        # One to itself too (realpath would leave the loop unresolved).
        os.unlink(self.p('config-drive'))
        os.symlink('config-drive', self.p('config-drive'))
        before = self.tree()
        self.refused(replacement.set_aside, self.p('config-drive'),
                     match='symlink')
        self.assertEqual(before, self.tree())

    def test_refuses_a_name_beside_a_layer(self):
        for layer, suffix in VALID:
            if suffix:
                path = self.p(layer + suffix)
                os.makedirs(path)
                msg = self.refused(replacement.set_aside, path)
                self.assertIn('already', msg)
                self.assertIn('set_aside', msg)

    def test_an_old_aside_mounted_on(self):
        # Nothing is renamed, nor deleted.
        for layer, below in (('config-drive', ''), ('root/upper', '/x/y'),
                             ('ephemeral.img', '')):
            path = self.p(layer)
            aside = path + '.rebuild-old'
            if layer == 'ephemeral.img':
                _write(aside, 'older')
            else:
                os.makedirs(aside + below)
            self.mounted = ['/', aside + below]
            before = self.tree()
            e = self.assertRaises(exception.MountFailed,
                                  replacement.set_aside, path)
            self.assertEqual(before, self.tree())
            self.assertIn(aside + below, str(e))

    def test_mounts_elsewhere_do_not_block(self):
        # The root disk upper lives on, the layer itself, the rescue
        # root's.
        os.mkdir(self.p('root', 'upper.rebuild-old'))
        self.mounted = [self.p('root'), self.p('merged'), self.p('lower'),
                        self.rescue + '/root/upper.rebuild-old',
                        self.p('root', 'upper.rebuild-old2')]
        replacement.set_aside(self.p('root', 'upper'))
        self.assertFalse(os.path.lexists(self.p('root', 'upper')))
        self.assertEqual('old\n', _read(self.p('root', 'upper.rebuild-old',
                                               'etc', 'hostname')))

    def test_in_the_other_driver_root(self):
        root = self.make_layers(os.path.join(self.lxc, 'rootfs', '0'))
        state = base.tree_state(self.state, contents=True)
        replacement.set_aside(self.p('config-drive', root=root))
        self.assertTrue(os.path.isdir(self.p('config-drive.rebuild-old',
                                             root=root)))
        self.assertEqual(state, base.tree_state(self.state, contents=True))


class PromoteTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_layers()
        self.tmp_name = self.p('config-drive.rebuild-tmp')
        self.new = self.p('config-drive.rebuild-new')
        self.cd = self.p('config-drive')
        os.makedirs(os.path.join(self.tmp_name, 'openstack'))
        _write(os.path.join(self.tmp_name, 'openstack', 'new'), 'new')

    def test_staged_then_swapped_in(self):
        before = self.tree()
        self.assertIsNone(replacement.promote(self.tmp_name))
        self.assertTreeIs(self.expect(before,
                                      moves=[(self.tmp_name, self.new)]),
                          touched=[self.root, self.new])
        shutil.rmtree(self.cd)
        before = self.tree()
        self.assertIsNone(replacement.promote(self.new))
        self.assertTreeIs(self.expect(before, moves=[(self.new, self.cd)]),
                          touched=[self.root, self.cd])
        self.assertEqual('new', _read(os.path.join(self.cd, 'openstack',
                                                   'new')))
        self.mounts.assert_not_called()
        self.sync.assert_not_called()

    def test_a_file_too(self):
        shutil.rmtree(self.tmp_name)
        _write(self.tmp_name, 'iso')
        replacement.promote(self.tmp_name)
        self.assertEqual('iso', _read(self.new))

    def test_refuses_other_names(self):
        for name in ('root/upper', 'root/work', 'config-drive',
                     'config-drive.rebuild-old', 'ephemeral.img',
                     'ephemeral.img.rebuild-old', 'root/upper.rebuild-old',
                     'root/work.rebuild-old'):
            path = self.p(name)
            if not os.path.lexists(path):
                os.makedirs(path)
            msg = self.refused(replacement.promote, path)
            self.assertIn('promote', msg)
        # And the others' next names are left alone: nothing at
        # config-drive.rebuild-new nor at config-drive.
        shutil.rmtree(self.cd)
        self.refused(replacement.promote, self.p('config-drive.rebuild-old'))
        self.refused(replacement.promote, self.p('root', 'upper'))

    def test_the_next_name_exists(self):
        os.mkdir(self.new)
        for path, target in ((self.tmp_name, self.new), (self.new, self.cd)):
            before = self.tree()
            e = self.assertRaises(FileExistsError, replacement.promote,
                                  path)
            self.assertEqual(before, self.tree())
            self.assertIn(target, str(e))
        # A file there, a dangling link there (never replaced).
        os.rmdir(self.new)
        _write(self.new, 'file')
        before = self.tree()
        self.assertRaises(FileExistsError, replacement.promote,
                          self.tmp_name)
        self.assertEqual(before, self.tree())
        os.unlink(self.new)
        os.symlink(os.path.join(self.outside, 'missing'), self.new)
        before = self.tree()
        self.assertRaises(FileExistsError, replacement.promote,
                          self.tmp_name)
        self.assertEqual(before, self.tree())

    def test_the_name_is_missing(self):
        shutil.rmtree(self.tmp_name)
        shutil.rmtree(self.cd)
        before = self.tree()
        for path in (self.tmp_name, self.new):
            self.assertRaises(FileNotFoundError, replacement.promote, path)
        self.assertEqual(before, self.tree())


class WriteRecordTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_layers()
        self.record = self.p(RECORD)

    def test_writes_the_record(self):
        text = R('img', 'host', 2, True).to_json()
        before = self.tree()
        self.assertIsNone(replacement.write_record(self.root, text))
        self.assertEqual(text, _read(self.record))
        st = os.lstat(self.record)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(0o644, stat.S_IMODE(st.st_mode))
        # Nothing else (no temporary file left).
        after = self.tree()
        self.assertEqual(sorted(list(before) + [self.record]), sorted(after))
        self.assertEqual(R('img', 'host', 2, True),
                         R.from_json(_read(self.record)))

    def test_exactly_the_text(self):
        for text in (json.dumps(DEFAULTS, indent=2),
                     ' ' + json.dumps(dict(DEFAULTS, hostname='h\u00e9'),
                                      ensure_ascii=False),
                     R('i', '', 0, False).to_json()):
            replacement.write_record(self.root, text)
            with open(self.record, 'rb') as f:
                self.assertEqual(text.encode('utf-8'), f.read())
            self.assertEqual(0o644, _mode(self.record))

    def test_synced_first(self):
        old = R('img', 'host').to_json()
        replacement.write_record(self.root, old)
        self.assertEqual([(self.root, None)], self.synced)
        new = R('img2', 'host2', 1, True).to_json()
        replacement.write_record(self.root, new)
        self.assertEqual([(self.root, None), (self.root, old)], self.synced)
        self.assertEqual(new, _read(self.record))

    def test_the_real_sync(self):
        # syncfs(2) of the test's filesystem, its checks included.
        self.sync.side_effect = _SYNC_FILESYSTEM
        text = R('img', 'host').to_json()
        replacement.write_record(self.root, text)
        self.assertEqual(text, _read(self.record))
        self.sync.assert_called_once_with(self.root)

    def test_replaces_an_earlier_record_atomically(self):
        old = R('img', 'host').to_json()
        replacement.write_record(self.root, old)
        ino = os.lstat(self.record).st_ino
        # A reader of the old one still reads the old one.
        with open(self.record) as reader:
            before = self.tree()
            new = R('img2', 'host2', 5).to_json()
            replacement.write_record(self.root, new)
            self.assertEqual(old, reader.read())
        self.assertEqual(new, _read(self.record))
        self.assertNotEqual(ino, os.lstat(self.record).st_ino)
        self.assertEqual(0o644, _mode(self.record))
        self.assertEqual(sorted(before), sorted(self.tree()))

    def test_a_link_at_its_name_is_replaced_not_followed(self):
        target = os.path.join(self.victim, 'keep')
        os.symlink(target, self.record)
        text = R('img', 'host').to_json()
        replacement.write_record(self.root, text)
        self.assertFalse(os.path.islink(self.record))
        self.assertEqual(text, _read(self.record))
        self.assertEqual('keep', _read(target))

    def test_in_the_other_driver_root(self):
        root = self.make_layers(os.path.join(self.lxc, 'rootfs', '0'))
        state = base.tree_state(self.state, contents=True)
        text = R('img', 'host').to_json()
        replacement.write_record(root, text)
        self.assertEqual(text, _read(os.path.join(root, RECORD)))
        self.assertEqual(state, base.tree_state(self.state, contents=True))

    def test_refuses_what_is_not_a_whole_replacement(self):
        good = R(**DEFAULTS).to_json()
        _write(self.record, good)
        bad = [None, 3, good.encode(), dict(DEFAULTS), [good], (good,),
               '', ' ', '\n', '{', '}', 'null', 'true', '3', '"img"',
               '[]', '{}', json.dumps(list(DEFAULTS.values())),
               json.dumps([DEFAULTS]), good + 'x', good + good,
               good.replace('"img"', "'img'"), good[:-3]]
        # Missing, extra and renamed fields.
        for required in ('image_id', 'hostname'):
            bad.append(json.dumps({k: v for k, v in DEFAULTS.items()
                                   if k != required}))
        for extra in ({'extra': 1}, {'self': 'x'}, {'cls': 'x'},
                      {'__class__': 'x'}, {'Image_id': 'x'},
                      {'image_id ': 'x'}, {'': 1}, {'path': '/etc'}):
            bad.append(json.dumps(dict(DEFAULTS, **extra)))
        bad.append(json.dumps({'image': 'img', 'hostname': 'host'}))
        # Wrong types or values.
        for field, values in (
                ('image_id', (3, None, ['img'], {'a': 1}, True)),
                ('hostname', (None, ['host'], 3, 3.0, False)),
                ('ephemeral_gb', (-1, -10 ** 30, True, False, '2', 2.0,
                                  0.0, None, [2], '0')),
                ('config_drive', (1, 0, 'true', None, [], 'false', 1.0))):
            for value in values:
                bad.append(json.dumps(dict(DEFAULTS, **{field: value})))
        bad += [good.replace('2', 'NaN'), good.replace('2', 'Infinity'),
                good.replace('2', '-Infinity')]
        for text in bad:
            self.refused(replacement.write_record, self.root, text)
        self.assertEqual(good, _read(self.record))
        msg = self.refused(replacement.write_record, self.root, '[]')
        self.assertIn('write_record', msg)
        self.assertIn('not a replacement record', msg)

    def test_a_record_of_at_most_4_kib(self):
        # A whole Replacement, but longer than any the driver writes.
        long_name = R('img', 'h' * 5000).to_json()
        msg = self.refused(replacement.write_record, self.root, long_name)
        self.assertIn('more than 4096 bytes', msg)
        self.assertFalse(os.path.lexists(self.record))
        # UTF-8 bytes count, not characters.
        wide = json.dumps(dict(DEFAULTS, hostname='\u00e9' * 2040),
                          ensure_ascii=False)
        self.assertLess(len(wide), replacement.MAX_RECORD)
        self.refused(replacement.write_record, self.root, wide)
        fits = R('img', 'h' * 255, 10, True).to_json()
        replacement.write_record(self.root, fits)
        self.assertEqual(fits, _read(self.record))

    def test_a_bad_root_or_a_bad_text(self):
        # A bad root with a good text, a good root with a bad text, both.
        self.refused(replacement.write_record, self.rescue,
                     R('img', 'host').to_json())
        self.refused(replacement.write_record, self.root, '{}')
        self.refused(replacement.write_record, None, None)
        self.assertFalse(os.path.lexists(self.record))


class RemoveRecordTest(_Base):

    def setUp(self):
        super().setUp()
        self.make_layers()
        self.record = self.p(RECORD)
        self.text = R('img', 'host').to_json()

    def test_removes_it_after_a_sync(self):
        _write(self.record, self.text)
        events = []
        real = replacement.durable.fsync_dir
        self.sync.side_effect = lambda path: events.append(
            ('sync', path, os.path.lexists(self.record)))

        def fsync_dir(path):
            events.append(('fsync_dir', path, os.path.lexists(self.record)))
            return real(path)
        self.patch_object(replacement.durable, 'fsync_dir',
                          side_effect=fsync_dir)
        before = self.tree()
        self.assertIs(True, replacement.remove_record(self.root))
        self.assertFalse(os.path.lexists(self.record))
        self.assertEqual([('sync', self.root, True),
                          ('fsync_dir', self.root, False)], events)
        self.assertTreeIs(self.expect(before, gone=[self.record]),
                          touched=[self.root])

    def test_written_then_removed(self):
        replacement.write_record(self.root, self.text)
        self.assertIs(True, replacement.remove_record(self.root))
        self.assertFalse(os.path.lexists(self.record))
        self.assertEqual([(self.root, None), (self.root, self.text)],
                         self.synced)

    def test_absent(self):
        before = self.tree()
        for _twice in range(2):
            self.assertIs(False, replacement.remove_record(self.root))
        self.assertIs(False, replacement.remove_record(
            os.path.join(self.rootfs, '4')))
        self.assertEqual(before, self.tree())
        _write(self.record, self.text)
        self.assertIs(True, replacement.remove_record(self.root))
        self.assertIs(False, replacement.remove_record(self.root))

    def test_a_link_itself(self):
        target = os.path.join(self.victim, 'keep')
        os.symlink(target, self.record)
        self.assertIs(True, replacement.remove_record(self.root))
        self.assertFalse(os.path.lexists(self.record))
        self.assertEqual('keep', _read(target))

    def test_refuses_the_rescue_root_s(self):
        os.makedirs(self.rescue)
        _write(os.path.join(self.rescue, RECORD), self.text)
        _write(self.record, self.text)
        for root in (self.rescue, self.rescue + '/', self.root + '/',
                     os.path.join(self.rootfs, '\u0663'),
                     'state/rootfs/3', None, os.fsencode(self.root)):
            self.refused(replacement.remove_record, root)


class ReplacementTest(base.TestCase):

    def test_round_trip(self):
        for r in (R('img', 'host'), R('img', 'host', 0, False),
                  R('11111111-2222-3333-4444-555555555555', 'h\u00e9', 20,
                    True), R('', '', 10 ** 6, False)):
            text = r.to_json()
            self.assertIsInstance(text, str)
            self.assertTrue(text.endswith('}\n'), text)
            self.assertEqual(r, R.from_json(text))
            # As nova-compute reads it back: bytes.
            self.assertEqual(r, R.from_json(text.encode('utf-8')))
            self.assertEqual(text, R.from_json(text).to_json())

    def test_to_json(self):
        self.assertEqual(
            {'image_id': 'img', 'hostname': 'host', 'ephemeral_gb': 2,
             'config_drive': True},
            json.loads(R('img', 'host', 2, True).to_json()))
        self.assertEqual(
            '{"config_drive": false, "ephemeral_gb": 0, "hostname": "h", '
            '"image_id": "i"}\n', R('i', 'h').to_json())

    def test_from_json_refuses(self):
        for text in ('[]', 'null', '3', '{', '{}',
                     json.dumps(dict(DEFAULTS, extra=1)),
                     json.dumps(dict(DEFAULTS, ephemeral_gb=True)),
                     json.dumps(dict(DEFAULTS, ephemeral_gb=-1)),
                     json.dumps(dict(DEFAULTS, ephemeral_gb=1.0)),
                     json.dumps(dict(DEFAULTS, config_drive=1)),
                     json.dumps(dict(DEFAULTS, image_id=1)),
                     json.dumps(dict(DEFAULTS, hostname=None)),
                     json.dumps({'image_id': 'img'})):
            self.assertRaises(ValueError, R.from_json, text)
