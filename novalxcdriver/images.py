"""The per-host Glance image cache: one download and one unpack per image.

An image is a root filesystem tarball (tarball.py) or a disk image, qcow2
or raw with a partition table or a bare filesystem (diskimage.py, which
converts it and copies its root partition's tree); its content says
which, and must agree with Glance's disk_format. Either way the entry is
the same directory tree.

Layout under ``<state_path>/images``::

    <image_id>/rootfs/      the unpacked root filesystem (never written again)
    <image_id>/image.json   written last: its presence marks the entry complete
    .partial-<image_id>-*   a download or unpack in progress (or crashed);
                            a disk image, its raw copy and mount point go
                            there too, and are removed before it is
                            published
    .corrupt-<image_id>-*   an entry found damaged, moved aside

Concurrent boots of a new image, in threads or in other driver processes on
the host, serialise on an external per-image lock and re-check the cache
after taking it, so the image is fetched and unpacked exactly once.

An entry is published only once its files are on disk (syncfs(2) before
the marker is written, fsync(2) of the directory after the rename), so a
power loss leaves either no entry or a whole one. Everything here can be
fetched again from Glance: an entry found damaged anyway (a torn or
missing marker, no rootfs) is moved aside and the image fetched again,
never an error. Containers whose lower layer was mounted from the old
entry keep that mount, which follows the directory and not its name,
until their root is next mounted; remove_partials deletes the old entry
only once no mount shows it.

The cache's directories are root's 0700 (a tenant's private image is in
there): the storage_admin daemon makes, reads, publishes and deletes
them (privsep.imagecache), and every byte reaches them through it (a
FIFO in nova-compute's spool, read by the confined unpacker for a
tarball, by the daemon for a disk image, which it then unpacks). This
module keeps the order of the steps and the per-image lock.

Each ``get`` stamps the entry's mtime; ``prune`` (Nova's image cache
manager, through the driver's manage_image_cache) removes entries no
container uses and unused for long enough, under the same lock.
"""

import contextlib
import dataclasses
import io
import os
import select
import time
import uuid

from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import excutils

from novalxcdriver import conf
from novalxcdriver import diskimage
from novalxcdriver import download
from novalxcdriver import exception
from novalxcdriver import host
from novalxcdriver import mount
from novalxcdriver.privsep import imagecache
from novalxcdriver.privsep import unpack
from novalxcdriver import spool

CONF = conf.CONF
LOG = logging.getLogger(__name__)

MARKER = imagecache.MARKER
_PARTIAL = imagecache.PARTIAL


# Reads from a download are served in pieces of this size.
_STREAM_BUFFER_BYTES = 1 << 20
# Seconds the confined unpacker (or the daemon's receive of a disk image)
# may take once the whole image is written into its FIFO (it is at most
# a pipe's buffer behind by then).
UNPACK_FINISH_TIMEOUT = 600


@dataclasses.dataclass(frozen=True)
class CachedImage:
    """An unpacked image: its rootfs directory and what init it runs.

    :ivar init_system: key of spec.INIT_SIGNALS.
    :ivar size: bytes of regular file data in the rootfs.
    """

    image_id: str
    rootfs: str
    init_system: str
    size: int


