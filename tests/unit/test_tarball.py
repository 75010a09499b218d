"""Tests for novalxcdriver.tarball: every archive is built here."""

import collections
import errno
import gzip
import io
import os
import shutil
import stat
import struct
import tarfile
import time
from unittest import mock
import warnings
import zlib

import fixtures
from libarchive import exception as la_exception
from oslo_concurrency import processutils
from oslotest import base
import zstandard

from novalxcdriver import refusal
from novalxcdriver import tarball
from tests import tar_members
from tests.tar_members import device
from tests.tar_members import directory
from tests.tar_members import fifo
from tests.tar_members import hardlink
from tests.tar_members import reg
from tests.tar_members import symlink
from tests.tar_members import zeros

MiB = 1024 * 1024
BIG = 1024 * MiB


def xattr(attr, value):
    """A pax record as GNU tar --xattrs writes it; value is bytes."""
    return {'SCHILY.xattr.' + attr: value.decode('utf-8', 'surrogateescape')}


def unpack_file(path, dest, max_bytes, max_id=None):
    """tarball.unpack_stream of the archive file at path."""
    with open(path, 'rb') as archive:
        return tarball.unpack_stream(archive, dest, max_bytes, max_id=max_id)


class TestUnpackRootfs(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.archives = os.path.join(self.tmp, 'archives')
        self.dest = os.path.join(self.tmp, 'rootfs')
        self.outside = os.path.join(self.tmp, 'outside')
        for path in (self.archives, self.dest, self.outside):
            os.mkdir(path)
        self.secret = os.path.join(self.outside, 'secret')
        with open(self.secret, 'wb') as f:
            f.write(b'secret')
        os.chmod(self.secret, 0o600)
        os.chmod(self.outside, 0o750)
        self.outside_before = tar_members.tree_snapshot(self.outside)
        self.is_root = os.geteuid() == 0

    # Helpers -------------------------------------------------------------

    def write_archive(self, members, compression='', name='image',
                      fmt=tarfile.PAX_FORMAT):
        """Write a tarball of (TarInfo, fileobj) pairs; return its path."""
        path = os.path.join(self.archives, name)
        if compression == 'zst':
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode='w', format=fmt) as tar:
                for info, data in members:
                    tar.addfile(info, data)
            # With a checksum, as the zstd command writes by default.
            compressor = zstandard.ZstdCompressor(write_checksum=True)
            with open(path, 'wb') as f:
                f.write(compressor.compress(buf.getvalue()))
        else:
            mode = 'w:' + compression if compression else 'w'
            with tarfile.open(path, mode, format=fmt) as tar:
                for info, data in members:
                    tar.addfile(info, data)
        return path

    def write_bytes(self, data, name='image'):
        path = os.path.join(self.archives, name)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def unpack(self, path, max_bytes=BIG):
        return unpack_file(path, self.dest, max_bytes)

    def in_dest(self, name):
        return os.path.join(self.dest, name)

    def assertNothingOutside(self):
        self.assertEqual(self.outside_before,
                         tar_members.tree_snapshot(self.outside))
        self.assertEqual(['archives', 'outside', 'rootfs'],
                         sorted(os.listdir(self.tmp)))

    def assertRefused(self, path, member, max_bytes=BIG):
        """The archive is refused because of member; nothing leaked."""
        e = self.assertRaises(refusal.UnsafeArchiveMember,
                              self.unpack, path, max_bytes)
        self.assertEqual(member, e.kwargs['member'])
        self.assertIn(repr(member), str(e))
        self.assertNothingOutside()
        return e

    def assertArchiveError(self, path, *fragments):
        e = self.assertRaises(refusal.ArchiveError, self.unpack, path)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        self.assertNothingOutside()
        return e

    def require_user_xattrs(self):
        probe = os.path.join(self.tmp, 'probe')
        open(probe, 'wb').close()
        try:
            os.setxattr(probe, 'user.probe', b'1')
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                self.skipTest('no user xattrs on %s' % self.tmp)
            raise
        finally:
            os.unlink(probe)

    def written_bytes(self):
        total = 0
        for root, dirs, files in os.walk(self.dest):
            for name in files:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
        return total

    # Formats -------------------------------------------------------------

    def test_formats_detected_by_content(self):
        # Each file is named after another format than the one it has.
        cases = [('', 'image.tar.gz'), ('gz', 'image.tar.xz'),
                 ('xz', 'image.tar.bz2'), ('bz2', 'image.tar.zst'),
                 ('zst', 'image.tar')]
        for compression, name in cases:
            dest = os.path.join(self.tmp, 'rootfs-' + name)
            os.mkdir(dest)
            path = self.write_archive(
                [directory('etc'), reg('etc/hostname', b'box\n')],
                compression, name)
            self.assertEqual(4, unpack_file(path, dest, BIG),
                             compression)
            with open(os.path.join(dest, 'etc/hostname'), 'rb') as f:
                self.assertEqual(b'box\n', f.read(), compression)

    def test_gnu_format_plain_tar(self):
        path = self.write_archive([reg('a', b'xyz')], fmt=tarfile.GNU_FORMAT)
        self.assertEqual(3, self.unpack(path))

    # What a rootfs needs kept --------------------------------------------

    def test_atime_is_the_pax_records_else_the_unpacks(self):
        members = [directory('.'),
                   reg('./a', b'a', pax_headers={'atime': '1600000000'}),
                   reg('./b', b'b')]
        path = self.write_archive(members)
        before = int(time.time())
        self.unpack(path)
        after = time.time()
        a, b = (os.lstat(self.in_dest(n)) for n in 'ab')
        self.assertEqual(1600000000, a.st_atime)
        self.assertEqual(tar_members.MTIME, a.st_mtime)
        self.assertEqual(tar_members.MTIME, b.st_mtime)
        # libarchive's clock is time(2), read in whole seconds when the
        # writer is made: CI once saw it past this test's own clock read
        # after the unpack (atime 1796682709.0).
        self.assertTrue(before <= b.st_atime <= int(after) + 1, b.st_atime)
        self.assertNotEqual(tar_members.MTIME, b.st_atime)

    def test_rootfs_metadata_kept(self):
        members = [
            directory('.', mode=0o755),
            directory('./usr', mode=0o755),
            directory('./usr/bin', mode=0o755),
            directory('./tmp', mode=0o1777),
            directory('./srv', mode=0o2750, uid=1234, gid=5678),
            reg('./usr/bin/su', b'#!/bin/true\n', mode=0o4755),
            reg('./usr/bin/wall', b'wall', mode=0o2755, gid=5),
            reg('./srv/data', b'12345', mode=0o640, uid=1234, gid=5678),
            hardlink('./usr/bin/su.hard', 'usr/bin/su', mode=0o4755),
            symlink('./bin', 'usr/bin'),
            symlink('./usr/bin/sh', '/usr/bin/dash'),
            symlink('./usr/bin/up', '../../srv/data'),
            fifo('./srv/pipe'),
        ]
        written = self.unpack(self.write_archive(members))
        self.assertEqual(len(b'#!/bin/true\n') + len(b'wall') + 5, written)

        def mode(name):
            return stat.S_IMODE(os.lstat(self.in_dest(name)).st_mode)

        self.assertEqual(0o755, mode('.'))
        self.assertEqual(0o1777, mode('tmp'))
        self.assertEqual(0o2750, mode('srv'))
        self.assertEqual(0o4755, mode('usr/bin/su'))
        self.assertEqual(0o2755, mode('usr/bin/wall'))
        self.assertEqual(0o640, mode('srv/data'))
        self.assertEqual(os.stat(self.in_dest('usr/bin/su')).st_ino,
                         os.stat(self.in_dest('usr/bin/su.hard')).st_ino)
        self.assertEqual(2, os.stat(self.in_dest('usr/bin/su')).st_nlink)
        self.assertEqual('usr/bin', os.readlink(self.in_dest('bin')))
        self.assertEqual('/usr/bin/dash',
                         os.readlink(self.in_dest('usr/bin/sh')))
        self.assertEqual('../../srv/data',
                         os.readlink(self.in_dest('usr/bin/up')))
        self.assertTrue(stat.S_ISFIFO(os.lstat(self.in_dest('srv/pipe'))
                                      .st_mode))
        for name in ('usr/bin/su', 'srv', 'bin', 'usr/bin/sh', '.'):
            self.assertEqual(tar_members.MTIME,
                             os.lstat(self.in_dest(name)).st_mtime, name)
        if not self.is_root:
            self.skipTest('owners are only kept when running as root')
        for name, owner in (('srv', (1234, 5678)), ('srv/data', (1234, 5678)),
                            ('usr/bin/wall', (0, 5)),
                            ('usr/bin/su', (0, 0))):
            st = os.lstat(self.in_dest(name))
            self.assertEqual(owner, (st.st_uid, st.st_gid), name)

    def test_numeric_owner_ignores_names(self):
        if not self.is_root:
            self.skipTest('owners are only kept when running as root')
        # 'root' exists on the host but must not win over the numbers.
        info, data = reg('f', b'x', uid=4321, gid=4322)
        info.uname = info.gname = 'root'
        self.unpack(self.write_archive([(info, data)]))
        st = os.lstat(self.in_dest('f'))
        self.assertEqual((4321, 4322), (st.st_uid, st.st_gid))

    def test_global_pax_header_ignored(self):
        if not self.is_root:
            self.skipTest('owners are only kept when running as root')
        path = os.path.join(self.archives, 'global')
        with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT,
                          pax_headers={'uid': '4242'}) as tar:
            tar.addfile(*reg('f', b'x', uid=7))
        self.unpack(path)
        self.assertEqual(7, os.lstat(self.in_dest('f')).st_uid)

    def test_binary_user_xattr_kept_exactly(self):
        self.require_user_xattrs()
        value = bytes(range(256)) + b'\xff\xfe\x00\xc3('
        info, data = reg('f', b'x')
        info.pax_headers = dict(xattr('user.bin', value),
                                **xattr('user.a%3Db%25', b'text'))
        dinfo, _ = directory('d')
        dinfo.pax_headers = xattr('user.dir', b'\x80')
        self.unpack(self.write_archive([(dinfo, None), (info, data)]))
        self.assertEqual(value, os.getxattr(self.in_dest('f'), 'user.bin'))
        # GNU tar escapes '=' and '%' in attribute names.
        self.assertEqual(b'text', os.getxattr(self.in_dest('f'), 'user.a=b%'))
        self.assertEqual(b'\x80', os.getxattr(self.in_dest('d'), 'user.dir'))

    def test_security_capability_survives_chown_and_hard_link(self):
        if not self.is_root:
            self.skipTest('setting security.capability needs root')
        # VFS_CAP_REVISION_2 | effective, permitted = CAP_NET_RAW (13).
        cap = struct.pack('<5I', 0x02000001, 1 << 13, 0, 0, 0)
        info, data = reg('usr/bin/ping', b'ping', mode=0o755, uid=0, gid=7)
        info.pax_headers = xattr('security.capability', cap)
        members = [(info, data),
                   hardlink('usr/bin/ping2', 'usr/bin/ping', mode=0o755,
                            gid=7)]
        try:
            self.unpack(self.write_archive(members))
        except refusal.ArchiveError as e:
            if 'Operation not supported' in str(e):
                self.skipTest(str(e))
            raise
        self.assertEqual(cap, os.getxattr(self.in_dest('usr/bin/ping'),
                                          'security.capability'))
        self.assertEqual(cap, os.getxattr(self.in_dest('usr/bin/ping2'),
                                          'security.capability'))

    def test_trusted_and_security_xattrs_left_out(self):
        # Only the host's CAP_SYS_ADMIN may set them, no container can
        # use them, and overlayfs reads trusted.overlay.* of a layer as
        # its own; security.capability is kept (above).
        self.require_user_xattrs()
        info, data = reg('f', b'x')
        info.pax_headers = dict(xattr('trusted.overlay.opaque', b'y'),
                                **xattr('security.selinux', b'system_u'))
        info.pax_headers.update(xattr('trusted.x', b'1'))
        info.pax_headers.update(xattr('user.kept', b'1'))
        self.unpack(self.write_archive([(info, data)]))
        self.assertEqual(['user.kept'], os.listxattr(self.in_dest('f')))

    def test_owners_above_max_id_refused(self):
        for field in ('uid', 'gid'):
            info, data = reg('f-%s' % field, b'x', **{field: 65536})
            path = self.write_archive([(info, data)], name=field)
            e = self.assertRaises(refusal.UnsafeArchiveMember,
                                  unpack_file, path, self.dest,
                                  BIG, max_id=65535)
            self.assertIn('%s 65536 is outside 0..65535' % field, str(e))
            self.assertFalse(os.path.lexists(self.in_dest('f-' + field)))
        # At the limit, and without one, both pass.
        info, data = reg('top', b'x', uid=65535, gid=65535)
        unpack_file(self.write_archive([(info, data)], name='top'),
                    self.dest, BIG, max_id=65535)
        info, data = reg('high', b'x', uid=70000, gid=70000)
        unpack_file(self.write_archive([(info, data)], name='high'),
                    self.dest, BIG)

    def test_replacing_member_keeps_last_version(self):
        members = [reg('f', b'old'), reg('f', b'new!'), symlink('l', 'f'),
                   symlink('l', '/f'), reg('x', b'1'), symlink('x', 'f')]
        self.assertEqual(8, self.unpack(self.write_archive(members)))
        with open(self.in_dest('f'), 'rb') as f:
            self.assertEqual(b'new!', f.read())
        self.assertEqual('/f', os.readlink(self.in_dest('l')))
        self.assertEqual('f', os.readlink(self.in_dest('x')))

    def test_sparse_member_counted_at_full_size(self):
        # tarfile cannot write sparse members; GNU tar can.
        tree = os.path.join(self.archives, 'sparse-tree')
        os.mkdir(tree)
        content = b'head' + bytes(8192) + b'tail' + bytes(100000)
        with open(os.path.join(tree, 'sparse'), 'wb') as f:
            f.write(b'head')
            f.seek(8192, os.SEEK_CUR)
            f.write(b'tail')
            f.truncate(len(content))
        path = os.path.join(self.archives, 'sparse.tar')
        processutils.execute('tar', '--sparse', '--format=gnu', '-C', tree,
                             '-cf', path, 'sparse')
        self.assertEqual(len(content), self.unpack(path, max_bytes=BIG))
        with open(self.in_dest('sparse'), 'rb') as f:
            self.assertEqual(content, f.read())
        self.assertRefused(path, 'sparse', max_bytes=len(content) - 1)

    # Refused: names ------------------------------------------------------

    def test_absolute_name_refused(self):
        name = os.path.join(self.outside, 'pwned')
        self.assertRefused(self.write_archive([reg(name, b'x')]), name)

    def test_dotdot_name_refused(self):
        name = '../outside/pwned'
        self.assertRefused(self.write_archive([reg(name, b'x')]), name)

    def test_dotdot_inside_name_refused(self):
        name = 'etc/../../outside/pwned'
        self.assertRefused(self.write_archive([reg(name, b'x')]), name)

    def test_empty_name_refused(self):
        e = self.assertRefused(self.write_archive([reg('', b'x')]), '')
        self.assertIn('empty name', str(e))

    def test_non_directory_replacing_root_refused(self):
        self.assertRefused(self.write_archive([symlink('./', '/etc')]), './')

    # Refused: symlinks -------------------------------------------------

    def test_file_through_absolute_symlink_refused(self):
        path = self.write_archive([symlink('a', self.outside),
                                   reg('a/pwned', b'x')])
        e = self.assertRefused(path, 'a/pwned')
        self.assertIn('symlink', str(e))

    def test_file_through_symlinked_parent_deeper_refused(self):
        path = self.write_archive([directory('etc'),
                                   symlink('etc/a', self.outside),
                                   reg('etc/a/b/pwned', b'x')])
        self.assertRefused(path, 'etc/a/b/pwned')
        self.assertFalse(os.path.lexists(os.path.join(self.outside, 'b')))

    def test_relative_symlink_climbing_out_refused(self):
        path = self.write_archive([directory('etc'),
                                   symlink('etc/x', '../../../etc/shadow')])
        e = self.assertRefused(path, 'etc/x')
        self.assertIn('climbs out', str(e))

    def test_relative_symlink_to_outside_dir_refused(self):
        path = self.write_archive([symlink('a', '../outside'),
                                   reg('a/pwned', b'x')])
        self.assertRefused(path, 'a')

    def test_split_symlink_across_two_archives_refused(self):
        # CVE-2025-45582: the first archive is harmless on its own.
        first = self.write_archive([symlink('a', self.outside)], name='one')
        self.assertEqual(0, self.unpack(first))
        self.assertEqual(self.outside, os.readlink(self.in_dest('a')))
        second = self.write_archive([reg('a/pwned', b'x')], name='two')
        self.assertRefused(second, 'a/pwned')

    def test_file_over_existing_symlink_refused(self):
        path = self.write_archive([symlink('s', self.secret),
                                   reg('s', b'pwned')])
        e = self.assertRefused(path, 's')
        self.assertIn('regular file cannot replace the existing symlink',
                      str(e))

    def test_file_over_symlink_from_earlier_archive_refused(self):
        self.unpack(self.write_archive([symlink('s', self.secret)], 'gz',
                                       name='one'))
        self.assertRefused(self.write_archive([reg('s', b'pwned')],
                                              name='two'), 's')

    def test_a_parent_libarchive_made_cannot_be_replaced(self):
        # a/b was no member's name: libarchive made it for a/b/c.
        path = self.write_archive([reg('a/b/c', b'x'), reg('a/b', b'y')])
        e = self.assertRefused(path, 'a/b')
        self.assertIn('regular file cannot replace the existing directory',
                      str(e))

    def lstat_targets(self, members):
        """The member paths _lstat looked at while unpacking members."""
        path = self.write_archive(members)
        seen = []
        real = tarball._lstat

        def lstat(p):
            seen.append(os.path.relpath(p, self.dest))
            return real(p)
        with mock.patch.object(tarball, '_lstat', side_effect=lstat):
            self.unpack(path)
        return seen

    def test_a_new_name_in_an_empty_tree_is_not_looked_up(self):
        # Only a name given before may be on disk: the second d/f.
        self.assertEqual(['d', 'd/f'], self.lstat_targets([
            directory('d'), reg('d/f', b'1'), reg('d/g', b'2'),
            reg('d/f', b'3')]))

    def test_every_name_looked_up_in_a_tree_not_empty(self):
        os.mkdir(self.in_dest('d'))
        # d as its own place, then as a parent (remembered after).
        self.assertEqual(['d', 'd', 'd/f', 'd/g'], self.lstat_targets([
            directory('d'), reg('d/f', b'1'), reg('d/g', b'2')]))
        # And an existing directory stays one.
        shutil.rmtree(self.in_dest('d'))
        os.mkdir(self.in_dest('d'))
        os.mkdir(self.in_dest('x'))
        self.assertRefused(self.write_archive([reg('d', b'1')]), 'd')

    def test_beyond_the_names_remembered_every_name_looked_up(self):
        with mock.patch.object(tarball, '_MAX_KNOWN_NAMES', 3):
            # a as a parent (missing), then e: one name too many, so e and
            # a/b are looked up as their own places.
            self.assertEqual(['a', 'e', 'a', 'a/b'], self.lstat_targets([
                reg('a/b/c', b'x'), reg('e', b'1'), directory('a/b')]))
            shutil.rmtree(self.dest)
            os.mkdir(self.dest)
            e = self.assertRefused(self.write_archive(
                [reg('a/b/c', b'x'), reg('e', b'1'), reg('a/b', b'y')],
                name='again'), 'a/b')
        self.assertIn('cannot replace the existing directory', str(e))

    def test_directory_over_existing_symlink_refused(self):
        # Without the check, tarfile chmods the directory at the end,
        # through the symlink.
        path = self.write_archive([symlink('d', self.outside),
                                   directory('d', mode=0o777)])
        self.assertRefused(path, 'd')

    def test_symlink_over_existing_directory_refused(self):
        path = self.write_archive([directory('d'), symlink('d', '/etc')])
        self.assertRefused(path, 'd')
        self.assertTrue(os.path.isdir(self.in_dest('d')))

    def test_symlink_over_a_directory_already_used_as_parent_refused(self):
        # The filter remembers a/ as a directory once a/f has gone
        # through it; that must not let a symlink take its place.
        path = self.write_archive([directory('a'), reg('a/f', b'x'),
                                   symlink('a', self.outside),
                                   reg('a/pwned', b'x')])
        self.assertRefused(path, 'a')
        self.assertTrue(os.path.isdir(self.in_dest('a')))
        self.assertFalse(os.path.lexists(os.path.join(self.outside,
                                                      'pwned')))

    def test_each_parent_looked_at_once(self):
        members = [directory('a'), directory('a/b'), directory('a/b/c')]
        members += [reg('a/b/c/f%d' % i, b'x') for i in range(20)]
        members += [hardlink('a/b/c/l%d' % i, 'a/b/c/f%d' % i)
                    for i in range(5)]
        path = self.write_archive(members)
        real = tarball._lstat
        seen = collections.Counter()

        def counted(p):
            seen[os.path.relpath(p, self.dest)] += 1
            return real(p)

        with mock.patch.object(tarball, '_lstat', side_effect=counted):
            self.unpack(path)
        # Once, as a parent (as its own place, a new name in an empty tree
        # needs none): not once for each member beneath.
        self.assertEqual({'a': 1, 'a/b': 1, 'a/b/c': 1},
                         {d: seen[d] for d in ('a', 'a/b', 'a/b/c')})
        self.assertEqual(25, len(os.listdir(self.in_dest('a/b/c'))))

    def test_a_known_parent_ends_the_check_of_its_own_parents(self):
        # Below a directory already checked, a member's parents cost one
        # lookup, not a walk from the root: os.path.join once per member
        # (its own path), whatever its depth.
        def joins(files):
            self.dest = self.useFixture(fixtures.TempDir()).path
            members = [directory('a'), directory('a/b'), directory('a/b/c')]
            members += [reg('a/b/c/f%d' % i, b'x') for i in range(files)]
            path = self.write_archive(members)
            with mock.patch.object(tarball.os.path, 'join',
                                   wraps=os.path.join) as join:
                self.unpack(path)
            self.assertEqual(files, len(os.listdir(self.in_dest('a/b/c'))))
            return join.call_count

        self.assertEqual(10, joins(13) - joins(3))

    def test_parents_remembered_up_to_the_bound(self):
        members = []
        for i in range(10):
            members += [directory('d%d' % i), directory('d%d/e' % i),
                        reg('d%d/e/f' % i, b'x')]
        path = self.write_archive(members)
        filters = []
        real = tarball._MemberFilter

        def kept(*args, **kwargs):
            filters.append(real(*args, **kwargs))
            return filters[-1]

        with mock.patch.object(tarball, '_MAX_KNOWN_DIRS', 3), \
                mock.patch.object(tarball, '_MemberFilter',
                                  side_effect=kept):
            self.unpack(path)
        self.assertLessEqual(len(filters[0]._dirs), 3)
        self.assertIn('d9/e', filters[0]._dirs)
        self.assertTrue(os.path.isfile(self.in_dest('d9/e/f')))

    def test_file_over_existing_fifo_refused(self):
        # open() for writing would block forever on the FIFO.
        self.useFixture(fixtures.Timeout(20, gentle=True))
        path = self.write_archive([fifo('p'), reg('p', b'x')])
        self.assertRefused(path, 'p')

    # Refused: hard links -----------------------------------------------

    def test_data_of_a_hard_link_or_fifo_refused(self):
        # libarchive reads them as having none, so their data is a damaged
        # header: not written into a link's target past rule 7's count,
        # nor into a FIFO (whose open would block).
        link, _ = hardlink('g', 'f', size=5)
        pipe = tar_members.info('p', tarfile.FIFOTYPE, size=5)
        for i, member in enumerate((link, pipe)):
            path = self.write_archive([reg('f', b'orig'),
                                       (member, io.BytesIO(b'EVIL!'))],
                                      name='data-%d' % i)
            self.assertArchiveError(path, 'Damaged tar archive')
            with open(self.in_dest('f'), 'rb') as f:
                self.assertEqual(b'orig', f.read())

    def test_hard_link_absolute_refused(self):
        path = self.write_archive([hardlink('h', self.secret)])
        self.assertRefused(path, 'h')
        self.assertFalse(os.path.lexists(self.in_dest('h')))

    def test_hard_link_dotdot_refused(self):
        path = self.write_archive([hardlink('h', '../outside/secret')])
        self.assertRefused(path, 'h')

    def test_hard_link_through_symlink_refused(self):
        path = self.write_archive([symlink('l', self.outside),
                                   hardlink('h', 'l/secret', mode=0o777)])
        self.assertRefused(path, 'h')

    def test_hard_link_to_symlink_refused(self):
        # link(2) would link the symlink itself and tarfile would then
        # chmod and chown the new name, following the symlink to secret.
        path = self.write_archive([symlink('s', self.secret),
                                   hardlink('h', 's', mode=0o777)])
        e = self.assertRefused(path, 'h')
        self.assertIn('hard link to the symlink', str(e))
        self.assertFalse(os.path.lexists(self.in_dest('h')))

    def test_hard_link_to_missing_target_refused(self):
        path = self.write_archive([hardlink('h', 'later'),
                                   reg('later', b'x')])
        self.assertRefused(path, 'h')

    def test_hard_link_to_directory_refused(self):
        path = self.write_archive([directory('d'), hardlink('h', 'd')])
        self.assertRefused(path, 'h')

    # Refused: member types ---------------------------------------------

    def test_character_device_refused(self):
        path = self.write_archive([device('null', tarfile.CHRTYPE)])
        e = self.assertRefused(path, 'null')
        self.assertIn('device node', str(e))
        self.assertFalse(os.path.lexists(self.in_dest('null')))

    def test_block_device_refused(self):
        path = self.write_archive([device('sda', tarfile.BLKTYPE)])
        e = self.assertRefused(path, 'sda')
        self.assertIn('device node', str(e))
        self.assertFalse(os.path.lexists(self.in_dest('sda')))

    def test_unknown_member_type_is_a_regular_file(self):
        # POSIX.1 pax: "other values ... treated as a regular file".
        info = tar_members.info('odd', b'Z', size=3)
        path = self.write_archive([(info, io.BytesIO(b'odd'))])
        self.assertEqual(3, self.unpack(path))
        st = os.lstat(self.in_dest('odd'))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(3, st.st_size)

    def test_invalid_owner_and_mtime_refused(self):
        # libarchive reads pax numbers as integers, up to 2**63 - 1.
        for record in ({'uid': str(2 ** 40)}, {'gid': str(2 ** 32 - 1)},
                       {'mtime': '9' * 30}, {'mtime': str(-2 ** 41)}):
            info, data = reg('f', b'x')
            info.pax_headers = record
            e = self.assertRefused(self.write_archive([(info, data)]), 'f')
            self.assertIn('invalid', str(e))

    def test_file_flags_and_pax_acls_not_applied(self):
        # An immutable or append-only file could not be deleted with the
        # server (chattr(1)); libarchive sets flags and ACLs if asked to.
        info, data = reg('stuck', b'x')
        info.pax_headers = {
            'SCHILY.fflags': 'schg,sappnd',
            'SCHILY.acl.access': 'user::rw-,user:1234:rwx,group::r--,'
                                 'mask::rwx,other::r--'}
        self.unpack(self.write_archive([(info, data)]))
        self.assertEqual([], os.listxattr(self.in_dest('stuck')))
        os.unlink(self.in_dest('stuck'))

    def test_a_failed_write_is_an_extraction_error_naming_the_member(self):
        # Not "truncated or corrupt": the archive was fine, the disk not.
        full = la_exception.ArchiveError('Write failed', errno.ENOSPC, -30)
        path = self.write_archive([reg('etc/a', b'x'), reg('etc/b', b'y')])
        with mock.patch.object(tarball.la_ffi, 'write_data_block',
                               side_effect=full):
            e = self.assertArchiveError(path, 'extraction failed',
                                        "writing 'etc/a'", 'Write failed',
                                        os.strerror(errno.ENOSPC))
        self.assertNotIn('corrupt', str(e))
        self.assertFalse(os.path.exists(self.in_dest('etc/b')))

    def test_xattr_that_cannot_be_set_is_an_error(self):
        self.require_user_xattrs()
        # Linux allows no user.* attributes on symlinks.
        info, _ = symlink('l', 'target')
        info.pax_headers = xattr('user.x', b'1')
        path = self.write_archive([(info, None)])
        self.assertArchiveError(path, 'extended attribute user.x', "'l'")

    # Refused: sizes ----------------------------------------------------

    def test_file_larger_than_max_bytes_refused(self):
        path = self.write_archive([reg('small', b'abc'),
                                   zeros('big', 2 * MiB)])
        e = self.assertRefused(path, 'big', max_bytes=MiB)
        self.assertIn('limit of %d bytes' % MiB, str(e))
        self.assertFalse(os.path.lexists(self.in_dest('big')))

    def test_exactly_max_bytes_allowed(self):
        path = self.write_archive([reg('a', b'abc'), reg('b', b'de')])
        self.assertEqual(5, self.unpack(path, max_bytes=5))

    def test_gzip_bomb_refused_before_writing(self):
        path = self.write_archive([zeros('zeros', 200 * MiB)], 'gz')
        self.assertLess(os.path.getsize(path), 2 * MiB)
        start = time.monotonic()
        self.assertRefused(path, 'zeros', max_bytes=10 * MiB)
        self.assertLess(time.monotonic() - start, 5)
        self.assertLess(self.written_bytes(), 10 * MiB)

    def test_many_files_bomb_stops_at_limit(self):
        members = [zeros('f%02d' % i, MiB) for i in range(30)]
        path = self.write_archive(members, 'xz')
        self.assertRefused(path, 'f10', max_bytes=10 * MiB)
        self.assertLessEqual(self.written_bytes(), 10 * MiB)
        self.assertFalse(os.path.lexists(self.in_dest('f10')))

    def test_file_larger_than_free_space_refused(self):
        path = self.write_archive([reg('f', b'x' * 2000)])
        with mock.patch.object(tarball, '_free_bytes', return_value=1000):
            e = self.assertRefused(path, 'f')
        self.assertIn('only 1000 are free', str(e))

    def test_free_space_read_again_only_when_a_member_may_not_fit(self):
        path = self.write_archive([directory('d'), reg('d/a', b'x' * 4000),
                                   reg('d/empty'), reg('d/b', b'x' * 4000),
                                   reg('d/c', b'x' * 4000)])
        with mock.patch.object(tarball, '_free_bytes',
                               side_effect=[10000, 3000]) as free:
            e = self.assertRefused(path, 'd/c')
        # Read for a, then for c, which the estimate (2000) cannot hold.
        self.assertEqual([mock.call(self.dest)] * 2, free.call_args_list)
        self.assertIn('needs 4000 bytes but only 3000 are free', str(e))
        self.assertTrue(os.path.isfile(self.in_dest('d/b')))

    def test_no_free_space_read_for_members_without_data(self):
        path = self.write_archive([directory('d'), reg('d/empty'),
                                   symlink('d/s', 'empty')])
        with mock.patch.object(tarball, '_free_bytes') as free:
            self.assertEqual(0, self.unpack(path))
        free.assert_not_called()

    def test_free_space_read_from_dest(self):
        # statvfs(2) of dest itself, in bytes available to unprivileged
        # writers (f_bavail, not f_bfree); mocked, since other writers
        # change the real figure between two reads.
        st = os.statvfs_result((4096, 4096, 100, 90, 7, 10, 5, 5, 0, 255))
        with mock.patch.object(tarball.os, 'statvfs',
                               return_value=st) as statvfs:
            self.assertEqual(7 * 4096, tarball._free_bytes(self.dest))
        statvfs.assert_called_once_with(self.dest)

    def test_oversized_metadata_header_refused(self):
        # libarchive reads a pax or GNU long-name header whole, up to 1 MiB.
        info, data = reg('f', b'x')
        info.pax_headers = xattr('user.big', b'v' * (1 << 20))
        path = self.write_archive([(info, data)])
        self.assertArchiveError(path, 'Special header too large')
        self.assertEqual([], os.listdir(self.dest))
        long_name = reg('d' * (2 << 20), b'x')
        path = self.write_archive([long_name], fmt=tarfile.GNU_FORMAT,
                                  name='long')
        self.assertArchiveError(path, 'Special header too large')

    def test_quiet(self):
        ok = self.write_archive([reg('a', b'x'), symlink('l', '/a')], 'xz',
                                name='ok')
        bad = self.write_archive([symlink('s', self.outside),
                                  reg('s/x', b'x')], name='bad')
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        stdout = self.useFixture(fixtures.StringStream('stdout')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        self.useFixture(fixtures.MonkeyPatch('sys.stdout', stdout))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            self.unpack(ok)
            self.assertRaises(refusal.UnsafeArchiveMember, self.unpack, bad)
        self.assertEqual([], caught)
        stderr.seek(0)
        stdout.seek(0)
        self.assertEqual('', stderr.read() + stdout.read())

    # Not a tarball, or a broken one ------------------------------------

    def test_truncated_tar_gz_refused(self):
        data = os.urandom(256 * 1024)
        path = self.write_archive([reg('etc/random', data)], 'gz')
        with open(path, 'rb') as f:
            whole = f.read()
        half = self.write_bytes(whole[:len(whole) // 2], 'half.tar.gz')
        self.assertArchiveError(half, 'truncated or corrupt')

    def test_tar_cut_at_member_boundary_refused(self):
        # libarchive alone takes this for a one-member archive.
        path = self.write_archive([reg('a', b'x' * 512), reg('b', b'y')])
        with open(path, 'rb') as f:
            first_member = f.read(2 * 512)
        cut = self.write_bytes(first_member, 'cut.tar')
        self.assertArchiveError(cut, 'truncated or corrupt',
                                'end-of-archive marker')

    def test_corrupt_compressed_data_refused(self):
        # zstd can only notice corrupt stored blocks through the frame
        # checksum, which write_archive() includes.
        data = os.urandom(256 * 1024)
        for compression in ('gz', 'bz2', 'xz', 'zst'):
            path = self.write_archive([reg('random', data)], compression,
                                      name=compression)
            with open(path, 'rb') as f:
                whole = bytearray(f.read())
            middle = len(whole) // 2
            for i in range(middle, middle + 64):
                whole[i] ^= 0x55
            broken = self.write_bytes(bytes(whole), 'broken-' + compression)
            self.assertArchiveError(broken, 'truncated or corrupt')

    def test_bad_header_after_the_first_refused(self):
        path = self.write_archive([reg('a', b'x'), reg('b', b'y'),
                                   reg('c', b'z')])
        with open(path, 'rb') as f:
            data = bytearray(f.read())
        header = data.find(b'b\0')
        header -= header % 512
        data[header + 148:header + 156] = b'0000000\0'  # its checksum
        for name, blob in (('bad.tar', bytes(data)),
                           ('bad.tar.gz', gzip.compress(bytes(data)))):
            path = self.write_bytes(blob, name)
            self.assertArchiveError(path, 'truncated or corrupt',
                                    'Damaged tar archive')

    def test_gzip_crc_mismatch_refused(self):
        # Stored (incompressible) data damaged: only the CRC tells.
        data = os.urandom(256 * 1024)
        path = self.write_archive([reg('random', data), reg('after', b'x')],
                                  'gz')
        with open(path, 'rb') as f:
            whole = bytearray(f.read())
        offset = whole.find(data[100000:100064])
        self.assertGreater(offset, 0)
        whole[offset:offset + 64] = bytes(64)
        broken = self.write_bytes(bytes(whole), 'crc.tar.gz')
        self.assertArchiveError(broken, 'truncated or corrupt', 'CRC')

    def test_compressed_non_tar_refused(self):
        for compression, compress in (
                ('gz', gzip.compress),
                ('zst', zstandard.ZstdCompressor().compress)):
            path = self.write_bytes(compress(os.urandom(4096)),
                                    'image.' + compression)
            self.assertArchiveError(path, 'truncated or corrupt')

    def test_corrupt_zstd_refused(self):
        path = self.write_bytes(b'\x28\xb5\x2f\xfd' + os.urandom(512))
        self.assertArchiveError(path, 'truncated or corrupt')

    def test_random_bytes_refused(self):
        path = self.write_bytes(b'\x00\x01' + os.urandom(4094))
        self.assertArchiveError(path, 'not a tar archive',
                                'starts with \\x00\\x01')

    def test_qcow2_refused(self):
        header = b'QFI\xfb\x00\x00\x00\x03' + bytes(504)
        path = self.write_bytes(header, 'rootfs.tar.gz')
        e = self.assertArchiveError(path)
        self.assertEqual(
            'archive refused: not a tar archive: content starts with '
            'QFI\\xfb\\x00\\x00\\x00\\x03 (qcow2?)', str(e))

    def test_iso_refused(self):
        image = bytearray(0x9000)
        image[0x8001:0x8006] = b'CD001'
        path = self.write_bytes(bytes(image))
        self.assertArchiveError(path, 'not a tar archive', '(ISO 9660?)')

    def test_empty_file_refused(self):
        path = self.write_bytes(b'')
        self.assertArchiveError(path, 'not a tar archive: empty file')


def whiteout(name, **kwargs):
    return tar_members.info(name, tarfile.CHRTYPE, mode=0o600, devmajor=0,
                            devminor=0, **kwargs), None


class TestUnpackUpper(base.BaseTestCase):
    """unpack_upper: an overlayfs upper layer a migration brings."""

    UID, GID = 231072, 231100

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('whiteouts and owners need root')
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.dest = os.path.join(self.tmp, 'upper')
        os.mkdir(self.dest)

    def unpack(self, members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w',
                          format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, data)
        buf.seek(0)
        return tarball.unpack_upper(buf, self.dest, MiB, self.UID, self.GID,
                                    65535)

    def owned(self, n=0, **kwargs):
        return dict(uid=self.UID + n, gid=self.GID + n, **kwargs)

    def test_whiteouts_owners_shifted_opaque_returned(self):
        opaque = xattr('trusted.overlay.opaque', b'y')
        origin = xattr('trusted.overlay.origin', b'\x00\xfb')
        total, dirs = self.unpack([
            directory('.', **self.owned(pax_headers=xattr(
                'trusted.overlay.impure', b'y'))),
            directory('etc', **self.owned(pax_headers=opaque)),
            reg('etc/passwd', b'root\n', **self.owned(pax_headers=origin)),
            directory('home', **self.owned(1000)),
            directory('home/u', **self.owned(1000, pax_headers=opaque)),
            reg('home/u/f', b'x', **self.owned(1000, pax_headers=xattr(
                'user.note', b'kept'))),
            # overlayfs makes them as the host's root.
            whiteout('gone'),
            whiteout('etc/gone-too', **self.owned()),
            (tar_members.info('etc/same-whiteout', tarfile.LNKTYPE,
                              linkname='gone'), None),
        ])
        self.assertEqual(6, total)
        self.assertEqual(['etc', 'home/u'], dirs)
        st = os.lstat(os.path.join(self.dest, 'gone'))
        self.assertTrue(stat.S_ISCHR(st.st_mode))
        self.assertEqual(0, st.st_rdev)
        self.assertEqual((0, 0), (st.st_uid, st.st_gid))
        self.assertEqual(st.st_ino, os.lstat(os.path.join(
            self.dest, 'etc', 'same-whiteout')).st_ino)
        self.assertEqual((1000, 1000), (lambda s: (s.st_uid, s.st_gid))(
            os.lstat(os.path.join(self.dest, 'home', 'u', 'f'))))
        self.assertEqual(b'kept', os.getxattr(
            os.path.join(self.dest, 'home', 'u', 'f'), 'user.note'))
        # overlayfs's own attributes are not set by the unpacker.
        for path in ('.', 'etc', 'etc/passwd', 'home/u'):
            self.assertEqual([], [a for a in os.listxattr(
                os.path.join(self.dest, path)) if a.startswith('trusted.')])

    def test_a_replaced_opaque_directory_is_not_reported(self):
        _total, dirs = self.unpack([
            directory('d', **self.owned(pax_headers=xattr(
                'trusted.overlay.opaque', b'y'))),
            directory('d', **self.owned()),
            directory('e', **self.owned(pax_headers=xattr(
                'trusted.overlay.opaque', b'n'))),
        ])
        self.assertEqual([], dirs)

    def test_owners_outside_the_range_refused(self):
        for n in (-1, 65536):
            for field in ('uid', 'gid'):
                owner = self.owned()
                owner[field] += n
                e = self.assertRaises(refusal.UnsafeArchiveMember,
                                      self.unpack, [reg('f-%s-%d' % (
                                          field, n), b'', **owner)])
                self.assertIn('%s %d is outside' % (field, owner[field]),
                              str(e))

    def test_a_link_owned_by_host_root_to_a_file_refused(self):
        e = self.assertRaises(
            refusal.UnsafeArchiveMember, self.unpack,
            [reg('f', b'x', **self.owned()),
             (tar_members.info('g', tarfile.LNKTYPE, linkname='f'), None)])
        self.assertIn('uid 0 is outside', str(e))

    def test_devices_other_than_whiteouts_refused(self):
        for major, minor in ((1, 3), (0, 1), (1, 0)):
            member = tar_members.info('dev', tarfile.CHRTYPE, mode=0o600,
                                      devmajor=major, devminor=minor,
                                      **self.owned())
            self.assertRaises(refusal.UnsafeArchiveMember, self.unpack,
                              [(member, None)])
        member = tar_members.info('blk', tarfile.BLKTYPE, mode=0o600,
                                  devmajor=0, devminor=0, **self.owned())
        self.assertRaises(refusal.UnsafeArchiveMember, self.unpack,
                          [(member, None)])
        self.assertEqual([], os.listdir(self.dest))

    def test_image_rules_still_hold(self):
        for members in ([reg('../x', b'', **self.owned())],
                        [(tar_members.info('l', tarfile.SYMTYPE,
                                           linkname='../../etc',
                                           **self.owned()), None)]):
            self.assertRaises(refusal.UnsafeArchiveMember, self.unpack,
                              members)

    def test_a_whiteout_in_an_image_is_still_refused(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w') as tar:
            tar.addfile(whiteout('w')[0])
        buf.seek(0)
        self.assertRaises(refusal.UnsafeArchiveMember,
                          tarball.unpack_stream, buf, self.dest, MiB)


class _Blocks:
    """A source whose read() hands out given items (raising exceptions)."""

    def __init__(self, items, forever=None):
        self.items = list(items)
        self.forever = forever
        self.reads = 0

    def read(self, n):
        self.reads += 1
        if not self.items:
            if self.forever is not None:
                return self.forever
            return b''
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


class TestReadAhead(base.BaseTestCase):
    """_ReadAhead: the decompressed stream read by a thread of its own."""

    def ahead(self, source):
        ahead = tarball._ReadAhead(source)
        self.addCleanup(ahead.stop)
        return ahead

    def read_all(self, ahead, n):
        parts = []
        while True:
            part = ahead.read(n)
            if not part:
                return b''.join(parts)
            self.assertLessEqual(len(part), n)
            parts.append(part)

    def test_the_bytes_in_order_in_reads_of_any_size(self):
        items = [b'abc', bytearray(b'defgh'), b'i' * 5000]
        want = b''.join(bytes(item) for item in items)
        for n in (1, 2, 512, 10240):
            self.assertEqual(want, self.read_all(
                self.ahead(_Blocks(items)), n))
        self.assertEqual(want, self.ahead(_Blocks(items)).read())
        ahead = self.ahead(_Blocks([]))
        self.assertEqual(b'', ahead.read(10))
        self.assertEqual(b'', ahead.read(10))

    def test_an_error_comes_after_the_data_before_it(self):
        error = zlib.error('invalid distance')
        ahead = self.ahead(_Blocks([b'abc', b'de', error, b'never']))
        self.assertEqual(b'abc', ahead.read(3))
        self.assertEqual(b'd', ahead.read(1))
        self.assertEqual(b'e', ahead.read(5))
        self.assertIs(error, self.assertRaises(zlib.error, ahead.read, 1))
        # And again: the stream stays broken.
        self.assertRaises(zlib.error, ahead.read, 1)

    def test_stop_ends_the_thread_a_few_blocks_ahead(self):
        source = _Blocks([], forever=b'x' * 100)
        ahead = self.ahead(source)
        self.assertEqual(b'x' * 100, ahead.read(100))
        ahead.stop()
        ahead._thread.join(5)
        self.assertFalse(ahead._thread.is_alive())
        # One block handed out, the queue's, and one that waited for room.
        self.assertLessEqual(source.reads, 1 + tarball._AHEAD_BLOCKS + 1)

    def test_unpack_stream_stops_it_on_success_and_on_failure(self):
        started = []
        real = tarball._ReadAhead

        def tracked(source):
            ahead = real(source)
            started.append(ahead)
            return ahead
        self.useFixture(fixtures.MockPatchObject(tarball, '_ReadAhead',
                                                 side_effect=tracked))
        dest = self.useFixture(fixtures.TempDir()).path
        good = io.BytesIO()
        with tarfile.open(fileobj=good, mode='w:gz') as tar:
            info, data = reg('a', b'abc')
            tar.addfile(info, data)
        self.assertEqual(3, tarball.unpack_stream(
            io.BytesIO(good.getvalue()), dest, MiB))
        # A gzip stream whose CRC is wrong: refused, as before.
        bad = bytearray(good.getvalue())
        bad[-8] ^= 0xff
        self.assertRaises(refusal.ArchiveError, tarball.unpack_stream,
                          io.BytesIO(bytes(bad)),
                          self.useFixture(fixtures.TempDir()).path, MiB)
        self.assertEqual(2, len(started))
        for ahead in started:
            ahead._thread.join(5)
            self.assertFalse(ahead._thread.is_alive())
