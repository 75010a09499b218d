"""privsep.imagecache: the image cache's directories, made and removed.

The entry points run here in-process (client mode off, storage_admin_here)
against temporary driver roots (state and containers) on a real tree:
only the daemon's mount table (mount.mountpoints, mount.roots) and
syncfs(2) (disks.sync_filesystem) are mocked, the first two by the sets
a test fills. What a refusal leaves is the whole temporary tree as it
was (modes, inodes, mtimes, contents, links' targets) and this process's
fds. The tests run in the temporary directory (relative paths land in
it), and rmtree fails a test rather than delete anything outside it,
should a check ever let such a path through. Nothing here hands a
host path to an entry point that could change it.

A disk image's receive (start_receive, finish_receive, cancel_receive)
runs for real: a FIFO in the state root's spool, its write end held here
as nova-compute holds it (images._spool_fifo), the daemon's copying
thread in this process; the registry of running receives is a fresh
dict for each test, and what a test leaves running is stopped at its
end. unpack_disk_image's checks run for real, diskimage.unpack (qemu-img,
loop devices, mounts) is a fake.

RealMountTest (root only) bind-mounts an entry's rootfs, as a
container's lower layer is, and reads the real mount table.
"""

import errno
import json
import os
import select
import shutil
import stat
import subprocess
import threading
import time
from unittest import mock

import fixtures

from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import imagecache
from tests.unit import base

IMAGE = '0b5e8d6c-3f1a-4c2e-9d7b-1a2b3c4d5e6f'
OTHER = 'c0ffee00-1234-4abc-8def-0123456789ab'
# An entry's name that is a symlink to IMAGE's entry.
LINKED = 'deadbeef-0000-4000-8000-00000000beef'
PID = 4321
PARTIAL = '.partial-%s-%d-ab_C9x' % (IMAGE, PID)
CORRUPT = '.corrupt-%s-%d-0123456789abcdef' % (IMAGE, PID)
META = {'init_system': 'systemd', 'size': 12345}
MARKER = json.dumps(META).encode()
OLD = 1000000000
# A receive FIFO's name in a spool, as images._spool_fifo makes it.
RECEIVE_FIFO = 'archive-%d-00ff' % PID + '.fifo'
# A disk image's first bytes (a qcow2 header's magic), as received.
ARCHIVE_DATA = b'QFI\xfb' + b'\0' * 1020
MIB = 1 << 20
# An argument left as the test's good one.
_GOOD = object()
_RMTREE = shutil.rmtree
# The real mount table's, for RealMountTest (the others mock them).
_MOUNTPOINTS = mount.mountpoints
_ROOTS = mount.roots


def bad_uuids():
    """IMAGE with one group of its five amiss: upper case, length, digit."""
    groups = IMAGE.split('-')
    for i, group in enumerate(groups):
        for bad in (group[:-1] + group[-1].upper(), group[:-1],
                    group + 'a', group[:-1] + 'g', group[:-1] + '_'):
            yield '-'.join(groups[:i] + [bad] + groups[i + 1:])


# Not an image id: not a str, not canonical, a path, shell characters.
BAD_IDS = [
    None, 3, 3.0, IMAGE.encode(), [IMAGE], (IMAGE,), {IMAGE: 1},
    IMAGE.upper(), IMAGE.replace('-', ''), '{%s}' % IMAGE,
    'urn:uuid:' + IMAGE, IMAGE + '\n', '\n' + IMAGE, ' ' + IMAGE,
    IMAGE + ' ', IMAGE + '\0', '', '.', '..', '../' + IMAGE,
    IMAGE + '/x', 'x/' + IMAGE, IMAGE[:8] + '/' + IMAGE[9:],
    '/' + IMAGE, '$(reboot)', '`id`', IMAGE[:-1] + ';', IMAGE + ';id',
    IMAGE[:-1] + '*', '-rf', IMAGE + '-1',
] + list(bad_uuids())

# Names below images/ that are none of an entry, a partial, a corrupt.
BAD_NAMES = [
    IMAGE.upper(), IMAGE.replace('-', ''), IMAGE[:-1], IMAGE + 'a',
    IMAGE[:-1] + 'g', IMAGE + '\n', '.' + IMAGE, IMAGE + '.tmp',
    '.partial-garbage', '.partial-', '.partial-%s' % IMAGE,
    '.partial-%s-' % IMAGE, '.partial-%s-%d' % (IMAGE, PID),
    '.partial-%s-%d-' % (IMAGE, PID), '.partial-%s-x-abc' % IMAGE,
    '.partial-%s--abc' % IMAGE, '.partial-%s-%d-a.b' % (IMAGE, PID),
    '.partial-%s-%d-a-b' % (IMAGE, PID), '.partial-%s-%d-%s' % (
        IMAGE, PID, 'a' * 65), '.partial-%s-%d-abc' % (IMAGE.upper(), PID),
    '.partial-%s-%d-abc' % (IMAGE.replace('-', ''), PID),
    '.partial-%s-%d-abc\n' % (IMAGE, PID), 'partial-%s-%d-abc' % (IMAGE, PID),
    '.partal-%s-%d-abc' % (IMAGE, PID), '.Partial-%s-%d-abc' % (IMAGE, PID),
    '.partial.%s-%d-abc' % (IMAGE, PID), '.corrupt-garbage',
    '.corrupt-%s' % IMAGE, '.corrupt-%s-%d' % (IMAGE, PID),
    '.corrupt-%s-%d-abc' % (IMAGE.upper(), PID),
    '.corrupt-%s-x-abc' % IMAGE, '.corrupted-%s-%d-abc' % (IMAGE, PID),
    '.image.json.tmp', 'lock', '..partial-%s-%d-abc' % (IMAGE, PID),
]


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def _write(path, data=b'x', mode=0o644):
    if isinstance(data, str):
        data = data.encode()
    with open(path, 'xb') as f:
        f.write(data)
    os.chmod(path, mode)


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def make_init(rootfs, kind='systemd'):
    """An /sbin/init of kind in rootfs, as images have it.

    :param kind: 'systemd' (an absolute link to /lib/systemd/systemd),
        'busybox' (a relative link to bin/busybox), 'sysvinit' (a file),
        'noexec' (a file 0644) or None (no /sbin/init).
    """
    if kind is None:
        return
    for d in ('sbin', 'bin', 'lib/systemd'):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    if kind == 'systemd':
        _write(os.path.join(rootfs, 'lib/systemd/systemd'), b'\x7fELF', 0o755)
        os.symlink('/lib/systemd/systemd', os.path.join(rootfs, 'sbin/init'))
    elif kind == 'busybox':
        _write(os.path.join(rootfs, 'bin/busybox'), b'\x7fELF', 0o755)
        os.symlink('../bin/busybox', os.path.join(rootfs, 'sbin/init'))
    elif kind == 'sysvinit':
        _write(os.path.join(rootfs, 'sbin/init'), b'\x7fELF', 0o755)
    elif kind == 'noexec':
        _write(os.path.join(rootfs, 'sbin/init'), b'\x7fELF', 0o644)
    else:
        raise AssertionError(kind)


class _Base(base.TestCase):
    """Driver roots state and containers, empty; a tree outside them.

    self.points and self.roots are the mount table's mount points and
    mounts' roots (sets, empty: nothing is mounted). syncfs is a mock
    that records, when called, whether the partial's marker exists.
    """

    def setUp(self):
        super().setUp()
        # Umask 0: the modes are the entry points' own (restored at the
        # end, whatever an entry point set).
        self.addCleanup(os.umask, os.umask(0))
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.tmp)
        self.patch_object(imagecache.shutil, 'rmtree',
                          side_effect=self._rmtree)
        self.state = os.path.join(self.tmp, 'state')
        self.lxc = os.path.join(self.tmp, 'containers')
        os.mkdir(self.state, 0o755)
        os.mkdir(self.lxc, 0o755)
        self.storage_admin_here(self.lxc, self.state)
        self.images = os.path.join(self.state, 'images')
        self.entry = os.path.join(self.images, IMAGE)
        # Not a driver root: what is refused there must stay as it is.
        self.outside = os.path.join(self.tmp, 'outside')
        os.mkdir(self.outside, 0o755)
        self.points = set()
        self.roots = set()
        self.mountpoints = self.patch(
            'novalxcdriver.mount.mountpoints',
            side_effect=lambda: set(self.points))
        self.mount_roots = self.patch(
            'novalxcdriver.mount.roots', side_effect=lambda: set(self.roots))
        self.synced = []
        self.syncfs = self.patch(
            'novalxcdriver.privsep.disks.sync_filesystem',
            side_effect=self._syncfs)

    def _syncfs(self, path):
        self.synced.append(
            (path, os.path.lexists(os.path.join(path, imagecache.MARKER))))

    def _rmtree(self, path, *args, **kwargs):
        if not isinstance(path, str) or \
                not os.path.abspath(path).startswith(self.tmp + '/'):
            raise AssertionError('rmtree(%r) outside the test\'s tree'
                                 % (path,))
        return _RMTREE(path, *args, **kwargs)

    def tree(self):
        """Every path under the temporary directory, as it is."""
        return base.tree_state(self.tmp, contents=True)

    def refused(self, fn, *args, match=None, call=None):
        """fn(*args) is refused and changes nothing; the message."""
        before = self.tree()
        fds = base.open_fds()
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, *args)
        msg = str(e)
        if match is not None:
            self.assertIn(match, msg)
        if call is not None:
            self.assertTrue(msg.startswith(call + ' refused: '), msg)
        self.assertEqual(before, self.tree(), args)
        self.assertEqual(fds, base.open_fds(), args)
        self.syncfs.assert_not_called()
        return msg

    def make_entry(self, image_id=IMAGE, images=None, marker=MARKER,
                   init='systemd', mode=0o700):
        """A whole entry as publish leaves it; its path."""
        images = images or self.images
        os.makedirs(images, 0o700, exist_ok=True)
        entry = os.path.join(images, image_id)
        os.mkdir(entry, mode)
        os.mkdir(os.path.join(entry, 'rootfs'), 0o755)
        make_init(os.path.join(entry, 'rootfs'), init)
        _write(os.path.join(entry, 'rootfs', 'etc-file'), b'data')
        if marker is not None:
            _write(os.path.join(entry, imagecache.MARKER), marker)
        return entry

    def make_partial(self, name=PARTIAL, images=None, init='systemd',
                     marker=None, mode=0o700):
        """A partial as an unpack leaves it (no marker); its path."""
        images = images or self.images
        os.makedirs(images, 0o700, exist_ok=True)
        partial = os.path.join(images, name)
        os.mkdir(partial)
        os.chmod(partial, mode)
        os.mkdir(os.path.join(partial, 'rootfs'), 0o755)
        make_init(os.path.join(partial, 'rootfs'), init)
        _write(os.path.join(partial, 'rootfs', 'etc-file'), b'data')
        if marker is not None:
            _write(os.path.join(partial, imagecache.MARKER), marker)
        return partial

    def relative(self, path):
        """path relative to its driver root (state or containers)."""
        for root in (self.state, self.lxc):
            if path.startswith(root + '/'):
                return os.path.relpath(path, root)
        raise AssertionError('%s is below no driver root' % path)


class EntryPointsTest(base.TestCase):

    def test_every_entry_point_is_covered(self):
        # A new entry point needs its checks tested here.
        names = {n for n, f in vars(imagecache).items()
                 if privsep.storage_admin.is_entrypoint(f)}
        self.assertEqual({'read_entry', 'list_names', 'make_partial',
                          'publish', 'move_aside', 'retire', 'remove',
                          'start_receive', 'finish_receive',
                          'cancel_receive', 'unpack_disk_image'},
                         names)


