"""Privileged entry points for the driver's disks (``storage_admin``).

A disk is a sparse image file of a filesystem (disk.py): made by mkfs or
copied from a formatted template, grown, snapshotted (btrfs subvolumes)
and frozen (FIFREEZE) here, in the privsep daemon, since the images live
in root's directories and the ioctls need CAP_SYS_ADMIN or CAP_FOWNER.
The mkfs, e2fsck, resize2fs and btrfs tools run as the daemon's children:
root's, with the bounding set (execve(2)), so what bounds them is what is
checked before, in the daemon:

- every path is below a driver root (storage.check_path), and a disk
  image made here does not exist yet (O_EXCL): nothing of the host's, or
  of another container's, is formatted or truncated;
- a mount point acted on (grow online, subvolumes, freeze) is the mount
  of a loop device backed by a file below a driver root
  (check_disk_mount): freezing or snapshotting the host's own
  filesystem is refused;
- sizes are whole GiB in 1..MAX_DISK_GB, filesystems from FILESYSTEMS,
  a subvolume's name one path component;
- a layer is copied only to a path that does not exist yet.

Every entry point that makes a file sets the umask first: oslo.privsep's
daemon runs with umask 0.

A disk's filesystem is read from its superblock here too
(image_filesystem), for the same reason.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import stat
import struct
import tempfile

from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import units

from novalxcdriver import command
from novalxcdriver import exception
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import storage

LOG = logging.getLogger(__name__)
_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
_libc.syncfs.argtypes = (ctypes.c_int,)

FILESYSTEMS = storage.FILESYSTEMS
# GiB; Nova's flavors are far below, this only refuses absurd numbers.
MAX_DISK_GB = 1 << 20
BTRFS_TEMP_FSID = '/sys/fs/btrfs/features/temp_fsid'
# ioctl numbers, _IOW/_IOWR as the kernel computes them: btrfs's from
# include/uapi/linux/btrfs.h (struct btrfs_ioctl_vol_args_v2 and
# btrfs_ioctl_vol_args, 4096 bytes each), the freeze pair and FICLONE
# from include/uapi/linux/fs.h.
_BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417   # _IOW(0x94, 23, vol_args_v2)
_BTRFS_IOC_SNAP_DESTROY = 0x5000940f     # _IOW(0x94, 15, vol_args)
_BTRFS_SUBVOL_RDONLY = 1 << 1
_FIFREEZE = 0xc0045877                   # _IOWR('X', 119, int)
_FITHAW = 0xc0045878                     # _IOWR('X', 120, int)
_FICLONE = 0x40049409                    # _IOW(0x94, 9, int)
# _template's temporary names (tempfile.mkstemp's suffix).
_TEMPLATE_LEFTOVER = re.compile(r'^\.(btrfs|ext4)-[0-9]+G\.img\.\w+$')
# A disk image holds a container's data: root's alone.
IMAGE_MODE = 0o600


# -- checks -------------------------------------------------------------

def _check_gb(call, size_gb):
    if type(size_gb) is not int or not 0 < size_gb <= MAX_DISK_GB:
        privsep.refuse(call, 'size %r is not a whole number of GiB in '
                       '1..%d' % (size_gb, MAX_DISK_GB))


def _check_fs(call, fs):
    if fs not in FILESYSTEMS:
        privsep.refuse(call, 'filesystem %r is not one of %s'
                       % (fs, ', '.join(FILESYSTEMS)))


def check_disk_mount(call, mountpoint):
    """Refuse mountpoint unless a driver disk's loop device is mounted there.

    :returns: the loop device, '/dev/loopN'.
    :raises LoopFailed: the device was detached meanwhile.
    """
    storage.check_path(call, mountpoint)
    device = mount.source(mountpoint)
    if device is None:
        privsep.refuse(call, '%s is not a mount point' % mountpoint)
    storage.check_loop_device(call, device)
    return device


def subvolume_name(name):
    """name as bytes, if it is one path component of at most 255 bytes.

    :raises ValueError: otherwise.
    """
    if not isinstance(name, str) or not name or '/' in name or \
            name in ('.', '..') or '\0' in name:
        raise ValueError('bad subvolume name %r' % (name,))
    encoded = os.fsencode(name)
    if len(encoded) > 255:
        raise ValueError('subvolume name too long: %r' % name)
    return encoded


def _check_subvolume_name(call, name):
    try:
        return subvolume_name(name)
    except ValueError as e:
        privsep.refuse(call, str(e))


# -- unprivileged helpers -------------------------------------------------

@privsep.storage_admin.entrypoint
def image_filesystem(path):
    """'btrfs' or 'ext4', from the superblock of the image file at path.

    In the daemon: images are root's alone (IMAGE_MODE).

    :raises PrivilegedCallRefused: path is not below a driver root.
    :raises DiskUnreadable: no known filesystem, or the file unreadable.
    """
    storage.check_path('image_filesystem', path)
    return storage.filesystem_of(path)


def from_template(fs):
    """Whether new fs disks are copies of a template (disk.py).

    btrfs gives a clone a temporary fsid from Linux 6.7 (temp_fsid in
    /sys/fs/btrfs/features; fs/btrfs/volumes.c), and before that would
    resolve it to the filesystem of that fsid already mounted.
    """
    return fs == 'btrfs' and os.path.exists(BTRFS_TEMP_FSID)


# -- making a disk --------------------------------------------------------

def _formatted(path, size_gb, fs, exclusive):
    """Make path a size_gb GiB sparse file holding an empty fs filesystem.

    :param exclusive: path must not exist (else FileExistsError).
    :raises CommandFailed: mkfs failed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    fd = os.open(path, flags, IMAGE_MODE)
    try:
        try:
            os.ftruncate(fd, size_gb * units.Gi)
        finally:
            os.close(fd)
        if fs == 'btrfs':
            command.execute('mkfs.btrfs', '-q', '-f', path)
        else:
            # -m 0: container root is no host root and could not use the
            # 5% reserved for uid 0.
            command.execute('mkfs.ext4', '-q', '-F', '-m', '0', '-E',
                            'lazy_itable_init=1,lazy_journal_init=1', path)
    except BaseException:
        # Only once opened here: what failed the open is not ours.
        with excutils.save_and_reraise_exception():
            os.unlink(path)


