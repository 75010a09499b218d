"""privsep.ownership: what each entry point refuses, and what it makes.

Entry points run here in-process (client mode off) below a temporary
driver root, with root's subordinate ranges faked. What they make is
chowned for real, so those tests need root (the suite runs as root); the
refusals run as anyone. Through a real daemon:
tests/functional/test_privsep_ownership.py.
"""

import os
import stat

import fixtures

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver.privsep import ownership
from tests.unit import base

CONF = conf.CONF
# Root's subordinate uids and gids, as /etc/subuid and /etc/subgid say.
SUBORDINATE = ((100000, 1000000), (300000, 1000000))
IDMAP = [165536, 365536, 65536]
BAD_IDMAPS = ([0, 0, 65536], [165536, 0, 65536], [1000, 301000, 10],
              [165536, 365536, 2000000], [99999, 365536, 10],
              [165536, 365536, 0], [165536, 365536], '165536 365536 10',
              [165536.0, 365536, 10], None)


class _Base(base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.state = os.path.join(self.tmp, 'state')
        self.top = os.path.join(self.state, 'rootfs', '3')
        os.makedirs(self.top)
        self.cfg = self.storage_admin_here(os.path.join(self.tmp, 'lxc'),
                                           self.state)
        self.patch('novalxcdriver.ids.read_subordinate_ranges',
                   return_value=SUBORDINATE)
        # Entry points set the process's umask: the test's comes back.
        umask = os.umask(0o022)
        os.umask(umask)
        self.addCleanup(os.umask, umask)
        # The real ones, watched.
        self.chown = self.patch('os.chown', wraps=os.chown)
        self.fchown = self.patch('os.fchown', wraps=os.fchown)
        # Outside every driver root.
        self.outside = os.path.realpath(
            self.useFixture(fixtures.TempDir()).path)
        self.points = set()
        self.patch('novalxcdriver.privsep.storage.is_mount_root',
                   side_effect=lambda p: p in self.points)

    def tree(self):
        """Every path below self.tmp and self.outside, with its mode."""
        found = {}
        for top in (self.tmp, self.outside):
            for dirpath, dirs, files in os.walk(top):
                for name in dirs + files:
                    path = os.path.join(dirpath, name)
                    found[path] = os.lstat(path).st_mode
        return found

    def owner(self, path):
        st = os.lstat(path)
        return [st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)]


