"""The image cache's directories: made, published, removed (storage_admin).

The cache (images.py) lives in ``<driver root>/images``, root's 0700: it
holds every image a host user must not read (a tenant's private image)
and trees a mount shows to running containers (an entry's rootfs is
their lower layer). So nova-compute never writes or deletes there
itself: it asks this daemon, by the entry's or partial's path, and
keeps the order of the steps and the per-image lock (images.py).

The names, and what each entry point takes::

    images/<image id>                       an entry: read_entry, retire,
                                            move_aside
    images/.partial-<image id>-<pid>-<x>    an unpack in progress (or a
                                            crash's): make_partial makes
                                            it, publish renames it to its
                                            entry, remove deletes it
    images/.corrupt-<image id>-<pid>-<x>    an entry found damaged:
                                            remove deletes it

An image id is a UUID in its canonical form (lowercase, with dashes),
since it becomes a path component; the pid is this daemon's, which lives
exactly as long as its nova-compute (oslo.privsep: the daemon exits when
its client goes), so images.remove_partials keeps a live process's
partials by it.

What is checked before anything is done, besides the names: paths are
below a driver root without symlinks (storage.check_path); a partial is
a directory of root's, 0700; nothing is renamed or deleted while a mount
shows it (``_mounted``: a container's lower layer is a bind of an
entry's rootfs, so deleting the entry would delete files a running
container sees); a tree is deleted with shutil.rmtree, which does not
follow its symlinks.

A disk image reaches the cache through this daemon too: nova-compute
writes it into a FIFO of its spool (``<driver root>/spool/archive-<pid>-
<hex>.fifo``), which start_receive opens and a thread of the daemon
copies, unparsed, into ``<partial>/archive`` (finish_receive,
cancel_receive); unpack_disk_image then runs diskimage.unpack here on
it, and removes the work files (``archive``, ``disk.raw``, ``mnt``)
once the root's files are copied. A tarball goes to the confined
unpacker instead (privsep.unpack).

An entry is published whole or not at all: its files and its marker reach
the disk (one syncfs(2) after the marker is written) before the rename,
and the rename is made durable (fsync(2) of ``images``), so a power loss
leaves either no entry or a whole one (a marked partial is still a
partial).
"""

import errno
import json
import os
import re
import select
import shutil
import stat
import tempfile
import threading
import uuid

from novalxcdriver import conf
from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import initsystem
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import disks
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import storage

CONF = conf.CONF

IMAGES = 'images'
MARKER = 'image.json'
ROOTFS = 'rootfs'
# A disk image as received (start_receive), and its conversion to raw
# and the partition's mount point (diskimage.py): work files, never
# published.
ARCHIVE = 'archive'
RAW = 'disk.raw'
PARTITION = 'mnt'
# Where a receive's FIFO must be (storage.open_spool_fifo).
SPOOL = storage.SPOOL
RECEIVE_FIFO_RE = re.compile(r'^archive-[0-9]+-[0-9a-f]{1,64}\.fifo\Z')
# Kinds of disk image (diskimage.classify), and the disk_format Glance
# may give them.
DISK_KINDS = ('qcow2', 'disk')
DISK_FORMATS = (None, 'raw', 'qcow2')
_RECEIVE_BYTES = 1 << 20
# The longest finish_receive waits (seconds): far above any caller's, and
# below what threading's join takes (threading.TIMEOUT_MAX).
MAX_RECEIVE_TIMEOUT = 24 * 3600
PARTIAL = '.partial-'
CORRUPT = '.corrupt-'
UUID_PATTERN = (r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-'
                r'[0-9a-f]{12}')
# What follows the image id in a partial's or a moved-aside entry's name:
# the pid, then mkdtemp's suffix or a random hex.
SUFFIX_PATTERN = r'-[0-9]+-[A-Za-z0-9_]{1,64}'
ENTRY_RE = re.compile(r'^images/%s\Z' % UUID_PATTERN)
PARTIAL_RE = re.compile(r'^images/\.partial-%s%s\Z'
                        % (UUID_PATTERN, SUFFIX_PATTERN))
