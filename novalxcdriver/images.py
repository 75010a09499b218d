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
                            a disk image's raw copy and mount point go
                            there too
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

Each ``get`` stamps the entry's mtime; ``prune`` (Nova's image cache
manager, through the driver's manage_image_cache) removes entries no
container uses and unused for long enough, under the same lock.
"""

import dataclasses
import errno
import io
import json
import os
import select
import shutil
import tempfile
import time
import uuid

from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import uuidutils

from novalxcdriver import diskimage
from novalxcdriver import download
from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import host
from novalxcdriver import mount
from novalxcdriver.privsep import disks
from novalxcdriver.privsep import unpack

LOG = logging.getLogger(__name__)

MARKER = 'image.json'
_MARKER = MARKER
_PARTIAL = '.partial-'
_CORRUPT = '.corrupt-'
# Errors reading a marker that tell of a damaged entry; others (EMFILE,
# ENOMEM, ...) are the host's and propagate. EUCLEAN: ext4's and xfs's
# "filesystem corrupted".
_DAMAGED = frozenset([errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EIO,
                      errno.EUCLEAN])


# Reads from a download are served in pieces of this size.
_STREAM_BUFFER_BYTES = 1 << 20
# Seconds the confined unpacker may take once the whole tarball is written
# into its FIFO (it is at most a pipe's buffer behind by then).
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
        # nova-compute's: the unpacker's FIFOs (privsep.unpack).
        self._spool = os.path.join(state_path, 'spool')
        self._max_bytes = max_bytes
        self._disk_images = disk_images

    def _entry(self, image_id):
        if not uuidutils.is_uuid_like(image_id):
            # The id becomes a path component.
            raise exception.ImageUnpackError(
                image_id=image_id, reason='image id is not a UUID')
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

    def _read(self, image_id):
        """Read an entry without changing it.

        :returns: (CachedImage, None); (None, None) when there is no
            entry; (None, str saying why) when the entry is damaged.
        """
        entry = self._entry(image_id)
        try:
            with open(os.path.join(entry, _MARKER), 'rb') as f:
                meta = json.loads(f.read())
        except OSError as e:
            if e.errno == errno.ENOENT and not os.path.lexists(entry):
                return None, None
            if e.errno not in _DAMAGED:
                raise
            return None, 'cannot read %s: %s' % (_MARKER, e.strerror)
        except ValueError as e:
            # Empty or torn (written without fsync before a power loss),
            # or not UTF-8.
            return None, '%s is not JSON: %s' % (_MARKER, e)
        if not (isinstance(meta, dict) and
                isinstance(meta.get('init_system'), str) and
                type(meta.get('size')) is int and meta['size'] >= 0):
            return None, ('%s lacks init_system (str) or size (int): %.200r'
                          % (_MARKER, meta))
        rootfs = os.path.join(entry, 'rootfs')
        if os.path.islink(rootfs) or not os.path.isdir(rootfs):
            return None, 'no rootfs directory'
        return CachedImage(image_id, rootfs, meta['init_system'],
                           meta['size']), None

    def _move_aside(self, image_id, why):
        """Rename a damaged entry to a name the cache never reads.

        One rename, to a new unique name: the fresh entry a get makes
        next cannot collide with it, and remove_partials deletes it once
        no mount shows it. The caller holds the image's lock.
        """
        entry = self._entry(image_id)
        aside = os.path.join(self.path, '%s%s-%d-%s' % (
            _CORRUPT, image_id, os.getpid(), uuid.uuid4().hex[:16]))
        os.rename(entry, aside)
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
        entry = self._entry(image_id)
        # Stamp first: a prune that runs from now on sees the entry in use.
        try:
            os.utime(entry)
        except FileNotFoundError:
            pass
        cached, _ = self._read(image_id)
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
        if not os.path.isdir(self.path):
            return removed
        for image_id in sorted(os.listdir(self.path)):
            if image_id in in_use or not uuidutils.is_uuid_like(image_id):
                continue
            with self._lock(image_id):
                entry = self._entry(image_id)
                try:
                    # Re-read under the lock: a get() may have stamped it.
                    age = time.time() - os.stat(entry).st_mtime
                except FileNotFoundError:
                    continue
                if (age < min_age_seconds or
                        self._lookup_locked(image_id) is None):
                    continue
                if _mounted(entry):
                    LOG.warning('Image %s is not pruned: a mount still '
                                'shows it, though no instance uses it',
                                image_id)
                    continue
                doomed = tempfile.mkdtemp(
                    prefix='%s%s-%d-' % (_PARTIAL, image_id, os.getpid()),
                    dir=self.path)
                os.rename(entry, os.path.join(doomed, 'entry'))
            shutil.rmtree(doomed, ignore_errors=True)
            LOG.info('Image %s removed from the cache: unused for %d s',
                     image_id, age)
            removed.append(image_id)
        return removed

    def receive(self, image_id, copy):
        """Install an entry another host's cache holds (a migration's).

        For an image Glance no longer has. The copy lands in a partial
        (as a download does), must hold a marker and a root with an init,
        and is renamed into place under the image's lock.

        :param copy: callable(dest_dir) copying the other entry's rootfs/
            and marker into dest_dir (migration.fetch_image).
        :returns: the CachedImage.
        :raises ImageUnpackError: the copy is no usable entry (nothing of
            it stays).
        """
        entry = self._entry(image_id)
        with self._lock(image_id):
            cached = self._lookup_locked(image_id)
            if cached:
                return cached
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            partial = tempfile.mkdtemp(
                prefix='%s%s-%d-' % (_PARTIAL, image_id, os.getpid()),
                dir=self.path)
            try:
                copy(partial)
                if detect_init(os.path.join(partial, 'rootfs')) is None:
                    raise exception.ImageUnpackError(
                        image_id=image_id,
                        reason='the copy from the source has no /sbin/init')
                disks.sync_filesystem(partial)
                os.rename(partial, entry)
            except BaseException:
                with excutils.save_and_reraise_exception():
                    self._discard(partial)
            durable.fsync_dir(self.path)
            cached, why = self._read(image_id)
            if cached is None:
                self._move_aside(image_id, why)
                raise exception.ImageUnpackError(image_id=image_id,
                                                 reason=why)
        LOG.info('Image %s cached from another host\'s cache', image_id)
        return cached

    def _populate(self, image_id, fetch, disk_format, root_partition,
                  stream):
        entry = self._entry(image_id)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        # The pid tells remove_partials whose unpack it is.
        partial = tempfile.mkdtemp(
            prefix='%s%s-%d-' % (_PARTIAL, image_id, os.getpid()),
            dir=self.path)
        try:
            archive = os.path.join(partial, diskimage.FETCHED_FILE)
            rootfs = os.path.join(partial, 'rootfs')
            os.mkdir(rootfs)
            chunks = stream() if stream is not None else None
            try:
                if chunks is not None:
                    size = self._unpack_stream(image_id, chunks, archive,
                                               partial, rootfs, disk_format,
                                               root_partition)
                else:
                    fetch(archive)
                    size = self._unpack(archive, partial, rootfs,
                                        disk_format, root_partition)
            except (exception.ArchiveError, exception.UnsafeArchiveMember,
                    exception.DiskImageRefused) as e:
                raise exception.ImageUnpackError(image_id=image_id,
                                                 reason=str(e))
            if os.path.exists(archive):
                os.unlink(archive)
            init_system = detect_init(rootfs)
            if init_system is None:
                raise exception.ImageUnpackError(
                    image_id=image_id,
                    reason='no /sbin/init in the image: not a root '
                           'filesystem')
            # The files reach the disk before the marker says they are
            # there: one syncfs(2) rather than an fsync(2) per file.
            disks.sync_filesystem(partial)
            durable.write(os.path.join(partial, _MARKER),
                          json.dumps({'init_system': init_system,
                                      'size': size}), mode=0o644)
            os.rename(partial, entry)
        except BaseException:
            with excutils.save_and_reraise_exception():
                self._discard(partial)
        # The rename, too (rename(2) is durable once its directory is).
        durable.fsync_dir(self.path)
        LOG.info('Image %s cached: %d bytes, %s init', image_id, size,
                 init_system)
        return CachedImage(image_id, os.path.join(entry, 'rootfs'),
                           init_system, size)

    def _unpack_stream(self, image_id, chunks, archive, partial, rootfs,
                       disk_format, root_partition):
        """Unpack a download as it arrives; the bytes of its files.

        A tarball goes straight into rootfs; anything else is written to
        archive and goes through _unpack (disk images are read at random).
        The download is read to its end either way: that is where
        glanceclient compares it with Glance's hash.

        :raises: what the download raised (IOError: it did not match
            Glance's hash), or as _unpack.
        """
        reader = download.ChunkReader(chunks)
        with io.BufferedReader(reader, _STREAM_BUFFER_BYTES) as source:
            head = source.read(diskimage.CLASSIFY_PEEK_BYTES)
            kind = diskimage.classify(head)
            if kind == diskimage.ARCHIVE:
                if disk_format not in (None, 'raw'):
                    diskimage.check_format(kind, disk_format)
                try:
                    size = self._unpack_confined(source, rootfs, head)
                except (exception.ArchiveError,
                        exception.UnsafeArchiveMember):
                    # A failed download is not a bad image.
                    if reader.error is not None:
                        raise reader.error
                    raise
                reader.drain()
                LOG.info('Image %s unpacked as it downloaded (%d bytes)',
                         image_id, reader.read_bytes)
                return size
            with open(archive, 'wb') as f:
                f.write(head)
                shutil.copyfileobj(source, f, _STREAM_BUFFER_BYTES)
            reader.drain()
        return self._unpack(archive, partial, rootfs, disk_format,
                            root_partition)

    def _unpack(self, archive, partial, rootfs, disk_format,
                root_partition):
        """Unpack the fetched image into rootfs; the bytes of its files.

        :raises ArchiveError, UnsafeArchiveMember: a bad tarball.
        :raises DiskImageRefused: a bad disk image, or content that is
            not what disk_format says.
        """
        kind = diskimage.classify_file(archive)
        if kind in (diskimage.QCOW2, diskimage.DISK):
            if not self._disk_images:
                raise exception.DiskImageRefused(
                    reason='this host boots root filesystem tarballs only '
                           '([lxc] disk_images = false)')
            return diskimage.unpack(
                archive, kind, disk_format, partial, rootfs, self._max_bytes,
                lambda root: detect_init(root) is not None, root_partition)
        if disk_format not in (None, 'raw'):
            diskimage.check_format(kind, disk_format)
        with open(archive, 'rb') as source:
            return self._unpack_confined(source, rootfs)

    def _unpack_confined(self, source, rootfs, head=b''):
        """Unpack the tarball head + source into rootfs, confined.

        By the storage_admin daemon's child, in a user namespace of no
        one's ids (privsep.unpack), fed through a FIFO in the spool: no
        tarball is parsed as host root. The FIFO is open at both ends
        before the child starts (so it never sees an early end) and goes
        from the spool at once.

        :returns: the bytes of file data unpacked.
        :raises ArchiveError, UnsafeArchiveMember: the tarball is refused.
        :raises: what reading source raised (the download failed).
        """
        os.makedirs(self._spool, mode=0o700, exist_ok=True)
        fifo = os.path.join(self._spool, 'unpack-%d-%s.fifo'
                            % (os.getpid(), uuid.uuid4().hex))
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
            try:
                unpack.start_unpack(rootfs, fifo, self._max_bytes)
            except BaseException:
                os.close(fd)
                raise
        finally:
            os.unlink(fifo)
        try:
            try:
                _feed(fd, head, source)
            finally:
                os.close(fd)
        except BaseException:
            with excutils.save_and_reraise_exception():
                try:
                    unpack.cancel_unpack(rootfs)
                except Exception as e:
                    LOG.warning('Cannot stop the unpacker of %s: %s',
                                rootfs, e)
        return unpack.finish_unpack(rootfs, UNPACK_FINISH_TIMEOUT)

    @staticmethod
    def _discard(partial):
        """Remove a failed unpack's partial.

        It is kept while it has a mount (remove_partials retries).
        """
        try:
            _release(partial)
        except exception.MountFailed as e:
            LOG.error('%s is kept: %s', partial, e)
            return
        shutil.rmtree(partial, ignore_errors=True)

    def remove_partials(self):
        """Delete crash leftovers and entries moved aside as damaged.

        Partial unpacks of live processes are kept, and so is anything a
        mount still shows (see ``_mounted``): a tree is never deleted
        through a mount.

        :returns: the number of directories removed.
        """
        removed = 0
        if not os.path.isdir(self.path):
            return removed
        for name in os.listdir(self.path):
            if name.startswith(_PARTIAL):
                # .partial-<uuid>-<pid>-<random>; a uuid has 4 dashes.
                fields = name[len(_PARTIAL):].split('-')
                if len(fields) > 5 and fields[5].isdigit() and \
                        host.process_alive(int(fields[5])):
                    continue
                try:
                    # A disk image's mount and loop devices (diskimage).
                    _release(os.path.join(self.path, name))
                except exception.MountFailed as e:
                    LOG.warning('%s is not deleted: %s', name, e)
                    continue
            elif not name.startswith(_CORRUPT):
                continue
            path = os.path.join(self.path, name)
            if _mounted(path):
                LOG.warning('%s is not deleted: a mount still shows it', path)
                continue
            shutil.rmtree(path, ignore_errors=True)
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


def _mounted(path):
    """Whether a mount is at or below path, or shows a directory of it.

    A container's lower layer is an idmapped bind of <entry>/rootfs: it is
    mounted elsewhere, but its root (mountinfo field 4, mount.roots) names
    the entry, under its current name; deleting the entry would delete
    files a running container sees. Roots are relative to their
    filesystem's root, so they are matched by path component (path's last
    one, a unique name here): a false match only keeps a tree.
    """
    top = os.path.abspath(path)
    if any(p == top or p.startswith(top + '/') for p in mount.mountpoints()):
        return True
    part = '/%s/' % os.path.basename(top)
    return any(part in root + '/' for root in mount.roots())


def resolve_in_root(root, path, max_links=40):
    """Resolve path as the container would see it, without leaving root.

    Symlinks are followed with root as '/', so an absolute or climbing link
    cannot lead outside (path_resolution(7) inside a chroot).

    :returns: the host path inside root, or None when it does not exist.
    """
    parts = [p for p in path.split('/') if p]
    resolved = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == '.':
            continue
        if part == '..':
            if resolved:
                resolved.pop()
            continue
        host = os.path.join(root, *resolved, part)
        if os.path.islink(host):
            links += 1
            if links > max_links:
                return None
            target = os.readlink(host)
            if target.startswith('/'):
                resolved = []
            parts = [p for p in target.split('/') if p] + parts
            continue
        if not os.path.lexists(host):
            return None
        resolved.append(part)
    return os.path.join(root, *resolved)


def detect_init(rootfs):
    """Which init /sbin/init of rootfs is: a key of spec.INIT_SIGNALS.

    :returns: 'systemd', 'busybox', 'sysvinit', or None when there is no
        executable /sbin/init.
    """
    init = resolve_in_root(rootfs, '/sbin/init')
    if init is None or not os.path.isfile(init):
        return None
    if not os.stat(init).st_mode & 0o111:
        return None
    base = os.path.basename(init)
    if 'systemd' in base:
        return 'systemd'
    if 'busybox' in base:
        return 'busybox'
    return 'sysvinit'