def _template(directory, fs, size_gb):
    """The path of the formatted fs template of size_gb GiB, made if new.

    Made under a unique temporary name and renamed into place once
    complete and synced, so a reader sees a whole template or none; two
    makers racing each rename a valid one.

    :raises CommandFailed: mkfs failed (nothing is left).
    """
    path = os.path.join(directory, '%s-%dG.img' % (fs, size_gb))
    if os.path.exists(path):
        return path
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.',
                               dir=directory)
    os.close(fd)
    try:
        _formatted(tmp, size_gb, fs, exclusive=False)
        # mkfs.btrfs writes zeros over the first and last MiBs (4.4 of
        # the 4.7 MiB it writes for 1 GiB): as holes, every disk copied
        # from the template is that much less to copy, write back and
        # keep. util-linux fallocate(1) punches only all-zero blocks.
        command.execute('fallocate', '--dig-holes', tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with excutils.save_and_reraise_exception():
            # A failed _formatted removed it already.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    LOG.info('Formatted the %s template of %d GiB disks: %s', fs, size_gb,
             path)
    return path


def _copy_sparse(source, dest):
    """Copy source to a new file dest: a reflink, else its data extents.

    Holes stay holes (SEEK_DATA/SEEK_HOLE, lseek(2)); the data moves in
    the kernel (copy_file_range(2)). A symlink at source is not followed:
    what it points to, outside the roots maybe, never goes into a disk.

    :raises FileExistsError: dest exists (it is left alone).
    :raises OSError: source is a symlink (ELOOP) or cannot be opened
        (dest is not made), or reading or writing failed (dest is
        removed).
    """
    # O_NONBLOCK: a FIFO planted there must not hold a daemon thread.
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                  os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise OSError(errno.EINVAL, 'not a regular file', source)
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                      os.O_NOFOLLOW | os.O_CLOEXEC, IMAGE_MODE)
        try:
            copy_fd_sparse(src, dst)
        except BaseException:
            # Only once made here: a file in the way is someone else's.
            with excutils.save_and_reraise_exception():
                os.unlink(dest)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def copy_fd_sparse(src, dst):
    """Copy open regular file src into the empty file dst, holes kept.

    A reflink (FICLONE, ioctl_ficlone(2)) if the filesystem shares
    extents between the two, else src's data extents (SEEK_DATA,
    SEEK_HOLE, lseek(2)) moved in the kernel (copy_file_range(2)).

    :raises OSError: reading or writing failed.
    """
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return
    except OSError:
        # No reflinks on this filesystem.
        pass
    size = os.fstat(src).st_size
    os.ftruncate(dst, size)
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                # Only a hole is left.
                break
            raise
        end = os.lseek(src, start, os.SEEK_HOLE)
        while start < end:
            copied = os.copy_file_range(src, dst, end - start, start, start)
            if not copied:
                # The file shrank under the copy.
                raise OSError(errno.EIO, 'the source ended early')
            start += copied
        offset = end