CORRUPT_RE = re.compile(r'^images/\.corrupt-%s%s\Z'
                        % (UUID_PATTERN, SUFFIX_PATTERN))
_REMOVABLE_RE = re.compile('(?:%s)|(?:%s)' % (PARTIAL_RE.pattern,
                                              CORRUPT_RE.pattern))
_UUID_RE = re.compile(r'^%s\Z' % UUID_PATTERN)
# A marker is a small JSON object; more is not read.
_MARKER_MAX = 64 * 1024
# Errors reading a marker that tell of a damaged entry; others (EMFILE,
# ENOMEM, ...) are the host's and propagate. EUCLEAN: ext4's and xfs's
# "filesystem corrupted". ELOOP: the marker is a symlink; ENXIO: a socket.
_DAMAGED = frozenset([errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EIO,
                      errno.EUCLEAN, errno.ELOOP, errno.ENXIO])


def check_named(call, path, pattern, what):
    """Refuse path unless, relative to a driver root, it matches pattern.

    :param what: what it should be, for the refusal.
    """
    storage.check_path(call, path)
    for root in privsep.driver_roots():
        if path.startswith(root.rstrip('/') + '/') and \
                pattern.match(os.path.relpath(path, root)):
            return
    privsep.refuse(call, '%s is not %s' % (path, what))


def check_images_dir(call, path):
    """Refuse path unless it is ``<driver root>/images``."""
    storage.check_path(call, path)
    if os.path.basename(path) != IMAGES or \
            os.path.dirname(path) not in privsep.driver_roots():
        privsep.refuse(call, '%s is not a driver root\'s image cache '
                       '(<driver root>/%s)' % (path, IMAGES))


def check_entry(call, entry):
    """Refuse entry unless it is ``<driver root>/images/<image id>``."""
    check_named(call, entry, ENTRY_RE,
                'an image cache entry (<driver root>/images/<image id>)')


def check_partial(call, partial):
    """Refuse partial unless it is an existing partial, root's 0700.

    ``<driver root>/images/.partial-<image id>-<pid>-<x>``.
    """
    check_named(call, partial, PARTIAL_RE, 'an image cache partial '
                '(<driver root>/images/.partial-<image id>-<pid>-<x>)')
    try:
        st = os.lstat(partial)
    except FileNotFoundError:
        privsep.refuse(call, '%s does not exist' % partial)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or \
            st.st_mode & 0o077:
        privsep.refuse(call, '%s is not a directory of root\'s, 0700'
                       % partial)


def check_image_id(call, image_id):
    """Refuse image_id unless it is a UUID in canonical form."""
    if not isinstance(image_id, str) or not _UUID_RE.match(image_id):
        privsep.refuse(call, '%r is not an image id (a UUID, lowercase, '
                       'with dashes)' % (image_id,))


def parse_marker(data):
    """An entry's marker, checked: (meta, None) or (None, why).

    :param data: the marker's bytes.
    :returns: ({'init_system': str, 'size': int >= 0}, None), or
        (None, str saying what is wrong with it).
    """
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as e:
        # Empty or torn (written without fsync before a power loss), not
        # UTF-8, or nested deeper than the parser goes.
        return None, '%s is not JSON: %s' % (MARKER, e)
    if not (isinstance(meta, dict) and
            isinstance(meta.get('init_system'), str) and
            type(meta.get('size')) is int and meta['size'] >= 0):
        return None, ('%s lacks init_system (str) or size (int): %.200r'
                      % (MARKER, meta))
    return {'init_system': meta['init_system'], 'size': meta['size']}, None


def _read_marker(directory):
    """(meta, why) of the marker in directory, as parse_marker.

    :raises OSError: the host's errors (not _DAMAGED ones).
    """
    try:
        fd = os.open(os.path.join(directory, MARKER),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC |
                     os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, '%s is not a regular file' % MARKER
            with os.fdopen(fd, 'rb', closefd=False) as f:
                data = f.read(_MARKER_MAX + 1)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno not in _DAMAGED:
            raise
        return None, 'cannot read %s: %s' % (MARKER, e.strerror)
    if len(data) > _MARKER_MAX:
        return None, '%s is larger than %d bytes' % (MARKER, _MARKER_MAX)
    return parse_marker(data)


def _has_rootfs(directory):
    try:
        st = os.lstat(os.path.join(directory, ROOTFS))
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode)


