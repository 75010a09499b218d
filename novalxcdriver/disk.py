"""Disks: sparse btrfs or ext4 image files, loop-mounted on the host.

A container's root disk (its overlay upper layer) and its ephemeral disk
are each a file of the flavor's size, so writes beyond it fail with ENOSPC
inside the container and nowhere else. mkfs.ext4 with lazy inode table and
journal init formats even a large sparse file in about 10 ms, mkfs.btrfs
in 10 to 40 ms more; btrfs gives the root disk O(1) read-only snapshots
(snapshot.py). A disk's filesystem is read from its superblock at mount,
so disks made before ``[lxc] root_disk_fs`` changed keep working. The loop
device is attached with autoclear set (privsep.storage, loop(4)), so unmounting
frees it and nothing else needs tracking.

A fresh btrfs disk is a copy of a template of its size, formatted once per
host in ``<state_path>/disk-templates`` (a sparse copy of a few MiB of
metadata, or a reflink: about a millisecond against 40 ms of mkfs.btrfs
here). All copies share the template's fsid, which btrfs mounts side by
side only on kernels with temp-fsid (Linux 6.7, /sys/fs/btrfs/features/
temp_fsid); an older kernel would take a clone for the mounted
filesystem of that fsid, so there each disk is formatted on its own.
ext4 disks always are: mkfs.ext4 takes about 7 ms, too little to be
worth many filesystems sharing one UUID.

A loop device's I/O counters (/sys/block/loopN/stat) belong to the device,
which later disks reuse, so each attach saves them next to the image
(``<image>.iostat``): diagnostics reports the disk's own I/O as the
difference.
"""

import errno
import fcntl
import os
import re
import struct
import tempfile
import time

from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import units

from novalxcdriver import exception
from novalxcdriver import loop
from novalxcdriver import lxc
from novalxcdriver import mount
from novalxcdriver import throttle

LOG = logging.getLogger(__name__)
SYS_DEV_BLOCK = '/sys/dev/block'
SYS_BLOCK = '/sys/block'
TEMPLATES = 'disk-templates'
# Seconds Disk.mount waits for a loop device to let go of an image, and
# polls.
ATTACHED_TIMEOUT = 10
ATTACHED_POLL = 0.05
BTRFS_TEMP_FSID = '/sys/fs/btrfs/features/temp_fsid'
FILESYSTEMS = ('btrfs', 'ext4')
# (offset, magic) of each filesystem's superblock signature: btrfs's
# superblock is at 64 KiB, magic at +0x40; ext4's at 1 KiB, s_magic at
# +0x38 (kernel fs/btrfs/accessors.h, fs/ext4/ext4.h).
# ioctl numbers, _IOW/_IOWR as the kernel computes them: btrfs's from
# include/uapi/linux/btrfs.h (struct btrfs_ioctl_vol_args_v2 and
# btrfs_ioctl_vol_args, 4096 bytes each), the freeze pair from
# include/uapi/linux/fs.h.
_BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417   # _IOW(0x94, 23, vol_args_v2)
_BTRFS_IOC_SNAP_DESTROY = 0x5000940f     # _IOW(0x94, 15, vol_args)
_BTRFS_SUBVOL_RDONLY = 1 << 1
_FIFREEZE = 0xc0045877                   # _IOWR('X', 119, int)
_FITHAW = 0xc0045878                     # _IOWR('X', 120, int)
_FICLONE = 0x40049409                    # _IOW(0x94, 9, int)
# _template's temporary names (tempfile.mkstemp's suffix).
_TEMPLATE_LEFTOVER = re.compile(r'^\.(btrfs|ext4)-[0-9]+G\.img\.\w+$')
_MAGIC = (('btrfs', 0x10040, b'_BHRfS_M'), ('ext4', 0x438, b'\x53\xef'))