class RefusalTest(_Base):
    """What each entry point refuses, before it makes or changes anything."""

    def refused(self, fn, *args, match=None):
        before = self.tree()
        e = self.assertRaises(exception.PrivilegedCallRefused, fn, *args)
        self.assertIs(fn, getattr(ownership, e.kwargs['call']))
        if match:
            self.assertIn(match, str(e))
        self.assertEqual(before, self.tree())
        self.chown.assert_not_called()
        self.fchown.assert_not_called()
        return str(e)

    def each_entry_point(self, path, idmap=IDMAP):
        """(entry point, args) of each, acting on path."""
        if isinstance(path, str):
            # give_disk_root's other check: it is a mount point.
            self.points.add(path)
        return ((ownership.make_owned_dir, (path, idmap)),
                (ownership.write_etc_file, (path, 'hostname', 'h\n', idmap)),
                (ownership.write_config_drive, (path, [['f', b'x']], idmap)),
                (ownership.give_disk_root, (path, idmap)))

    def test_paths_outside_the_roots(self):
        os.mkdir(os.path.join(self.outside, 'etc'))
        for path in ('/etc/novalxc-test', '/', self.outside,
                     os.path.join(self.outside, 'x'), self.tmp, self.state,
                     os.path.join(self.tmp, 'statex', 'x')):
            for fn, args in self.each_entry_point(path):
                self.refused(fn, *args, match='not below a driver root')

    def test_paths_not_normalized(self):
        for path in (self.top + '/../../../..' + self.outside, self.top + '/',
                     self.top + '/./x', 'rootfs/3/x', self.top + '\0',
                     None, 3, [self.top]):
            for fn, args in self.each_entry_point(path):
                self.refused(fn, *args,
                             match='not an absolute normalized path')

    def test_paths_through_a_symlink_below_a_root(self):
        link = os.path.join(self.top, 'link')
        os.symlink(self.outside, link)
        os.mkdir(os.path.join(self.outside, 'etc'))
        for path in (link, os.path.join(link, 'x'), os.path.join(link, 'etc')):
            for fn, args in self.each_entry_point(path):
                self.refused(fn, *args, match='goes through a symlink')

    def test_idmaps_outside_root_s_subordinate_ranges(self):
        path = os.path.join(self.top, 'x')
        os.mkdir(path)
        for idmap in BAD_IDMAPS:
            for fn, args in self.each_entry_point(path, idmap):
                if fn is ownership.give_disk_root and idmap is None:
                    continue  # None: the disk's root stays host root's.
                self.refused(fn, *args)

    def test_etc_names_only_those_the_driver_writes(self):
        merged = os.path.join(self.top, 'merged')
        os.makedirs(os.path.join(merged, 'etc'))
        for name in ('passwd', 'shadow', '../hostname', 'hostname/x',
                     '/etc/hostname', '', '.', None, b'hostname',
                     ['hostname']):
            self.refused(ownership.write_etc_file, merged, name, 'h\n',
                         IDMAP, match='is not one of /etc\'s hostname')

    def test_etc_texts(self):
        merged = os.path.join(self.top, 'merged')
        os.makedirs(os.path.join(merged, 'etc'))
        for text in (b'h\n', None, 7, ['h'], '\ud800',
                     'x' * (ownership.MAX_ETC_FILE + 1)):
            self.refused(ownership.write_etc_file, merged, 'hostname', text,
                         IDMAP, match='a text is a str of at most')

    def test_ill_formed_config_drive_files(self):
        path = os.path.join(self.top, 'config-drive')
        for files in ('openstack/latest/meta_data.json', None, {'f': b'x'},
                      [['f']], [['f', b'x', b'y']], [['f', 'str data']],
                      [[3, b'x']], [[b'f', b'x']], [None], ['f']):
            self.refused(ownership.write_config_drive, path, files, IDMAP,
                         match='[path, bytes]')
        for rel in ('../x', '/etc/passwd', 'a/../../x', 'a//b', 'a/./b', '',
                    '.', '..', 'a/', 'a/b\0', '\ud800'):
            # A good file first: nothing at all is made.
            self.refused(ownership.write_config_drive, path,
                         [['ok', b'x'], [rel, b'x']], IDMAP,
                         match='config drive path %r refused' % rel)
        self.refused(ownership.write_config_drive, path,
                     [['a/b', b'x'], ['a/b', b'y']], IDMAP,
                     match='given twice')

    def test_oversized_config_drive(self):
        path = os.path.join(self.top, 'config-drive')
        # Data alone at the cap: its path's bytes make it too much.
        self.refused(ownership.write_config_drive, path,
                     [['user_data', b'\0' * ownership.MAX_CONFIG_DRIVE]],
                     IDMAP, match='at most %d bytes'
                     % ownership.MAX_CONFIG_DRIVE)
        # Over many files, the total counts: 10 of 2 + 99 bytes.
        self.patch_object(ownership, 'MAX_CONFIG_DRIVE', 1000)
        self.refused(ownership.write_config_drive, path,
                     [['f%d' % n, b'x' * 99] for n in range(10)], IDMAP)

    def test_give_disk_root_only_to_a_mount_point(self):
        path = os.path.join(self.top, 'ephemeral')
        os.mkdir(path)
        self.refused(ownership.give_disk_root, path, IDMAP,
                     match='is not a mount point')
        self.refused(ownership.give_disk_root, path, None,
                     match='is not a mount point')


class _Made(_Base):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('chown to a subordinate uid needs root')


class MakeOwnedDirTest(_Made):

    def test_made_0755_owned_by_the_container_s_root(self):
        path = os.path.join(self.top, 'upper')
        ownership.make_owned_dir(path, IDMAP)
        self.assertTrue(stat.S_ISDIR(os.lstat(path).st_mode))
        self.assertEqual([165536, 365536, 0o755], self.owner(path))

    def test_existing_path(self):
        path = os.path.join(self.top, 'upper')
        os.mkdir(path, 0o700)
        self.assertRaises(FileExistsError, ownership.make_owned_dir, path,
                          IDMAP)
        self.assertEqual([0, 0, 0o700], self.owner(path))
        self.chown.assert_not_called()


