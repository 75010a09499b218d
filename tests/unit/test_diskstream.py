"""diskstream.receive: a migration's tar stream of disks into open files.

Streams are built here: GNU tar's own (``--sparse``, as the source host
runs it, in each of its formats) from files made with holes, and hostile
ones with tarfile. What is asserted is the bytes and the holes of the
files written, and that whatever is refused writes nothing more.
"""

import bz2
import errno
import gzip
import io
import lzma
import os
import subprocess
import tarfile

import fixtures

from novalxcdriver import diskstream
from novalxcdriver import exception
from novalxcdriver import refusal
from tests.tar_members import device
from tests.tar_members import directory
from tests.tar_members import fifo
from tests.tar_members import hardlink
from tests.tar_members import info
from tests.tar_members import reg
from tests.tar_members import symlink
from tests.tar_members import zeros
from tests.unit import base

KiB = 1024
MiB = 1024 * KiB
CHUNK = diskstream.CHUNK


def tar_of(members, fmt=tarfile.GNU_FORMAT):
    """An uncompressed tar of (TarInfo, data) pairs, as bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=fmt) as tar:
        for member, data in members:
            tar.addfile(member, data)
    return buf.getvalue()


def sparse_file(path, size, blocks):
    """A file of size bytes, holes but for blocks {offset: bytes}."""
    subprocess.run(['truncate', '--size=%d' % size, path], check=True)
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, data in blocks.items():
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def gnu_tar(directory, *names, fmt=None):
    """GNU tar's stream of names in directory, as the source sends it."""
    argv = ['tar', '--create', '--sparse', '--numeric-owner']
    if fmt is not None:
        argv.append('--format=' + fmt)
    return subprocess.run(
        argv + ['--file=-', '--directory=' + directory, '--'] + list(names),
        check=True, stdout=subprocess.PIPE).stdout


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def same_bytes(want, got):
    """None if want == got, else where they first differ (no huge diff)."""
    if want == got:
        return None
    at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b),
              min(len(want), len(got)))
    return '%d bytes, %d wanted; the first difference at %d' % (
        len(got), len(want), at)


def allocated(path):
    """Bytes of path's blocks on disk (st_blocks is in 512-byte units)."""
    return os.stat(path).st_blocks * 512