class ImageCache:
    """Glance images unpacked once per host.

    :param state_path: the driver's state directory ([lxc] state_path).
    :param max_bytes: largest unpacked image, in bytes.
    :param disk_images: whether disk images are converted ([lxc]
        disk_images); False refuses them.
    """

    def __init__(self, state_path, max_bytes, disk_images=True):
        self.path = os.path.join(state_path, 'images')
        self._lock_path = os.path.join(state_path, 'locks')
        # nova-compute's: the FIFOs the storage_admin daemon reads
        # (privsep.unpack, privsep.imagecache) and a fetched image.
        self._spool = os.path.join(state_path, 'spool')
        self._max_bytes = max_bytes
        self._disk_images = disk_images

    def prepare(self):
        """Have the storage_admin daemon start a spare unpacker.

        With ``[lxc] spare_unpacker`` (privsep.unpack): a first boot of a
        new image then skips the unpacker's start.
        """
        if CONF.lxc.spare_unpacker:
            unpack.prepare_spare()

    def _entry(self, image_id):
        if not _is_image_id(image_id):
            # The id becomes a path component.
            raise exception.ImageUnpackError(
                image_id=image_id, reason='image id is not a UUID '
                '(lowercase, with dashes)')
        return os.path.join(self.path, image_id)

    def entry_path(self, image_id):
        """The directory of image_id's entry (whether or not it exists)."""
        return self._entry(image_id)

    def lookup(self, image_id):
        """The cached image, or None when it is not (completely) cached.

        A damaged entry (an empty, torn or not-JSON image.json, missing
        keys, wrong types, no rootfs directory) is moved aside under the
        image's lock and None returned, so the caller fetches the image
        again.

        :raises ImageUnpackError: image_id is not a UUID.
        :raises OSError: the entry cannot be read for a reason of the
            host's (EMFILE, ENOMEM), or cannot be moved aside.
        """
        image, damage = self._read(image_id)
        if damage is None:
            return image
        with self._lock(image_id):
            # Read again: another thread or process may have replaced it.
            return self._lookup_locked(image_id)

    def _lookup_locked(self, image_id):
        """lookup, for a caller holding the image's lock."""
        image, damage = self._read(image_id)
        if damage is not None:
            self._move_aside(image_id, damage)
        return image

    def _read(self, image_id, stamp=False):
        """Read an entry without changing it (but its mtime, if stamp).

        :returns: (CachedImage, None); (None, None) when there is no
            entry; (None, str saying why) when the entry is damaged.
        """
        entry = self._entry(image_id)
        meta, damage, _ = imagecache.read_entry(entry, stamp)
        if meta is None:
            return None, damage
        return CachedImage(image_id, os.path.join(entry, 'rootfs'),
                           meta['init_system'], meta['size']), None

    def _move_aside(self, image_id, why):
        """Rename a damaged entry to a name the cache never reads.

        One rename, to a new unique name: the fresh entry a get makes
        next cannot collide with it, and remove_partials deletes it once
        no mount shows it. The caller holds the image's lock.
        """
        entry = self._entry(image_id)
        aside = imagecache.move_aside(entry)
        LOG.warning('Image cache entry %(entry)s is damaged (%(why)s): moved '
                    'to %(aside)s; the image will be fetched again. '
                    'Containers mounted from it keep the old files until '
                    'their root is mounted again.',
                    {'entry': entry, 'why': why, 'aside': aside})

    def get(self, image_id, fetch, disk_format=None, root_partition=None,
            stream=None):
        """Return the cached image, fetching and unpacking it if needed.

        A damaged entry is moved aside (see lookup) and fetched again.

        :param fetch: callable(dest_path) writing the image's bytes to
            dest_path (the driver wraps nova.virt.images.fetch).
        :param stream: callable() -> an iterator of the image's bytes that
            checks them when read to its end (download.chunks), or None
            where only fetch works. A tarball is unpacked as it arrives,
            with no copy of it on disk; a disk image is written to a file
            first (it is read at random).
        :param disk_format: Glance's disk_format ('raw', 'qcow2'), which
            the content must match; None when unknown (the content
            decides).
        :param root_partition: a disk image's root partition number
            (diskimage.ROOT_PARTITION_PROPERTY), or None to find it.

        :raises ImageUnpackError: the image is not a usable rootfs archive
            or disk image (nothing of it stays in the cache).
        """
        # Stamp first: a prune that runs from now on sees the entry in use.
        cached, _ = self._read(image_id, stamp=True)
        if cached:
            return cached
        with self._lock(image_id):
            # Another thread or process may have finished it meanwhile.
            cached = self._lookup_locked(image_id)
            if cached:
                return cached
            return self._populate(image_id, fetch, disk_format,
                                  root_partition, stream)

    def _lock(self, image_id):
        return lockutils.lock('novalxc-image-' + image_id, external=True,
                              lock_path=self._lock_path)

    def prune(self, in_use, min_age_seconds):
        """Remove cached images not in use and unused for min_age_seconds.

        An entry goes out of the cache's name space by one rename, under
        the image's lock, then is deleted; a crash in between leaves a
        partial that remove_partials deletes. An entry a mount still shows
        (a container's lower layer, whatever Nova says) is kept.

        :param in_use: image ids to keep whatever their age (set of str).
        :param min_age_seconds: seconds since an image was last used
            (Nova's [image_cache] remove_unused_original_minimum_age_seconds).
        :returns: list of the image ids removed.
        """
        removed = []
        for image_id in imagecache.list_names(self.path):
            if image_id in in_use or not _is_image_id(image_id):
                continue
            with self._lock(image_id):
                entry = self._entry(image_id)
                # Read under the lock: a get() may have stamped it.
                cached, damage, mtime = imagecache.read_entry(entry)
                if mtime is None:
                    continue
                age = time.time() - mtime
                if age < min_age_seconds or \
                        self._lookup_locked(image_id) is None:
                    continue
                doomed = imagecache.retire(entry)
                if doomed is None:
                    LOG.warning('Image %s is not pruned: a mount still '
                                'shows it, though no instance uses it',
                                image_id)
                    continue
            self._remove(doomed)
            LOG.info('Image %s removed from the cache: unused for %d s',
                     image_id, age)
            removed.append(image_id)
        return removed

    def receive(self, image_id, copy):
        """Install an entry another host's cache holds (a migration's).

        For an image Glance no longer has. The copy lands in a partial
        (as a download does), must hold a marker and a root with an init,
        and is renamed into place under the image's lock.

        :param copy: callable(rootfs, max_bytes) unpacking the other
            entry's rootfs into the partial's empty rootfs and returning
            the bytes of file data (migration.fetch_image).
        :returns: the CachedImage.
        :raises ImageUnpackError: the copy is no usable entry (nothing of
            it stays).
        :raises CommandFailed, CommandTimedOut: the copy failed (nothing
            of it stays).
        """
        self._entry(image_id)  # checks the id
        with self._lock(image_id):
            cached = self._lookup_locked(image_id)
            if cached:
                return cached
            partial = imagecache.make_partial(self.path, image_id)
            try:
                try:
                    size = copy(os.path.join(partial, 'rootfs'),
                                self._max_bytes)
                except (exception.ArchiveError,
                        exception.UnsafeArchiveMember) as e:
                    raise exception.ImageUnpackError(image_id=image_id,
                                                     reason=str(e))
                # Checks the init, syncs, marks and renames (durably).
                imagecache.publish(partial, size)
            except BaseException:
                with excutils.save_and_reraise_exception():
                    self._discard(partial)
            cached, why = self._read(image_id)
            if cached is None:
                raise exception.ImageUnpackError(image_id=image_id,
                                                 reason=why or 'no entry')
        LOG.info('Image %s cached from another host\'s cache', image_id)
        return cached

    def _populate(self, image_id, fetch, disk_format, root_partition,
                  stream):
        entry = self._entry(image_id)
        # Its name holds the daemon's pid: remove_partials keeps it while
        # the daemon (and so this process) lives.
        partial = imagecache.make_partial(self.path, image_id)
        try:
            chunks = stream() if stream is not None else None
            try:
                if chunks is not None:
                    size = self._unpack_stream(image_id, chunks, partial,
                                               disk_format, root_partition)
                else:
                    size = self._unpack_fetched(fetch, partial, disk_format,
                                                root_partition)
            except (exception.ArchiveError, exception.UnsafeArchiveMember,
                    exception.DiskImageRefused) as e:
                raise exception.ImageUnpackError(image_id=image_id,
                                                 reason=str(e))
            # Checks the init, syncs, marks and renames (durably).
            init_system = imagecache.publish(partial, size)
        except BaseException:
            with excutils.save_and_reraise_exception():
                self._discard(partial)
        LOG.info('Image %s cached: %d bytes, %s init', image_id, size,
                 init_system)
        return CachedImage(image_id, os.path.join(entry, 'rootfs'),
                           init_system, size)

    def _unpack_stream(self, image_id, chunks, partial, disk_format,
                       root_partition):
        """Unpack a download as it arrives; the bytes of its files.

        The download is read to its end whatever it holds: that is where
        glanceclient compares it with Glance's hash.

        :raises: what the download raised (IOError: it did not match
            Glance's hash), or as _unpack.
        """
        reader = download.ChunkReader(chunks)
        with io.BufferedReader(reader, _STREAM_BUFFER_BYTES) as source:
            try:
                size = self._unpack(source, partial, disk_format,
                                    root_partition)
            except (exception.ArchiveError, exception.UnsafeArchiveMember,
                    exception.DiskImageRefused):
                # A failed download is not a bad image.
                if reader.error is not None:
                    raise reader.error
                raise
            reader.drain()
        LOG.info('Image %s unpacked as it downloaded (%d bytes)',
                 image_id, reader.read_bytes)
        return size

    def _unpack_fetched(self, fetch, partial, disk_format, root_partition):
        """Fetch the image into the spool, then unpack it from there.

        Where Glance gives no stream: nova.virt.images.fetch writes a
        file, this process's own (the spool is nova-compute's), removed
        once read.
        """
        self._make_spool()
        fetched = os.path.join(self._spool, 'fetched-%d-%s' % (
            os.getpid(), uuid.uuid4().hex))
        try:
            fetch(fetched)
            with open(fetched, 'rb') as source:
                return self._unpack(source, partial, disk_format,
                                    root_partition)
        finally:
            try:
                os.unlink(fetched)
            except FileNotFoundError:
                pass

    def _unpack(self, source, partial, disk_format, root_partition):
        """Unpack the image read from source; the bytes of its files.

        Its first bytes say what it is (diskimage.classify), which must
        agree with disk_format. A tarball is unpacked by the confined
        child as it is read; a disk image is received whole by the
        storage_admin daemon (it is read at random), which then unpacks
        it (privsep.imagecache.unpack_disk_image).

        :param source: a binary file object, at the image's start.
        :raises ArchiveError, UnsafeArchiveMember: a bad tarball.
        :raises DiskImageRefused: a bad disk image, or content that is
            not what disk_format says.
        :raises: what reading source raised (the download failed).
        """
        head = source.read(diskimage.CLASSIFY_PEEK_BYTES)
        kind = diskimage.classify(head)
        rootfs = os.path.join(partial, 'rootfs')
        if kind not in (diskimage.QCOW2, diskimage.DISK):
            if disk_format not in (None, 'raw'):
                diskimage.check_format(kind, disk_format)
            return self._unpack_confined(source, rootfs, head)
        if not self._disk_images:
            raise exception.DiskImageRefused(
                reason='this host boots root filesystem tarballs only '
                       '([lxc] disk_images = false)')
        # Before any download into the cache: a refusal costs nothing.
        diskimage.check_format(kind, disk_format)
        self._receive(source, partial, head)
        return imagecache.unpack_disk_image(partial, kind, disk_format,
                                            self._max_bytes, root_partition)

    def _make_spool(self):
        os.makedirs(self._spool, mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def _spool_fifo(self, prefix):
        """A new FIFO in the spool and its write end: (path, fd).

        Open at both ends before the daemon's reader is started (so that
        it never sees an early end), and gone from the spool once the
        with block's start call is made: the block must open the read
        end (through the daemon) before it yields control back. The fd
        is non-blocking; the caller closes it.
        """
        self._make_spool()
        fifo = os.path.join(self._spool, '%s-%d-%s.fifo'
                            % (prefix, os.getpid(), uuid.uuid4().hex))
        os.mkfifo(fifo, 0o600)
        try:
            # A reader of our own for a moment: the write end's open
            # needs one (ENXIO otherwise).
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK |
                             os.O_CLOEXEC)
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK |
                             os.O_CLOEXEC)
            finally:
                os.close(reader)
            spool.widen(fd)
            try:
                yield fifo, fd
            except BaseException:
                os.close(fd)
                raise
        finally:
            os.unlink(fifo)

    def _through_fifo(self, prefix, start, cancel, head, source):
        """Write head + source into a new spool FIFO the daemon reads.

        :param start: callable(fifo) starting the daemon's reader.
        :param cancel: callable() stopping it, if the writing fails.
        """
        with self._spool_fifo(prefix) as (fifo, fd):
            start(fifo)
        try:
            try:
                _feed(fd, head, source)
            finally:
                os.close(fd)
        except BaseException:
            with excutils.save_and_reraise_exception():
                try:
                    cancel()
                except Exception as e:
                    LOG.warning('Cannot stop the daemon\'s reader of %s: '
                                '%s', prefix, e)

    def _receive(self, source, partial, head):
        """The disk image head + source, written into partial by the daemon.

        :returns: its size in bytes.
        :raises DiskImageRefused: it is larger than the cache's limit.
        :raises: what reading source raised (the download failed).
        """
        self._through_fifo(
            'archive',
            lambda fifo: imagecache.start_receive(partial, fifo,
                                                  self._max_bytes),
            lambda: imagecache.cancel_receive(partial), head, source)
        return imagecache.finish_receive(partial, UNPACK_FINISH_TIMEOUT)

    def _unpack_confined(self, source, rootfs, head=b''):
        """Unpack the tarball head + source into rootfs, confined.

        By the storage_admin daemon's child, in a user namespace of no
        one's ids (privsep.unpack), fed through a FIFO in the spool: no
        tarball is parsed as host root.

        :returns: the bytes of file data unpacked.
        :raises ArchiveError, UnsafeArchiveMember: the tarball is refused.
        :raises: what reading source raised (the download failed).
        """
        self._through_fifo(
            'unpack',
            lambda fifo: unpack.start_unpack(rootfs, fifo, self._max_bytes),
            lambda: unpack.cancel_unpack(rootfs), head, source)
        return unpack.finish_unpack(rootfs, UNPACK_FINISH_TIMEOUT)

    @classmethod
    def _discard(cls, partial):
        """Remove a failed unpack's partial.

        It is kept while it has a mount (remove_partials retries).
        """
        try:
            _release(partial)
        except exception.MountFailed as e:
            LOG.error('%s is kept: %s', partial, e)
            return
        cls._remove(partial)

    @staticmethod
    def _remove(path):
        """Delete a partial or a moved-aside entry; whether it is gone.

        Kept, with a warning, while a mount shows it or when the delete
        fails (remove_partials retries).
        """
        try:
            if imagecache.remove(path):
                return True
            LOG.warning('%s is not deleted: a mount still shows it', path)
        except OSError as e:
            LOG.warning('%s is not deleted: %s', path, e)
        return False

    def remove_partials(self):
        """Delete crash leftovers and entries moved aside as damaged.

        Partial unpacks of live processes are kept, and so is anything a
        mount still shows (see ``_mounted``): a tree is never deleted
        through a mount.

        :returns: the number of directories removed.
        """
        removed = 0
        for name in imagecache.list_names(self.path):
            named = os.path.join(imagecache.IMAGES, name)
            if imagecache.PARTIAL_RE.match(named):
                # .partial-<uuid>-<pid>-<random>; a uuid has 4 dashes.
                pid = int(name[len(_PARTIAL):].split('-')[5])
                if host.process_alive(pid):
                    continue
                try:
                    # A disk image's mount and loop devices (diskimage).
                    _release(os.path.join(self.path, name))
                except exception.MountFailed as e:
                    LOG.warning('%s is not deleted: %s', name, e)
                    continue
            elif not imagecache.CORRUPT_RE.match(named):
                continue
            if self._remove(os.path.join(self.path, name)):
                removed += 1
        return removed


def _release(partial):
    """Undo the mounts and loop devices a crashed unpack left in partial.

    The confined unpacker's views (privsep.unpack; its daemon unmounts
    them unless it died) and a disk image's (diskimage.release).

    :raises MountBusy, MountFailed: a mount cannot be undone.
    """
    mount.unmount_tree(os.path.join(partial, unpack.VIEW))
    mount.unmount_tree(os.path.join(partial, unpack.COPY))
    diskimage.release(partial)


def _feed(fd, head, source):
    """Write head, then source read to its end, into the FIFO fd.

    fd is non-blocking, and a full FIFO is waited for with select(2),
    which eventlet makes green: nova-compute's other work goes on while
    the unpacker catches up. The unpacker stops reading once the archive
    ends (or it refuses it): the rest is not written (EPIPE).
    """
    data = head
    while True:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                select.select([], [fd], [])
            except BrokenPipeError:
                return
        data = source.read(_STREAM_BUFFER_BYTES)
        if not data:
            return


def _is_image_id(image_id):
    """Whether image_id is a UUID as Glance writes it (lowercase, dashes)."""
    return isinstance(image_id, str) and \
        imagecache.ENTRY_RE.match('images/' + image_id) is not None
