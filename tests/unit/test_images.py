"""Tests for novalxcdriver.images: the image cache and init detection."""

import contextlib
import errno
import functools
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import threading
import time
import unittest.mock

import fixtures
from oslotest import base

from novalxcdriver import diskimage
from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import images
from novalxcdriver import spool
from tests.unit import base as unit_base

REAL_UNPACK = diskimage.unpack
IMAGE_ID = '3e1c7a52-52a4-4bd0-8d3c-6f9f5d2b8a11'
OTHER_ID = 'c0ffee00-1111-4222-8333-444455556666'
BUSYBOX = b'\x7fELF fake busybox\n'


def _add(tar, name, kind='file', data=b'', mode=0o755, target=None):
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.mtime = 1700000000
    info.mode = mode
    if kind == 'dir':
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif kind == 'symlink':
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_rootfs_tarball(path, with_init=True):
    """Write a tiny busybox-like root as a gzip tarball at path."""
    with tarfile.open(path, 'w:gz') as tar:
        _add(tar, 'bin', 'dir')
        _add(tar, 'bin/busybox', data=BUSYBOX)
        _add(tar, 'etc', 'dir')
        _add(tar, 'etc/hostname', data=b'box\n', mode=0o644)
        _add(tar, 'sbin', 'dir')
        if with_init:
            _add(tar, 'sbin/init', 'symlink', target='/bin/busybox')


class _CacheTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        # The confined unpacker (privsep.unpack), as a thread here.
        self.unpacker = self.useFixture(unit_base.ConfinedUnpackInProcess())
        # syncfs(2) runs in the storage_admin daemon.
        self.sync_filesystem = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.disks.sync_filesystem')).mock
        self.state = self.useFixture(fixtures.TempDir()).path
        # The cache's directories: the storage_admin daemon's, here.
        self.cache_dirs = self.useFixture(
            unit_base.ImageCacheInProcess(self.state))
        self.cache = images.ImageCache(self.state, 64 * 1024 * 1024)
        self.fetches = []
        self.fetch_lock = threading.Lock()

    def fetch(self, dest, with_init=True, delay=0):
        with self.fetch_lock:
            self.fetches.append(dest)
        # The image goes to this process's spool, never into the cache.
        self.assertEqual(os.path.join(self.state, 'spool'),
                         os.path.dirname(dest))
        self.assertTrue(os.path.basename(dest).startswith(
            'fetched-%d-' % os.getpid()))
        if delay:
            time.sleep(delay)
        write_rootfs_tarball(dest, with_init=with_init)

    def cache_entries(self):
        try:
            return sorted(os.listdir(self.cache.path))
        except FileNotFoundError:
            return []