class _Base(base.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.src = os.path.join(self.tmp, 'src')
        self.dst = os.path.join(self.tmp, 'dst')
        os.mkdir(self.src)
        os.mkdir(self.dst)
        self.fds = {}
        self.addCleanup(self._close)

    def _close(self):
        for fd in self.fds.values():
            os.close(fd)

    def files(self, *names):
        """{name: fd} of new empty files in dst, as the daemon opens them."""
        for name in names:
            self.fds[name] = os.open(
                os.path.join(self.dst, name),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return {name: self.fds[name] for name in names}

    def receive(self, data, names=('root.img',), max_bytes=1 << 30):
        return diskstream.receive(io.BytesIO(data), self.files(*names),
                                  max_bytes)

    def reset(self):
        """Close and remove the files: the next receive makes them anew."""
        for name in list(self.fds):
            os.close(self.fds.pop(name))
            os.unlink(self.out(name))

    def out(self, name):
        return os.path.join(self.dst, name)

    def refused(self, data, names=('root.img',), max_bytes=1 << 30,
                error=refusal.UnsafeArchiveMember):
        """receive refuses data with error; its str."""
        e = self.assertRaises(error, self.receive, data, names, max_bytes)
        return str(e)

    def assertHolds(self, want, name, msg=None):
        """dst's file name holds the bytes want."""
        self.assertIsNone(same_bytes(want, read(self.out(name))), msg)

    def assertEmpty(self, *names):
        for name in names:
            self.assertEqual(0, os.stat(self.out(name)).st_size, name)


class SparseTest(_Base):
    """GNU tar's streams of disks with holes: copied, holes kept."""

    def test_sparse_member_copied_identical_and_still_sparse(self):
        size = 16 * MiB
        path = os.path.join(self.src, 'root.img')
        sparse_file(path, size, {12 * KiB: os.urandom(4 * KiB),
                                 10 * MiB + 8 * KiB: b'middle',
                                 size - 4 * KiB: os.urandom(4 * KiB)})
        data = gnu_tar(self.src, 'root.img')
        # What is tested: a GNU sparse member, a fraction of the size.
        with tarfile.open(fileobj=io.BytesIO(data), mode='r|') as tar:
            self.assertEqual([(b'S', size)],
                             [(m.type, m.size) for m in tar])
        self.assertLess(len(data), 64 * KiB)

        files = self.files('root.img')
        fds = base.open_fds()
        self.assertEqual({'root.img': size},
                         diskstream.receive(io.BytesIO(data), files, size))
        self.assertEqual(fds, base.open_fds())
        self.assertHolds(read(path), 'root.img')
        self.assertEqual(
            0, subprocess.call(['cmp', '--silent', path,
                                self.out('root.img')]))
        self.assertEqual(size, os.stat(self.out('root.img')).st_size)
        # Three pieces of data, in three chunks at most: the rest holes.
        self.assertLessEqual(allocated(self.out('root.img')), 3 * CHUNK)

    def test_every_format_of_gnu_tar(self):
        size = 4 * MiB
        path = os.path.join(self.src, 'root.img')
        sparse_file(path, size, {3 * MiB: b'data'})
        for fmt in ('gnu', 'oldgnu', 'posix'):
            data = gnu_tar(self.src, 'root.img', fmt=fmt)
            self.assertEqual({'root.img': size}, self.receive(data), fmt)
            self.assertHolds(read(path), 'root.img', fmt)
            self.assertLessEqual(allocated(self.out('root.img')), CHUNK, fmt)
            self.reset()

    def test_a_file_ending_in_a_hole_keeps_its_size(self):
        size = 5 * MiB + 123
        path = os.path.join(self.src, 'root.img')
        sparse_file(path, size, {0: b'boot'})
        self.assertEqual({'root.img': size},
                         self.receive(gnu_tar(self.src, 'root.img')))
        self.assertEqual(size, os.stat(self.out('root.img')).st_size)
        self.assertHolds(read(path), 'root.img')
        self.assertLessEqual(allocated(self.out('root.img')), CHUNK)

    def test_two_disks(self):
        sparse_file(os.path.join(self.src, 'root.img'), 6 * MiB,
                    {MiB: b'root' * 1000})
        sparse_file(os.path.join(self.src, 'ephemeral.img'), 3 * MiB,
                    {2 * MiB + 7: b'ephemeral'})
        # In the stream's order or not, as the files were handed.
        data = gnu_tar(self.src, 'ephemeral.img', 'root.img')
        self.assertEqual({'root.img': 6 * MiB, 'ephemeral.img': 3 * MiB},
                         self.receive(data, ('root.img', 'ephemeral.img')))
        for name in ('root.img', 'ephemeral.img'):
            self.assertHolds(read(os.path.join(self.src, name)), name, name)
            self.assertLessEqual(allocated(self.out(name)), CHUNK, name)


class PlainMemberTest(_Base):
    """Members without holes in the stream: zeros become holes anyway."""

    def test_zero_blocks_become_holes(self):
        size = 4 * MiB
        head = os.urandom(5000)
        tail = b'tail'
        body = head + bytes(2 * MiB + 100 - len(head)) + tail
        body += bytes(size - len(body))
        data = tar_of([reg('root.img', body)])
        self.assertEqual({'root.img': size}, self.receive(data))
        self.assertHolds(body, 'root.img')
        # Two chunks of data of four.
        self.assertLessEqual(allocated(self.out('root.img')), 2 * CHUNK)

    def test_scattered_blocks_stay_scattered(self):
        # 4 KiB of data every 64 KiB (a filesystem's metadata): only
        # those blocks are written, not the chunks around them.
        body = bytearray(4 * MiB)
        for offset in range(0, len(body), 64 * 1024):
            body[offset:offset + 4096] = os.urandom(4096)
        # One block that is zeros but for its last byte.
        body[8192 + 4095] = 1
        data = tar_of([reg('root.img', bytes(body))])
        self.assertEqual({'root.img': len(body)}, self.receive(data))
        self.assertHolds(bytes(body), 'root.img')
        blocks = len(body) // (64 * 1024) + 1
        self.assertLessEqual(allocated(self.out('root.img')),
                             blocks * 4096 + 64 * 1024)

    def test_ending_in_zeros_keeps_its_size(self):
        body = b'x' * 100 + bytes(3 * MiB + 100)
        self.assertEqual({'root.img': len(body)},
                         self.receive(tar_of([reg('root.img', body)])))
        self.assertEqual(len(body), os.stat(self.out('root.img')).st_size)
        self.assertHolds(body, 'root.img')

    def test_all_zeros(self):
        self.assertEqual({'root.img': 2 * MiB + 1},
                         self.receive(tar_of([zeros('root.img',
                                                    2 * MiB + 1)])))
        self.assertEqual(2 * MiB + 1, os.stat(self.out('root.img')).st_size)
        self.assertEqual(0, allocated(self.out('root.img')))

    def test_empty_member(self):
        self.assertEqual({'root.img': 0},
                         self.receive(tar_of([reg('root.img')])))
        self.assertEmpty('root.img')

    def test_chunk_boundaries(self):
        for body in (b'\1' * (CHUNK + 1), bytes(CHUNK) + b'\1',
                     bytes(CHUNK - 1) + b'\1' + bytes(CHUNK),
                     os.urandom(3 * CHUNK - 5)):
            self.assertEqual({'root.img': len(body)},
                             self.receive(tar_of([reg('root.img', body)])))
            self.assertHolds(body, 'root.img')
            self.reset()

    def test_short_writes(self):
        body = os.urandom(CHUNK) + bytes(CHUNK) + b'end'
        real = os.pwrite
        calls = []

        def pwrite(fd, data, offset):
            calls.append(offset)
            return real(fd, data[:1000], offset)
        self.patch_object(diskstream.os, 'pwrite', side_effect=pwrite)
        self.assertEqual({'root.img': len(body)},
                         self.receive(tar_of([reg('root.img', body)])))
        self.assertHolds(body, 'root.img')
        # The chunk of zeros skipped, each piece written on from where
        # the last one stopped.
        self.assertEqual(list(range(0, CHUNK, 1000)) + [2 * CHUNK], calls)

    def test_a_member_s_data_ending_early(self):
        # tarfile raises first (ReadError); should its reader ever come
        # back short, the disk is no smaller for it.
        fd = self.files('root.img')['root.img']
        e = self.assertRaises(refusal.ArchiveError, diskstream._copy,
                              io.BytesIO(b'abc'), fd, CHUNK + 10)
        self.assertIn('ends inside a disk', str(e))
        self.assertRaises(refusal.ArchiveError, diskstream._copy,
                          io.BytesIO(bytes(CHUNK)), fd, CHUNK + 1)

    def test_a_pax_member(self):
        body = b'pax' * 1000
        self.assertEqual({'root.img': len(body)}, self.receive(
            tar_of([reg('root.img', body)], fmt=tarfile.PAX_FORMAT)))
        self.assertHolds(body, 'root.img')

    def test_write_errors_propagate(self):
        self.patch_object(diskstream.os, 'pwrite', side_effect=OSError(
            errno.ENOSPC, 'No space left on device'))
        e = self.assertRaises(OSError, self.receive,
                              tar_of([reg('root.img', b'data')]))
        self.assertEqual(errno.ENOSPC, e.errno)
        self.assertNotIsInstance(e, exception.NovaLXCError)

    def test_fsync_errors_propagate(self):
        self.patch_object(diskstream.os, 'fsync',
                          side_effect=OSError(errno.EIO, 'I/O error'))
        e = self.assertRaises(OSError, self.receive,
                              tar_of([reg('root.img', b'data')]))
        self.assertEqual(errno.EIO, e.errno)

    def test_each_file_truncated_then_synced(self):
        calls = []
        real_fsync, real_ftruncate = os.fsync, os.ftruncate
        self.patch_object(diskstream.os, 'fsync', side_effect=lambda fd: (
            calls.append(('fsync', fd)), real_fsync(fd))[1])
        self.patch_object(diskstream.os, 'ftruncate', side_effect=lambda *a: (
            calls.append(('ftruncate',) + a), real_ftruncate(*a))[1])
        data = tar_of([reg('ephemeral.img', b'e' * 10 + bytes(20)),
                       zeros('root.img', 3 * MiB)])
        files = self.files('root.img', 'ephemeral.img')
        diskstream.receive(io.BytesIO(data), files, 1 << 30)
        self.assertEqual([('ftruncate', files['ephemeral.img'], 30),
                          ('fsync', files['ephemeral.img']),
                          ('ftruncate', files['root.img'], 3 * MiB),
                          ('fsync', files['root.img'])], calls)


class RefusedTest(_Base):
    """What is refused: nothing of the member is written."""

    def test_a_member_not_asked_for(self):
        for name in ('swap.img', './root.img', '/root.img', 'x/root.img',
                     'root.img.part', 'ROOT.IMG', '../root.img', 'root'):
            data = tar_of([reg(name, b'evil'), reg('root.img', b'good')])
            msg = self.refused(data)
            self.assertIn(repr(name), msg)
            self.assertIn('not one of the disks asked for (root.img)', msg)
            self.assertEmpty('root.img')
            self.reset()

    def test_the_disks_asked_for_named(self):
        msg = self.refused(tar_of([reg('swap.img', b'x')]),
                           ('root.img', 'ephemeral.img'))
        self.assertIn('(ephemeral.img, root.img)', msg)

    def test_a_member_twice(self):
        data = tar_of([reg('root.img', b'first'), reg('root.img', b'again')])
        msg = self.refused(data, ('root.img', 'ephemeral.img'))
        self.assertIn('comes twice', msg)
        # Not written again.
        self.assertHolds(b'first', 'root.img')
        self.assertEmpty('ephemeral.img')

    def test_the_stream_goes_on_after_the_disks(self):
        for extra in (reg('root.img', b'again'), reg('swap.img', b'x'),
                      directory('d'), symlink('root.img', '/etc/shadow')):
            data = tar_of([reg('root.img', b'first'), extra])
            msg = self.refused(data)
            self.assertIn('goes on after the disks', msg)
            self.assertHolds(b'first', 'root.img')
            self.reset()

    def test_not_a_regular_file(self):
        for member in (symlink('root.img', '/etc/shadow'),
                       directory('root.img'),
                       hardlink('root.img', 'ephemeral.img'),
                       device('root.img', tarfile.CHRTYPE),
                       device('root.img', tarfile.BLKTYPE),
                       fifo('root.img')):
            data = tar_of([member, reg('root.img', b'x')])
            msg = self.refused(data)
            self.assertIn('not a regular file', msg)
            self.assertEmpty('root.img')
            self.reset()

    def test_a_hard_link_to_a_disk_received(self):
        data = tar_of([reg('ephemeral.img', b'e'),
                       hardlink('root.img', 'ephemeral.img')])
        msg = self.refused(data, ('root.img', 'ephemeral.img'))
        self.assertIn('not a regular file', msg)
        self.assertEmpty('root.img')

    def test_larger_than_max_bytes(self):
        body = b'd' * 1000
        msg = self.refused(tar_of([reg('root.img', body)]), max_bytes=999)
        self.assertIn('1000 bytes, above the 999 allowed', msg)
        self.assertEmpty('root.img')
        self.reset()
        # At the limit: taken.
        self.assertEqual({'root.img': 1000}, self.receive(
            tar_of([reg('root.img', body)]), max_bytes=1000))

    def test_holes_count_toward_max_bytes(self):
        sparse_file(os.path.join(self.src, 'root.img'), 16 * MiB,
                    {0: b'x'})
        msg = self.refused(gnu_tar(self.src, 'root.img'),
                           max_bytes=16 * MiB - 1)
        self.assertIn('%d bytes, above' % (16 * MiB), msg)
        self.assertEmpty('root.img')

    def test_the_second_disk_larger(self):
        data = tar_of([reg('root.img', b'r' * 10),
                       reg('ephemeral.img', b'e' * 11)])
        self.refused(data, ('root.img', 'ephemeral.img'), max_bytes=10)
        self.assertHolds(b'r' * 10, 'root.img')
        self.assertEmpty('ephemeral.img')

    def test_a_negative_size(self):
        # Base-256, as GNU tar writes large numbers: tarfile reads -5.
        data = bytearray(tar_of([reg('root.img')]))
        data[124:136] = b'\xff' * 11 + b'\xfb'
        data[148:156] = b' ' * 8
        data[148:156] = b'%06o\0 ' % sum(data[:512])
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode='r|') as t:
            self.assertEqual([-5], [m.size for m in t])
        e = self.assertRaises(refusal.UnsafeArchiveMember, self.receive,
                              bytes(data))
        self.assertIn('negative size', str(e))
        self.assertEmpty('root.img')


class CorruptTest(_Base):
    """What is no complete tar of the disks: ArchiveError."""

    def test_a_missing_disk(self):
        data = tar_of([reg('root.img', b'r')])
        msg = self.refused(data, ('root.img', 'ephemeral.img'),
                           error=refusal.ArchiveError)
        self.assertIn('lacks ephemeral.img', msg)
        self.reset()
        msg = self.refused(tar_of([]), ('root.img', 'ephemeral.img'),
                           error=refusal.ArchiveError)
        self.assertIn('ephemeral.img', msg)
        self.assertIn('root.img', msg)

    def test_an_empty_tar(self):
        # The end-of-archive blocks alone.
        self.refused(tar_of([]), error=refusal.ArchiveError)
        self.reset()
        self.refused(bytes(10240), error=refusal.ArchiveError)

    def test_cut_inside_a_member_s_data(self):
        body = os.urandom(3 * CHUNK)
        data = tar_of([reg('root.img', body)])
        for cut in (512 + 1, 512 + CHUNK, 512 + CHUNK + 1,
                    512 + len(body) - 1):
            msg = self.refused(data[:cut], error=refusal.ArchiveError)
            self.assertIn('stream', msg)
            self.reset()

    def test_cut_inside_a_sparse_member(self):
        sparse_file(os.path.join(self.src, 'root.img'), 8 * MiB,
                    {0: os.urandom(8 * KiB), 6 * MiB: os.urandom(8 * KiB)})
        data = gnu_tar(self.src, 'root.img')
        for cut in (512 + 100, 512 + 8 * KiB + 512):
            self.refused(data[:cut], error=refusal.ArchiveError)
            self.reset()

    def test_cut_inside_a_header(self):
        data = tar_of([reg('root.img', b'r' * 600),
                       reg('ephemeral.img', b'e')])
        for cut in (0, 1, 100, 511, 1536 + 100):
            self.refused(data[:cut], ('root.img', 'ephemeral.img'),
                         error=refusal.ArchiveError)
            self.reset()

    def test_garbage(self):
        for data in (b'', b'\0', b'not a tar', os.urandom(4096),
                     b'x' * 10240, b'ustar' * 1000):
            self.refused(data, error=refusal.ArchiveError)
            self.assertEmpty('root.img')
            self.reset()

    def test_a_bad_checksum(self):
        data = bytearray(tar_of([reg('root.img', b'x')]))
        data[0:1] = b'R'
        self.refused(bytes(data), error=refusal.ArchiveError)
        self.assertEmpty('root.img')

    def test_compressed_tars_are_refused(self):
        plain = tar_of([reg('root.img', b'compressed')])
        for data in (gzip.compress(plain), bz2.compress(plain),
                     lzma.compress(plain)):
            self.refused(data, error=refusal.ArchiveError)
            self.assertEmpty('root.img')
            self.reset()

    def test_a_member_type_tarfile_does_not_know(self):
        data = tar_of([(info('root.img', b'Z', size=0), None)])
        self.refused(data)
        self.assertEmpty('root.img')
