"""Tests for novalxcdriver.mount: mountinfo parsing, unmount, holders."""

import os
import subprocess
from unittest import mock

import fixtures

from novalxcdriver import mount
from tests.unit import base

# é in UTF-8, a byte that is not UTF-8, and the four escapes of proc(5).
E_ACUTE = 'caf\xe9'
MOUNTINFO = (
    b'22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n'
    b'40 22 8:1 /srv/caf\xc3\xa9/images/X/rootfs /srv/caf\xc3\xa9/lower '
    b'ro,nodev,idmapped - ext4 /dev/sda1 rw\n'
    b'41 22 0:40 / /srv/caf\xc3\xa9/merged rw - overlay overlay '
    b'rw,lowerdir=/x\n'
    b'42 22 7:0 / /mnt/my\\040disk rw - ext4 /dev/loop0 rw\n'
    b'43 22 7:1 / /mnt/tab\\011nl\\012bs\\134040 rw - ext4 /dev/loop1 rw\n'
    b'44 22 7:2 / /mnt/raw\xff rw shared:5 - ext4 /dev/loop2 rw\n'
    b'45 22 7:3 / /mnt/cr\rhere rw - ext4 /dev/loop3 rw\n'
)
POINTS = ['/', '/srv/%s/lower' % E_ACUTE, '/srv/%s/merged' % E_ACUTE,
          '/mnt/my disk', '/mnt/tab\tnl\nbs\\040', '/mnt/raw\udcff',
          '/mnt/cr\rhere']