class ChecksTest(_Base):
    """What every entry point refuses, on a tree where each path exists."""

    def setUp(self):
        super().setUp()
        s = self.state
        self.make_entry()
        self.make_entry(OTHER)
        self.partial = self.make_partial()
        self.corrupt = self.make_entry(CORRUPT)
        for name in BAD_NAMES:
            os.mkdir(os.path.join(self.images, name), 0o700)
        # Symlinks: an entry, a partial and a corrupt to the real ones.
        os.symlink(IMAGE, os.path.join(self.images, LINKED))
        self.linked_partial = os.path.join(
            self.images, '.partial-%s-1-linked' % IMAGE)
        os.symlink(PARTIAL, self.linked_partial)
        self.linked_corrupt = os.path.join(
            self.images, '.corrupt-%s-1-linked' % IMAGE)
        os.symlink(CORRUPT, self.linked_corrupt)
        # Another tree's cache, and containers/images a link to it.
        self.other_images = os.path.join(self.outside, 'images')
        self.make_entry(images=self.other_images)
        self.make_partial(images=self.other_images)
        self.make_entry(CORRUPT, images=self.other_images)
        os.symlink(self.other_images, os.path.join(self.lxc, 'images'))
        # An image cache not directly under a driver root, or misnamed.
        for d in ('sub/images', 'Images', 'image', 'images2'):
            self.make_entry(images=os.path.join(s, d))
            self.make_partial(images=os.path.join(s, d))
        self.make_entry(images=s)   # state/<id>
        self.make_partial(images=s)

    def bad_paths(self, name):
        """Paths that are not images/name in a driver root (name exists)."""
        s = self.state
        good = os.path.join(self.images, name)
        return [
            # Outside the driver roots, or one itself.
            os.path.join(self.other_images, name),
            os.path.join(self.tmp, 'images', name),
            os.path.join(self.outside, name),
            self.tmp, s, self.lxc, self.images, self.outside,
            # Not absolute (the cwd is self.tmp) or not normalized.
            'state/images/' + name, 'images/' + name, name, '',
            './state/images/' + name,
            s + '/images/../images/' + name, s + '/x/../images/' + name,
            s + '//images/' + name, s + '/./images/' + name,
            good + '/', good + '/.', good + '//', self.lxc + '/../state/'
            'images/' + name,
            # Through a symlink: the images directory.
            os.path.join(self.lxc, 'images', name),
            # Not directly under a driver root's images.
            os.path.join(s, name), os.path.join(s, 'sub', 'images', name),
            os.path.join(s, 'Images', name), os.path.join(s, 'image', name),
            os.path.join(s, 'images2', name),
            os.path.join(good, 'rootfs'), os.path.join(good, 'rootfs', 'x'),
            os.path.join(good, imagecache.MARKER),
            # NUL.
            good + '\0', good + '\0/x',
            # Not a str.
            None, 3, os.fsencode(good), [good], (good,),
        ] + [os.path.join(self.images, n) for n in BAD_NAMES]

    def bad_entries(self):
        return self.bad_paths(IMAGE) + [
            os.path.join(self.images, LINKED),
            self.partial, self.corrupt, self.linked_partial,
            self.linked_corrupt]

    def bad_removables(self):
        return (self.bad_paths(PARTIAL) + self.bad_paths(CORRUPT) + [
            self.entry, os.path.join(self.images, OTHER),
            os.path.join(self.images, LINKED),
            self.linked_partial, self.linked_corrupt])

    def bad_partials(self):
        return self.bad_removables() + [self.corrupt]

    def bad_images_dirs(self):
        s = self.state
        return [
            os.path.join(self.outside, 'images'),
            os.path.join(self.tmp, 'images'), self.tmp, s, self.lxc,
            'state/images', 'images', './state/images', '',
            s + '/images/', s + '/./images', s + '//images',
            s + '/x/../images', self.lxc + '/../state/images',
            # Through a symlink (to another tree's cache).
            os.path.join(self.lxc, 'images'),
            os.path.join(s, 'sub', 'images'), os.path.join(s, 'Images'),
            os.path.join(s, 'image'), os.path.join(s, 'images2'),
            self.entry, self.partial, os.path.join(self.images, 'images'),
            self.images + '\0', None, 3, os.fsencode(self.images),
            [self.images],
        ]

    def test_check_entry_accepts(self):
        for path in (self.entry, os.path.join(self.images, OTHER),
                     # Missing, or in the other root (no images there).
                     os.path.join(self.images, 'a' * 8 + IMAGE[8:]),
                     ):
            self.assertIsNone(imagecache.check_entry('c', path))
        os.unlink(os.path.join(self.lxc, 'images'))
        self.assertIsNone(imagecache.check_entry(
            'c', os.path.join(self.lxc, 'images', IMAGE)))

    def test_check_entry(self):
        for path in self.bad_entries():
            msg = self.refused(imagecache.check_entry, 'the_call', path,
                               call='the_call')
            self.assertIn('the_call', msg)

    def test_check_named_says_what(self):
        msg = self.refused(imagecache.check_named, 'c',
                           os.path.join(self.images, 'x'),
                           imagecache.ENTRY_RE, 'a thing of some kind')
        self.assertIn('is not a thing of some kind', msg)

    def test_check_images_dir_accepts(self):
        self.assertIsNone(imagecache.check_images_dir('c', self.images))
        os.unlink(os.path.join(self.lxc, 'images'))
        self.assertIsNone(imagecache.check_images_dir(
            'c', os.path.join(self.lxc, 'images')))

    def test_check_images_dir(self):
        for path in self.bad_images_dirs():
            self.refused(imagecache.check_images_dir, 'c', path, call='c')

    def test_check_image_id(self):
        self.assertIsNone(imagecache.check_image_id('c', IMAGE))
        self.assertIsNone(imagecache.check_image_id('c', OTHER))
        for image_id in BAD_IDS:
            msg = self.refused(imagecache.check_image_id, 'c', image_id,
                               call='c')
            self.assertIn('not an image id', msg)

    def test_check_partial_accepts(self):
        self.assertIsNone(imagecache.check_partial('c', self.partial))

    def test_check_partial(self):
        for path in self.bad_partials():
            self.refused(imagecache.check_partial, 'c', path)

    def test_read_entry(self):
        for path in self.bad_entries():
            self.refused(imagecache.read_entry, path, call='read_entry')
            self.refused(imagecache.read_entry, path, True,
                         call='read_entry')
        # Host paths: read only, so safe to hand it.
        for path in ('/', '/etc', '/images/' + IMAGE,
                     '/var/lib/nova/images/' + IMAGE):
            self.refused(imagecache.read_entry, path, call='read_entry')
        self.mountpoints.assert_not_called()

    def test_move_aside(self):
        for path in self.bad_entries():
            self.refused(imagecache.move_aside, path, call='move_aside')

    def test_retire(self):
        for path in self.bad_entries():
            self.refused(imagecache.retire, path, call='retire')
        self.mountpoints.assert_not_called()
        self.mount_roots.assert_not_called()

    def test_remove(self):
        for path in self.bad_removables():
            self.refused(imagecache.remove, path, call='remove')
        self.mountpoints.assert_not_called()
        self.mount_roots.assert_not_called()

    def test_publish(self):
        for path in self.bad_partials():
            self.refused(imagecache.publish, path, 1, call='publish')
            self.refused(imagecache.publish, path, None, call='publish')
        self.mountpoints.assert_not_called()

    def test_list_names(self):
        for path in self.bad_images_dirs():
            self.refused(imagecache.list_names, path, call='list_names')
        for path in ('/', '/etc', '/images', '/var/lib/nova/images'):
            self.refused(imagecache.list_names, path, call='list_names')

    def test_make_partial_images_dir(self):
        for path in self.bad_images_dirs():
            self.refused(imagecache.make_partial, path, IMAGE,
                         call='make_partial')

    def test_make_partial_image_id(self):
        for image_id in BAD_IDS:
            msg = self.refused(imagecache.make_partial, self.images,
                               image_id, call='make_partial')
            self.assertIn('not an image id', msg)
        # Nor is the missing cache of the other root made for one.
        os.unlink(os.path.join(self.lxc, 'images'))
        for image_id in ('../x', IMAGE.upper(), None):
            self.refused(imagecache.make_partial,
                         os.path.join(self.lxc, 'images'), image_id)
        self.assertFalse(os.path.lexists(os.path.join(self.lxc, 'images')))

    def receiving_all(self, paths):
        """A registry of receives claiming one for each str in paths.

        Were a path's checks skipped, it would be found running (or its
        sham receive used): the refusals must come first.
        """
        return self.patch_object(
            imagecache, '_receiving',
            new={p: object() for p in paths if isinstance(p, str)})

    def test_start_receive(self):
        spool = os.path.join(self.state, imagecache.SPOOL)
        os.mkdir(spool, 0o700)
        fifo = os.path.join(spool, RECEIVE_FIFO)
        os.mkfifo(fifo, 0o600)
        bad = self.bad_partials()
        receiving = self.receiving_all(bad)
        registered = dict(receiving)
        for path in bad:
            msg = self.refused(imagecache.start_receive, path, fifo, MIB,
                               call='start_receive')
            self.assertNotIn('is running', msg)
        self.assertEqual(registered, receiving)

    def test_finish_and_cancel_receive(self):
        bad = self.bad_partials()
        receiving = self.receiving_all(bad)
        registered = dict(receiving)
        for path in bad:
            for msg in (
                    self.refused(imagecache.finish_receive, path, 30,
                                 call='finish_receive'),
                    self.refused(imagecache.cancel_receive, path,
                                 call='cancel_receive')):
                self.assertNotIn('no receive into', msg)
        # Nothing was taken out of the registry.
        self.assertEqual(registered, receiving)

    def test_unpack_disk_image(self):
        unpack = self.patch('novalxcdriver.diskimage.unpack',
                            side_effect=AssertionError('unpacked'))
        # Each with an archive: only the path is wrong.
        for partial in (self.partial,
                        os.path.join(self.other_images, PARTIAL)):
            _write(os.path.join(partial, imagecache.ARCHIVE), ARCHIVE_DATA,
                   0o600)
        self.patch_object(imagecache, '_receiving', new={})
        for path in self.bad_partials():
            self.refused(imagecache.unpack_disk_image, path, 'qcow2',
                         'qcow2', MIB, None, call='unpack_disk_image')
        unpack.assert_not_called()

    def test_refusals_name_the_path(self):
        path = os.path.join(self.state, 'sub', 'images', IMAGE)
        self.assertIn(path, self.refused(imagecache.move_aside, path))
        path = os.path.join(self.lxc, 'images', IMAGE)
        self.assertIn('symlink', self.refused(imagecache.retire, path))
        self.assertIn('below a driver root', self.refused(
            imagecache.remove, os.path.join(self.other_images, PARTIAL)))


class CheckPartialTest(_Base):
    """A partial must be a directory of root's, 0700."""

    def setUp(self):
        super().setUp()
        self.partial = os.path.join(self.images, PARTIAL)

    def test_missing(self):
        os.makedirs(self.images, 0o700)
        msg = self.refused(imagecache.publish, self.partial, 1,
                           call='publish')
        self.assertIn('does not exist', msg)

    def test_modes(self):
        self.make_partial()
        for mode in (0o701, 0o710, 0o750, 0o705, 0o755, 0o777, 0o702,
                     0o720, 0o2750):
            os.chmod(self.partial, mode)
            msg = self.refused(imagecache.publish, self.partial, 1)
            self.assertIn('0700', msg)
        for mode in (0o700, 0o500, 0o300):
            os.chmod(self.partial, mode)
            self.assertIsNone(imagecache.check_partial('c', self.partial))

    def test_owner(self):
        self.make_partial()
        for uid, gid in ((1000, 0), (1000, 1000), (65534, 65534)):
            os.chown(self.partial, uid, gid)
            self.refused(imagecache.publish, self.partial, 1)
            self.refused(imagecache.check_partial, 'c', self.partial)
        # Its group is not looked at.
        os.chown(self.partial, 0, 1000)
        self.assertIsNone(imagecache.check_partial('c', self.partial))

    def test_not_a_directory(self):
        os.makedirs(self.images, 0o700)
        _write(self.partial, b'x', 0o600)
        self.refused(imagecache.publish, self.partial, 1)
        os.unlink(self.partial)
        os.mkfifo(self.partial, 0o600)
        self.refused(imagecache.publish, self.partial, 1)

    def test_symlink_to_a_partial(self):
        real = self.make_partial(name='.partial-%s-1-real' % IMAGE)
        os.symlink(real, self.partial)
        self.refused(imagecache.publish, self.partial, 1, match='symlink')


class ParseMarkerTest(base.TestCase):

    def test_good(self):
        for data, meta in (
                (MARKER, META),
                (b'{"size": 0, "init_system": "busybox"}',
                 {'init_system': 'busybox', 'size': 0}),
                (b' {"init_system": "", "size": 99999999999999999999}\n',
                 {'init_system': '', 'size': 99999999999999999999}),
                # Other keys are dropped.
                (b'{"init_system": "sysvinit", "size": 1, "x": [1],'
                 b' "y": null}', {'init_system': 'sysvinit', 'size': 1}),
                ('{"init_system": "systemd", "size": 2}',
                 {'init_system': 'systemd', 'size': 2})):
            self.assertEqual((meta, None), imagecache.parse_marker(data))
            got, _ = imagecache.parse_marker(data)
            self.assertIs(int, type(got['size']))

    def test_not_json(self):
        for data in (b'', b' ', b'{', MARKER[:-1], MARKER[:10],
                     b'{"init_system": "systemd", "size": 1}}',
                     b'\xff\xfe\x00', b'\x00' * 10, b'nul',
                     b'{"init_system": "systemd", "size": 1,}',
                     b"{'init_system': 'systemd', 'size': 1}"):
            meta, why = imagecache.parse_marker(data)
            self.assertIsNone(meta, data)
            self.assertIn('is not JSON', why)
            self.assertIn(imagecache.MARKER, why)

    def test_bad_shapes(self):
        for value in (None, [], [META], 'systemd', 3, True, {},
                      {'init_system': 'systemd'}, {'size': 1},
                      {'init_system': 3, 'size': 1},
                      {'init_system': None, 'size': 1},
                      {'init_system': ['systemd'], 'size': 1},
                      {'init_system': 'systemd', 'size': -1},
                      {'init_system': 'systemd', 'size': -(1 << 70)},
                      {'init_system': 'systemd', 'size': '3'},
                      {'init_system': 'systemd', 'size': 1.0},
                      {'init_system': 'systemd', 'size': 1.5},
                      {'init_system': 'systemd', 'size': True},
                      {'init_system': 'systemd', 'size': False},
                      {'init_system': 'systemd', 'size': None},
                      {'init_system': 'systemd', 'size': [1]},
                      {'Init_system': 'systemd', 'size': 1}):
            data = json.dumps(value).encode()
            meta, why = imagecache.parse_marker(data)
            self.assertIsNone(meta, data)
            self.assertIn('lacks init_system (str) or size (int)', why)

    def test_what_is_wrong_is_bounded(self):
        data = json.dumps({'init_system': 'x' * 10000}).encode()
        meta, why = imagecache.parse_marker(data)
        self.assertIsNone(meta)
        self.assertLess(len(why), 400)

    def test_nan_and_infinity_are_not_sizes(self):
        for data in (b'{"init_system": "systemd", "size": NaN}',
                     b'{"init_system": "systemd", "size": Infinity}',
                     b'{"init_system": "systemd", "size": -Infinity}',
                     b'{"init_system": "systemd", "size": 1e3}'):
            self.assertIsNone(imagecache.parse_marker(data)[0], data)