@privsep.storage_admin.entrypoint
def create_image(path, size_gb, fs, templates):
    """Make path a new sparse size_gb GiB image of an empty fs filesystem.

    A copy of the formatted template of that size and filesystem in
    templates when the kernel lets copies be mounted side by side
    (from_template), made there first if new; else formatted by mkfs.
    Mode IMAGE_MODE, root's.

    :param path: the image file; must not exist.
    :param size_gb: GiB, 1..MAX_DISK_GB.
    :param fs: one of FILESYSTEMS.
    :param templates: the templates' directory, or None to format.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises FileExistsError: path exists (it is left alone).
    :raises CommandFailed: mkfs failed (no image is left).
    :raises OSError: the copy failed (no image is left), or the template
        is a symlink (ELOOP).
    """
    call = 'create_image'
    storage.check_path(call, path)
    _check_gb(call, size_gb)
    _check_fs(call, fs)
    if templates is not None:
        storage.check_path(call, templates)
    os.umask(lxctools.UMASK)
    if templates is not None and from_template(fs):
        _copy_sparse(_template(templates, fs, size_gb), path)
        return
    _formatted(path, size_gb, fs, exclusive=True)


@privsep.storage_admin.entrypoint
def remove_template_leftovers(directory):
    """Delete templates a crash left half made (their temporary names).

    Call before this driver makes any disk (init_host): a template being
    made by a live process of the same state path would go too.

    :param directory: the templates' directory (below a driver root).
    :returns: the paths removed, a list of str.
    :raises PrivilegedCallRefused: directory is not below a driver root.
    """
    storage.check_path('remove_template_leftovers', directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if _TEMPLATE_LEFTOVER.match(name):
            path = os.path.join(directory, name)
            os.unlink(path)
            removed.append(path)
    return removed


# -- growing ----------------------------------------------------------------

@privsep.storage_admin.entrypoint
def grow(path, size_gb, mountpoint):
    """Grow the image at path and its filesystem to size_gb GiB.

    The file grows (sparse), then the filesystem takes it. Mounted
    (mountpoint given), online: the loop device learns its new capacity
    (LOOP_SET_CAPACITY), then ``btrfs filesystem resize max`` or
    resize2fs on the device; online ext4 growth needs CAP_SYS_RESOURCE
    (EXT4_IOC_RESIZE_FS, fs/ext4/ioctl.c), which a host's root may lack.
    Unmounted (mountpoint None), ext4 only: ``e2fsck -f -p`` then
    resize2fs on the image, as Nova grows an image
    (nova.virt.disk.api.resize2fs).

    :param size_gb: GiB, 1..MAX_DISK_GB.
    :param mountpoint: where the image is mounted, or None.
    :returns: False if the image was that large already (left as is),
        else True.
    :raises PrivilegedCallRefused: the checks (module docstring), or
        mountpoint is not a mount of this image.
    :raises DiskUnreadable: an unmounted btrfs disk (btrfs grows only
        mounted), or no known filesystem.
    :raises CommandFailed: a tool failed; the file may be larger, the
        filesystem as it was.
    :raises LoopFailed: the loop device did not take the new size.
    """
    call = 'grow'
    storage.check_path(call, path)
    _check_gb(call, size_gb)
    device = None
    if mountpoint is not None:
        device = check_disk_mount(call, mountpoint)
        if storage.backing_file(device) != os.path.realpath(path):
            privsep.refuse(call, '%s is not mounted on %s'
                           % (path, mountpoint))
    size = size_gb * units.Gi
    if os.path.getsize(path) >= size:
        return False
    fs = storage.filesystem_of(path)
    if device is None and fs != 'ext4':
        raise exception.DiskUnreadable(
            path=path, reason='a %s disk grows only mounted' % fs)
    os.truncate(path, size)
    if device is None:
        # -p fixes only what is safe without asking; exit code 1 means it
        # did.
        command.execute('e2fsck', '-f', '-p', path, check_exit_code=[0, 1])
        command.execute('resize2fs', path)
    else:
        storage.loop_set_capacity(device)
        if fs == 'btrfs':
            command.execute('btrfs', 'filesystem', 'resize', 'max',
                            mountpoint)
        else:
            command.execute('resize2fs', device)
    return True


# -- a point in time: syncs, copies, subvolumes, freezing --------------------

@privsep.storage_admin.entrypoint
def sync_filesystem(path):
    """syncfs(2) the filesystem holding path: its written data to disk.

    One call instead of an fsync per file (an unpacked image, a disk).
    Here rather than in nova-compute because it needs path opened, and
    the driver's directories are root's.

    :param path: below a driver root (storage.check_path).
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises OSError: the open or the call failed.
    """
    storage.check_path('sync_filesystem', path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


@privsep.storage_admin.entrypoint
def copy_layer(source, dest):
    """Copy the directory tree source to dest, which must not exist.

    ``cp -a --reflink=auto`` (coreutils cp(1)): owners, modes, times,
    xattrs (overlayfs' opaque markers) and device nodes (its whiteouts)
    are kept, which needs root; extents are shared where the filesystem
    can. For a snapshot of an overlay's upper layer kept still
    meanwhile (snapshot.py).

    :param source, dest: below a driver root (storage.check_path).
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises FileExistsError: dest exists (cp would copy into it).
    :raises CommandFailed, CommandTimedOut: cp failed (dest may be
        partial: the caller removes its stage).
    """
    call = 'copy_layer'
    storage.check_path(call, source)
    storage.check_path(call, dest)
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dest)
    os.umask(lxctools.UMASK)
    # -T: dest itself is the copy, never a directory to copy into.
    command.execute('cp', '-a', '--reflink=auto', '-T', '--', source, dest)


def _dir_fd(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                   os.O_CLOEXEC)


@privsep.storage_admin.entrypoint
def snapshot_subvolume(mountpoint, name):
    """Make a read-only btrfs snapshot of the disk at mountpoint, as name.

    Atomic and O(1) whatever the data (BTRFS_IOC_SNAP_CREATE_V2 with
    BTRFS_SUBVOL_RDONLY); the disk's top directory is subvolume 5. Data
    still in the page cache may be missing from it (seen here under
    heavy writeback): call sync_filesystem on it first.

    :param mountpoint: a driver disk's mount point (check_disk_mount).
    :param name: one path component; the snapshot is mountpoint/name.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises OSError: the ioctl failed (ENOTTY: not btrfs; EEXIST).
    """
    call = 'snapshot_subvolume'
    check_disk_mount(call, mountpoint)
    encoded = _check_subvolume_name(call, name)
    src = _dir_fd(mountpoint)
    try:
        # struct btrfs_ioctl_vol_args_v2: fd, transid, flags, a 32-byte
        # union, then name[4040].
        args = bytearray(struct.pack('=qQQ32x4040s', src, 0,
                                     _BTRFS_SUBVOL_RDONLY, encoded))
        fcntl.ioctl(src, _BTRFS_IOC_SNAP_CREATE_V2, args, True)
    finally:
        os.close(src)


@privsep.storage_admin.entrypoint
def delete_subvolume(mountpoint, name):
    """Delete the btrfs subvolume mountpoint/name (BTRFS_IOC_SNAP_DESTROY).

    Its space comes back asynchronously (btrfs cleaner).

    :param mountpoint: a driver disk's mount point (check_disk_mount).
    :returns: False if there is no such subvolume, else True.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises OSError: the ioctl failed otherwise.
    """
    call = 'delete_subvolume'
    check_disk_mount(call, mountpoint)
    encoded = _check_subvolume_name(call, name)
    fd = _dir_fd(mountpoint)
    try:
        # struct btrfs_ioctl_vol_args: fd, then name[4088].
        args = bytearray(struct.pack('=q4088s', 0, encoded))
        try:
            fcntl.ioctl(fd, _BTRFS_IOC_SNAP_DESTROY, args, True)
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


@privsep.storage_admin.entrypoint
def freeze(mountpoint):
    """Block writers to the disk mounted on mountpoint (FIFREEZE).

    Readers and every process keep running; writes wait until thaw.

    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises OSError: the ioctl failed (EBUSY: frozen already).
    """
    check_disk_mount('freeze', mountpoint)
    fd = _dir_fd(mountpoint)
    try:
        fcntl.ioctl(fd, _FIFREEZE, 0)
    finally:
        os.close(fd)


@privsep.storage_admin.entrypoint
def thaw(mountpoint):
    """Undo freeze (FITHAW).

    :returns: False if the filesystem was not frozen (EINVAL), else True.
    :raises PrivilegedCallRefused: the checks (module docstring).
    """
    check_disk_mount('thaw', mountpoint)
    fd = _dir_fd(mountpoint)
    try:
        try:
            fcntl.ioctl(fd, _FITHAW, 0)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return False
            raise
        return True
    finally:
        os.close(fd)