def _mounted(path):
    """Whether a mount is at or below path, or shows a directory of it.

    A container's lower layer is an idmapped bind of <entry>/rootfs: it
    is mounted elsewhere, but its root (mountinfo field 4, mount.roots)
    names the entry, under its current name. Roots are relative to their
    filesystem's root, so they are matched by path component (path's
    last one, a unique name here): a false match only keeps a tree.
    """
    if mount.below(path, mount.mountpoints()):
        return True
    part = '/%s/' % os.path.basename(path)
    return any(part in root + '/' for root in mount.roots())


@privsep.storage_admin.entrypoint
def read_entry(entry, stamp=False):
    """Read an entry without changing it (but its mtime, if stamp).

    :param entry: ``<driver root>/images/<image id>`` (check_entry).
    :param stamp: set the entry's mtime to now first (a use: prune
        keeps entries used lately); nothing happens if it is missing.
    :returns: (meta, damage, mtime): meta is {'init_system': str,
        'size': int} of a whole entry, else None; damage is None, or
        a str saying what is wrong with an entry that exists but is
        damaged (a torn, missing or not-JSON marker, missing keys, no
        rootfs directory); mtime is the entry's, in seconds since the
        epoch (float), or None when there is no entry.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises OSError: the host's errors (EMFILE, ENOMEM, ...).
    """
    call = 'read_entry'
    check_entry(call, entry)
    if stamp:
        try:
            os.utime(entry, follow_symlinks=False)
        except FileNotFoundError:
            pass
    try:
        st = os.lstat(entry)
    except FileNotFoundError:
        return None, None, None
    if not stat.S_ISDIR(st.st_mode):
        return None, 'not a directory', st.st_mtime
    meta, damage = _read_marker(entry)
    if damage is None and not _has_rootfs(entry):
        meta, damage = None, 'no rootfs directory'
    return meta, damage, st.st_mtime


@privsep.storage_admin.entrypoint
def list_names(images):
    """The names in an image cache (sorted list of str; [] if none).

    :param images: ``<driver root>/images`` (check_images_dir).
    :raises PrivilegedCallRefused: the checks (module docstring).
    """
    check_images_dir('list_names', images)
    try:
        return sorted(os.listdir(images))
    except FileNotFoundError:
        return []


@privsep.storage_admin.entrypoint
def make_partial(images, image_id):
    """Make a new partial for image_id, with an empty rootfs in it.

    The image cache is made too if missing (root's, 0700).

    :param images: ``<driver root>/images`` (check_images_dir).
    :param image_id: the image's UUID, canonical (check_image_id).
    :returns: the partial's path
        (``<images>/.partial-<image id>-<this daemon's pid>-<x>``, root's
        0700); its ``rootfs`` is root's 0755.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises OSError: nothing was made (ENOSPC).
    """
    call = 'make_partial'
    check_images_dir(call, images)
    check_image_id(call, image_id)
    os.umask(lxctools.UMASK)
    os.makedirs(images, mode=0o700, exist_ok=True)
    partial = tempfile.mkdtemp(
        prefix='%s%s-%d-' % (PARTIAL, image_id, os.getpid()), dir=images)
    try:
        os.mkdir(os.path.join(partial, ROOTFS), 0o755)
    except BaseException:
        os.rmdir(partial)
        raise
    return partial


def _image_id(partial):
    return os.path.basename(partial)[len(PARTIAL):][:36]