class ReadEntryTest(_Base):

    def setUp(self):
        super().setUp()
        self.marker = os.path.join(self.entry, imagecache.MARKER)

    def read(self, *args):
        """read_entry(entry, *args), having changed nothing, held no fd."""
        before = self.tree()
        fds = base.open_fds()
        result = imagecache.read_entry(self.entry, *args)
        self.assertEqual(fds, base.open_fds())
        self.assertEqual(before, self.tree())
        return result

    def damaged(self, match=None):
        """read_entry: (None, damage, its mtime); the damage."""
        meta, damage, mtime = self.read()
        self.assertIsNone(meta)
        self.assertIsInstance(damage, str)
        self.assertEqual(os.lstat(self.entry).st_mtime, mtime)
        if match is not None:
            self.assertIn(match, damage)
        return damage

    def test_absent(self):
        # No image cache at all, then a cache without the entry.
        self.assertEqual((None, None, None), self.read())
        self.assertEqual((None, None, None), self.read(True))
        self.assertFalse(os.path.lexists(self.images))
        self.make_entry(OTHER)
        self.assertEqual((None, None, None), self.read())
        self.assertEqual((None, None, None), self.read(True))
        self.assertFalse(os.path.lexists(self.entry))

    def test_whole(self):
        self.make_entry()
        os.utime(self.entry, (OLD, OLD + 5))
        meta, damage, mtime = self.read()
        self.assertEqual(META, meta)
        self.assertIsNone(damage)
        self.assertEqual(float(OLD + 5), mtime)
        self.assertIsInstance(mtime, float)

    def test_whole_in_the_other_root(self):
        self.entry = self.make_entry(
            OTHER, images=os.path.join(self.lxc, 'images'), init=None,
            marker=b'{"init_system": "busybox", "size": 0, "more": 1}')
        self.assertEqual({'init_system': 'busybox', 'size': 0},
                         self.read()[0])

    def test_other_keys_are_not_returned(self):
        self.make_entry(marker=json.dumps(dict(META, x='y')))
        self.assertEqual(META, self.read()[0])

    def test_stamp(self):
        self.make_entry()
        os.utime(self.entry, (OLD, OLD))
        rootfs = os.path.join(self.entry, 'rootfs')
        os.utime(rootfs, (OLD, OLD))
        os.utime(self.marker, (OLD, OLD))
        # Not stamped.
        self.assertEqual((META, None, float(OLD)),
                         imagecache.read_entry(self.entry))
        self.assertEqual(OLD, os.lstat(self.entry).st_mtime)
        self.assertEqual((META, None, float(OLD)),
                         imagecache.read_entry(self.entry, False))
        self.assertEqual(OLD, os.lstat(self.entry).st_mtime)
        # Stamped: now, and what is returned is the new mtime.
        before = time.time()
        meta, damage, mtime = imagecache.read_entry(self.entry, True)
        self.assertEqual((META, None), (meta, damage))
        self.assertGreaterEqual(mtime, before - 2)
        self.assertLessEqual(mtime, time.time() + 2)
        self.assertEqual(os.lstat(self.entry).st_mtime, mtime)
        # Only the entry's mtime.
        self.assertEqual(OLD, os.lstat(rootfs).st_mtime)
        self.assertEqual(OLD, os.lstat(self.marker).st_mtime)

    def test_stamp_a_damaged_entry(self):
        self.make_entry(marker=b'{')
        os.utime(self.entry, (OLD, OLD))
        meta, damage, mtime = imagecache.read_entry(self.entry, True)
        self.assertIsNone(meta)
        self.assertIn('not JSON', damage)
        self.assertGreater(mtime, OLD + 1000)

    def test_marker_missing(self):
        self.make_entry(marker=None)
        self.damaged('cannot read %s' % imagecache.MARKER)

    def test_marker_torn_or_not_json(self):
        self.make_entry()
        for data in (b'', MARKER[:-1], MARKER[:5], b'\xff\xfe',
                     b'\x00' * 4096):
            os.unlink(self.marker)
            _write(self.marker, data)
            self.damaged('is not JSON')

    def test_marker_bad_shape(self):
        self.make_entry()
        for value in ([], 'x', 3, None, {}, [META],
                      {'init_system': 3, 'size': 1},
                      {'init_system': 'systemd', 'size': '1'},
                      {'init_system': 'systemd', 'size': 1.5},
                      {'init_system': 'systemd', 'size': True},
                      {'init_system': 'systemd', 'size': -1},
                      {'init_system': 'systemd'}, {'size': 1}):
            os.unlink(self.marker)
            _write(self.marker, json.dumps(value))
            self.damaged('lacks init_system')

    def test_marker_a_symlink(self):
        # Its target is whole, in the entry or out of the cache: never
        # read (ELOOP is damage).
        self.make_entry()
        target = os.path.join(self.outside, 'whole.json')
        _write(target, MARKER)
        os.rename(self.marker, os.path.join(self.entry, 'real.json'))
        for link in (target, 'real.json'):
            os.symlink(link, self.marker)
            damage = self.damaged('cannot read %s' % imagecache.MARKER)
            self.assertIn(os.strerror(errno.ELOOP), damage)
            os.unlink(self.marker)
        # A dangling one.
        os.symlink(os.path.join(self.outside, 'nothing'), self.marker)
        self.damaged(os.strerror(errno.ELOOP))

    def _read_in_thread(self):
        """read_entry in a thread, which must not block; its result."""
        result = []
        thread = threading.Thread(
            target=lambda: result.append(imagecache.read_entry(self.entry)),
            daemon=True)
        thread.start()
        thread.join(10)
        if thread.is_alive():
            # Unblock it (a writer opens), then fail.
            fd = os.open(self.marker, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            thread.join(10)
            self.fail('read_entry blocked opening a FIFO marker')
        return result[0]

    def test_marker_a_fifo(self):
        self.make_entry()
        os.unlink(self.marker)
        os.mkfifo(self.marker, 0o644)
        fds = base.open_fds()
        meta, damage, mtime = self._read_in_thread()
        self.assertIsNone(meta)
        self.assertIn('not a regular file', damage)
        self.assertEqual(os.lstat(self.entry).st_mtime, mtime)
        self.assertEqual(fds, base.open_fds())

    def test_marker_a_fifo_holding_a_whole_marker(self):
        # Its writer holds it open, with a whole marker in it: still no
        # regular file, and what it holds is not read.
        self.make_entry()
        os.unlink(self.marker)
        os.mkfifo(self.marker, 0o644)
        fd = os.open(self.marker, os.O_RDWR | os.O_NONBLOCK)
        self.addCleanup(os.close, fd)
        os.write(fd, MARKER)
        meta, damage, _ = self._read_in_thread()
        self.assertIsNone(meta)
        self.assertIn('not a regular file', damage)
        self.assertEqual(MARKER, os.read(fd, 4096))

    def test_marker_a_directory(self):
        self.make_entry()
        os.unlink(self.marker)
        os.mkdir(self.marker)
        _write(os.path.join(self.marker, 'x'), MARKER)
        self.damaged()

    def test_marker_a_device(self):
        # /dev/zero's numbers: read, it would never end.
        self.make_entry()
        os.unlink(self.marker)
        zero = os.stat('/dev/zero').st_rdev
        try:
            os.mknod(self.marker, 0o644 | stat.S_IFCHR, zero)
        except PermissionError:
            self.skipTest('cannot make a device node here')
        self.damaged('not a regular file')

    # open(2) of a socket fails with ENXIO: damage, not the host's error.
    def test_marker_a_socket(self):
        self.make_entry()
        os.unlink(self.marker)
        os.mknod(self.marker, 0o644 | stat.S_IFSOCK)
        self.damaged()

    # json.loads raises RecursionError, not ValueError, for JSON nested
    # deeper than the interpreter's recursion limit: damage too.
    def test_marker_nested_too_deep(self):
        self.make_entry()
        os.unlink(self.marker)
        _write(self.marker, b'[' * 60000)
        self.damaged()

    def test_marker_too_large(self):
        self.make_entry()
        # A whole marker, padded with JSON's whitespace: one byte more
        # than is read.
        for extra in (1, 2, 1 << 20):
            os.unlink(self.marker)
            _write(self.marker, MARKER + b' ' * (
                imagecache._MARKER_MAX - len(MARKER) + extra))
            self.damaged('larger than %d bytes' % imagecache._MARKER_MAX)

    def test_marker_of_the_largest_size(self):
        self.make_entry()
        os.unlink(self.marker)
        _write(self.marker, MARKER + b' ' * (
            imagecache._MARKER_MAX - len(MARKER)))
        self.assertEqual(imagecache._MARKER_MAX,
                         os.lstat(self.marker).st_size)
        self.assertEqual(META, self.read()[0])

    def test_no_rootfs(self):
        self.make_entry()
        rootfs = os.path.join(self.entry, 'rootfs')
        shutil.rmtree(rootfs)
        self.assertEqual('no rootfs directory', self.damaged())
        # A file, a symlink to a directory (of the cache or outside).
        _write(rootfs)
        self.assertEqual('no rootfs directory', self.damaged())
        os.unlink(rootfs)
        other = self.make_entry(OTHER)
        for target in (os.path.join(other, 'rootfs'), 'real',
                       self.outside):
            os.symlink(target, rootfs)
            self.assertEqual('no rootfs directory', self.damaged())
            os.unlink(rootfs)
        os.mkdir(os.path.join(self.entry, 'real'))

    def test_marker_damage_comes_first(self):
        self.make_entry(marker=b'[]')
        shutil.rmtree(os.path.join(self.entry, 'rootfs'))
        self.damaged('lacks init_system')

    def test_entry_not_a_directory(self):
        os.makedirs(self.images, 0o700)
        _write(self.entry, MARKER)
        os.utime(self.entry, (OLD, OLD))
        self.assertEqual((None, 'not a directory', float(OLD)), self.read())
        os.unlink(self.entry)
        os.mkfifo(self.entry)
        os.utime(self.entry, (OLD, OLD))
        self.assertEqual((None, 'not a directory', float(OLD)), self.read())

    def test_host_errors_propagate(self):
        self.make_entry()
        real_open = os.open
        raised = []

        def failing(errnum):
            def open_(path, *args, **kwargs):
                if os.path.basename(path) == imagecache.MARKER:
                    raised.append(errnum)
                    raise OSError(errnum, os.strerror(errnum), path)
                return real_open(path, *args, **kwargs)
            return open_
        for errnum in (errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                       errno.EACCES, errno.EINTR):
            with fixtures.MockPatchObject(imagecache.os, 'open',
                                          side_effect=failing(errnum)):
                e = self.assertRaises(OSError, imagecache.read_entry,
                                      self.entry)
            self.assertEqual(errnum, e.errno)
        # A damaged disk is damage, and so is what a changed entry gives.
        for errnum in (errno.EIO, errno.EUCLEAN, errno.ENOENT,
                       errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
            with fixtures.MockPatchObject(imagecache.os, 'open',
                                          side_effect=failing(errnum)):
                meta, damage, mtime = imagecache.read_entry(self.entry)
            self.assertIsNone(meta)
            self.assertIn(os.strerror(errnum), damage)
        self.assertEqual(11, len(raised))

    def test_read_errors_close_the_marker(self):
        self.make_entry()
        fds = base.open_fds()
        with fixtures.MockPatchObject(
                imagecache.os, 'fstat',
                side_effect=OSError(errno.EIO, 'I/O error')):
            meta, damage, _ = imagecache.read_entry(self.entry)
        self.assertIsNone(meta)
        self.assertIn('I/O error', damage)
        self.assertEqual(fds, base.open_fds())

    def test_a_whole_entry_in_an_entry_not_read(self):
        # Only the entry's own marker counts.
        self.make_entry(marker=None)
        _write(os.path.join(self.entry, 'rootfs', imagecache.MARKER),
               MARKER)
        self.damaged('cannot read')


class ListNamesTest(_Base):

    def test_sorted(self):
        os.mkdir(self.images, 0o700)
        names = [IMAGE, OTHER, PARTIAL, CORRUPT, 'z', 'a', '.x', 'B', '0'] + [
            '%02d' % i for i in range(30, 0, -1)]
        for name in names:
            if name in ('z', 'a'):
                _write(os.path.join(self.images, name))
            else:
                os.mkdir(os.path.join(self.images, name))
        os.symlink('z', os.path.join(self.images, 'link'))
        got = imagecache.list_names(self.images)
        self.assertEqual(sorted(names + ['link']), got)
        self.assertIsInstance(got, list)

    def test_empty_and_missing(self):
        self.assertEqual([], imagecache.list_names(self.images))
        self.assertFalse(os.path.lexists(self.images))
        os.mkdir(self.images, 0o700)
        self.assertEqual([], imagecache.list_names(self.images))

    def test_either_root(self):
        images = os.path.join(self.lxc, 'images')
        self.make_entry(OTHER, images=images)
        self.make_entry(IMAGE)
        self.assertEqual([OTHER], imagecache.list_names(images))
        self.assertEqual([IMAGE], imagecache.list_names(self.images))


class MakePartialTest(_Base):

    def check_partial(self, partial, image_id=IMAGE, images=None):
        images = images or self.images
        self.assertEqual(images, os.path.dirname(partial))
        rel = self.relative(partial)
        self.assertRegex(rel, imagecache.PARTIAL_RE)
        self.assertTrue(os.path.basename(partial).startswith(
            '.partial-%s-%d-' % (image_id, os.getpid())), partial)
        st = os.lstat(partial)
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual(0o700, stat.S_IMODE(st.st_mode))
        self.assertEqual((0, 0), (st.st_uid, st.st_gid))
        self.assertEqual(['rootfs'], os.listdir(partial))
        rootfs = os.path.join(partial, 'rootfs')
        st = os.lstat(rootfs)
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual(0o755, stat.S_IMODE(st.st_mode))
        self.assertEqual(0, st.st_uid)
        self.assertEqual([], os.listdir(rootfs))
        # What publish takes.
        self.assertIsNone(imagecache.check_partial('c', partial))

    def test_makes_the_cache(self):
        partial = imagecache.make_partial(self.images, IMAGE)
        self.check_partial(partial)
        st = os.lstat(self.images)
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual(0o700, stat.S_IMODE(st.st_mode))
        self.assertEqual(0, st.st_uid)
        self.assertEqual([os.path.basename(partial)],
                         os.listdir(self.images))

    def test_makes_a_missing_driver_root_not_writable_by_others(self):
        # The daemon's umask, not the caller's (0 here), for what
        # makedirs makes with its default mode.
        os.rmdir(self.state)
        partial = imagecache.make_partial(self.images, IMAGE)
        self.assertEqual(0, _mode(self.state) & 0o022)
        self.check_partial(partial)

    def test_modes_whatever_the_callers_umask(self):
        for umask in (0o077, 0o777, 0o022, 0):
            os.umask(umask)
            partial = imagecache.make_partial(self.images, IMAGE)
            self.check_partial(partial)
            shutil.rmtree(partial)

    def test_in_an_existing_cache(self):
        os.mkdir(self.images, 0o711)
        entry = self.make_entry()
        other = self.make_partial()
        before = {p: s for p, s in self.tree().items() if p != self.images}
        partial = imagecache.make_partial(self.images, IMAGE)
        self.check_partial(partial)
        # What was there is left, the cache's mode too.
        self.assertEqual(0o711, _mode(self.images))
        after = self.tree()
        for path in before:
            self.assertEqual(before[path], after[path], path)
        self.assertEqual(sorted([os.path.basename(entry),
                                 os.path.basename(other),
                                 os.path.basename(partial)]),
                         sorted(os.listdir(self.images)))

    def test_distinct(self):
        made = [imagecache.make_partial(self.images, IMAGE)
                for _ in range(5)]
        made.append(imagecache.make_partial(self.images, OTHER))
        self.assertEqual(6, len(set(made)))
        for partial in made[:5]:
            self.check_partial(partial)
        self.check_partial(made[5], OTHER)
        self.assertEqual(sorted(os.path.basename(p) for p in made),
                         sorted(os.listdir(self.images)))

    def test_in_the_other_root(self):
        images = os.path.join(self.lxc, 'images')
        partial = imagecache.make_partial(images, OTHER)
        self.check_partial(partial, OTHER, images)
        self.assertFalse(os.path.lexists(self.images))

    def test_nothing_is_left_when_rootfs_cannot_be_made(self):
        os.mkdir(self.images, 0o700)
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if os.path.basename(path) == 'rootfs':
                raise OSError(errno.ENOSPC, 'No space left on device', path)
            return real_mkdir(path, *args, **kwargs)
        self.patch_object(imagecache.os, 'mkdir', side_effect=mkdir)
        e = self.assertRaises(OSError, imagecache.make_partial, self.images,
                              IMAGE)
        self.assertEqual(errno.ENOSPC, e.errno)
        self.assertEqual([], os.listdir(self.images))

    def test_the_cache_a_file(self):
        _write(self.images, b'x', 0o600)
        before = self.tree()
        self.assertRaises(OSError, imagecache.make_partial, self.images,
                          IMAGE)
        self.assertEqual(before, self.tree())


class PublishTest(_Base):

    def setUp(self):
        super().setUp()
        self.partial = self.make_partial()
        self.marker = os.path.join(self.entry, imagecache.MARKER)
        self.fsynced = []
        real = durable.fsync_dir

        def fsync_dir(path):
            self.fsynced.append((path, os.path.lexists(self.entry),
                                 os.path.lexists(self.partial)))
            return real(path)
        self.patch_object(durable, 'fsync_dir', side_effect=fsync_dir)

    def published(self, init, size):
        """The entry is whole: init and size in its 0644 marker."""
        self.assertFalse(os.path.lexists(self.partial))
        self.assertEqual([IMAGE], os.listdir(self.images))
        st = os.lstat(self.marker)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(0o644, stat.S_IMODE(st.st_mode))
        self.assertEqual(0, st.st_uid)
        self.assertEqual({'init_system': init, 'size': size},
                         json.loads(_read(self.marker)))
        self.assertEqual(({'init_system': init, 'size': size}, None),
                         imagecache.read_entry(self.entry)[:2])
        self.assertEqual(sorted([imagecache.MARKER, 'rootfs']),
                         sorted(os.listdir(self.entry)))

    def not_published(self, fn, *args, match=None, error=None):
        """fn(*args) raises, changing nothing and syncing nothing."""
        before = self.tree()
        fds = base.open_fds()
        e = self.assertRaises(error or exception.ImageUnpackError, fn, *args)
        if match is not None:
            self.assertIn(match, str(e))
        self.assertEqual(before, self.tree())
        self.assertEqual(fds, base.open_fds())
        self.assertFalse(os.path.lexists(self.entry))
        self.syncfs.assert_not_called()
        return e

    def test_with_size(self):
        rootfs = os.path.join(self.partial, 'rootfs')
        inode = os.lstat(rootfs).st_ino
        inside = base.tree_state(rootfs, contents=True)
        self.assertEqual('systemd', imagecache.publish(self.partial, 12345))
        self.published('systemd', 12345)
        # The rootfs itself, unchanged.
        rootfs = os.path.join(self.entry, 'rootfs')
        self.assertEqual(inode, os.lstat(rootfs).st_ino)
        self.assertEqual(
            {p.replace(self.partial, self.entry, 1): s
             for p, s in inside.items()},
            base.tree_state(rootfs, contents=True))
        self.assertEqual(0o700, _mode(self.entry))

    def test_size_zero_and_other_inits(self):
        for init, size in (('busybox', 0), ('sysvinit', 1 << 40)):
            shutil.rmtree(self.images)
            self.make_partial(init=init)
            self.assertEqual(init, imagecache.publish(self.partial, size))
            self.published(init, size)

    def test_marked_then_synced_then_renamed_durably(self):
        imagecache.publish(self.partial, 7)
        # syncfs once, of the partial (not yet renamed), its marker
        # written: one sync for the files and the marker.
        self.assertEqual([(self.partial, True)], self.synced)
        # Then only the rename is made durable: images fsync'd once the
        # entry is there.
        self.assertEqual([(self.images, True, False)], self.fsynced)

    def test_in_the_other_root(self):
        images = os.path.join(self.lxc, 'images')
        self.partial = self.make_partial(images=images, init='busybox')
        self.entry = os.path.join(images, IMAGE)
        self.images = images
        self.marker = os.path.join(self.entry, imagecache.MARKER)
        self.assertEqual('busybox', imagecache.publish(self.partial, 3))
        self.published('busybox', 3)

    def test_a_partial_made_by_make_partial(self):
        shutil.rmtree(self.images)
        self.partial = imagecache.make_partial(self.images, IMAGE)
        make_init(os.path.join(self.partial, 'rootfs'), 'busybox')
        os.umask(0o077)
        self.assertEqual('busybox', imagecache.publish(self.partial, 9))
        self.published('busybox', 9)

    def test_no_init(self):
        for init in (None, 'noexec'):
            shutil.rmtree(self.images)
            self.make_partial(init=init)
            for size in (5, 0):
                e = self.not_published(imagecache.publish, self.partial,
                                       size, match='no /sbin/init')
                self.assertIn(IMAGE, str(e))
            self.assertTrue(os.path.isdir(self.partial))

    def test_init_outside_the_rootfs_does_not_count(self):
        # An absolute link resolves in the rootfs: the host's
        # /lib/systemd/systemd is not the image's.
        shutil.rmtree(self.images)
        self.make_partial(init=None)
        rootfs = os.path.join(self.partial, 'rootfs')
        os.makedirs(os.path.join(rootfs, 'sbin'))
        os.symlink(os.path.join(self.outside, 'init'),
                   os.path.join(rootfs, 'sbin', 'init'))
        _write(os.path.join(self.outside, 'init'), b'x', 0o755)
        self.not_published(imagecache.publish, self.partial, 5,
                           match='no /sbin/init')

    def test_no_rootfs(self):
        rootfs = os.path.join(self.partial, 'rootfs')
        os.rename(rootfs, os.path.join(self.partial, 'real'))
        self.not_published(imagecache.publish, self.partial, 5,
                           match='no rootfs directory')
        # A symlink to a root with an init, a file: no rootfs either.
        for target in ('real', os.path.join(self.partial, 'real')):
            os.symlink(target, rootfs)
            self.not_published(imagecache.publish, self.partial, 5,
                               match='no rootfs directory')
            os.unlink(rootfs)
        _write(rootfs)
        self.not_published(imagecache.publish, self.partial, 5,
                           match='no rootfs directory')

    def test_a_marker_in_the_partial_is_replaced_when_sized(self):
        _write(os.path.join(self.partial, imagecache.MARKER),
               b'{"init_system": "busybox", "size": 1}')
        self.assertEqual('systemd', imagecache.publish(self.partial, 2))
        self.published('systemd', 2)

    def test_bad_sizes(self):
        for size in (None, -1, -(1 << 70), 1.5, 1.0, 0.0, True, False, '3',
                     b'3', [3], {'size': 3}, float('nan')):
            msg = self.refused(imagecache.publish, self.partial, size,
                               call='publish')
            self.assertIn('size %r' % (size,), msg)
        self.mountpoints.assert_not_called()

    def test_mounts_below_the_partial(self):
        rootfs = os.path.join(self.partial, 'rootfs')
        for points in ({self.partial}, {rootfs},
                       {os.path.join(rootfs, 'proc'), '/', self.images},
                       {os.path.join(rootfs, 'a', 'b')}):
            self.points = points
            for size in (5, 0):
                msg = self.refused(imagecache.publish, self.partial, size,
                                   call='publish')
                self.assertIn('still has mounts', msg)
                self.assertIn(sorted(p for p in points
                                     if p.startswith(self.partial))[0], msg)

    def test_mounts_elsewhere(self):
        # Above it, beside it (a name it prefixes), another entry's; and
        # a mount's root naming it is no mount below it.
        self.points = {'/', self.tmp, self.state, self.images,
                       self.partial + 'x', self.partial + 'x/rootfs',
                       os.path.join(self.images, OTHER, 'rootfs')}
        self.roots = {os.path.join(self.partial, 'rootfs'),
                      '/images/%s/rootfs' % os.path.basename(self.partial)}
        self.assertEqual('systemd', imagecache.publish(self.partial, 5))
        self.published('systemd', 5)

    def test_work_files_are_not_published(self):
        # A disk image's, left by a crash: the archive, its raw copy, the
        # partition's mount point.
        _write(os.path.join(self.partial, imagecache.ARCHIVE), b'qcow')
        _write(os.path.join(self.partial, imagecache.RAW), b'raw')
        os.mkdir(os.path.join(self.partial, imagecache.PARTITION))
        self.assertEqual('systemd', imagecache.publish(self.partial, 4))
        self.published('systemd', 4)

    def test_refused_while_a_receive_runs(self):
        _write(os.path.join(self.partial, imagecache.ARCHIVE), b'qcow')
        self.patch_object(imagecache, '_receiving',
                          new={self.partial: object()})
        for size in (4, 0):
            self.refused(imagecache.publish, self.partial, size,
                         match='a receive into %s is running'
                         % self.partial)

    def test_an_empty_directory_at_the_entry_is_not_replaced(self):
        # rename(2) would replace it; publish refuses instead.
        os.mkdir(self.entry, 0o700)
        e = self.assertRaises(OSError, imagecache.publish, self.partial, 5)
        self.assertEqual(errno.EEXIST, e.errno)
        self.assertEqual([], os.listdir(self.entry))
        self.assertTrue(os.path.isdir(os.path.join(self.partial, 'rootfs')))

    def test_a_work_mount_point_not_empty_publishes_nothing(self):
        mnt = os.path.join(self.partial, imagecache.PARTITION)
        os.mkdir(mnt)
        _write(os.path.join(mnt, 'left'), b'x')
        e = self.assertRaises(OSError, imagecache.publish, self.partial, 5)
        self.assertEqual(errno.ENOTEMPTY, e.errno)
        self.assertFalse(os.path.lexists(self.entry))
        self.assertTrue(os.path.exists(os.path.join(mnt, 'left')))

    def test_an_existing_entry_is_left(self):
        self.make_entry(marker=b'{"init_system": "busybox", "size": 1}',
                        init='busybox')
        entry_before = base.tree_state(self.entry, contents=True)
        e = self.assertRaises(OSError, imagecache.publish, self.partial, 5)
        self.assertIn(e.errno, (errno.ENOTEMPTY, errno.EEXIST))
        self.assertEqual(entry_before,
                         base.tree_state(self.entry, contents=True))
        self.assertEqual(({'init_system': 'busybox', 'size': 1}, None),
                         imagecache.read_entry(self.entry)[:2])
        self.assertTrue(os.path.isdir(os.path.join(self.partial, 'rootfs')))
        # Nor the images directory fsync'd for a rename never made.
        self.assertNotIn(self.images, [p for p, _, _ in self.fsynced])

    def test_an_existing_file_for_the_entry_is_left(self):
        _write(self.entry, b'keep')
        self.assertRaises(OSError, imagecache.publish, self.partial, 5)
        self.assertEqual(b'keep', _read(self.entry))
        self.assertTrue(os.path.isdir(self.partial))

    def test_failed_sync_publishes_nothing(self):
        self.syncfs.side_effect = OSError(errno.EIO, 'I/O error')
        before = self.tree()
        e = self.assertRaises(OSError, imagecache.publish, self.partial, 5)
        self.assertEqual(errno.EIO, e.errno)
        after = self.tree()
        self.assertEqual(sorted(before), sorted(after))
        # The marker was written before the sync and removed after it:
        # only the partial's own mtime moved.
        for path in before:
            if path != self.partial:
                self.assertEqual(before[path], after[path], path)


class _RenameTests:
    """move_aside and retire: one rename to a fresh name (a mixin)."""

    fn = None
    regex = None
    prefix = None

    def setUp(self):
        super().setUp()
        self.make_entry()
        self.other = self.make_entry(OTHER)

    def renamed(self, entry=None):
        """fn(entry) renames it, and only it; the new path."""
        entry = entry or self.entry
        before = self.tree()
        inode = os.lstat(entry).st_ino
        inside = base.tree_state(entry, contents=True)
        fds = base.open_fds()
        aside = type(self).fn(entry)
        self.assertEqual(fds, base.open_fds())
        self.assertFalse(os.path.lexists(entry))
        self.assertEqual(os.path.dirname(entry), os.path.dirname(aside))
        self.assertRegex(self.relative(aside), self.regex)
        name = os.path.basename(aside)
        head = '%s%s-%d-' % (self.prefix, os.path.basename(entry),
                             os.getpid())
        self.assertTrue(name.startswith(head), name)
        self.assertRegex(name[len(head):], r'\A[0-9a-f]{16}\Z')
        # The same directory, as it was.
        self.assertEqual(inode, os.lstat(aside).st_ino)
        self.assertEqual(
            {p.replace(entry, aside, 1): s for p, s in inside.items()},
            base.tree_state(aside, contents=True))
        # Nothing else changed (but the cache's mtime).
        after = self.tree()
        for path, state in before.items():
            if path == os.path.dirname(entry) or \
                    path == entry or path.startswith(entry + '/'):
                continue
            self.assertEqual(state, after[path], path)
        self.assertEqual(set(before) - {entry} - {
            p for p in before if p.startswith(entry + '/')},
            {p for p in after
             if p != aside and not p.startswith(aside + '/')})
        self.syncfs.assert_not_called()
        return aside

    def test_renamed(self):
        self.renamed()
        self.assertEqual(META, imagecache.read_entry(self.other)[0])

    def test_distinct_names(self):
        names = set()
        for _ in range(3):
            entry = self.make_entry() if not os.path.lexists(
                self.entry) else self.entry
            names.add(self.renamed(entry))
        self.assertEqual(3, len(names))

    def test_a_damaged_entry_or_a_file(self):
        shutil.rmtree(self.entry)
        self.make_entry(marker=b'{')
        self.renamed()
        _write(self.entry, b'x')
        self.renamed()

    def test_in_the_other_root(self):
        entry = self.make_entry(images=os.path.join(self.lxc, 'images'))
        self.renamed(entry)

    def test_missing(self):
        shutil.rmtree(self.entry)
        before = self.tree()
        self.assertRaises(FileNotFoundError, type(self).fn, self.entry)
        self.assertEqual(before, self.tree())


class MoveAsideTest(_RenameTests, _Base):

    fn = imagecache.move_aside
    regex = imagecache.CORRUPT_RE
    prefix = '.corrupt-'

    def test_what_it_gives_is_removable(self):
        aside = self.renamed()
        self.assertTrue(imagecache.remove(aside))
        self.assertFalse(os.path.lexists(aside))

    def test_even_while_a_mount_shows_it(self):
        # Containers keep their mount, which follows the directory.
        self.roots = {'/images/%s/rootfs' % IMAGE}
        self.points = {os.path.join(self.outside, 'lower')}
        self.renamed()


class RetireTest(_RenameTests, _Base):

    fn = imagecache.retire
    regex = imagecache.PARTIAL_RE
    prefix = '.partial-'

    def kept(self, entry=None):
        entry = entry or self.entry
        before = self.tree()
        self.assertIsNone(imagecache.retire(entry))
        self.assertEqual(before, self.tree())

    def test_what_it_gives_is_removable(self):
        doomed = self.renamed()
        self.assertTrue(imagecache.remove(doomed))
        self.assertFalse(os.path.lexists(doomed))
        self.assertTrue(os.path.isdir(self.other))

    def test_kept_while_mounted_at_or_below(self):
        rootfs = os.path.join(self.entry, 'rootfs')
        for points in ({self.entry}, {rootfs},
                       {os.path.join(rootfs, 'proc')},
                       {'/', os.path.join(rootfs, 'a', 'b', 'c')}):
            self.points = points
            self.kept()

    def test_kept_while_a_mount_s_root_names_it(self):
        # The entry's basename as a path component of a mount's root,
        # relative to its filesystem's root.
        for root in ('/srv/x/images/%s/rootfs' % IMAGE,
                     '/images/%s/rootfs/usr' % IMAGE,
                     '/%s/rootfs' % IMAGE, '/images/%s' % IMAGE,
                     '/%s' % IMAGE,
                     self.entry, os.path.join(self.entry, 'rootfs')):
            self.roots = {'/', '/other/%s/rootfs' % OTHER, root}
            self.kept()
        self.assertEqual(7, self.mount_roots.call_count)

    def test_not_kept_for_other_mounts(self):
        # Above it, beside it, a name it prefixes or ends: not it.
        self.points = {'/', self.tmp, self.state, self.images,
                       self.entry + 'x', self.entry + '-1',
                       os.path.join(self.other, 'rootfs')}
        self.roots = {'/', '/images', '/images/%sx/rootfs' % IMAGE,
                      '/images/x%s/rootfs' % IMAGE,
                      '/images/%s-1/rootfs' % IMAGE,
                      '/images/.partial-%s-1-x/rootfs' % IMAGE,
                      '/images/%s/rootfs' % OTHER,
                      '/images/%s/rootfs' % IMAGE.upper(),
                      'images%s' % IMAGE}
        self.renamed()

    def test_mounted_the_other_entry(self):
        self.points = {os.path.join(self.other, 'rootfs')}
        self.kept(self.other)
        self.renamed()


class RemoveTest(_Base):

    def setUp(self):
        super().setUp()
        self.canary = os.path.join(self.outside, 'canary')
        _write(self.canary, b'alive', 0o600)
        self.canary_dir = os.path.join(self.outside, 'dir')
        os.mkdir(self.canary_dir)
        _write(os.path.join(self.canary_dir, 'f'), b'also alive')
        self.make_entry()

    def make_tree(self, path):
        """A tree to delete: read-only dirs, links out, a FIFO."""
        os.mkdir(path, 0o700)
        d = os.path.join(path, 'rootfs', 'usr', 'lib')
        os.makedirs(d)
        _write(os.path.join(d, 'libc.so'), b'elf', 0o444)
        os.symlink(self.canary, os.path.join(d, 'canary'))
        os.symlink(self.canary_dir, os.path.join(path, 'rootfs', 'out'))
        os.symlink('/', os.path.join(path, 'rootfs', 'root'))
        os.mkfifo(os.path.join(path, 'rootfs', 'fifo'))
        for ro in (d, os.path.dirname(d), os.path.join(path, 'rootfs')):
            os.chmod(ro, 0o500)
        _write(os.path.join(path, imagecache.MARKER), MARKER, 0o400)
        return path

    def outside_intact(self):
        self.assertEqual(b'alive', _read(self.canary))
        self.assertEqual(['f'], os.listdir(self.canary_dir))
        self.assertEqual(b'also alive',
                         _read(os.path.join(self.canary_dir, 'f')))
        self.assertTrue(os.path.isdir(self.entry))
        self.assertEqual(META, imagecache.read_entry(self.entry)[0])

    def removed(self, path):
        images = os.path.dirname(path)
        others = {p: s for p, s in self.tree().items()
                  if p != path and not p.startswith(path + '/') and
                  p != images}
        self.assertIs(True, imagecache.remove(path))
        self.assertFalse(os.path.lexists(path))
        after = self.tree()
        self.assertEqual(others, {p: s for p, s in after.items()
                                  if p != images})
        self.outside_intact()
        self.syncfs.assert_not_called()

    def test_a_partial(self):
        self.removed(self.make_tree(os.path.join(self.images, PARTIAL)))

    def test_a_corrupt(self):
        self.removed(self.make_tree(os.path.join(self.images, CORRUPT)))

    def test_in_the_other_root(self):
        images = os.path.join(self.lxc, 'images')
        os.mkdir(images, 0o700)
        self.removed(self.make_tree(os.path.join(images, PARTIAL)))

    def test_any_mode_or_owner(self):
        path = self.make_tree(os.path.join(self.images, PARTIAL))
        os.chmod(path, 0o555)
        os.chown(path, 1000, 1000)
        self.removed(path)

    def test_a_file(self):
        for name in (PARTIAL, CORRUPT):
            path = os.path.join(self.images, name)
            _write(path, b'x', 0o400)
            self.removed(path)
            os.mkfifo(path)
            self.removed(path)

    def test_a_failed_delete_is_no_success(self):
        # Whatever rmtree cannot delete (EROFS, an immutable file) is an
        # error, not True: the tree is still there.
        path = self.make_tree(os.path.join(self.images, PARTIAL))
        real_unlink = os.unlink

        def unlink(name, *args, **kwargs):
            if os.path.basename(name) == 'libc.so':
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)
            return real_unlink(name, *args, **kwargs)
        self.patch_object(os, 'unlink', side_effect=unlink)
        e = self.assertRaises(OSError, imagecache.remove, path)
        self.assertEqual(errno.EROFS, e.errno)
        self.assertTrue(os.path.lexists(
            os.path.join(path, 'rootfs', 'usr', 'lib', 'libc.so')))
        self.outside_intact()

    def test_missing(self):
        for name in (PARTIAL, CORRUPT):
            before = self.tree()
            self.assertIs(True, imagecache.remove(
                os.path.join(self.images, name)))
            self.assertEqual(before, self.tree())
        # Nor any image cache.
        shutil.rmtree(self.images)
        self.assertIs(True, imagecache.remove(
            os.path.join(self.images, PARTIAL)))
        self.assertFalse(os.path.lexists(self.images))

    def kept(self, path):
        before = self.tree()
        self.assertIs(False, imagecache.remove(path))
        self.assertEqual(before, self.tree())

    def test_kept_while_mounted(self):
        for name in (PARTIAL, CORRUPT):
            path = self.make_tree(os.path.join(self.images, name))
            rootfs = os.path.join(path, 'rootfs')
            for points, roots in (
                    ({path}, set()), ({rootfs}, set()),
                    ({os.path.join(rootfs, 'usr')}, set()),
                    (set(), {'/images/%s/rootfs' % name}),
                    (set(), {'/x/images/%s' % name}),
                    (set(), {'/%s/rootfs/usr/lib' % name}),
                    (set(), {os.path.join(path, 'rootfs')})):
                self.points, self.roots = points, roots
                self.kept(path)
            # And so is a missing one: nothing to do either way.
            self.points, self.roots = set(), set()
            self.removed(path)

    def test_a_moved_aside_entry_still_mounted(self):
        # A container's lower layer, bound from the entry: its root
        # follows the rename.
        aside = imagecache.move_aside(self.make_entry(OTHER))
        self.roots = {'/images/%s/rootfs' % os.path.basename(aside)}
        self.kept(aside)
        self.roots = {'/images/%s/rootfs' % OTHER}
        self.assertIs(True, imagecache.remove(aside))

    def test_other_mounts(self):
        path = self.make_tree(os.path.join(self.images, PARTIAL))
        self.points = {'/', self.images, path + 'x',
                       os.path.join(self.entry, 'rootfs')}
        self.roots = {'/', '/images/%s/rootfs' % IMAGE,
                      '/images/%sx/rootfs' % PARTIAL}
        self.removed(path)

    def test_an_entry_is_refused(self):
        for entry in (self.entry, self.make_entry(OTHER)):
            self.refused(imagecache.remove, entry, call='remove',
                         match='is not an image cache partial or a '
                         'damaged entry')


def _feed(fd, data, piece=64 * 1024, timeout=10):
    """Write data into a FIFO's non-blocking write end, as images._feed.

    A full FIFO is waited for (select), up to timeout seconds at a time.

    :returns: the bytes written: fewer than len(data) when the reader
        went away (EPIPE).
    """
    view = memoryview(data)
    sent = 0
    while sent < len(data):
        try:
            sent += os.write(fd, view[sent:sent + piece])
        except BlockingIOError:
            if not select.select([], [fd], [], timeout)[1]:
                raise AssertionError('the FIFO was not read for %d s'
                                     % timeout)
        except BrokenPipeError:
            break
    return sent


class _ReceiveBase(_Base):
    """A partial with an empty rootfs, and the state root's spool.

    self.receiving is imagecache's registry of running receives (a fresh
    dict); the FIFOs' write ends a test leaves open are closed, then
    what it left running stopped, at its end.
    """

    def setUp(self):
        super().setUp()
        self.receiving = self.patch_object(imagecache, '_receiving',
                                           new={})
        self.addCleanup(self._stop_receives)
        self.writers = set()
        self.addCleanup(self._close_writers)
        self.spool = os.path.join(self.state, imagecache.SPOOL)
        os.mkdir(self.spool, 0o700)
        self.partial = self.empty_partial()
        self.archive = os.path.join(self.partial, imagecache.ARCHIVE)
        self.fifos = 0

    def _stop_receives(self):
        for receive in list(self.receiving.values()):
            if receive.thread.ident is not None:
                receive.stop.set()
                receive.thread.join(10)

    def _close_writers(self):
        for fd in self.writers:
            os.close(fd)
        self.writers.clear()

    def empty_partial(self, name=PARTIAL, images=None):
        """A partial as make_partial makes it: an empty rootfs; its path."""
        images = images or self.images
        os.makedirs(images, 0o700, exist_ok=True)
        partial = os.path.join(images, name)
        os.mkdir(partial, 0o700)
        os.mkdir(os.path.join(partial, 'rootfs'), 0o755)
        return partial

    def make_fifo(self, name=None, spool=None):
        """A FIFO in a spool, held for writing as images._spool_fifo does.

        :param name: its name (a new receive FIFO's by default).
        :returns: (its path, the write end: non-blocking, closed at the
            test's end unless close_writer closed it).
        """
        if name is None:
            self.fifos += 1
            name = 'archive-%d-%x.fifo' % (PID, 0xf0 + self.fifos)
        fifo = os.path.join(spool or self.spool, name)
        os.mkfifo(fifo, 0o600)
        # A reader of our own for a moment: the write end's open needs one.
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK |
                             os.O_CLOEXEC)
        finally:
            os.close(reader)
        self.writers.add(writer)
        return fifo, writer

    def close_writer(self, fd):
        """The end of the image, as nova-compute closes it."""
        self.writers.remove(fd)
        os.close(fd)

    def start(self, max_bytes=1 << 30, partial=None, spool=None):
        """start_receive from a new FIFO; the FIFO's write end.

        The FIFO is gone from the spool once started, as
        images._through_fifo leaves it.
        """
        fifo, writer = self.make_fifo(spool=spool)
        imagecache.start_receive(partial or self.partial, fifo, max_bytes)
        os.unlink(fifo)
        return writer

    def received(self, data, max_bytes=1 << 30, timeout=30):
        """data received in a new receive; what finish_receive returns."""
        writer = self.start(max_bytes)
        _feed(writer, data, piece=100000)
        self.close_writer(writer)
        return imagecache.finish_receive(self.partial, timeout)

    def no_receive(self, partial=None):
        """finish_receive and cancel_receive refuse: none is running."""
        partial = partial or self.partial
        match = 'no receive into %s is running' % partial
        self.refused(imagecache.finish_receive, partial, 30, match=match,
                     call='finish_receive')
        self.refused(imagecache.cancel_receive, partial, match=match,
                     call='cancel_receive')