class Disk:
    """The disk in image_path, mounted on mountpoint.

    :param image_path: the sparse image file.
    :param mountpoint: where the host mounts its filesystem.
    :param templates: the directory of formatted templates new disks
        are copied from (module docstring), or None to format each.
    """

    def __init__(self, image_path, mountpoint, templates=None):
        self.image_path = image_path
        self.mountpoint = mountpoint
        self.templates = templates
        self.io_baseline_path = image_path + '.iostat'

    def create(self, size_gb, uid, gid, fs='ext4'):
        """Make a size_gb GiB image, mount it, give its root to uid.

        :param fs: 'ext4' or 'btrfs' (FILESYSTEMS).
        :raises CommandFailed: mkfs failed.
        :raises LoopFailed: no loop device could be attached.
        :raises MountFailed: mount(2) failed.
        """
        if fs not in FILESYSTEMS:
            raise ValueError('unsupported filesystem %r' % fs)
        if self.templates is not None and from_template(fs):
            template = _template(self.templates, fs, size_gb)
            try:
                _copy_sparse(template, self.image_path)
            except FileExistsError:
                raise
            except OSError:
                with excutils.save_and_reraise_exception():
                    os.unlink(self.image_path)
        else:
            _formatted(self.image_path, size_gb, fs, exclusive=True)
        os.makedirs(self.mountpoint, mode=0o755, exist_ok=True)
        # A new image: no loop device can hold it yet (mount's wait).
        self._mount()
        os.chown(self.mountpoint, uid, gid)
        os.chmod(self.mountpoint, 0o755)
        lost = os.path.join(self.mountpoint, 'lost+found')
        if os.path.isdir(lost):
            os.rmdir(lost)

    def is_mounted(self):
        return self.mountpoint in mount.mountpoints()

    def filesystem(self):
        """'btrfs' or 'ext4', from the image's superblock.

        :raises DiskUnreadable: neither signature is there (not a disk
            this driver made, or a damaged one).
        """
        try:
            with open(self.image_path, 'rb') as f:
                for fs, offset, magic in _MAGIC:
                    f.seek(offset)
                    if f.read(len(magic)) == magic:
                        return fs
        except OSError as e:
            raise exception.DiskUnreadable(path=self.image_path,
                                           reason=str(e))
        raise exception.DiskUnreadable(
            path=self.image_path, reason='no btrfs or ext4 superblock')

    def mount(self, shift=None):
        """Mount the image if it is not mounted (after a host reboot).

        :param shift: (disk_idmap, idmap) of disks a migration brought:
            an idmapped mount stacked on the mount point shows their
            files in idmap (shift_mount).
        :raises DiskUnreadable: the image has no known filesystem.
        :raises MountFailed: a loop device still holds the image after
            ATTACHED_TIMEOUT seconds (_wait_unattached).
        """
        if not self.is_mounted():
            self._wait_unattached()
            self._mount()
        if shift is not None:
            shift_mount(self.mountpoint, *shift)

    def _wait_unattached(self, timeout=None):
        """Wait until no loop device holds the image; refuse after timeout.

        Unmounted here, its filesystem can live on in another mount
        namespace that was cloned while it was mounted (a container being
        started copies the host's mounts until LXC detaches them), with its
        loop device and its unwritten data. Mounted again through a second
        loop device, the image would carry two live filesystems, and the
        new one would lack what the old one has not written back: the
        functional suite saw a file written before the unmount missing.

        :param timeout: seconds; ATTACHED_TIMEOUT by default.
        :raises MountFailed: still held after timeout.
        """
        timeout = ATTACHED_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            held = loop_devices_of(self.image_path)
            if not held:
                return
            if time.monotonic() >= deadline:
                raise exception.MountFailed(
                    what=self.image_path, target=self.mountpoint,
                    reason='the image is still attached to %s after %s s '
                           '(mounted in another mount namespace?); '
                           'mounting it twice would corrupt it'
                           % (', '.join(held), timeout))
            time.sleep(ATTACHED_POLL)

    def _mount(self):
        fs = self.filesystem()
        # A migration brings the image alone.
        os.makedirs(self.mountpoint, mode=0o755, exist_ok=True)
        # Autoclear: the device goes with the unmount, or at once if the
        # mount failed.
        device = mount.disk_image(self.image_path, self.mountpoint, fs)
        number = self._save_io_baseline(device)
        if number:
            # An earlier user's throttle must not follow the device; the
            # container starts after this.
            throttle.clear(number)

    def _save_io_baseline(self, device):
        """Save 'MAJ:MIN <its /sys/block stat>' of the loop device.

        Bookkeeping for diagnostics only: a failure is logged, and leaves
        no baseline (rather than an earlier attachment's).

        :returns: the device's 'MAJ:MIN', or None if stat(2) failed on it.
        """
        number = None
        try:
            try:
                os.unlink(self.io_baseline_path)
            except FileNotFoundError:
                pass
            rdev = os.stat(device).st_rdev
            number = '%d:%d' % (os.major(rdev), os.minor(rdev))
            with open(os.path.join(SYS_DEV_BLOCK, number, 'stat')) as f:
                counters = f.read()
            with open(self.io_baseline_path, 'w') as f:
                f.write('%s %s' % (number, counters))
        except OSError as e:
            LOG.warning('Cannot save the I/O counters of %s for %s: %s',
                        device, self.image_path, e)
        return number

    def grow(self, size_gb):
        """Grow the disk and its filesystem to size_gb GiB.

        The image file grows (sparse), then the filesystem takes it.
        Mounted, online: the loop device learns its new capacity
        (LOOP_SET_CAPACITY), then ``btrfs filesystem resize max`` or
        resize2fs on the device; online ext4 growth needs
        CAP_SYS_RESOURCE (EXT4_IOC_RESIZE_FS, fs/ext4/ioctl.c), which a
        host's root may lack. Unmounted, ext4 only: ``e2fsck -f -p``
        then resize2fs on the image, as Nova grows an image
        (nova.virt.disk.api.resize2fs). A disk already that large is
        left.

        :raises CommandFailed: a tool failed; the file may be larger, the
            filesystem as it was.
        :raises LoopFailed: the loop device did not take the new size.
        :raises DiskUnreadable: an unmounted btrfs disk (btrfs grows only
            mounted), or no known filesystem.
        """
        size = size_gb * units.Gi
        if os.path.getsize(self.image_path) >= size:
            return
        fs = self.filesystem()
        mounted = self.is_mounted()
        if not mounted and fs != 'ext4':
            raise exception.DiskUnreadable(
                path=self.image_path,
                reason='a %s disk grows only mounted' % fs)
        os.truncate(self.image_path, size)
        if not mounted:
            # -p fixes only what is safe without asking; exit code 1
            # means it did.
            lxc.execute('e2fsck', '-f', '-p', self.image_path,
                        check_exit_code=[0, 1])
            lxc.execute('resize2fs', self.image_path)
        else:
            device = mount.source(self.mountpoint)
            loop.set_capacity(device)
            if fs == 'btrfs':
                lxc.execute('btrfs', 'filesystem', 'resize', 'max',
                            self.mountpoint)
            else:
                lxc.execute('resize2fs', device)
        LOG.info('Grew %s to %d GiB', self.image_path, size_gb)

    def detach_loops(self):
        """Detach loop devices still backed by the image: crash leftovers.

        Devices are attached with autoclear set (mount.disk_image), which
        no crash can leave behind; a device without it is from a driver
        that attached with losetup and was killed before its detach, and
        no unmount frees it. Devices with autoclear set go by themselves
        (the kernel may still be clearing one right after the unmount); a
        device still mounted is only marked autoclear by the detach
        (loop(4)).
        """
        for device in loop_devices_of(os.path.realpath(self.image_path),
                                      autoclear=False):
            LOG.warning('Detaching %s, left attached to %s', device,
                        self.image_path)
            try:
                loop.detach(device)
            except exception.LoopFailed as e:
                # Gone meanwhile: the work is done.
                LOG.info('Cannot detach %s: %s', device, e)

    def device(self):
        """'MAJ:MIN' of the mounted filesystem's block device.

        Read from the mount's source (a loop device): on btrfs, st_dev of
        the mount point is an anonymous device that throttles and I/O
        counters know nothing of.
        """
        source = mount.source(self.mountpoint)
        if source and source.startswith('/dev/'):
            rdev = os.stat(source).st_rdev
            return '%d:%d' % (os.major(rdev), os.minor(rdev))
        st = os.stat(self.mountpoint)
        return '%d:%d' % (os.major(st.st_dev), os.minor(st.st_dev))


