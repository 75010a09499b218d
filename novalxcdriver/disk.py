"""Disks: sparse btrfs or ext4 image files, loop-mounted on the host.

A container's root disk (its overlay upper layer) and its ephemeral disk
are each a file of the flavor's size, so writes beyond it fail with ENOSPC
inside the container and nowhere else. mkfs.ext4 with lazy inode table and
journal init formats even a large sparse file in about 10 ms, mkfs.btrfs
in 10 to 40 ms more; btrfs gives the root disk O(1) read-only snapshots
(snapshot.py). A disk's filesystem is read from its superblock at mount,
so disks made before ``[lxc] root_disk_fs`` changed keep working. The loop
device is detached right after mounting (LO_FLAGS_AUTOCLEAR, loop(4)), so
unmounting frees it and nothing else needs tracking.

A loop device's I/O counters (/sys/block/loopN/stat) belong to the device,
which later disks reuse, so each attach saves them next to the image
(``<image>.iostat``): diagnostics reports the disk's own I/O as the
difference.
"""

import os

from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import units

from novalxcdriver import exception
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
        :raises CommandFailed: mkfs or losetup failed.
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

    def mount(self):
        """Mount the image if it is not mounted (after a host reboot).

        :raises DiskUnreadable: the image has no known filesystem.
        """
        if self.is_mounted():
            return
        fs = self.filesystem()
        device = lxc.attach_loop(self.image_path)
        try:
            number = self._save_io_baseline(device)
            if number:
                # An earlier user's throttle must not follow the device.
                throttle.clear(number)
            mount.block_device(device, self.mountpoint, fs)
        except Exception:
            with excutils.save_and_reraise_exception():
                lxc.detach_loop(device)
        # Autoclear: the device goes away with the unmount.
        lxc.detach_loop(device)

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

    def detach_loops(self):
        """Detach loop devices still backed by the image: crash leftovers.

        A process killed between losetup and the detach after the mount
        leaves a device without autoclear, which no unmount frees. Devices
        with autoclear set go by themselves (the kernel may still be
        clearing one right after the unmount); a device still mounted is
        only marked autoclear by the detach (loop(4)).
        """
        for device in loop_devices_of(os.path.realpath(self.image_path),
                                      autoclear=False):
            LOG.warning('Detaching %s, left attached to %s', device,
                        self.image_path)
            try:
                lxc.detach_loop(device)
            except exception.CommandFailed as e:
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