class StartReceiveTest(_ReceiveBase):

    def setUp(self):
        super().setUp()
        self.fifo, self.writer = self.make_fifo(RECEIVE_FIFO)

    def refused_start(self, partial=_GOOD, fifo=_GOOD, max_bytes=MIB,
                      match=None):
        """start_receive is refused: no archive made, no fd held."""
        msg = self.refused(
            imagecache.start_receive,
            self.partial if partial is _GOOD else partial,
            self.fifo if fifo is _GOOD else fifo, max_bytes, match=match,
            call='start_receive')
        self.assertEqual({}, self.receiving)
        return msg

    def test_started(self):
        # What is open but the write end, which the test closes.
        fds = {fd: p for fd, p in base.open_fds().items()
               if fd != self.writer}
        imagecache.start_receive(self.partial, self.fifo, MIB)
        self.assertEqual([self.partial], list(self.receiving))
        # The archive is made at once, empty, root's 0600.
        st = os.lstat(self.archive)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(0o600, stat.S_IMODE(st.st_mode))
        self.assertEqual((0, 0), (st.st_uid, st.st_size))
        self.assertEqual(['archive', 'rootfs'],
                         sorted(os.listdir(self.partial)))
        # Two fds more (the FIFO's read end, the archive), neither
        # inherited by a child.
        opened = set(base.open_fds()) - set(fds) - {self.writer}
        self.assertEqual(2, len(opened))
        for fd in opened:
            self.assertFalse(os.get_inheritable(fd))
        self.assertEqual({self.fifo, self.archive},
                         {base.open_fds()[fd] for fd in opened})
        self.close_writer(self.writer)
        self.assertEqual(0, imagecache.finish_receive(self.partial, 30))
        self.assertEqual(fds, base.open_fds())

    def test_bad_partials(self):
        os.chmod(self.partial, 0o750)
        self.assertIn('0700', self.refused_start())
        os.chmod(self.partial, 0o700)
        os.chown(self.partial, 1000, 1000)
        self.assertIn('0700', self.refused_start())
        os.chown(self.partial, 0, 0)
        shutil.rmtree(self.partial)
        self.assertIn('does not exist', self.refused_start())
        _write(self.partial, b'x', 0o600)
        self.refused_start()
        os.unlink(self.partial)
        # An entry, a corrupt one: not a partial.
        for path in (self.make_entry(), self.make_entry(CORRUPT)):
            self.refused_start(path, match='is not an image cache partial')
        # A symlink to a partial.
        real = self.empty_partial('.partial-%s-1-real' % IMAGE)
        os.symlink(real, self.partial)
        self.refused_start(match='symlink')
        self.assertFalse(os.path.lexists(os.path.join(real, 'archive')))

    def test_fifos_not_in_a_driver_root_s_spool(self):
        for parent in (self.images, self.partial,
                       os.path.join(self.state, 'x', 'spool'),
                       os.path.join(self.partial, 'spool'),
                       os.path.join(self.state, 'spool2'),
                       os.path.join(self.state, 'Spool'),
                       os.path.join(self.spool, 'spool'),
                       os.path.join(self.tmp, 'spool'),
                       os.path.join(self.outside, 'spool'),
                       self.state, self.outside):
            os.makedirs(parent, exist_ok=True)
            fifo = os.path.join(parent, 'archive-1-ab.fifo')
            os.mkfifo(fifo, 0o600)
            msg = self.refused_start(fifo=fifo)
            self.assertIn(fifo, msg)
        for path in ('/dev/stdin', '/proc/self/fd/0', '/etc/passwd',
                     self.spool):
            self.refused_start(fifo=path)
        # Not absolute, not normalized, not a str.
        for path in ('spool/' + RECEIVE_FIFO, 'state/spool/' + RECEIVE_FIFO,
                     self.spool + '/./' + RECEIVE_FIFO,
                     self.spool + '//' + RECEIVE_FIFO,
                     self.state + '/x/../spool/' + RECEIVE_FIFO,
                     self.fifo + '\0', os.fsencode(self.fifo), None, 7,
                     [self.fifo]):
            self.refused_start(fifo=path)

    def test_bad_fifo_names(self):
        for name in ('archive--00ff.fifo', 'archive-1-00FF.fifo',
                     'archive-1-.fifo', 'archive-1-00ff.fif',
                     'archive-1-00ff.fifo.x', 'archive-x-00ff.fifo',
                     'archive-1-00fg.fifo', 'archive-1-0-1.fifo',
                     'archive-1-%s.fifo' % ('a' * 65),
                     'archive-1-00ff.fifo\n', '.archive-1-00ff.fifo',
                     'archive-1-00ff', 'Archive-1-00ff.fifo',
                     'archive1-00ff.fifo', 'archive-1_00ff.fifo',
                     'archive--1-00ff.fifo', 'x-1-00ff.fifo',
                     # An unpack's FIFO (privsep.unpack) is not a
                     # receive's.
                     'unpack-1-00ff.fifo', 'archive', 'spool'):
            fifo = os.path.join(self.spool, name)
            os.mkfifo(fifo, 0o600)
            msg = self.refused_start(fifo=fifo)
            self.assertIn('is not a receive FIFO of a driver root\'s spool',
                          msg)

    def test_the_longest_name(self):
        # archive-<pid>-<64 hex>.fifo, with a writer holding it.
        fifo, writer = self.make_fifo('archive-1-%s.fifo' % ('f' * 64))
        imagecache.start_receive(self.partial, fifo, MIB)
        _feed(writer, b'1234')
        self.close_writer(writer)
        self.assertEqual(4, imagecache.finish_receive(self.partial, 30))

    def test_not_a_fifo(self):
        os.unlink(self.fifo)
        _write(self.fifo, b'a disk image', 0o600)
        self.refused_start(match='is not a FIFO')
        os.unlink(self.fifo)
        os.mkdir(self.fifo, 0o700)
        self.refused_start(match='is not a FIFO')
        os.rmdir(self.fifo)
        self.refused_start(match='does not exist')
        # A device: never opened (/dev/zero's numbers).
        os.mknod(self.fifo, 0o600 | stat.S_IFCHR,
                 os.stat('/dev/zero').st_rdev)
        self.refused_start(match='is not a FIFO')
        os.unlink(self.fifo)

    def test_a_symlink_to_a_fifo(self):
        other, _ = self.make_fifo()
        os.unlink(self.fifo)
        for target in (os.path.basename(other), other):
            os.symlink(target, self.fifo)
            self.refused_start(match='symlink')
            os.unlink(self.fifo)
        # One to itself (a loop realpath would leave unresolved).
        os.symlink(RECEIVE_FIFO, self.fifo)
        self.refused_start(match='goes through a symlink')

    def test_bad_max_bytes(self):
        for max_bytes in (0, -1, -MIB, True, False, 1.5, 1.0, float(MIB),
                          '3', b'3', None, [MIB], float('inf')):
            msg = self.refused_start(max_bytes=max_bytes)
            self.assertIn('max_bytes %r is not a positive int'
                          % (max_bytes,), msg)

    def test_refused_when_the_partial_holds_an_archive(self):
        # Whatever it is: never written to, nor through.
        target = os.path.join(self.outside, 'target')
        _write(target, b'keep', 0o600)
        nothing = os.path.join(self.outside, 'nothing')
        for make in (lambda: _write(self.archive, b'old', 0o600),
                     lambda: _write(self.archive, b'', 0o600),
                     lambda: os.symlink(target, self.archive),
                     lambda: os.symlink(nothing, self.archive),
                     lambda: os.symlink('rootfs', self.archive),
                     lambda: os.link(target, self.archive),
                     lambda: os.mkdir(self.archive, 0o700),
                     lambda: os.mkfifo(self.archive, 0o600)):
            make()
            self.refused_start(match='%s holds an archive already'
                               % self.partial)
            if os.path.isdir(self.archive) and \
                    not os.path.islink(self.archive):
                os.rmdir(self.archive)
            else:
                os.unlink(self.archive)
        self.assertEqual(b'keep', _read(target))
        self.assertFalse(os.path.lexists(nothing))
        # The FIFO was opened, and closed again: it can start a receive.
        imagecache.start_receive(self.partial, self.fifo, MIB)
        _feed(self.writer, b'new')
        self.close_writer(self.writer)
        self.assertEqual(3, imagecache.finish_receive(self.partial, 30))
        self.assertEqual(b'new', _read(self.archive))

    def test_refused_once_received(self):
        self.assertEqual(3, self.received(b'abc'))
        self.refused_start(match='holds an archive already')
        self.assertEqual(b'abc', _read(self.archive))

    def test_a_second_receive_into_the_partial(self):
        writer = self.start()
        receive = self.receiving[self.partial]
        other, _ = self.make_fifo()
        msg = self.refused(imagecache.start_receive, self.partial, other,
                           MIB, call='start_receive')
        self.assertIn('a receive into %s is running' % self.partial, msg)
        self.assertIs(receive, self.receiving[self.partial])
        # The first goes on.
        _feed(writer, b'first')
        self.close_writer(writer)
        self.assertEqual(5, imagecache.finish_receive(self.partial, 30))
        self.assertEqual(b'first', _read(self.archive))

    def test_receives_into_other_partials(self):
        # One each, at once, from either root's spool.
        lxc_spool = os.path.join(self.lxc, imagecache.SPOOL)
        os.mkdir(lxc_spool, 0o700)
        other = self.empty_partial('.partial-%s-%d-x' % (OTHER, PID))
        third = self.empty_partial(
            PARTIAL, images=os.path.join(self.lxc, 'images'))
        writers = [(self.partial, self.start()),
                   (other, self.start(partial=other, spool=lxc_spool)),
                   (third, self.start(partial=third))]
        self.assertEqual({self.partial, other, third}, set(self.receiving))
        for partial, writer in writers:
            _feed(writer, partial.encode())
        for partial, writer in reversed(writers):
            self.close_writer(writer)
            self.assertEqual(len(partial),
                             imagecache.finish_receive(partial, 30))
            self.assertEqual(partial.encode(), _read(
                os.path.join(partial, imagecache.ARCHIVE)))
        self.assertEqual({}, self.receiving)

    # No thread can start (RuntimeError "can't start new thread": the
    # daemon's pids limit): nothing stays registered or open.
    def test_a_thread_that_cannot_start(self):
        real = imagecache._Receive

        def receive_(*args):
            receive = real(*args)
            receive.thread.start = mock.Mock(
                side_effect=RuntimeError('can\'t start new thread'))
            return receive
        self.patch_object(imagecache, '_Receive', side_effect=receive_)

        def forget():
            # What the bug leaves: this test's cleanup, not a cleanup's
            # error.
            receive = self.receiving.pop(self.partial, None)
            if receive is not None and receive.thread.ident is None:
                for fd in (receive.fifo_fd, receive.out_fd):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        self.addCleanup(forget)
        fds = base.open_fds()
        self.assertRaises(RuntimeError, imagecache.start_receive,
                          self.partial, self.fifo, MIB)
        self.assertEqual({}, self.receiving)
        self.assertEqual(fds, base.open_fds())


