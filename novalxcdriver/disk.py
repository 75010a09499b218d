"""Disks: sparse btrfs or ext4 image files, loop-mounted on the host.

A container's root disk (its overlay upper layer) and its ephemeral disk
are each a file of the flavor's size, so writes beyond it fail with ENOSPC
inside the container and nowhere else. mkfs.ext4 with lazy inode table and
journal init formats even a large sparse file in about 10 ms, mkfs.btrfs
in 10 to 40 ms more; btrfs gives the root disk O(1) read-only snapshots
(snapshot.py). A disk's filesystem is read from its superblock at mount,
so disks made before ``[lxc] root_disk_fs`` changed keep working. The loop
device is attached with autoclear set (loop.py, loop(4)), so unmounting
frees it and nothing else needs tracking.

A loop device's I/O counters (/sys/block/loopN/stat) belong to the device,
which later disks reuse, so each attach saves them next to the image
(``<image>.iostat``): diagnostics reports the disk's own I/O as the
difference.
"""

import errno
import fcntl
import os
import struct

from oslo_log import log as logging
from oslo_utils import units

from novalxcdriver import exception
from novalxcdriver import loop
from novalxcdriver import lxc
from novalxcdriver import mount
from novalxcdriver import throttle

LOG = logging.getLogger(__name__)
SYS_DEV_BLOCK = '/sys/dev/block'
SYS_BLOCK = '/sys/block'
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
_MAGIC = (('btrfs', 0x10040, b'_BHRfS_M'), ('ext4', 0x438, b'\x53\xef'))


class Disk:
    """The disk in image_path, mounted on mountpoint.

    :param image_path: the sparse image file.
    :param mountpoint: where the host mounts its filesystem.
    """

    def __init__(self, image_path, mountpoint):
        self.image_path = image_path
        self.mountpoint = mountpoint
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
        with open(self.image_path, 'xb') as f:
            f.truncate(size_gb * units.Gi)
        if fs == 'btrfs':
            lxc.execute('mkfs.btrfs', '-q', '-f', self.image_path)
        else:
            # -m 0: container root is no host root and could not use the
            # 5% reserved for uid 0.
            lxc.execute('mkfs.ext4', '-q', '-F', '-m', '0', '-E',
                        'lazy_itable_init=1,lazy_journal_init=1',
                        self.image_path)
        os.makedirs(self.mountpoint, mode=0o755, exist_ok=True)
        self.mount()
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
        """
        if not self.is_mounted():
            self._mount()
        if shift is not None:
            shift_mount(self.mountpoint, *shift)

    def _mount(self):
        fs = self.filesystem()
        # A migration brings the image alone.
        os.makedirs(self.mountpoint, mode=0o755, exist_ok=True)
        # Autoclear: the device goes with the unmount, or at the end of
        # the block if the mount failed.
        with loop.attached(self.image_path) as device:
            number = self._save_io_baseline(device)
            if number:
                # An earlier user's throttle must not follow the device.
                throttle.clear(number)
            mount.block_device(device, self.mountpoint, fs)

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
        """Grow the mounted disk and its filesystem to size_gb GiB, online.

        The image file grows (sparse), the loop device learns its new
        capacity (LOOP_SET_CAPACITY), then the filesystem
        takes it: btrfs with ``btrfs filesystem resize max``, ext4 with
        resize2fs, both while mounted. A disk already that large is left.

        :raises CommandFailed: a tool failed; the file may be larger, the
            filesystem as it was.
        :raises LoopFailed: the loop device did not take the new size.
        """
        size = size_gb * units.Gi
        if os.path.getsize(self.image_path) >= size:
            return
        os.truncate(self.image_path, size)
        device = mount.source(self.mountpoint)
        loop.set_capacity(device)
        if self.filesystem() == 'btrfs':
            lxc.execute('btrfs', 'filesystem', 'resize', 'max',
                        self.mountpoint)
        else:
            lxc.execute('resize2fs', device)
        LOG.info('Grew %s to %d GiB', self.image_path, size_gb)

    def detach_loops(self):
        """Detach loop devices still backed by the image: crash leftovers.

        Devices are attached with autoclear set (loop.attached), which
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


def shift_mount(point, disk_idmap, idmap):
    """Show what is mounted at point in idmap rather than disk_idmap.

    A no-op when the idmaps are equal or the top mount at point is
    idmapped already (a second mount after a crash would shift twice).
    """
    if disk_idmap == idmap or mount.is_idmapped(point):
        return
    with lxc.shifting_namespace(disk_idmap, idmap) as userns_fd:
        mount.idmapped_over(point, userns_fd)


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