class MountinfoTest(base.TestCase):

    def setUp(self):
        super().setUp()
        tmp = self.useFixture(fixtures.TempDir()).path
        fake = os.path.join(tmp, 'mountinfo')
        with open(fake, 'wb') as f:
            f.write(MOUNTINFO)
        real_open = open

        def fake_open(path, *args, **kwargs):
            if path == '/proc/self/mountinfo':
                path = fake
            return real_open(path, *args, **kwargs)

        self.patch('novalxcdriver.mount.open', side_effect=fake_open,
                   create=True)

    def test_parse(self):
        parsed = mount.parse_mountinfo(MOUNTINFO)
        self.assertEqual(POINTS, [m.point for m in parsed])
        self.assertEqual('/srv/%s/images/X/rootfs' % E_ACUTE, parsed[1].root)
        self.assertEqual('/', parsed[2].root)
        self.assertEqual(('overlay', 'overlay'),
                         (parsed[2].fstype, parsed[2].source))

    def test_parse_only_some_points(self):
        parsed = mount.parse_mountinfo(MOUNTINFO, {'/mnt/my disk', '/x'})
        self.assertEqual([mount.Mount('/', '/mnt/my disk', 'ext4',
                                      '/dev/loop0')], parsed)

    def test_propagation_of_the_longest_point_above(self):
        self.assertEqual(('/', True), mount.propagation('/srv/a/b'))
        self.assertEqual(('/mnt/my disk', False),
                         mount.propagation('/mnt/my disk/rootfs/1'))
        self.assertEqual(('/mnt/my disk', False),
                         mount.propagation('/mnt/my disk'))
        # A sibling that shares a prefix is not below it.
        self.assertEqual(('/', True), mount.propagation('/mnt/my diskette'))
        self.assertEqual(('/mnt/raw\udcff', True),
                         mount.propagation('/mnt/raw\udcff/state'))

    def test_propagation_of_the_last_mount_stacked_on_a_point(self):
        data = (b'22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n'
                b'30 22 8:1 /s /var/lib/nova rw shared:2 - ext4 /dev/sda1 '
                b'rw\n'
                b'31 30 0:40 / /var/lib/nova rw - tmpfs tmpfs rw\n')
        self.patch('novalxcdriver.mount._read_mountinfo', return_value=data)
        self.assertEqual(('/var/lib/nova', False),
                         mount.propagation('/var/lib/nova/state'))

    def test_propagation_follows_a_symlinked_path(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        link = os.path.join(tmp, 'state')
        os.symlink('/mnt/my disk/state', link)
        self.assertEqual(('/mnt/my disk', False), mount.propagation(link))

    def test_names_open_the_same_files(self):
        # Decoded as the os module decodes names: encoding gives the bytes.
        self.assertEqual(b'/mnt/raw\xff', os.fsencode(POINTS[5]))
        self.assertEqual(b'/srv/caf\xc3\xa9/lower', os.fsencode(POINTS[1]))

    def test_mounts_reads_bytes(self):
        self.assertEqual(POINTS, mount.mounts())
        self.assertEqual(set(POINTS), mount.mountpoints())

    def test_roots(self):
        self.assertIn('/srv/%s/images/X/rootfs' % E_ACUTE, mount.roots())

    def test_unmount_tree_asks_the_daemon_when_something_is_below(self):
        storage = self.patch('novalxcdriver.mount.storage')
        mount.unmount_tree('/srv/%s' % E_ACUTE)
        mount.unmount_tree('/mnt/my disk')
        self.assertEqual([mock.call('/srv/%s' % E_ACUTE),
                          mock.call('/mnt/my disk')],
                         storage.unmount_tree.call_args_list)

    def test_unmount_tree_nothing_below_no_round_trip(self):
        storage = self.patch('novalxcdriver.mount.storage')
        # A sibling with the same prefix is not below.
        mount.unmount_tree('/srv/%s/merge' % E_ACUTE)
        mount.unmount_tree('/mnt/my')
        storage.unmount_tree.assert_not_called()


class RealMountinfoTest(base.TestCase):

    def test_root_is_mounted(self):
        self.assertIn('/', mount.mountpoints())

    def test_propagation_of_a_path_in_proc(self):
        self.assertEqual('/proc', mount.propagation('/proc/1')[0])

    def test_table_has_every_mount_with_its_type(self):
        mounts = mount.table()
        self.assertEqual(mount.mounts(), [m.point for m in mounts])
        self.assertIn('proc', {m.fstype for m in mounts
                               if m.point == '/proc'})
        self.assertNotIn(None, [m.fstype for m in mounts])


class _Processes(base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path

    def sleeper(self, cwd):
        proc = subprocess.Popen(['sleep', '60'], cwd=cwd)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        return proc.pid


class HoldersTest(_Processes):

    def test_process_with_cwd_inside(self):
        inside = os.path.join(self.tmp, 'top', 'sub')
        os.makedirs(inside)
        pid = self.sleeper(inside)
        self.assertIn((pid, 'sleep'),
                      mount.holders(os.path.join(self.tmp, 'top')))
        self.assertIn((pid, 'sleep'), mount.holders(inside))

    def test_found_through_a_symlink(self):
        # /proc's links name resolved paths; a driver root may be a link.
        inside = os.path.join(self.tmp, 'top', 'sub')
        os.makedirs(inside)
        link = os.path.join(self.tmp, 'link')
        os.symlink(os.path.join(self.tmp, 'top'), link)
        pid = self.sleeper(inside)
        self.assertIn((pid, 'sleep'), mount.holders(link))
        self.assertIn((pid, 'sleep'),
                      mount.holders(os.path.join(link, 'sub')))

    def test_open_file_inside_even_deleted(self):
        top = os.path.join(self.tmp, 'top')
        os.mkdir(top)
        path = os.path.join(top, 'file')
        f = open(path, 'w')
        self.addCleanup(f.close)
        os.unlink(path)
        me = [h for h in mount.holders(top) if h[0] == os.getpid()]
        self.assertEqual(1, len(me))

    def test_sibling_with_same_prefix_is_not_inside(self):
        os.mkdir(os.path.join(self.tmp, 'top'))
        os.mkdir(os.path.join(self.tmp, 'top2'))
        pid = self.sleeper(os.path.join(self.tmp, 'top2'))
        self.assertNotIn(pid, [p for p, _ in mount.holders(
            os.path.join(self.tmp, 'top'))])
        self.assertEqual([], mount.holders(os.path.join(self.tmp, 'top')))


class SourceTest(base.TestCase):

    def test_source_of_the_top_mount(self):
        data = (b'36 25 0:49 / /s/root rw,relatime shared:1 - btrfs '
                b'/dev/loop3 rw\n'
                b'37 36 0:50 / /s/root rw - tmpfs tmp\\040fs rw\n'
                b'38 25 7:1 / /s/r\\040x rw - ext4 /dev/loop1 rw\n')
        self.patch('builtins.open', mock.mock_open(read_data=data))
        self.assertEqual('tmp fs', mount.source('/s/root'))
        self.assertEqual('/dev/loop1', mount.source('/s/r x'))
        self.assertIsNone(mount.source('/elsewhere'))

    def test_optional_fields_before_the_separator(self):
        data = (b'36 25 0:49 / /p rw shared:1 master:2 - btrfs /dev/loop4 '
                b'rw\n')
        self.patch('builtins.open', mock.mock_open(read_data=data))
        self.assertEqual('/dev/loop4', mount.source('/p'))

    def test_top_gives_the_filesystem_type_too(self):
        data = (b'36 25 0:49 / /s/root rw shared:1 - btrfs /dev/loop3 rw\n'
                b'38 25 7:1 / /s/r\\040x rw - ext4 /dev/loop1 rw\n')
        self.patch('builtins.open', mock.mock_open(read_data=data))
        self.assertEqual(('btrfs', '/dev/loop3'), mount.top('/s/root'))
        self.assertEqual(('ext4', '/dev/loop1'), mount.top('/s/r x'))
        self.assertIsNone(mount.top('/elsewhere'))


class TableTest(base.TestCase):

    def test_every_line_with_its_filesystem_and_source(self):
        data = (b'36 25 0:49 / /s/root rw,relatime shared:1 - btrfs '
                b'/dev/loop3 rw\n'
                b'37 36 0:50 /a\\040b /s/r\\040x rw - tmpfs tmp\\040fs rw\n'
                b'38 25 7:1 / /no/separator rw\n')
        self.patch('builtins.open', mock.mock_open(read_data=data))
        self.assertEqual(
            [mount.Mount('/', '/s/root', 'btrfs', '/dev/loop3'),
             mount.Mount('/a b', '/s/r x', 'tmpfs', 'tmp fs'),
             mount.Mount('/', '/no/separator', None, None)],
            mount.table())

    def test_a_table_read_before_is_not_read_again(self):
        mounts = [mount.Mount('/', '/p', 'ext4', '/dev/loop1'),
                  mount.Mount('/', '/p', 'btrfs', '/dev/loop2')]
        opened = self.patch('builtins.open')
        self.assertEqual(('btrfs', '/dev/loop2'), mount.top('/p', mounts))
        self.assertEqual('/dev/loop2', mount.source('/p', mounts))
        self.assertIsNone(mount.source('/q', mounts))
        opened.assert_not_called()

    def test_top_alone_decodes_only_the_lines_of_its_point(self):
        data = b''.join(b'%d 25 0:49 / /c/%d rw - btrfs /dev/loop%d rw\n'
                        % (i, i, i) for i in range(50))
        self.patch('builtins.open', mock.mock_open(read_data=data))
        real = mount._type_and_source
        decode = self.patch('novalxcdriver.mount._type_and_source',
                            side_effect=real)
        self.assertEqual(('btrfs', '/dev/loop7'), mount.top('/c/7'))
        self.assertEqual(1, decode.call_count)

    def test_unmount_tree_with_points_read_before(self):
        storage = self.patch('novalxcdriver.mount.storage')
        opened = self.patch('builtins.open')
        mount.unmount_tree('/r/3', ['/', '/r/30/merged'])
        storage.unmount_tree.assert_not_called()
        mount.unmount_tree('/r/3', ['/', '/r/3/merged'])
        storage.unmount_tree.assert_called_once_with('/r/3')
        opened.assert_not_called()


class IsIdmappedTest(base.TestCase):

    def is_idmapped(self, data, point):
        self.patch('builtins.open', mock.mock_open(read_data=data))
        return mount.is_idmapped(point)

    def test_top_mount_idmapped(self):
        data = (b'36 25 7:3 / /s/root rw,relatime shared:1 - ext4 '
                b'/dev/loop3 rw\n'
                b'37 36 7:3 / /s/root rw,relatime,idmapped shared:1 - ext4 '
                b'/dev/loop3 rw\n')
        self.assertTrue(self.is_idmapped(data, '/s/root'))

    def test_only_the_last_mount_on_a_point_counts(self):
        # An idmapped mount covered by a plain one: the view is plain.
        data = (b'36 25 7:3 / /s/root rw,idmapped - ext4 /dev/loop3 rw\n'
                b'37 36 7:4 / /s/root rw,relatime - ext4 /dev/loop4 rw\n')
        self.assertFalse(self.is_idmapped(data, '/s/root'))

    def test_plain_mount(self):
        data = b'36 25 7:3 / /s/root rw,relatime - ext4 /dev/loop3 rw\n'
        self.assertFalse(self.is_idmapped(data, '/s/root'))

    def test_other_points_do_not_count(self):
        data = (b'36 25 7:3 / /s/root rw - ext4 /dev/loop3 rw\n'
                b'37 25 7:3 / /s/root2 rw,idmapped - ext4 /dev/loop3 rw\n'
                b'38 36 7:3 / /s/root/x rw,idmapped - ext4 /dev/loop3 rw\n')
        self.assertFalse(self.is_idmapped(data, '/s/root'))
        self.assertFalse(self.is_idmapped(data, '/elsewhere'))

    def test_superblock_options_do_not_count(self):
        # Fields after ' - ' are the filesystem's, not the mount's.
        data = b'36 25 7:3 / /s/root rw - ext4 /dev/loop3 rw,idmapped\n'
        self.assertFalse(self.is_idmapped(data, '/s/root'))

    def test_escaped_point(self):
        data = (b'36 25 7:3 / /s/my\\040root rw,nodev,idmapped - ext4 '
                b'/dev/loop3 rw\n')
        self.assertTrue(self.is_idmapped(data, '/s/my root'))

    def test_reads_this_process_mountinfo(self):
        opened = self.patch('builtins.open', mock.mock_open(read_data=b''))
        self.assertFalse(mount.is_idmapped('/s/root'))
        opened.assert_called_once_with('/proc/self/mountinfo', 'rb')


class BelowTest(base.TestCase):

    def test_at_or_below_by_its_own_and_its_real_path(self):
        tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        real = os.path.join(tmp, 'srv')
        os.mkdir(real)
        link = os.path.join(tmp, 'var')
        os.symlink(real, link)
        points = [real + '/a', real + '/a/b', link + '/c', real,
                  real + '0/a', real + '-x', tmp, '/']
        self.assertEqual([real + '/a', real + '/a/b', link + '/c', real],
                         mount.below(link, points))
        self.assertEqual([real + '/a', real + '/a/b'],
                         mount.below(real + '/a', points))
        self.assertEqual([], mount.below(real + '/z', points))


class ThroughASymlinkTest(base.TestCase):
    """A driver root reached through a symlink: mountinfo names the target.

    Each question about a mount point is asked by the path the driver
    builds (through the link) and answered by the resolved one.
    """

    def setUp(self):
        super().setUp()
        tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.real = os.path.join(tmp, 'srv')
        os.makedirs(os.path.join(self.real, 'rootfs', '3', 'root'))
        self.link = os.path.join(tmp, 'var')
        os.symlink(self.real, self.link)
        self.point = os.path.join(self.link, 'rootfs', '3', 'root')
        self.resolved = os.path.join(self.real, 'rootfs', '3', 'root')

    def mountinfo(self, options=b'rw'):
        data = (b'36 25 7:3 / %s %s - btrfs /dev/loop3 rw\n'
                % (os.fsencode(self.resolved), options))
        self.patch('builtins.open', mock.mock_open(read_data=data))

    def test_is_mountpoint(self):
        self.mountinfo()
        self.assertTrue(mount.is_mountpoint(self.point))
        self.assertTrue(mount.is_mountpoint(self.resolved))
        self.assertFalse(mount.is_mountpoint(os.path.dirname(self.point)))

    def test_is_mountpoint_in_points_read_before(self):
        opened = self.patch('builtins.open')
        self.assertTrue(mount.is_mountpoint(self.point, {self.resolved}))
        self.assertFalse(mount.is_mountpoint(self.point, ()))
        opened.assert_not_called()

    def test_no_realpath_when_the_name_answers(self):
        # Rootfs.create asks about points it has just made (none).
        real = self.patch('os.path.realpath')
        self.assertFalse(mount.is_mountpoint(self.point, ()))
        self.assertTrue(mount.is_mountpoint(self.point, {self.point}))
        real.assert_not_called()

    def test_top_and_source(self):
        self.mountinfo()
        self.assertEqual(('btrfs', '/dev/loop3'), mount.top(self.point))
        table = [mount.Mount('/', self.resolved, 'btrfs', '/dev/loop3')]
        self.assertEqual('/dev/loop3', mount.source(self.point, table))

    def test_is_idmapped(self):
        self.mountinfo(b'rw,idmapped')
        self.assertTrue(mount.is_idmapped(self.point))

    def test_an_unreadable_path_raises_nothing(self):
        # realpath of a path nova-compute may not lstat below the link.
        self.patch('os.lstat', side_effect=PermissionError(13, 'denied'))
        self.assertFalse(mount.is_mountpoint(self.point, {self.resolved}))
        self.assertTrue(mount.is_mountpoint(self.point, {self.point}))