class ReceiveTest(_ReceiveBase):
    """start_receive, then finish_receive or cancel_receive."""

    def test_received(self):
        data = os.urandom(3 * MIB)
        fds = base.open_fds()
        writer = self.start(max_bytes=4 * MIB)
        self.assertEqual(len(data), _feed(writer, data, piece=100000))
        self.close_writer(writer)
        self.assertEqual(len(data),
                         imagecache.finish_receive(self.partial, 30))
        self.assertEqual(data, _read(self.archive))
        st = os.lstat(self.archive)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(0o600, stat.S_IMODE(st.st_mode))
        self.assertEqual((0, 0, 1), (st.st_uid, st.st_gid, st.st_nlink))
        self.assertEqual(['archive', 'rootfs'],
                         sorted(os.listdir(self.partial)))
        self.assertEqual([], os.listdir(os.path.join(self.partial,
                                                     'rootfs')))
        self.assertEqual({}, self.receiving)
        self.assertEqual(fds, base.open_fds())
        self.syncfs.assert_not_called()
        # Forgotten once finished.
        self.no_receive()

    def test_in_the_other_root(self):
        spool = os.path.join(self.lxc, imagecache.SPOOL)
        os.mkdir(spool, 0o700)
        partial = self.empty_partial(
            images=os.path.join(self.lxc, 'images'))
        writer = self.start(partial=partial, spool=spool)
        _feed(writer, b'other root')
        self.close_writer(writer)
        self.assertEqual(10, imagecache.finish_receive(partial, 30))
        self.assertEqual(b'other root', _read(
            os.path.join(partial, imagecache.ARCHIVE)))

    def test_empty(self):
        self.assertEqual(0, self.received(b''))
        self.assertEqual(b'', _read(self.archive))

    def test_exactly_max_bytes(self):
        for size in (1, 10, MIB, MIB + 1):
            if os.path.lexists(self.archive):
                os.unlink(self.archive)
            data = os.urandom(size)
            self.assertEqual(size, self.received(data, max_bytes=size))
            self.assertEqual(data, _read(self.archive))

    def refused_larger(self, data, max_bytes):
        fds = base.open_fds()
        writer = self.start(max_bytes)
        # The reader stops: the rest may not be written (EPIPE).
        sent = _feed(writer, data, piece=100000)
        self.close_writer(writer)
        e = self.assertRaises(exception.DiskImageRefused,
                              imagecache.finish_receive, self.partial, 30)
        self.assertIn('larger than %d bytes' % max_bytes, str(e))
        self.assertEqual({}, self.receiving)
        self.assertEqual(fds, base.open_fds())
        # What was copied before: at most max_bytes, the image's start.
        copied = _read(self.archive)
        self.assertLessEqual(len(copied), max_bytes)
        self.assertTrue(data.startswith(copied))
        self.assertLessEqual(len(copied), sent)
        self.no_receive()

    def test_larger_than_max_bytes(self):
        self.refused_larger(os.urandom(3 * MIB), MIB)

    def test_one_byte_more(self):
        for size in (1, 10, MIB):
            if os.path.lexists(self.archive):
                os.unlink(self.archive)
            self.refused_larger(os.urandom(size + 1), size)

    def test_the_writer_is_told_when_the_reader_stops(self):
        # More than a FIFO's buffer past max_bytes: the write fails.
        writer = self.start(max_bytes=10)
        self.assertLess(_feed(writer, os.urandom(8 * MIB)), 8 * MIB)
        self.assertRaises(BrokenPipeError, os.write, writer, b'x')
        self.close_writer(writer)
        self.assertRaises(exception.DiskImageRefused,
                          imagecache.finish_receive, self.partial, 30)

    def test_finish_waits_for_the_end(self):
        # finish_receive called before nova-compute closed the FIFO.
        data = os.urandom(MIB)
        writer = self.start()

        def write():
            time.sleep(0.5)
            _feed(writer, data)
            self.close_writer(writer)
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 30)
        started = time.monotonic()
        self.assertEqual(len(data),
                         imagecache.finish_receive(self.partial, 30))
        self.assertGreaterEqual(time.monotonic() - started, 0.4)
        self.assertEqual(data, _read(self.archive))

    def test_finish_times_out(self):
        fds = base.open_fds()
        writer = self.start()
        _feed(writer, b'part')
        started = time.monotonic()
        e = self.assertRaises(OSError, imagecache.finish_receive,
                              self.partial, 1)
        elapsed = time.monotonic() - started
        self.assertEqual(errno.ETIMEDOUT, e.errno)
        self.assertIn('within 1 s', str(e))
        self.assertEqual(self.partial, e.filename)
        # The timeout, then at most one poll of the thread (1 s).
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 4)
        # Forgotten, and stopped: the read end is closed.
        self.assertEqual({}, self.receiving)
        self.no_receive()
        self.assertRaises(BrokenPipeError, os.write, writer, b'x')
        self.close_writer(writer)
        self.assertEqual(fds, base.open_fds())
        self.assertTrue(b'part'.startswith(_read(self.archive)))

    def test_bad_timeouts(self):
        writer = self.start()
        receive = self.receiving[self.partial]
        for timeout in (0, -1, True, False, 1.5, 30.0, '30', b'30', None,
                        [30], float('inf')):
            msg = self.refused(imagecache.finish_receive, self.partial,
                               timeout, call='finish_receive')
            self.assertIn('timeout %r is not a positive int' % (timeout,),
                          msg)
            # Still running.
            self.assertIs(receive, self.receiving[self.partial])
        _feed(writer, b'still')
        self.close_writer(writer)
        self.assertEqual(5, imagecache.finish_receive(self.partial, 30))

    # threading's join raises OverflowError above threading.TIMEOUT_MAX:
    # such a timeout is refused, the receive left running and registered.
    def test_a_timeout_longer_than_a_wait_takes(self):
        writer = self.start()
        _feed(writer, b'abc')
        # The end comes half a second later.
        timer = threading.Timer(0.5, self.close_writer, (writer,))
        timer.start()
        self.addCleanup(timer.join)
        try:
            n = imagecache.finish_receive(self.partial, 10 ** 10)
        except exception.PrivilegedCallRefused:
            # A refusal would do, leaving the receive as it was.
            self.assertIn(self.partial, self.receiving)
            n = imagecache.finish_receive(self.partial, 30)
        except OverflowError as e:
            self.fail('finish_receive raised %r; the receive is %s' % (
                e, 'registered' if self.partial in self.receiving
                else 'forgotten, its thread running'))
        self.assertEqual(3, n)

    def test_a_failed_copy(self):
        # The archive's disk is full: finish_receive raises that.
        fds = base.open_fds()
        writer = self.start()
        out_fd = self.receiving[self.partial].out_fd
        real_write = os.write

        def write(fd, data):
            if fd == out_fd:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)
        self.patch_object(imagecache.os, 'write', side_effect=write)
        _feed(writer, b'data')
        self.close_writer(writer)
        e = self.assertRaises(OSError, imagecache.finish_receive,
                              self.partial, 30)
        self.assertEqual(errno.ENOSPC, e.errno)
        self.assertEqual({}, self.receiving)
        self.assertEqual(fds, base.open_fds())
        self.assertEqual(b'', _read(self.archive))
        self.no_receive()

    def test_cancel_while_the_writer_holds_it(self):
        fds = base.open_fds()
        writer = self.start()
        data = os.urandom(1000)
        _feed(writer, data)
        started = time.monotonic()
        self.assertIsNone(imagecache.cancel_receive(self.partial))
        # The thread looks for a cancel every second.
        self.assertLess(time.monotonic() - started, 4)
        self.assertEqual({}, self.receiving)
        self.no_receive()
        # The read end is closed; what was written stays.
        self.assertRaises(BrokenPipeError, os.write, writer, b'x')
        self.assertTrue(data.startswith(_read(self.archive)))
        self.close_writer(writer)
        self.assertEqual(fds, base.open_fds())

    def test_cancel_an_idle_receive(self):
        fds = base.open_fds()
        writer = self.start()
        time.sleep(0.2)
        started = time.monotonic()
        imagecache.cancel_receive(self.partial)
        self.assertLess(time.monotonic() - started, 4)
        self.assertEqual(b'', _read(self.archive))
        self.close_writer(writer)
        self.assertEqual(fds, base.open_fds())
        # The partial can receive again once its archive is gone (the
        # caller discards it; here, the archive only).
        os.unlink(self.archive)
        self.assertEqual(2, self.received(b'ok'))

    def test_cancel_while_the_writer_writes(self):
        # A download going on: the thread is never idle, and still stops.
        writer = self.start()
        stopped = []

        def write():
            chunk = os.urandom(64 * 1024)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.write(writer, chunk)
                    # A download's pace: no idle second, little disk.
                    time.sleep(0.005)
                except BlockingIOError:
                    select.select([], [writer], [], 1)
                except BrokenPipeError:
                    stopped.append(True)
                    return
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 40)
        time.sleep(0.3)
        started = time.monotonic()
        imagecache.cancel_receive(self.partial)
        self.assertLess(time.monotonic() - started, 4)
        thread.join(10)
        self.assertEqual([True], stopped)
        self.assertEqual({}, self.receiving)

    def test_cancel_once_the_copy_ended(self):
        writer = self.start()
        _feed(writer, b'all')
        self.close_writer(writer)
        # The thread ends at the FIFO's end; cancel joins it.
        self.receiving[self.partial].thread.join(10)
        imagecache.cancel_receive(self.partial)
        self.assertEqual(b'all', _read(self.archive))
        self.no_receive()

    def test_none_running(self):
        self.no_receive()
        # Nor is another partial's receive this one's.
        other = self.empty_partial('.partial-%s-%d-x' % (OTHER, PID))
        writer = self.start(partial=other)
        self.no_receive()
        self.assertEqual([other], list(self.receiving))
        self.close_writer(writer)
        self.assertEqual(0, imagecache.finish_receive(other, 30))
        self.no_receive(other)

    def test_publish_refused_while_receiving(self):
        make_init(os.path.join(self.partial, 'rootfs'), 'busybox')
        writer = self.start()
        self.refused(imagecache.publish, self.partial, 1, call='publish',
                     match='a receive into %s is running' % self.partial)
        self.close_writer(writer)
        imagecache.finish_receive(self.partial, 30)
        # The archive is a work file: not published.
        self.assertEqual('busybox', imagecache.publish(self.partial, 1))
        self.assertEqual(sorted([imagecache.MARKER, 'rootfs']),
                         sorted(os.listdir(self.entry)))