class WriteEtcFileTest(_Made):

    def setUp(self):
        super().setUp()
        self.merged = os.path.join(self.top, 'merged')
        os.mkdir(self.merged)
        self.victim = os.path.join(self.outside, 'etc', 'hostname')
        os.mkdir(os.path.dirname(self.victim))
        with open(self.victim, 'w') as f:
            f.write('host\n')

    def write(self, text='web-1\n'):
        return ownership.write_etc_file(self.merged, 'hostname', text,
                                        IDMAP)

    def assert_outside_untouched(self):
        with open(self.victim) as f:
            self.assertEqual('host\n', f.read())
        self.assertEqual(['hostname'],
                         os.listdir(os.path.dirname(self.victim)))
        self.assertEqual([0, 0, 0o644], self.owner(self.victim))

    def test_written_0644_owned_by_the_container_s_root(self):
        os.mkdir(os.path.join(self.merged, 'etc'))
        path = os.path.join(self.merged, 'etc', 'hostname')
        with open(path, 'w') as f:
            f.write('old name, longer than the new one\n')
        self.assertIsNone(self.write('wéb-1\n'))
        with open(path, 'rb') as f:
            self.assertEqual('wéb-1\n'.encode(), f.read())
        self.assertEqual([165536, 365536, 0o644], self.owner(path))

    def test_an_etc_link_out_of_the_root_resolves_inside_it(self):
        # /etc -> the host's directory holding the victim, absolute and
        # climbing: inside the container neither exists.
        etc = os.path.join(self.merged, 'etc')
        for target in (os.path.dirname(self.victim),
                       '../../../../../../../..' + os.path.dirname(
                           self.victim)):
            os.symlink(target, etc)
            self.assertEqual(ownership.NO_ETC, self.write())
            self.assert_outside_untouched()
            os.unlink(etc)
        self.fchown.assert_not_called()

    def test_an_etc_link_inside_the_root_is_followed_there(self):
        # The same absolute link, in an image that has that directory.
        inside = self.merged + os.path.dirname(self.victim)
        os.makedirs(inside)
        os.symlink(os.path.dirname(self.victim),
                   os.path.join(self.merged, 'etc'))
        self.assertIsNone(self.write())
        with open(os.path.join(inside, 'hostname')) as f:
            self.assertEqual('web-1\n', f.read())
        self.assert_outside_untouched()

    def test_a_hostname_link_out_is_replaced_not_followed(self):
        os.mkdir(os.path.join(self.merged, 'etc'))
        path = os.path.join(self.merged, 'etc', 'hostname')
        os.symlink(self.victim, path)
        self.assertIsNone(self.write())
        self.assert_outside_untouched()
        self.assertEqual([165536, 365536, 0o644], self.owner(path))

    def test_left_alone_with_a_reason(self):
        self.assertEqual(ownership.NO_ETC, self.write())
        self.assertEqual([], os.listdir(self.merged))
        with open(os.path.join(self.merged, 'etc'), 'w'):
            pass
        self.assertEqual(ownership.NO_ETC, self.write())
        os.unlink(os.path.join(self.merged, 'etc'))
        os.makedirs(os.path.join(self.merged, 'etc', 'hostname'))
        self.assertEqual(ownership.ETC_FILE_IS_A_DIRECTORY, self.write())
        self.assertTrue(os.path.isdir(os.path.join(self.merged, 'etc',
                                                   'hostname')))
        self.fchown.assert_not_called()