class ImageCacheTest(_CacheTest):

    def test_first_get_fetches_and_unpacks(self):
        image = self.cache.get(IMAGE_ID, self.fetch)
        self.assertEqual(1, len(self.fetches))
        self.assertIsInstance(image, images.CachedImage)
        self.assertEqual(IMAGE_ID, image.image_id)
        self.assertEqual('busybox', image.init_system)
        self.assertEqual(len(BUSYBOX) + len(b'box\n'), image.size)
        self.assertEqual(os.path.join(self.cache.path, IMAGE_ID, 'rootfs'),
                         image.rootfs)
        with open(os.path.join(image.rootfs, 'bin/busybox'), 'rb') as f:
            self.assertEqual(BUSYBOX, f.read())
        self.assertEqual('/bin/busybox',
                         os.readlink(os.path.join(image.rootfs, 'sbin/init')))
        # The downloaded archive is not kept; no partial is left.
        self.assertEqual([IMAGE_ID], self.cache_entries())
        self.assertEqual(['image.json', 'rootfs'], sorted(os.listdir(
            os.path.join(self.cache.path, IMAGE_ID))))

    def test_second_get_does_not_fetch(self):
        first = self.cache.get(IMAGE_ID, self.fetch)
        second = self.cache.get(IMAGE_ID, self.fetch)
        self.assertEqual(1, len(self.fetches))
        self.assertEqual(first, second)
        self.assertEqual(first, self.cache.lookup(IMAGE_ID))

    def test_new_cache_object_sees_entry(self):
        first = self.cache.get(IMAGE_ID, self.fetch)
        again = images.ImageCache(self.state, 1).get(IMAGE_ID, self.fetch)
        self.assertEqual(1, len(self.fetches))
        self.assertEqual(first, again)

    def test_concurrent_gets_fetch_once(self):
        barrier = threading.Barrier(8)
        results, errors = [], []

        def worker():
            try:
                barrier.wait()
                results.append(self.cache.get(
                    IMAGE_ID, lambda dest: self.fetch(dest, delay=0.05)))
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        self.assertEqual([], errors)
        self.assertEqual(8, len(results))
        self.assertEqual(1, len(self.fetches))
        self.assertEqual(1, len(set(results)))
        self.assertEqual([IMAGE_ID], self.cache_entries())

    def test_fetch_failure_leaves_nothing(self):
        def fetch(dest):
            with open(dest, 'wb') as f:
                f.write(b'half an image')
            raise IOError('glance went away')

        self.assertRaises(IOError, self.cache.get, IMAGE_ID, fetch)
        self.assertEqual([], self.cache_entries())
        self.assertIsNone(self.cache.lookup(IMAGE_ID))
        # The next attempt fetches again.
        self.assertEqual('busybox',
                         self.cache.get(IMAGE_ID, self.fetch).init_system)

    def test_no_init_refused_and_nothing_left(self):
        e = self.assertRaises(
            exception.ImageUnpackError, self.cache.get, IMAGE_ID,
            lambda dest: self.fetch(dest, with_init=False))
        self.assertIn('/sbin/init', str(e))
        self.assertIn(IMAGE_ID, str(e))
        self.assertEqual([], self.cache_entries())
        self.assertIsNone(self.cache.lookup(IMAGE_ID))

    def test_not_an_archive_refused_and_nothing_left(self):
        def fetch(dest):
            with open(dest, 'wb') as f:
                f.write(b'QFI\xfb this is a qcow2 image, not a tarball' * 50)

        self.assertRaises(exception.ImageUnpackError, self.cache.get,
                          IMAGE_ID, fetch)
        self.assertEqual([], self.cache_entries())

    def test_too_large_refused(self):
        cache = images.ImageCache(self.state, 4)
        self.assertRaises(exception.ImageUnpackError, cache.get, IMAGE_ID,
                          self.fetch)
        self.assertEqual([], self.cache_entries())

    def test_non_uuid_image_id_refused(self):
        for bad in ('../../etc', 'abc', IMAGE_ID + '/x', ''):
            self.assertRaises(exception.ImageUnpackError, self.cache.get,
                              bad, self.fetch)
            self.assertRaises(exception.ImageUnpackError, self.cache.lookup,
                              bad)
        self.assertEqual([], self.fetches)

    def test_the_unpacker_s_fifo_holds_a_mebibyte(self):
        self.cache.get(IMAGE_ID, self.fetch)
        self.assertEqual([spool.PIPE_BYTES], self.unpacker.pipe_sizes)

    def test_lookup_of_uncached(self):
        self.assertIsNone(self.cache.lookup(OTHER_ID))

    def test_remove_partials(self):
        os.makedirs(self.cache.path)
        child = subprocess.Popen(['true'])
        child.wait()
        dead = '.partial-%s-%d-abc123' % (IMAGE_ID, child.pid)
        alive = '.partial-%s-%d-def456' % (OTHER_ID, os.getpid())
        odd = '.partial-garbage'
        for name in (dead, alive, odd):
            os.makedirs(os.path.join(self.cache.path, name, 'rootfs'))
        complete = self.cache.get(IMAGE_ID, self.fetch)

        self.assertEqual(1, self.cache.remove_partials())
        # A name the cache never makes is not the cache's to delete.
        self.assertEqual(sorted([odd, alive, IMAGE_ID]),
                         self.cache_entries())
        self.assertEqual(complete, self.cache.lookup(IMAGE_ID))

    def test_remove_partials_without_cache_dir(self):
        self.assertEqual(0, self.cache.remove_partials())

    def test_remove_partials_deletes_entries_moved_aside(self):
        os.makedirs(self.cache.path)
        # Moved aside by this very process: no partial, deleted anyway.
        aside = '.corrupt-%s-%d-0123456789abcdef' % (IMAGE_ID, os.getpid())
        os.makedirs(os.path.join(self.cache.path, aside, 'rootfs', 'bin'))
        self.assertEqual(1, self.cache.remove_partials())
        self.assertEqual([], self.cache_entries())

    def test_remove_partials_never_deletes_through_a_mount(self):
        os.makedirs(self.cache.path)
        child = subprocess.Popen(['true'])
        child.wait()
        source = '.corrupt-%s-1-aaaa' % IMAGE_ID
        mounted_on = '.corrupt-%s-1-bbbb' % OTHER_ID
        dead = '.partial-%s-%d-cccc' % (IMAGE_ID, child.pid)
        free = '.corrupt-%s-1-dddd' % OTHER_ID
        for name in (source, mounted_on, dead, free):
            os.makedirs(os.path.join(self.cache.path, name, 'rootfs'))
        # A container's lower layer: an idmapped bind whose root is the
        # entry's rootfs, as mountinfo names it relative to its filesystem.
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.mount.roots', create=True,
            return_value={'/', '/srv/x/images/%s/rootfs' % source}))
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.mount.mountpoints', return_value={
                '/', os.path.join(self.cache.path, mounted_on, 'rootfs'),
                os.path.join(self.cache.path, dead)}))
        self.assertEqual(1, self.cache.remove_partials())
        self.assertEqual(sorted([source, mounted_on, dead]),
                         self.cache_entries())