@privsep.storage_admin.entrypoint
def publish(partial, size):
    """Make a partial its image's entry: marker, then rename, durably.

    The rootfs must hold an executable /sbin/init (initsystem.detect_init,
    run here on the unpacked tree). Its files and the marker are synced
    (syncfs(2)) before the rename (module docstring).

    :param partial: a partial (check_partial) with nothing mounted in
        it, holding the unpacked ``rootfs``.
    :param size: bytes of file data in the rootfs (int >= 0), for the
        marker (which replaces any file of its name in the partial).
    :returns: the init system (a key of spec.INIT_SIGNALS).
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises ImageUnpackError: no init; nothing was published.
    :raises OSError: the entry exists already (EEXIST), a work file
        cannot be removed (``mnt`` not empty: ENOTEMPTY), or the disk is
        full; nothing was published.
    """
    call = 'publish'
    check_partial(call, partial)
    if type(size) is not int or size < 0:
        privsep.refuse(call, 'size %r is not an int >= 0' % (size,))
    left = mount.below(partial, mount.mountpoints())
    if left:
        privsep.refuse(call, '%s still has mounts: %s'
                       % (partial, ', '.join(sorted(set(left)))))
    _refuse_while_receiving(call, partial)
    # An entry holds its rootfs and marker only (a disk image's work files
    # are gone once it is copied; a crash may have left them).
    _remove_work_files(partial)
    image_id = _image_id(partial)
    rootfs = os.path.join(partial, ROOTFS)
    if not _has_rootfs(partial):
        raise exception.ImageUnpackError(image_id=image_id,
                                         reason='no rootfs directory')
    init_system = initsystem.detect_init(rootfs)
    if init_system is None:
        raise exception.ImageUnpackError(
            image_id=image_id,
            reason='no /sbin/init in the image: not a root filesystem')
    os.umask(lxctools.UMASK)
    # Synced with the files below: one journal commit, not three.
    marker = os.path.join(partial, MARKER)
    durable.write(marker, json.dumps({'init_system': init_system,
                                      'size': size}),
                  mode=0o644, sync=False)
    try:
        disks.sync_filesystem(partial)
    except BaseException:
        # As it was: a failed publish changes nothing.
        os.unlink(marker)
        raise
    images = os.path.dirname(partial)
    entry = os.path.join(images, image_id)
    # rename(2) would replace an empty directory there: never an entry.
    if os.path.lexists(entry):
        raise OSError(errno.EEXIST, 'the image\'s entry exists', entry)
    os.rename(partial, entry)
    # The rename, too (rename(2) is durable once its directory is).
    durable.fsync_dir(images)
    return init_system


def _rename_out(entry, prefix):
    aside = os.path.join(os.path.dirname(entry), '%s%s-%d-%s' % (
        prefix, os.path.basename(entry), os.getpid(), uuid.uuid4().hex[:16]))
    os.rename(entry, aside)
    return aside


@privsep.storage_admin.entrypoint
def move_aside(entry):
    """Rename a damaged entry to a name the cache never reads.

    One rename, to a new unique name (``.corrupt-<image id>-<pid>-<x>``):
    the fresh entry a get makes next cannot collide with it, and
    images.remove_partials deletes it once no mount shows it. Containers
    whose lower layer was mounted from it keep that mount, which follows
    the directory, not its name.

    :param entry: ``<driver root>/images/<image id>`` (check_entry).
    :returns: the new path.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises OSError: the rename failed (ENOENT: no entry).
    """
    check_entry('move_aside', entry)
    return _rename_out(entry, CORRUPT)


@privsep.storage_admin.entrypoint
def retire(entry):
    """Take an entry out of the cache's name space, for remove.

    One rename, to a partial's name of this daemon's pid
    (``.partial-<image id>-<pid>-<x>``): a crash before the remove
    leaves a partial that images.remove_partials deletes.

    :param entry: ``<driver root>/images/<image id>`` (check_entry).
    :returns: the new path, or None when a mount still shows the entry
        (it is kept: a container's lower layer, whatever Nova says).
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises OSError: the rename failed (ENOENT: no entry).
    """
    check_entry('retire', entry)
    if _mounted(entry):
        return None
    return _rename_out(entry, PARTIAL)


@privsep.storage_admin.entrypoint
def remove(path):
    """Delete a partial or a moved-aside entry, and all it holds.

    Whose it is (a live process's partial) is the caller's to decide;
    what is checked here is that it is no entry and that no mount shows
    it: a tree is never deleted through a mount.

    :param path: ``<driver root>/images/.partial-...`` or
        ``.corrupt-...`` (module docstring).
    :returns: True if it is gone (or was), False if a mount shows it
        (nothing was deleted).
    :raises PrivilegedCallRefused: the checks (module docstring).
    """
    check_named('remove', path, _REMOVABLE_RE, 'an image cache partial or '
                'a damaged entry moved aside (<driver root>/images/'
                '.partial-* or .corrupt-*)')
    if _mounted(path):
        return False
    if not os.path.lexists(path):
        return True
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return True
    shutil.rmtree(path)
    return True