class WriteConfigDriveTest(_Made):

    FILES = [['openstack/latest/meta_data.json', b'{"uuid": "u"}'],
             ['openstack/latest/user_data', b'\x00#!/bin/sh'],
             ['openstack/content/0000', b''],
             ['ec2/latest/meta-data.json', b'{}']]

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.top, 'config-drive')

    def test_dirs_0500_files_0400_all_the_container_s_root_s(self):
        ownership.write_config_drive(self.path, self.FILES, IDMAP)
        made = {os.path.relpath(p, self.path): self.owner(p)
                for p in self.tree() if p.startswith(self.path + '/')}
        self.assertEqual(
            {'openstack': [165536, 365536, 0o500],
             'openstack/latest': [165536, 365536, 0o500],
             'openstack/latest/meta_data.json': [165536, 365536, 0o400],
             'openstack/latest/user_data': [165536, 365536, 0o400],
             'openstack/content': [165536, 365536, 0o500],
             'openstack/content/0000': [165536, 365536, 0o400],
             'ec2': [165536, 365536, 0o500],
             'ec2/latest': [165536, 365536, 0o500],
             'ec2/latest/meta-data.json': [165536, 365536, 0o400]}, made)
        self.assertEqual([165536, 365536, 0o500], self.owner(self.path))
        for rel, data in self.FILES:
            with open(os.path.join(self.path, rel), 'rb') as f:
                self.assertEqual(data, f.read())

    def test_tuples_as_the_daemon_gets_them(self):
        # oslo.privsep's channel unpacks lists as tuples.
        ownership.write_config_drive(
            self.path, tuple(tuple(f) for f in self.FILES), tuple(IDMAP))
        self.assertEqual(['ec2', 'openstack'], sorted(os.listdir(self.path)))

    def test_at_the_size_cap(self):
        self.patch_object(ownership, 'MAX_CONFIG_DRIVE', 1000)
        ownership.write_config_drive(self.path, [['f', b'x' * 999]], IDMAP)
        self.assertEqual(999, os.path.getsize(os.path.join(self.path, 'f')))

    def test_existing_path(self):
        os.mkdir(self.path)
        self.assertRaises(FileExistsError, ownership.write_config_drive,
                          self.path, self.FILES, IDMAP)
        self.assertEqual([], os.listdir(self.path))
        self.chown.assert_not_called()


class GiveDiskRootTest(_Made):

    def setUp(self):
        super().setUp()
        # A fresh mkfs.ext4's root: 0755 root's, an empty lost+found.
        self.mnt = os.path.join(self.top, 'ephemeral')
        os.mkdir(self.mnt, 0o700)
        os.chmod(self.mnt, 0o2777)
        os.mkdir(os.path.join(self.mnt, 'lost+found'), 0o700)
        self.points.add(self.mnt)

    def test_owned_0755_lost_and_found_gone(self):
        ownership.give_disk_root(self.mnt, IDMAP)
        self.assertEqual([165536, 365536, 0o755], self.owner(self.mnt))
        self.assertEqual([], os.listdir(self.mnt))

    def test_host_root_s_without_an_idmap(self):
        ownership.give_disk_root(self.mnt, None)
        self.assertEqual([0, 0, 0o755], self.owner(self.mnt))
        self.assertEqual([], os.listdir(self.mnt))
        self.fchown.assert_not_called()

    def test_a_lost_and_found_in_use_or_not_a_directory_stays(self):
        lost = os.path.join(self.mnt, 'lost+found')
        with open(os.path.join(lost, '#12'), 'w'):
            pass
        ownership.give_disk_root(self.mnt, IDMAP)
        self.assertEqual(['#12'], os.listdir(lost))
        os.unlink(os.path.join(lost, '#12'))
        os.rmdir(lost)
        os.symlink(self.outside, lost)
        ownership.give_disk_root(self.mnt, IDMAP)
        self.assertTrue(os.path.islink(lost))


class UmaskTest(_Made):
    """The daemon's umask is 0: nothing made is group- or world-writable."""

    def test_every_entry_point_makes_under_the_driver_s_umask(self):
        seen = []
        real_mkdir, real_open = os.mkdir, os.open

        def umask():
            mask = os.umask(0)
            os.umask(mask)
            return mask

        def mkdir(*args, **kwargs):
            seen.append(('mkdir', args[0], umask()))
            return real_mkdir(*args, **kwargs)

        def open_(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                seen.append(('open', path, umask()))
            return real_open(path, flags, *args, **kwargs)
        self.patch('os.mkdir', side_effect=mkdir)
        self.patch('os.open', side_effect=open_)
        merged = os.path.join(self.top, 'merged')
        real_mkdir(merged)
        real_mkdir(os.path.join(merged, 'etc'))
        mnt = os.path.join(self.top, 'root')
        real_mkdir(mnt)
        self.points.add(mnt)
        for fn, args in (
                (ownership.make_owned_dir, (self.top + '/upper', IDMAP)),
                (ownership.write_etc_file, (merged, 'hostname', 'h', IDMAP)),
                (ownership.write_config_drive,
                 (self.top + '/config-drive', [['a/b', b'x']], IDMAP)),
                (ownership.give_disk_root, (mnt, IDMAP))):
            os.umask(0)
            fn(*args)
        self.assertEqual(5, len(seen))
        for call, path, mask in seen:
            self.assertEqual(ownership.UMASK, mask, (call, path))
        for path, mode in self.tree().items():
            self.assertEqual(0, mode & 0o022, '%s %o' % (path, mode))