class UnpackDiskImageTest(_ReceiveBase):
    """unpack_disk_image's checks; diskimage.unpack is a fake."""

    def setUp(self):
        super().setUp()
        self.cfg = self.storage_admin_here(self.lxc, self.state)
        self.rootfs = os.path.join(self.partial, 'rootfs')
        _write(self.archive, ARCHIVE_DATA, 0o600)
        # Trees for is_root: what the real unpack's partitions may hold.
        self.trees = {}
        for init in ('systemd', 'busybox', 'sysvinit', 'noexec', None):
            tree = os.path.join(self.outside, 'root-%s' % init)
            os.mkdir(tree)
            make_init(tree, init)
            self.trees[init] = tree
        self.is_root_said = []
        self.raises = None
        self.archive_data = ARCHIVE_DATA
        self.unpack = self.patch('novalxcdriver.diskimage.unpack',
                                 side_effect=self.fake_unpack)

    def fake_unpack(self, image_path, kind, disk_format, workdir, dest,
                    max_bytes, is_root, root_partition=None):
        """diskimage.unpack's work files and copy, its arguments checked."""
        self.assertEqual(self.archive, image_path)
        self.assertEqual(self.archive_data, _read(image_path))
        self.assertEqual(self.partial, workdir)
        self.assertEqual(self.rootfs, dest)
        self.assertEqual([], os.listdir(dest))
        self.is_root_said.append({init: is_root(tree)
                                  for init, tree in self.trees.items()})
        _write(os.path.join(workdir, imagecache.RAW), b'raw', 0o600)
        os.mkdir(os.path.join(workdir, imagecache.PARTITION), 0o700)
        make_init(dest, 'busybox')
        _write(os.path.join(dest, 'hello'), b'hello')
        if self.raises is not None:
            raise self.raises
        return 1234

    def unpacked(self, kind='qcow2', disk_format='qcow2', max_bytes=MIB,
                 root_partition=None):
        """unpack_disk_image copies, and removes the work files."""
        fds = base.open_fds()
        calls = self.unpack.call_count
        self.assertEqual(1234, imagecache.unpack_disk_image(
            self.partial, kind, disk_format, max_bytes, root_partition))
        self.assertEqual(calls + 1, self.unpack.call_count)
        args = self.unpack.call_args[0]
        self.assertEqual((self.archive, kind, disk_format, self.partial,
                          self.rootfs, max_bytes), args[:6])
        self.assertTrue(callable(args[6]))
        self.assertEqual((root_partition,), args[7:])
        self.assertEqual({}, self.unpack.call_args[1])
        # is_root: an executable /sbin/init (initsystem.detect_init).
        self.assertEqual({'systemd': True, 'busybox': True,
                          'sysvinit': True, 'noexec': False, None: False},
                         self.is_root_said[-1])
        # The work files are gone; the rootfs is kept.
        self.assertEqual(['rootfs'], os.listdir(self.partial))
        self.assertEqual(b'hello', _read(os.path.join(self.rootfs,
                                                      'hello')))
        self.assertEqual(fds, base.open_fds())

    def reset(self):
        """The partial as received: the archive, an empty rootfs."""
        shutil.rmtree(self.partial)
        self.empty_partial()
        _write(self.archive, self.archive_data, 0o600)

    def refused_unpack(self, *args, partial=_GOOD, match=None):
        """unpack_disk_image(partial, *args) is refused, unpacking nothing.

        :param args: kind, disk_format, max_bytes, root_partition (good
            ones by default).
        """
        args = args + ('qcow2', 'qcow2', MIB, None)[len(args):]
        calls = self.unpack.call_count
        msg = self.refused(imagecache.unpack_disk_image,
                           self.partial if partial is _GOOD else partial,
                           *args, match=match, call='unpack_disk_image')
        self.assertEqual(calls, self.unpack.call_count)
        return msg

    def test_unpacked(self):
        self.unpacked()

    def test_kinds_formats_and_root_partitions(self):
        for kind, disk_format, root_partition in (
                ('qcow2', None, None), ('qcow2', 'qcow2', '2'),
                ('disk', None, '1'), ('disk', 'raw', None),
                ('disk', 'raw', 'p1'), ('disk', 'qcow2', '')):
            self.reset()
            self.unpacked(kind, disk_format, 5 * MIB, root_partition)

    def test_the_largest_max_bytes(self):
        self.unpacked(max_bytes=1 << 62)

    def test_then_published(self):
        self.unpacked()
        self.assertEqual('busybox', imagecache.publish(self.partial, 1234))
        self.assertEqual(({'init_system': 'busybox', 'size': 1234}, None),
                         imagecache.read_entry(self.entry)[:2])
        self.assertEqual(sorted([imagecache.MARKER, 'rootfs']),
                         sorted(os.listdir(self.entry)))

    def test_received_then_unpacked(self):
        # The whole path: an archive from start_receive.
        os.unlink(self.archive)
        self.archive_data = os.urandom(3 * MIB)
        self.assertEqual(len(self.archive_data),
                         self.received(self.archive_data))
        self.unpacked('disk', 'raw', 4 * MIB, '1')

    def test_refused_images_propagate_and_work_files_stay(self):
        # For the caller's discard of the partial.
        for error in (exception.DiskImageRefused(reason='no root found'),
                      OSError(errno.ENOSPC, 'No space left on device')):
            self.reset()
            self.raises = error
            fds = base.open_fds()
            e = self.assertRaises(type(error), imagecache.unpack_disk_image,
                                  self.partial, 'qcow2', 'qcow2', MIB, None)
            self.assertIs(error, e)
            self.assertEqual(sorted(['archive', 'disk.raw', 'mnt',
                                     'rootfs']),
                             sorted(os.listdir(self.partial)))
            self.assertEqual(self.archive_data, _read(self.archive))
            self.assertEqual(fds, base.open_fds())

    def test_a_work_mount_point_not_empty(self):
        # Something still in mnt (a mount the unpack did not undo): an
        # error, and the files are not deleted through it.
        real = self.fake_unpack

        def fake(*args):
            result = real(*args)
            _write(os.path.join(self.partial, 'mnt', 'left'), b'x')
            return result
        self.unpack.side_effect = fake
        e = self.assertRaises(OSError, imagecache.unpack_disk_image,
                              self.partial, 'qcow2', 'qcow2', MIB, None)
        self.assertEqual(errno.ENOTEMPTY, e.errno)
        self.assertEqual(b'x', _read(os.path.join(self.partial, 'mnt',
                                                  'left')))

    def test_bad_partials(self):
        os.chmod(self.partial, 0o750)
        self.assertIn('0700', self.refused_unpack())
        os.chmod(self.partial, 0o700)
        os.chown(self.partial, 1000, 1000)
        self.refused_unpack(match='0700')
        os.chown(self.partial, 0, 0)
        for path in (self.make_entry(), self.make_entry(CORRUPT)):
            _write(os.path.join(path, imagecache.ARCHIVE), ARCHIVE_DATA,
                   0o600)
            self.refused_unpack(partial=path,
                                match='is not an image cache partial')
        shutil.rmtree(self.partial)
        self.refused_unpack(match='does not exist')

    def test_bad_kinds(self):
        for kind in (None, 'raw', 'QCOW2', 'Disk', 'qcow2 ', ' disk',
                     'tar', 'iso', 'vmdk', '', b'qcow2', ['qcow2'],
                     ('disk',), 2, True):
            msg = self.refused_unpack(kind)
            self.assertIn('%r is not a kind of disk image' % (kind,), msg)

    def test_bad_disk_formats(self):
        for disk_format in ('vmdk', 'vdi', 'vhd', 'iso', 'ami', 'ari',
                            'aki', 'ploop', 'RAW', 'Qcow2', 'raw ', '',
                            'disk', b'raw', ['raw'], 0, False, 1):
            msg = self.refused_unpack('qcow2', disk_format)
            self.assertIn('disk_format %r is not one of' % (disk_format,),
                          msg)

    def test_bad_max_bytes(self):
        for max_bytes in (0, -1, True, False, 1.5, 1.0, '3', b'3', None,
                          [MIB], float('inf')):
            msg = self.refused_unpack('disk', 'raw', max_bytes)
            self.assertIn('max_bytes %r is not a positive int'
                          % (max_bytes,), msg)

    def test_bad_root_partitions(self):
        for root_partition in (1, 0, 1.0, True, False, b'1', ['1'],
                               ('1',), {'1': 1}):
            msg = self.refused_unpack('disk', None, MIB, root_partition)
            self.assertIn('root_partition %r is not a str or None'
                          % (root_partition,), msg)

    def test_archive_missing(self):
        os.unlink(self.archive)
        self.refused_unpack(match='%s does not exist' % self.archive)

    def test_archive_not_a_file_of_root_s_with_one_link(self):
        match = 'is not a regular file of root\'s with one link'
        real = os.path.join(self.partial, 'real')
        outside = os.path.join(self.outside, 'image')
        os.rename(self.archive, real)
        _write(outside, ARCHIVE_DATA, 0o600)
        # Symlinks: to a file of root's in the partial, outside it, to
        # nothing, to /dev/zero.
        for target in ('real', real, outside, '/dev/zero',
                       os.path.join(self.outside, 'nothing')):
            os.symlink(target, self.archive)
            self.refused_unpack(match=match)
            os.unlink(self.archive)
        # A directory, a FIFO, a device.
        os.mkdir(self.archive, 0o700)
        self.refused_unpack(match=match)
        os.rmdir(self.archive)
        os.mkfifo(self.archive, 0o600)
        self.refused_unpack(match=match)
        os.unlink(self.archive)
        os.mknod(self.archive, 0o600 | stat.S_IFCHR,
                 os.stat('/dev/zero').st_rdev)
        self.refused_unpack(match=match)
        os.unlink(self.archive)
        # Two links: in the partial, or to a file outside it.
        os.link(real, self.archive)
        self.refused_unpack(match=match)
        os.unlink(real)
        os.link(self.archive, os.path.join(self.outside, 'second'))
        self.refused_unpack(match=match)
        os.unlink(os.path.join(self.outside, 'second'))
        # Not root's (its group is not looked at).
        for uid, gid in ((12345, 12345), (12345, 0), (65534, 65534)):
            os.chown(self.archive, uid, gid)
            self.refused_unpack(match=match)
        os.chown(self.archive, 0, 12345)
        self.unpacked()

    def test_refused_while_a_receive_runs(self):
        os.unlink(self.archive)
        writer = self.start()
        self.refused_unpack(match='a receive into %s is running'
                            % self.partial)
        _feed(writer, ARCHIVE_DATA)
        self.close_writer(writer)
        self.assertEqual(len(ARCHIVE_DATA),
                         imagecache.finish_receive(self.partial, 30))
        self.unpacked()

    def test_refused_when_disk_images_are_off(self):
        self.cfg.config(group='lxc', disk_images=False)
        msg = self.refused_unpack()
        self.assertIn('[lxc] disk_images = false', msg)
        for args in (('disk', 'raw', MIB, '1'), ('qcow2', None, 1, None)):
            self.refused_unpack(*args, match='disk_images')
        self.cfg.config(group='lxc', disk_images=True)
        self.unpacked()

    def test_refused_once_unpacked(self):
        self.unpacked()
        self.refused_unpack(match='does not exist')
        self.assertEqual(1, self.unpack.call_count)