class ReceiveTest(_CacheTest):
    """receive: an entry another host's cache holds (a migration's)."""

    def copy(self, rootfs, max_bytes, with_init=True):
        # What migrationcopy.receive_image leaves: an unpacked rootfs.
        self.copies.append((rootfs, max_bytes))
        os.makedirs(os.path.join(rootfs, 'bin'))
        with open(os.path.join(rootfs, 'bin', 'busybox'), 'wb') as f:
            f.write(b'\x7fELF' + b'x' * 96)
        os.chmod(os.path.join(rootfs, 'bin', 'busybox'), 0o755)
        os.makedirs(os.path.join(rootfs, 'sbin'))
        if with_init:
            os.symlink('/bin/busybox', os.path.join(rootfs, 'sbin', 'init'))
        return 100

    def setUp(self):
        super().setUp()
        self.copies = []

    def test_unpacked_into_a_partial_then_published(self):
        image = self.cache.receive(IMAGE_ID, self.copy)
        [(rootfs, max_bytes)] = self.copies
        self.assertEqual(64 * 1024 * 1024, max_bytes)
        self.assertEqual('rootfs', os.path.basename(rootfs))
        self.assertTrue(os.path.basename(os.path.dirname(rootfs)).startswith(
            '.partial-' + IMAGE_ID))
        self.assertEqual([IMAGE_ID], self.cache_entries())
        self.assertEqual(('busybox', 100), (image.init_system, image.size))
        with open(os.path.join(self.cache.path, IMAGE_ID, 'image.json')) as f:
            self.assertEqual({'init_system': 'busybox', 'size': 100},
                             json.load(f))

    def test_cached_already_nothing_copied(self):
        self.cache.get(IMAGE_ID, self.fetch)
        self.cache.receive(IMAGE_ID, self.copy)
        self.assertEqual([], self.copies)

    def test_refused_stream_is_an_unpack_error_nothing_left(self):
        def copy(rootfs, max_bytes):
            os.mkdir(os.path.join(rootfs, 'half'))
            raise exception.UnsafeArchiveMember(member='../x', reason='no')
        e = self.assertRaises(exception.ImageUnpackError,
                              self.cache.receive, IMAGE_ID, copy)
        self.assertIn('../x', str(e))
        self.assertEqual([], self.cache_entries())

    def test_failed_copy_raises_as_it_is_nothing_left(self):
        def copy(rootfs, max_bytes):
            raise exception.CommandFailed(cmd='ssh', exit_code=255,
                                          stderr='refused')
        self.assertRaises(exception.CommandFailed, self.cache.receive,
                          IMAGE_ID, copy)
        self.assertEqual([], self.cache_entries())

    def test_no_init_refused_nothing_left(self):
        self.assertRaises(
            exception.ImageUnpackError, self.cache.receive, IMAGE_ID,
            lambda rootfs, max_bytes: self.copy(rootfs, max_bytes,
                                                with_init=False))
        self.assertEqual([], self.cache_entries())