def from_template(fs):
    """Whether new fs disks are copies of a template (module docstring).

    btrfs gives a clone a temporary fsid from Linux 6.7 (temp_fsid in
    /sys/fs/btrfs/features; fs/btrfs/volumes.c), and before that would
    resolve it to the filesystem of that fsid already mounted.
    """
    return fs == 'btrfs' and os.path.exists(BTRFS_TEMP_FSID)


def _formatted(path, size_gb, fs, exclusive):
    """Make path a size_gb GiB sparse file holding an empty fs filesystem.

    :param exclusive: path must not exist (else FileExistsError).
    :raises CommandFailed: mkfs failed.
    """
    with open(path, 'xb' if exclusive else 'wb') as f:
        f.truncate(size_gb * units.Gi)
    if fs == 'btrfs':
        lxc.execute('mkfs.btrfs', '-q', '-f', path)
    else:
        # -m 0: container root is no host root and could not use the
        # 5% reserved for uid 0.
        lxc.execute('mkfs.ext4', '-q', '-F', '-m', '0', '-E',
                    'lazy_itable_init=1,lazy_journal_init=1', path)


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
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with excutils.save_and_reraise_exception():
            os.unlink(tmp)
    LOG.info('Formatted the %s template of %d GiB disks: %s', fs, size_gb,
             path)
    return path


