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
host in ``<state_path>/disk-templates`` (a sparse copy of the 368 KiB
that are not zeros for 1 GiB, or a reflink: half a millisecond against
40 ms of mkfs.btrfs here). All copies share the template's fsid, which
btrfs mounts side by side only on kernels with temp-fsid (Linux 6.7,
/sys/fs/btrfs/features/temp_fsid); an older kernel would take a clone
for the mounted filesystem of that fsid, so there each disk is
formatted on its own. ext4 disks always are: mkfs.ext4 takes about
7 ms, too little to be worth many filesystems sharing one UUID.

The images, in root's directories, are made, grown, snapshotted and
frozen by the storage_admin privsep daemon (privsep/disks.py), which also
decides whether a template may be used; their mounts are made there too
(privsep/storage.py). This module is nova-compute's model of a disk.

A loop device's I/O counters (/sys/block/loopN/stat) belong to the device,
which later disks reuse, so each attach saves them next to the image
(``<image>.iostat``): diagnostics reports the disk's own I/O as the
difference.
"""

import os
import time

from oslo_log import log as logging

from novalxcdriver import exception
from novalxcdriver import loop
from novalxcdriver import mount
from novalxcdriver.privsep import disks
from novalxcdriver.privsep import ownership
from novalxcdriver.privsep import rootdirs
from novalxcdriver.privsep import storage

LOG = logging.getLogger(__name__)
SYS_BLOCK = '/sys/block'
TEMPLATES = 'disk-templates'
# Seconds Disk.mount waits for a loop device to let go of an image, and
# polls.
ATTACHED_TIMEOUT = 10
ATTACHED_POLL = 0.05
FILESYSTEMS = disks.FILESYSTEMS


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
        self.io_baseline_path = image_path + storage.IO_BASELINE

    def create(self, size_gb, owner=None, fs='ext4'):
        """Make a size_gb GiB image, mount it, give its root to owner.

        The image is made in the storage_admin daemon
        (privsep.disks.create_image: a template's copy or mkfs).

        :param owner: ids.Idmap whose root gets the disk's top directory,
            or None to leave it host root's (a root disk's holds upper/
            and work/, each the container's).
        :param fs: 'ext4' or 'btrfs' (FILESYSTEMS).
        :raises FileExistsError: the image exists (it is left alone).
        :raises CommandFailed: mkfs failed (no image is left).
        :raises LoopFailed: no loop device could be attached.
        :raises MountFailed: mount(2) failed.
        """
        disks.create_image(self.image_path, size_gb, fs, self.templates)
        # A new image: no loop device can hold it yet (mount's wait).
        self._mount()
        ownership.give_disk_root(self.mountpoint,
                                 owner.fields() if owner else None)

    def plan(self, size_gb, fs, owned):
        """This disk as privsep.rootdirs.create_root makes it (as create).

        :param owned: whether its top directory becomes the container's
            root's (create's owner), else stays host root's.
        :returns: [image_path, mountpoint, size_gb, fs, templates, owned].
        """
        return [self.image_path, self.mountpoint, size_gb, fs,
                self.templates, owned]

    def is_mounted(self):
        return mount.is_mountpoint(self.mountpoint)

    def filesystem(self):
        """'btrfs' or 'ext4': the mounted disk's, else its superblock's.

        Mounted, the mount table says, with no privilege; else the
        storage_admin daemon reads the image (privsep.disks).

        :raises DiskUnreadable: neither signature is there (not a disk
            this driver made, or a damaged one).
        """
        found = mount.top(self.mountpoint)
        if found and found[0] in FILESYSTEMS and \
                found[1].startswith('/dev/loop'):
            return found[0]
        return disks.image_filesystem(self.image_path)

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

    def sync(self):
        """syncfs(2) the disk's filesystem if it is mounted here.

        Before an unmount whose image is then copied: the filesystem may
        live on in another mount namespace (_wait_unattached) and write
        back later, after the copy has read the file.

        :raises OSError: the sync failed (an I/O error).
        """
        if self.is_mounted():
            disks.sync_filesystem(self.mountpoint)

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
        # A migration brings the image alone. Looked at first: a remount
        # (host boot, hard reboot) finds it and needs no round trip.
        if not os.path.isdir(self.mountpoint):
            rootdirs.make_mountpoint(self.mountpoint)
        # Autoclear: the device goes with the unmount, or at once if the
        # mount failed. The daemon also clears the device's root blkio
        # throttles (an earlier user's must not follow it) and saves its
        # I/O counters (io_baseline_path).
        mount.disk_image(self.image_path, self.mountpoint)

    def grow(self, size_gb):
        """Grow the disk and its filesystem to size_gb GiB.

        Online if mounted, else unmounted (ext4 only); the steps and
        their sources: privsep.disks.grow. A disk already that large is
        left.

        :raises CommandFailed: a tool failed; the file may be larger, the
            filesystem as it was.
        :raises LoopFailed: the loop device did not take the new size.
        :raises DiskUnreadable: an unmounted btrfs disk (btrfs grows only
            mounted), or no known filesystem.
        """
        if disks.grow(self.image_path, size_gb,
                      self.mountpoint if self.is_mounted() else None):
            LOG.info('Grew %s to %d GiB', self.image_path, size_gb)

    def detach_loops(self, leftovers=None):
        """Detach loop devices still backed by the image: crash leftovers.

        Devices are attached with autoclear set (mount.disk_image), which
        no crash can leave behind; a device without it is from a driver
        that attached with losetup and was killed before its detach, and
        no unmount frees it. Devices with autoclear set go by themselves
        (the kernel may still be clearing one right after the unmount); a
        device still mounted is only marked autoclear by the detach
        (loop(4)).

        :param leftovers: ``leftover_loops()`` scanned by the caller in the
            same operation; default: scan now.
        """
        image = os.path.realpath(self.image_path)
        devices = (loop_devices_of(image, autoclear=False)
                   if leftovers is None else leftovers.get(image, []))
        for device in devices:
            LOG.warning('Detaching %s, left attached to %s', device,
                        self.image_path)
            try:
                loop.detach(device)
            except exception.LoopFailed as e:
                # Gone meanwhile: the work is done.
                LOG.info('Cannot detach %s: %s', device, e)

    def device(self, mounts=None):
        """'MAJ:MIN' of the mounted filesystem's block device.

        Read from the mount's source (a loop device): on btrfs, st_dev of
        the mount point is an anonymous device that throttles and I/O
        counters know nothing of.

        :param mounts: ``mount.table()`` read by the caller; default: read
            now.
        """
        source = mount.source(self.mountpoint, mounts)
        if source and source.startswith('/dev/'):
            rdev = os.stat(source).st_rdev
            return '%d:%d' % (os.major(rdev), os.minor(rdev))
        st = os.stat(self.mountpoint)
        return '%d:%d' % (os.major(st.st_dev), os.minor(st.st_dev))


def remove_template_leftovers(directory):
    """Delete templates a crash left half made (privsep.disks).

    :returns: the paths removed.
    """
    removed = disks.remove_template_leftovers(directory)
    for path in removed:
        LOG.info('Removed %s, a disk template a crash left half made', path)
    return removed


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

    sysfs names the resolved file (the kernel's d_path), so path is
    resolved first: a driver root may be a symlink, and a device holding
    an image reached through it must not go unseen (Disk.mount would
    then attach the image a second time).

    :param autoclear: True or False: only devices with that flag.
    """
    return _loop_devices(autoclear).get(os.path.realpath(path), [])


def leftover_loops():
    """Loop devices without autoclear, by backing file (dict of lists).

    A crash's leftovers (Disk.detach_loops): one scan for all the disks
    of a root.
    """
    return _loop_devices(False)


def _loop_devices(autoclear):
    # Every device of every container is scanned (sysfs has no index by
    # backing file): the flag first, which rules out all of this driver's
    # own devices (autoclear) when looking for a crash's leftovers.
    found = {}
    for name in sorted(os.listdir(SYS_BLOCK)):
        if not name.startswith('loop'):
            continue
        sysfs = os.path.join(SYS_BLOCK, name, 'loop')
        try:
            with open(os.path.join(sysfs, 'autoclear')) as f:
                flag = f.read().strip() == '1'
            if autoclear not in (None, flag):
                continue
            with open(os.path.join(sysfs, 'backing_file')) as f:
                backing = f.read().rstrip('\n')
        except OSError:
            continue
        found.setdefault(backing, []).append('/dev/' + name)
    return found