class StreamTest(_CacheTest):
    """A download unpacked as it arrives (the stream argument)."""

    def setUp(self):
        super().setUp()
        path = os.path.join(self.state, 'image.tar.gz')
        write_rootfs_tarball(path)
        with open(path, 'rb') as f:
            self.data = f.read()
        self.streams = []
        self.closed = []
        self.seen_in_partial = []

    def stream(self, data=None, tail_error=None, chunk=100):
        data = self.data if data is None else data
        self.streams.append(1)

        def chunks():
            try:
                for i in range(0, len(data), chunk):
                    partial = [n for n in self.cache_entries()
                               if n.startswith('.partial-')]
                    self.seen_in_partial.extend(
                        os.listdir(os.path.join(self.cache.path, p))
                        for p in partial)
                    yield data[i:i + chunk]
                if tail_error:
                    # glanceclient: the hash is compared after the last
                    # chunk.
                    raise tail_error
            finally:
                self.closed.append(1)
        return chunks()

    def test_tarball_unpacked_with_no_copy_on_disk(self):
        image = self.cache.get(IMAGE_ID, self.fetch, stream=self.stream)
        self.assertEqual([], self.fetches)
        self.assertEqual(1, len(self.streams))
        self.assertEqual('busybox', image.init_system)
        with open(os.path.join(image.rootfs, 'bin/busybox'), 'rb') as f:
            self.assertEqual(BUSYBOX, f.read())
        # Only the rootfs directory was ever in the partial: no archive.
        self.assertTrue(self.seen_in_partial)
        self.assertEqual({('rootfs',)},
                         set(tuple(sorted(e)) for e in self.seen_in_partial))
        self.assertEqual([1], self.closed)
        self.assertEqual([IMAGE_ID], self.cache_entries())

    def test_read_to_the_end_where_the_hash_is_checked(self):
        bad = IOError(errno.EPIPE, 'Corrupt image download. Hash was x '
                                   'expected y')
        e = self.assertRaises(
            IOError, self.cache.get, IMAGE_ID, self.fetch,
            stream=lambda: self.stream(tail_error=bad))
        self.assertIs(bad, e)
        self.assertEqual([], self.cache_entries())
        self.assertIsNone(self.cache.lookup(IMAGE_ID))

    def test_trailer_after_the_archive_is_read_too(self):
        # Past the 16 MiB that tarball.py reads after the archive's end;
        # the download's own error comes out, not a corrupt archive.
        plain = io.BytesIO()
        with tarfile.open(fileobj=plain, mode='w') as tar:
            _add(tar, 'sbin', 'dir')
            _add(tar, 'sbin/init', data=BUSYBOX)
        bad = IOError(errno.EPIPE, 'Corrupt image download')
        for data in (self.data + b'\0' * 1024,
                     plain.getvalue() + b'\0' * (17 * 1024 * 1024)):
            e = self.assertRaises(
                IOError, self.cache.get, IMAGE_ID, self.fetch,
                stream=lambda: self.stream(data, tail_error=bad,
                                           chunk=1 << 20))
            self.assertIs(bad, e)
        self.assertEqual([], self.cache_entries())

    def test_download_error_midway_comes_out_as_itself(self):
        def stream():
            yield self.data[:50]
            raise ConnectionError('glance went away')
        self.assertRaises(ConnectionError, self.cache.get, IMAGE_ID,
                          self.fetch, stream=stream)
        self.assertEqual([], self.cache_entries())

    def test_bad_archive_closes_the_download_and_leaves_nothing(self):
        half = self.data[:len(self.data) // 2]
        e = self.assertRaises(
            exception.ImageUnpackError, self.cache.get, IMAGE_ID,
            self.fetch, stream=lambda: self.stream(half))
        self.assertIn('truncated or corrupt', str(e))
        self.assertEqual([1], self.closed)
        self.assertEqual([], self.cache_entries())

    def test_tarball_content_of_a_qcow2_image_refused(self):
        e = self.assertRaises(
            exception.ImageUnpackError, self.cache.get, IMAGE_ID,
            self.fetch, 'qcow2', stream=self.stream)
        self.assertIn('disk_format=qcow2 but its content is a rootfs '
                      'tarball', str(e))
        self.assertEqual([1], self.closed)
        self.assertEqual([], self.cache_entries())

    def test_disk_image_written_to_a_file_first(self):
        disk = b'QFI\xfb' + os.urandom(300000)
        got = []

        def unpack(image_path, kind, *args, **kwargs):
            with open(image_path, 'rb') as f:
                got.append((kind, f.read()))
            raise exception.DiskImageRefused(reason='stop here')
        self.useFixture(fixtures.MockPatch('novalxcdriver.diskimage.unpack',
                                           side_effect=unpack))
        self.assertRaises(exception.ImageUnpackError, self.cache.get,
                          IMAGE_ID, self.fetch, 'qcow2',
                          stream=lambda: self.stream(disk, chunk=7777))
        self.assertEqual([(diskimage.QCOW2, disk)], got)
        self.assertEqual([], self.fetches)
        self.assertEqual([1], self.closed)
        self.assertEqual([], self.cache_entries())

    def test_no_stream_falls_back_to_fetch(self):
        image = self.cache.get(IMAGE_ID, self.fetch, stream=lambda: None)
        self.assertEqual(1, len(self.fetches))
        self.assertEqual('busybox', image.init_system)

    def test_concurrent_gets_stream_once(self):
        barrier = threading.Barrier(6)
        results, errors = [], []

        def worker():
            try:
                barrier.wait()
                results.append(self.cache.get(IMAGE_ID, self.fetch,
                                              stream=self.stream))
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        self.assertEqual([], errors)
        self.assertEqual(1, len(self.streams))
        self.assertEqual(1, len(set(results)))


class DamagedEntryTest(base.BaseTestCase):
    """A torn or broken entry is moved aside and fetched again."""

    def setUp(self):
        super().setUp()
        # The confined unpacker (privsep.unpack), as a thread here.
        self.unpacker = self.useFixture(unit_base.ConfinedUnpackInProcess())
        # syncfs(2) runs in the storage_admin daemon.
        self.sync_filesystem = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.disks.sync_filesystem')).mock
        self.state = self.useFixture(fixtures.TempDir()).path
        # The cache's directories: the storage_admin daemon's, here.
        self.cache_dirs = self.useFixture(
            unit_base.ImageCacheInProcess(self.state))
        self.cache = images.ImageCache(self.state, 64 * 1024 * 1024)
        self.fetches = []
        self.good = self.cache.get(IMAGE_ID, self.fetch)
        self.entry = os.path.join(self.cache.path, IMAGE_ID)
        self.marker = os.path.join(self.entry, 'image.json')
        self.log = self.useFixture(fixtures.FakeLogger(
            level=logging.WARNING))

    def fetch(self, dest):
        self.fetches.append(dest)
        write_rootfs_tarball(dest)

    def write_marker(self, data):
        with open(self.marker, 'wb') as f:
            f.write(data)

    def moved_aside(self):
        return [n for n in os.listdir(self.cache.path)
                if n.startswith('.corrupt-%s-%d-' % (IMAGE_ID, os.getpid()))]

    def assert_moved_aside_and_fetched_again(self, why):
        self.assertIsNone(self.cache.lookup(IMAGE_ID))
        aside = self.moved_aside()
        self.assertEqual(1, len(aside))
        self.assertFalse(os.path.lexists(self.entry))
        self.assertIn(self.entry, self.log.output)
        self.assertIn(why, self.log.output)
        self.assertIn(aside[0], self.log.output)
        # The next get fetches a fresh, whole entry beside the old one.
        fresh = self.cache.get(IMAGE_ID, self.fetch)
        self.assertEqual(2, len(self.fetches))
        self.assertEqual(self.good, fresh)
        self.assertEqual(fresh, self.cache.lookup(IMAGE_ID))
        self.assertTrue(os.path.lexists(os.path.join(fresh.rootfs,
                                                     'sbin', 'init')))
        self.assertEqual(sorted(aside + [IMAGE_ID]),
                         sorted(os.listdir(self.cache.path)))

    def test_empty_marker(self):
        self.write_marker(b'')
        self.assert_moved_aside_and_fetched_again('not JSON')

    def test_marker_torn_mid_json(self):
        with open(self.marker, 'rb') as f:
            whole = f.read()
        self.write_marker(whole[:len(whole) // 2])
        self.assert_moved_aside_and_fetched_again('not JSON')

    def test_marker_of_zeros(self):
        # What ext4 can show of a file whose data never reached the disk.
        self.write_marker(b'\0' * 4096)
        self.assert_moved_aside_and_fetched_again('not JSON')

    def test_marker_not_utf8(self):
        self.write_marker(b'\xff\xfe{')
        self.assert_moved_aside_and_fetched_again('not JSON')

    def test_marker_missing_keys(self):
        self.write_marker(b'{}')
        self.assert_moved_aside_and_fetched_again('lacks init_system')

    def test_marker_wrong_types(self):
        self.write_marker(b'{"init_system": 1, "size": "12"}')
        self.assert_moved_aside_and_fetched_again('lacks init_system')

    def test_marker_not_an_object(self):
        self.write_marker(b'[]')
        self.assert_moved_aside_and_fetched_again('lacks init_system')

    def test_no_marker(self):
        os.unlink(self.marker)
        self.assert_moved_aside_and_fetched_again('cannot read image.json')

    def test_no_rootfs(self):
        shutil.rmtree(self.good.rootfs)
        self.assert_moved_aside_and_fetched_again('no rootfs directory')

    def test_entry_is_a_file(self):
        shutil.rmtree(self.entry)
        with open(self.entry, 'w') as f:
            f.write('x')
        self.assert_moved_aside_and_fetched_again('not a directory')

    def test_get_moves_aside_and_fetches_again(self):
        self.write_marker(b'{"init_sys')
        fresh = self.cache.get(IMAGE_ID, self.fetch)
        self.assertEqual(2, len(self.fetches))
        self.assertEqual(self.good, fresh)
        self.assertEqual(1, len(self.moved_aside()))

    def test_good_entry_left_alone(self):
        self.assertEqual(self.good, self.cache.lookup(IMAGE_ID))
        self.assertEqual([IMAGE_ID], os.listdir(self.cache.path))
        self.assertEqual('', self.log.output)

    def test_host_errors_are_not_damage(self):
        # Out of file descriptors says nothing of the entry: kept.
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.imagecache.os.open',
            side_effect=OSError(errno.EMFILE, 'Too many')))
        self.assertRaises(OSError, self.cache.lookup, IMAGE_ID)
        self.assertEqual([IMAGE_ID], os.listdir(self.cache.path))

    def test_moved_aside_under_the_lock_after_a_second_look(self):
        # Another process replaces the entry while this one waits for
        # the image's lock: the fresh entry is not moved aside.
        self.write_marker(b'')
        good = json.dumps({'init_system': 'busybox',
                           'size': self.good.size}).encode()
        real_lock = self.cache._lock
        taken = []

        @contextlib.contextmanager
        def lock(image_id):
            with real_lock(image_id):
                taken.append(image_id)
                self.write_marker(good)
                yield

        self.cache._lock = lock
        self.assertEqual(self.good, self.cache.lookup(IMAGE_ID))
        self.assertEqual([IMAGE_ID], taken)
        self.assertEqual([], self.moved_aside())


class PublishTest(base.BaseTestCase):
    """An entry is marked complete only once its files are on disk."""

    def setUp(self):
        super().setUp()
        # The confined unpacker (privsep.unpack), as a thread here.
        self.unpacker = self.useFixture(unit_base.ConfinedUnpackInProcess())
        self.state = self.useFixture(fixtures.TempDir()).path
        # The cache's directories: the storage_admin daemon's, here.
        self.cache_dirs = self.useFixture(
            unit_base.ImageCacheInProcess(self.state))
        self.cache = images.ImageCache(self.state, 64 * 1024 * 1024)
        self.entry = os.path.join(self.cache.path, IMAGE_ID)
        self.events = []
        real = {name: getattr(durable, name)
                for name in ('write', 'fsync_dir')}
        real_rename = os.rename

        def syncfs(path):
            self.events.append(('syncfs', path))
            # Everything unpacked and marked, not yet renamed: one sync
            # for both.
            self.assertTrue(os.path.exists(
                os.path.join(path, 'rootfs', 'bin', 'busybox')))
            self.assertTrue(os.path.exists(os.path.join(path,
                                                        'image.json')))

        def write(path, data, *args, **kwargs):
            self.events.append(('write', path))
            return real['write'](path, data, *args, **kwargs)

        def fsync_dir(path):
            self.events.append(('fsync_dir', path))
            return real['fsync_dir'](path)

        def rename(src, dst):
            self.events.append(('rename', src, dst))
            return real_rename(src, dst)

        for name, fake in (('write', write), ('fsync_dir', fsync_dir)):
            self.useFixture(fixtures.MockPatchObject(durable, name,
                                                     side_effect=fake))
        # The storage_admin daemon's.
        self.sync_filesystem = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.disks.sync_filesystem',
            side_effect=syncfs)).mock
        self.useFixture(fixtures.MockPatch('os.rename', side_effect=rename))

    def fetch(self, dest):
        write_rootfs_tarball(dest)

    def test_marked_then_synced_then_renamed_then_dir_synced(self):
        image = self.cache.get(IMAGE_ID, self.fetch)
        # The one partial the image was unpacked in is what was synced.
        partial, = [e[1] for e in self.events if e[0] == 'syncfs']
        self.assertEqual(self.cache.path, os.path.dirname(partial))
        self.assertTrue(os.path.basename(partial).startswith(
            '.partial-%s-%d-' % (IMAGE_ID, os.getpid())))
        marker = os.path.join(partial, 'image.json')
        self.assertEqual(
            [('write', marker), ('syncfs', partial),
             ('rename', partial, self.entry),
             ('fsync_dir', self.cache.path)],
            [e for e in self.events
             if e in (('syncfs', partial), ('write', marker),
                      ('rename', partial, self.entry),
                      ('fsync_dir', self.cache.path))])
        with open(os.path.join(self.entry, 'image.json')) as f:
            self.assertEqual({'init_system': 'busybox', 'size': image.size},
                             json.load(f))
        self.assertEqual(image, self.cache.lookup(IMAGE_ID))

    def test_failed_sync_publishes_nothing(self):
        self.sync_filesystem.side_effect = OSError(errno.EIO, 'I/O error')
        self.assertRaises(OSError, self.cache.get, IMAGE_ID, self.fetch)
        self.assertEqual([], os.listdir(self.cache.path))
        self.assertIsNone(self.cache.lookup(IMAGE_ID))


class PruneTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        # The confined unpacker (privsep.unpack), as a thread here.
        self.unpacker = self.useFixture(unit_base.ConfinedUnpackInProcess())
        # syncfs(2) runs in the storage_admin daemon.
        self.sync_filesystem = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.disks.sync_filesystem')).mock
        self.state = self.useFixture(fixtures.TempDir()).path
        # The cache's directories: the storage_admin daemon's, here.
        self.cache_dirs = self.useFixture(
            unit_base.ImageCacheInProcess(self.state))
        self.cache = images.ImageCache(self.state, 64 * 1024 * 1024)
        self.fetches = []
        for image_id in (IMAGE_ID, OTHER_ID):
            self.cache.get(image_id, self.fetch)

    def fetch(self, dest):
        self.fetches.append(dest)
        write_rootfs_tarball(dest)

    def age(self, image_id, seconds):
        then = time.time() - seconds
        os.utime(os.path.join(self.cache.path, image_id), (then, then))

    def entries(self):
        return sorted(os.listdir(self.cache.path))

    def test_unused_and_old_removed_in_use_kept(self):
        self.age(IMAGE_ID, 100)
        self.age(OTHER_ID, 100)
        self.assertEqual([OTHER_ID], self.cache.prune({IMAGE_ID}, 50))
        self.assertEqual([IMAGE_ID], self.entries())
        self.assertIsNone(self.cache.lookup(OTHER_ID))
        self.assertIsNotNone(self.cache.lookup(IMAGE_ID))

    def test_recently_used_kept(self):
        self.age(OTHER_ID, 10)
        self.assertEqual([], self.cache.prune(set(), 50))
        self.assertEqual(sorted([IMAGE_ID, OTHER_ID]), self.entries())

    def test_get_marks_an_image_used(self):
        self.age(OTHER_ID, 100)
        self.cache.get(OTHER_ID, self.fetch)
        self.assertEqual(2, len(self.fetches))  # a hit: no new fetch
        self.assertEqual([], self.cache.prune(set(), 50))
        self.assertIsNotNone(self.cache.lookup(OTHER_ID))

    def test_removed_image_fetched_again(self):
        self.age(OTHER_ID, 100)
        self.assertEqual([OTHER_ID], self.cache.prune({IMAGE_ID}, 50))
        image = self.cache.get(OTHER_ID, self.fetch)
        self.assertEqual(3, len(self.fetches))
        self.assertTrue(os.path.lexists(os.path.join(image.rootfs,
                                                     'sbin', 'init')))

    def test_partials_and_other_names_left_alone(self):
        partial = '.partial-%s-%d-abc' % (OTHER_ID, os.getpid())
        os.makedirs(os.path.join(self.cache.path, partial))
        os.makedirs(os.path.join(self.cache.path, 'not-an-image'))
        self.age(IMAGE_ID, 100)
        self.age(OTHER_ID, 100)
        self.assertEqual(sorted([IMAGE_ID, OTHER_ID]),
                         sorted(self.cache.prune(set(), 50)))
        self.assertEqual(sorted([partial, 'not-an-image']), self.entries())

    def test_without_cache_dir(self):
        none = os.path.join(self.state, 'none')
        self.useFixture(unit_base.ImageCacheInProcess(none))
        cache = images.ImageCache(none, 1)
        self.assertEqual([], cache.prune(set(), 0))

    def test_entry_a_mount_shows_is_kept(self):
        # A container Nova does not list (an orphan) still has its lower
        # layer bound from the entry: deleting it would delete its files.
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.mount.roots', create=True,
            return_value={'/', '/var/x/images/%s/rootfs' % OTHER_ID}))
        self.age(IMAGE_ID, 100)
        self.age(OTHER_ID, 100)
        self.assertEqual([IMAGE_ID], self.cache.prune(set(), 50))
        self.assertEqual([OTHER_ID], self.entries())

    def test_damaged_entry_moved_aside_not_pruned(self):
        with open(os.path.join(self.cache.path, OTHER_ID, 'image.json'),
                  'w') as f:
            f.write('{')
        self.age(OTHER_ID, 100)
        self.assertEqual([], self.cache.prune({IMAGE_ID}, 50))
        entries = self.entries()
        self.assertEqual(2, len(entries))
        self.assertEqual(IMAGE_ID, entries[1])
        self.assertTrue(entries[0].startswith('.corrupt-' + OTHER_ID))