def remove_template_leftovers(directory):
    """Delete templates a crash left half made (their temporary names).

    Call before this driver makes any disk (init_host): a template being
    made by a live process of the same state path would go too.

    :returns: the paths removed.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if _TEMPLATE_LEFTOVER.match(name):
            path = os.path.join(directory, name)
            os.unlink(path)
            LOG.info('Removed %s, a disk template a crash left half made',
                     path)
            removed.append(path)
    return removed


def _copy_sparse(source, dest):
    """Copy source to a new file dest: a reflink, else its data extents.

    Holes stay holes (SEEK_DATA/SEEK_HOLE, lseek(2)); the data moves in
    the kernel (copy_file_range(2)).

    :raises FileExistsError: dest exists (it is left alone).
    :raises OSError: reading or writing failed (dest may be partial).
    """
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                      os.O_CLOEXEC, 0o600)
        try:
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
                    start += os.copy_file_range(src, dst, end - start,
                                                start, start)
                offset = end
        finally:
            os.close(dst)
    finally:
        os.close(src)


def shift_mount(point, disk_idmap, idmap):
    """Show what is mounted at point in idmap rather than disk_idmap.

    A no-op when the idmaps are equal or the top mount at point is
    idmapped already (a second mount after a crash would shift twice).
    """
    if disk_idmap == idmap or mount.is_idmapped(point):
        return
    mount.idmapped_over(point, disk_idmap, idmap)


def loop_devices_of(path, autoclear=None):
    """Loop devices whose backing file is path (/sys/block/loopN/loop).

    :param autoclear: True or False: only devices with that flag.
    """
    found = []
    for name in sorted(os.listdir(SYS_BLOCK)):
        sysfs = os.path.join(SYS_BLOCK, name, 'loop')
        try:
            with open(os.path.join(sysfs, 'backing_file')) as f:
                backing = f.read().rstrip('\n')
            with open(os.path.join(sysfs, 'autoclear')) as f:
                flag = f.read().strip() == '1'
        except OSError:
            continue
        if backing == path and autoclear in (None, flag):
            found.append('/dev/' + name)
    return found


def _dir_fd(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                   os.O_CLOEXEC)


def _subvolume_name(name):
    if not name or '/' in name or name in ('.', '..') or '\0' in name:
        raise ValueError('bad subvolume name %r' % name)
    encoded = os.fsencode(name)
    if len(encoded) > 255:
        raise ValueError('subvolume name too long: %r' % name)
    return encoded


def snapshot_subvolume(subvolume, name):
    """Make a read-only btrfs snapshot of subvolume, as subvolume/name.

    Atomic and O(1) whatever the data (BTRFS_IOC_SNAP_CREATE_V2 with
    BTRFS_SUBVOL_RDONLY). Data still in the page cache may be missing
    from it (seen here under heavy writeback): call durable.syncfs on
    the filesystem first.

    :param subvolume: a btrfs subvolume's top directory (a root disk's
        mount point is subvolume 5).
    :param name: one path component.
    :raises OSError: the ioctl failed (ENOTTY: not btrfs; EEXIST).
    """
    encoded = _subvolume_name(name)
    src = _dir_fd(subvolume)
    try:
        # struct btrfs_ioctl_vol_args_v2: fd, transid, flags, a 32-byte
        # union, then name[4040].
        args = bytearray(struct.pack('=qQQ32x4040s', src, 0,
                                     _BTRFS_SUBVOL_RDONLY, encoded))
        fcntl.ioctl(src, _BTRFS_IOC_SNAP_CREATE_V2, args, True)
    finally:
        os.close(src)


def delete_subvolume(parent, name):
    """Delete the btrfs subvolume parent/name (BTRFS_IOC_SNAP_DESTROY).

    Its space comes back asynchronously (btrfs cleaner).

    :returns: False if there is no such subvolume.
    :raises OSError: the ioctl failed otherwise.
    """
    encoded = _subvolume_name(name)
    fd = _dir_fd(parent)
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


def freeze(mountpoint):
    """Block writers to the filesystem on mountpoint (FIFREEZE).

    Readers and every process keep running; writes wait until thaw().
    """
    fd = _dir_fd(mountpoint)
    try:
        fcntl.ioctl(fd, _FIFREEZE, 0)
    finally:
        os.close(fd)


def thaw(mountpoint):
    """Undo freeze() (FITHAW).

    :returns: False if the filesystem was not frozen (EINVAL).
    """
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