# -- a disk image, received and unpacked here -------------------------------

class _Receive:
    """One disk image being written from a spool FIFO into its partial."""

    def __init__(self, fifo_fd, out_fd, max_bytes):
        self.fifo_fd = fifo_fd
        self.out_fd = out_fd
        self.max_bytes = max_bytes
        self.written = 0
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            while not self.stop.is_set():
                # A timeout so that cancel and finish's timeout are seen.
                ready, _, _ = select.select([self.fifo_fd], [], [], 1.0)
                if not ready:
                    continue
                data = os.read(self.fifo_fd, _RECEIVE_BYTES)
                if not data:
                    return
                self.written += len(data)
                if self.written > self.max_bytes:
                    self.error = exception.DiskImageRefused(
                        reason='it is larger than %d bytes ([lxc] '
                               'image_max_unpacked_gib)' % self.max_bytes)
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(self.out_fd, view):]
        except OSError as e:
            self.error = e
        finally:
            os.close(self.fifo_fd)
            os.close(self.out_fd)


_receiving = {}
_receiving_lock = threading.Lock()


def _refuse_while_receiving(call, partial):
    with _receiving_lock:
        if partial in _receiving:
            privsep.refuse(call, 'a receive into %s is running' % partial)


@privsep.storage_admin.entrypoint
def start_receive(partial, fifo, max_bytes):
    """Start writing a disk image from a spool FIFO into a partial.

    nova-compute cannot write in the cache (module docstring): it makes
    a FIFO in its spool (``<driver root>/spool/archive-<pid>-<hex>.fifo``),
    opens it for writing, calls this, writes the image into it and
    closes it, then calls finish_receive. A thread of this daemon copies
    the bytes, unparsed, into ``<partial>/archive`` (made here: root's
    0600, never through a link).

    :param partial: a partial (check_partial) without an archive.
    :param fifo: the FIFO (storage.open_spool_fifo's checks).
    :param max_bytes: the largest image accepted (positive int); more
        fails finish_receive.
    :raises PrivilegedCallRefused: the checks (module docstring), or a
        receive into partial is running.
    """
    call = 'start_receive'
    check_partial(call, partial)
    privsep.check_positive_ints(call, max_bytes=max_bytes)
    with _receiving_lock:
        if partial in _receiving:
            privsep.refuse(call, 'a receive into %s is running' % partial)
        fifo_fd = storage.open_spool_fifo(call, fifo, RECEIVE_FIFO_RE,
                                          'a receive FIFO', write=False)
        try:
            out_fd = os.open(os.path.join(partial, ARCHIVE),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                             os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            os.close(fifo_fd)
            privsep.refuse(call, '%s holds an archive already' % partial)
        except BaseException:
            os.close(fifo_fd)
            raise
        receive = _Receive(fifo_fd, out_fd, max_bytes)
        try:
            receive.thread.start()
        except BaseException:
            # No thread (the daemon's pids limit): nothing runs, nothing
            # is registered.
            os.close(fifo_fd)
            os.close(out_fd)
            raise
        _receiving[partial] = receive


def _held_receive(call, partial):
    check_partial(call, partial)
    with _receiving_lock:
        receive = _receiving.pop(partial, None)
    if receive is None:
        privsep.refuse(call, 'no receive into %s is running' % partial)
    return receive


@privsep.storage_admin.entrypoint
def finish_receive(partial, timeout):
    """Wait for start_receive's copy to reach the FIFO's end.

    :param timeout: seconds to wait once nova-compute closed the FIFO
        (positive int, at most MAX_RECEIVE_TIMEOUT): the copy is at most
        a pipe's buffer behind.
    :returns: the bytes received.
    :raises PrivilegedCallRefused: the checks, or no receive is running.
    :raises DiskImageRefused: it is larger than max_bytes.
    :raises OSError: the copy failed (ENOSPC), or did not end in time
        (ETIMEDOUT).
    """
    call = 'finish_receive'
    privsep.check_positive_ints(call, timeout=timeout)
    if timeout > MAX_RECEIVE_TIMEOUT:
        privsep.refuse(call, 'timeout %d is above %d s'
                       % (timeout, MAX_RECEIVE_TIMEOUT))
    receive = _held_receive(call, partial)
    receive.thread.join(timeout)
    if receive.thread.is_alive():
        receive.stop.set()
        receive.thread.join()
        raise OSError(errno.ETIMEDOUT, 'the image did not reach its end '
                      'within %d s' % timeout, partial)
    if receive.error is not None:
        raise receive.error
    return receive.written


@privsep.storage_admin.entrypoint
def cancel_receive(partial):
    """Stop start_receive's copy (the download failed); what it wrote stays.

    :raises PrivilegedCallRefused: the checks, or no receive is running.
    """
    receive = _held_receive('cancel_receive', partial)
    receive.stop.set()
    receive.thread.join()


@privsep.storage_admin.entrypoint
def unpack_disk_image(partial, kind, disk_format, max_bytes,
                      root_partition):
    """Unpack the disk image received in a partial into its rootfs.

    diskimage.unpack, here: the image's format checks, qemu-img (as a
    helper id, privsep.qemuimg), the partition table, the read-only
    mounts of its partitions, the init on each (initsystem.detect_init)
    and the root's copy by the confined child (privsep.unpack). The work
    files (``archive``, ``disk.raw``, ``mnt``) are removed once it is
    copied.

    :param partial: a partial (check_partial) holding a received
        ``archive`` (no receive running) and an empty ``rootfs``.
    :param kind: 'qcow2' or 'disk' (diskimage.classify of its head).
    :param disk_format: Glance's disk_format: None, 'raw' or 'qcow2'.
    :param max_bytes: largest virtual size and file data total (positive
        int).
    :param root_partition: the image's novalxc_root_partition property
        (str), or None to find the root.
    :returns: bytes of file data copied.
    :raises PrivilegedCallRefused: the checks, or ``[lxc] disk_images``
        is false in this daemon's configuration.
    :raises DiskImageRefused: the image is refused (diskimage.py).
    :raises CommandFailed, CommandTimedOut, LoopFailed, MountFailed,
        MountBusy: as diskimage.unpack.
    """
    # Here, not at the top: diskimage's privsep modules import this one.
    from novalxcdriver import diskimage

    call = 'unpack_disk_image'
    check_partial(call, partial)
    if not CONF.lxc.disk_images:
        privsep.refuse(call, 'this host boots root filesystem tarballs '
                       'only ([lxc] disk_images = false)')
    if kind not in DISK_KINDS:
        privsep.refuse(call, '%r is not a kind of disk image %r'
                       % (kind, DISK_KINDS))
    if disk_format not in DISK_FORMATS:
        privsep.refuse(call, 'disk_format %r is not one of %r'
                       % (disk_format, DISK_FORMATS))
    privsep.check_positive_ints(call, max_bytes=max_bytes)
    if root_partition is not None and not isinstance(root_partition, str):
        privsep.refuse(call, 'root_partition %r is not a str or None'
                       % (root_partition,))
    _refuse_while_receiving(call, partial)
    archive = os.path.join(partial, ARCHIVE)
    try:
        st = os.lstat(archive)
    except FileNotFoundError:
        privsep.refuse(call, '%s does not exist' % archive)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_nlink != 1:
        privsep.refuse(call, '%s is not a regular file of root\'s with one '
                       'link' % archive)
    copied = diskimage.unpack(
        archive, kind, disk_format, partial,
        os.path.join(partial, ROOTFS), max_bytes,
        lambda root: initsystem.detect_init(root) is not None,
        root_partition)
    _remove_work_files(partial)
    return copied


def _remove_work_files(partial):
    """A disk image's work files: they are never published."""
    for name in (ARCHIVE, RAW):
        try:
            os.unlink(os.path.join(partial, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(os.path.join(partial, PARTITION))
    except FileNotFoundError:
        pass