class DiskImageCacheTest(_CacheTest):
    """Disk images go through diskimage.unpack inside the cache's rules."""

    def setUp(self):
        super().setUp()
        self.unpacks = []
        self.unpack = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.diskimage.unpack',
            side_effect=self._unpack)).mock
        self.release = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.diskimage.release')).mock

    def _unpack(self, image_path, kind, disk_format, workdir, dest,
                max_bytes, is_root, root_partition, with_init=True):
        self.unpacks.append(image_path)
        # What the real one leaves: the received image, its raw copy and
        # the partition's mount point.
        self.assertEqual(os.path.join(workdir, 'archive'), image_path)
        self.assertTrue(os.path.isfile(image_path))
        with open(os.path.join(workdir, 'disk.raw'), 'wb') as f:
            f.write(b'\0' * 512)
        os.mkdir(os.path.join(workdir, 'mnt'), 0o700)
        os.makedirs(os.path.join(dest, 'bin'))
        with open(os.path.join(dest, 'bin', 'busybox'), 'wb') as f:
            f.write(BUSYBOX)
        os.chmod(os.path.join(dest, 'bin', 'busybox'), 0o755)
        if with_init:
            os.makedirs(os.path.join(dest, 'sbin'))
            os.symlink('/bin/busybox', os.path.join(dest, 'sbin', 'init'))
        return len(BUSYBOX)

    def fetch_qcow2(self, dest, delay=0):
        with self.fetch_lock:
            self.fetches.append(dest)
        if delay:
            time.sleep(delay)
        with open(dest, 'wb') as f:
            f.write(b'QFI\xfb' + b'\0' * 1020)

    def test_qcow2_unpacked_by_diskimage_in_the_partial(self):
        image = self.cache.get(IMAGE_ID, self.fetch_qcow2, 'qcow2', '2')
        self.assertEqual('busybox', image.init_system)
        self.assertEqual(len(BUSYBOX), image.size)
        args = self.unpack.call_args.args
        partial = os.path.dirname(args[0])
        self.assertTrue(os.path.basename(partial).startswith(
            '.partial-' + IMAGE_ID))
        self.assertEqual((diskimage.QCOW2, 'qcow2', partial,
                          os.path.join(partial, 'rootfs'), 64 * 1024 * 1024),
                         args[1:6])
        self.assertEqual('2', args[7])
        # is_root is detect_init's answer.
        self.assertFalse(args[6](self.state))
        self.assertEqual([IMAGE_ID], self.cache_entries())
        # The work files are not published with it.
        self.assertEqual(['image.json', 'rootfs'], sorted(os.listdir(
            os.path.join(self.cache.path, IMAGE_ID))))
        # The image reached the cache through the daemon, not a file of
        # this process's in the partial.
        self.cache_dirs.start_receive.assert_called_once_with(
            partial, unittest.mock.ANY, 64 * 1024 * 1024)
        self.assertEqual([], os.listdir(os.path.join(self.state, 'spool')))

    def test_disk_image_larger_than_the_limit_refused(self):
        cache = images.ImageCache(self.state, 1000)
        e = self.assertRaises(exception.ImageUnpackError, cache.get,
                              IMAGE_ID, self.fetch_qcow2, 'qcow2')
        self.assertIn('larger than 1000 bytes', str(e))
        self.unpack.assert_not_called()
        self.assertEqual([], self.cache_entries())

    def test_concurrent_boots_convert_once(self):
        barrier = threading.Barrier(4)
        results, errors = [], []

        def worker():
            try:
                barrier.wait()
                results.append(self.cache.get(
                    IMAGE_ID, lambda d: self.fetch_qcow2(d, delay=0.05),
                    'qcow2'))
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        self.assertEqual([], errors)
        self.assertEqual(1, len(self.fetches))
        self.assertEqual(1, len(self.unpacks))
        self.assertEqual(1, len(set(results)))

    def test_refused_disk_image_leaves_nothing(self):
        self.unpack.side_effect = exception.DiskImageRefused(
            reason='no partition holds a Linux root filesystem')
        e = self.assertRaises(exception.ImageUnpackError, self.cache.get,
                              IMAGE_ID, self.fetch_qcow2, 'qcow2')
        self.assertIn('no partition holds a Linux root', str(e))
        self.assertIn(IMAGE_ID, str(e))
        self.assertEqual([], self.cache_entries())
        # Its mount and loop devices were undone before the removal.
        self.assertEqual(1, self.release.call_count)
        self.assertTrue(os.path.basename(
            self.release.call_args.args[0]).startswith('.partial-'))

    def test_partial_kept_while_its_mount_cannot_be_undone(self):
        self.unpack.side_effect = OSError(errno.EIO, 'I/O error')
        self.release.side_effect = exception.MountBusy(target='mnt',
                                                       holders='pid 1')
        self.assertRaises(OSError, self.cache.get, IMAGE_ID,
                          self.fetch_qcow2, 'qcow2')
        entries = self.cache_entries()
        self.assertEqual(1, len(entries))
        self.assertTrue(entries[0].startswith('.partial-' + IMAGE_ID))
        self.assertIsNone(self.cache.lookup(IMAGE_ID))

    def test_disk_image_without_init_refused(self):
        self.unpack.side_effect = functools.partial(self._unpack,
                                                    with_init=False)
        e = self.assertRaises(exception.ImageUnpackError, self.cache.get,
                              IMAGE_ID, self.fetch_qcow2, 'qcow2')
        self.assertIn('/sbin/init', str(e))
        self.assertEqual([], self.cache_entries())

    def test_tarball_declared_qcow2_refused(self):
        e = self.assertRaises(exception.ImageUnpackError, self.cache.get,
                              IMAGE_ID, self.fetch, 'qcow2')
        self.assertIn('disk_format=qcow2 but its content is a rootfs '
                      'tarball', str(e))
        self.unpack.assert_not_called()
        self.assertEqual([], self.cache_entries())

    def test_tarball_declared_raw_unpacked_as_before(self):
        image = self.cache.get(IMAGE_ID, self.fetch, 'raw')
        self.assertEqual('busybox', image.init_system)
        self.unpack.assert_not_called()

    def test_qcow2_content_declared_raw_refused_before_any_host_call(self):
        self.unpack.side_effect = REAL_UNPACK
        qemu = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.diskimage.qemuimg')).mock
        e = self.assertRaises(exception.ImageUnpackError, self.cache.get,
                              IMAGE_ID, self.fetch_qcow2, 'raw')
        self.assertIn('disk_format=raw but its content is a qcow2', str(e))
        self.assertEqual([], qemu.mock_calls)
        self.assertEqual([], self.cache_entries())

    def test_disk_images_off_refused_whatever_glance_says(self):
        cache = images.ImageCache(self.state, 64 * 1024 * 1024,
                                  disk_images=False)
        for fmt in ('qcow2', None):
            e = self.assertRaises(exception.ImageUnpackError, cache.get,
                                  IMAGE_ID, self.fetch_qcow2, fmt)
            self.assertIn('[lxc] disk_images = false', str(e))
        self.unpack.assert_not_called()
        self.assertEqual([], self.cache_entries())
        # Tarballs still boot.
        self.assertEqual('busybox', cache.get(IMAGE_ID, self.fetch,
                                              'raw').init_system)

    def test_remove_partials_releases_dead_partials_first(self):
        os.makedirs(self.cache.path)
        child = subprocess.Popen(['true'])
        child.wait()
        dead = '.partial-%s-%d-abc123' % (IMAGE_ID, child.pid)
        busy = '.partial-%s-%d-def456' % (OTHER_ID, child.pid)
        for name in (dead, busy):
            os.makedirs(os.path.join(self.cache.path, name, 'mnt'))

        def release(path):
            if os.path.basename(path) == busy:
                raise exception.MountBusy(target=path, holders='pid 1')

        self.release.side_effect = release
        self.assertEqual(1, self.cache.remove_partials())
        self.assertEqual([busy], self.cache_entries())
        self.assertEqual(
            sorted(os.path.join(self.cache.path, n) for n in (dead, busy)),
            sorted(c.args[0] for c in self.release.call_args_list))


class ReleaseTest(base.BaseTestCase):
    """_release: what a crashed unpack left, undone in the right order."""

    def test_views_unmounted_before_the_partition_is_released(self):
        calls = []
        unmount = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.images.mount.unmount_tree',
            side_effect=lambda path: calls.append(('unmount', path)))).mock
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.images.diskimage.release',
            side_effect=lambda path: calls.append(('release', path))))
        images._release('/s/images/.partial-x')
        # The copy's views hold the partition's loop device: they go
        # before diskimage.release detaches it.
        self.assertEqual([('unmount', '/s/images/.partial-x/view'),
                          ('unmount', '/s/images/.partial-x/copy'),
                          ('release', '/s/images/.partial-x')], calls)
        self.assertEqual(2, unmount.call_count)

    def test_a_busy_view_keeps_the_partition(self):
        self.useFixture(fixtures.MockPatch(
            'novalxcdriver.images.mount.unmount_tree',
            side_effect=exception.MountBusy(target='copy/source',
                                            holders='pid 1')))
        release = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.images.diskimage.release')).mock
        self.assertRaises(exception.MountBusy, images._release, '/s/p')
        release.assert_not_called()