class RealMountTest(_Base):
    """A real bind mount of an entry's rootfs, in the real mount table."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('root only: bind mounts')
        # The real table.
        self.mountpoints.side_effect = _MOUNTPOINTS
        self.mount_roots.side_effect = _ROOTS
        self.make_entry()
        self.lower = os.path.join(self.outside, 'lower')
        os.mkdir(self.lower)
        self.bind(os.path.join(self.entry, 'rootfs'), self.lower)

    def bind(self, source, target):
        result = subprocess.run(['mount', '--bind', source, target],
                                capture_output=True)
        if result.returncode != 0:
            self.skipTest('cannot bind mount: %r' % (result.stderr,))
        self.addCleanup(subprocess.run, ['umount', '-l', target],
                        capture_output=True)

    def test_retire_keeps_a_bound_entry(self):
        before = self.tree()
        self.assertIsNone(imagecache.retire(self.entry))
        self.assertEqual(before, self.tree())

    def test_remove_keeps_a_bound_entry_moved_aside(self):
        aside = imagecache.move_aside(self.entry)
        self.assertTrue(os.path.isdir(os.path.join(self.lower, 'sbin')))
        self.assertIs(False, imagecache.remove(aside))
        self.assertTrue(os.path.isdir(os.path.join(aside, 'rootfs', 'sbin')))
        subprocess.run(['umount', self.lower], check=True)
        self.assertIs(True, imagecache.remove(aside))
        self.assertFalse(os.path.lexists(aside))

    def test_publish_refuses_a_partial_with_a_mount(self):
        partial = self.make_partial()
        proc = os.path.join(partial, 'rootfs', 'proc')
        os.mkdir(proc)
        self.bind(self.outside, proc)
        self.refused(imagecache.publish, partial, 1,
                     match='still has mounts')
