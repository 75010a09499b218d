"""A container's copy-on-write root filesystem.

Layout under ``<state_path>/rootfs/<cid>`` (named by container ID, so a
leftover directory keeps its ID from being reused)::

    root.img       the root disk: root_gb GiB of btrfs or ext4 (disk.Disk)
    root/          its mount point, holding
      upper/       the container's own writes (owned by its root)
      work/        overlay's work directory (same btrfs subvolume as
                   upper/: rename(2) does not cross subvolumes)
      .snapshot-*  a snapshot's read-only btrfs subvolume, while it runs
    snapshot-*/    a snapshot's staging directory, while it runs
    ephemeral.img  the ephemeral disk, when the flavor has one
    ephemeral/     its mount point, bind-mounted on /mnt in the container
    *.img.iostat   each disk's loop device I/O counters when attached
    lower/         idmapped, read-only view of the cached image's rootfs
    merged/        the overlay: lxc.rootfs.path
    rescue/        while rescued, the rescue root: this layout again
                   (rescue.py)

A flavor with root_gb 0 gets no root disk: upper/ and work/ then live in
root/ on the host's filesystem, unbounded.

The image is never written and never chowned; creating a root costs two
mounts whatever the image's size. The driver owns these mounts and removes
them itself: lxc-destroy would delete through a mounted rootfs.
"""

import os
import shutil

from oslo_log import log as logging

from novalxcdriver import disk
from novalxcdriver import exception
from novalxcdriver import images
from novalxcdriver import lxc
from novalxcdriver import mount
from novalxcdriver import throttle

LOG = logging.getLogger(__name__)


class Rootfs:
    """The root filesystem of container ID cid.

    :param state_path: the driver's state directory ([lxc] state_path).
    :param path: its directory instead of ``<state_path>/rootfs/<cid>``
        (state_path is not read then): a rescue root lives inside its
        server's (rescue.root_of).
    """

    def __init__(self, state_path, cid, path=None):
        self.cid = cid
        self.path = path or os.path.join(state_path, 'rootfs', str(cid))
        self.lower = os.path.join(self.path, 'lower')
        self.root_disk = disk.Disk(os.path.join(self.path, 'root.img'),
                                   os.path.join(self.path, 'root'))
        self.ephemeral_disk = disk.Disk(
            os.path.join(self.path, 'ephemeral.img'),
            os.path.join(self.path, 'ephemeral'))
        self.upper = os.path.join(self.root_disk.mountpoint, 'upper')
        self.work = os.path.join(self.root_disk.mountpoint, 'work')
        self.merged = os.path.join(self.path, 'merged')

    def exists(self):
        return os.path.lexists(self.path)

    def is_mounted(self):
        return self.merged in mount.mountpoints()

    def has_ephemeral(self):
        return os.path.exists(self.ephemeral_disk.image_path)

    def create(self, image_rootfs, idmap, root_gb=0, ephemeral_gb=0,
               root_fs='ext4'):
        """Make the disks and directories and mount the root.

        :param idmap: ids.Idmap of the container.
        :param root_gb: GiB of the root disk; 0 for none (unbounded).
        :param ephemeral_gb: GiB of the ephemeral disk; 0 for none (ext4).
        :param root_fs: filesystem of the root disk (disk.FILESYSTEMS).
        :raises RootfsExists: its directory exists: nothing was touched.
        :raises MountFailed, CommandFailed: the caller destroys on failure.
        """
        os.makedirs(os.path.dirname(self.path), mode=0o711, exist_ok=True)
        try:
            # mkdir, not makedirs: an existing directory belongs to someone.
            os.mkdir(self.path, 0o711)
        except FileExistsError:
            raise exception.RootfsExists(path=self.path)
        for d in (self.lower, self.merged):
            os.mkdir(d, 0o755)
        if root_gb:
            self.root_disk.create(root_gb, 0, 0, fs=root_fs)
        else:
            os.mkdir(self.root_disk.mountpoint, 0o755)
        for d in (self.upper, self.work):
            os.mkdir(d, 0o755)
            os.chown(d, idmap.uid_start, idmap.gid_start)
        if ephemeral_gb:
            self.ephemeral_disk.create(ephemeral_gb, idmap.uid_start,
                                       idmap.gid_start)
        self.mount(image_rootfs, idmap)

    def mount(self, image_rootfs, idmap):
        """Mount disks, lower and the overlay where missing (host boot)."""
        for d in (self.root_disk, self.ephemeral_disk):
            if os.path.exists(d.image_path):
                d.mount()
        points = mount.mountpoints()
        if self.lower not in points:
            with lxc.user_namespace(idmap) as userns_fd:
                mount.idmapped_bind(image_rootfs, self.lower, userns_fd)
        if self.merged not in points:
            mount.overlay(self.lower, self.upper, self.work, self.merged)

    def write_etc_file(self, name, text, idmap):
        """Write /etc/<name> of the container, owned by its root, 0644.

        Paths resolve as inside the container (images.resolve_in_root), so
        a hostile image's links cannot lead the write out of its root; an
        image with no /etc directory is left as it is. The root must be
        mounted and the container stopped.
        """
        etc = images.resolve_in_root(self.merged, '/etc')
        if etc is None or os.path.islink(etc) or not os.path.isdir(etc):
            LOG.info('No /etc in the root of container ID %d; %s not '
                     'written', self.cid, name)
            return
        dir_fd = os.open(etc, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                LOG.info('/etc/%s is a directory in the root of container '
                         'ID %d; left as it is', name, self.cid)
                return
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                         os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
            with os.fdopen(fd, 'w') as f:
                os.fchown(fd, idmap.uid_start, idmap.gid_start)
                f.write(text)
        finally:
            os.close(dir_fd)

    def disk_devices(self):
        """'MAJ:MIN' of each mounted disk of its own (root, ephemeral)."""
        points = mount.mountpoints()
        return [d.device() for d in (self.root_disk, self.ephemeral_disk)
                if d.mountpoint in points]

    def unmount(self):
        for device in self.disk_devices():
            throttle.clear(device)
        mount.unmount_tree(self.path)
        # A crash between losetup and the mount leaves a loop device.
        for d in (self.root_disk, self.ephemeral_disk):
            d.detach_loops()

    def destroy(self):
        """Unmount and delete everything of this root. Idempotent.

        :raises MountFailed: something stays mounted below it; nothing is
            deleted then, so the image cannot be deleted through a mount.
        """
        if not self.exists():
            return
        self.unmount()
        left = [p for p in mount.mountpoints()
                if p == self.path or p.startswith(self.path + '/')]
        if left:
            raise exception.MountFailed(
                what='cleanup', target=self.path,
                reason='still mounted: %s' % ', '.join(sorted(left)))
        shutil.rmtree(self.path)


def existing_ids(state_path):
    """Container IDs that still have a rootfs directory (set of int)."""
    top = os.path.join(state_path, 'rootfs')
    try:
        names = os.listdir(top)
    except FileNotFoundError:
        return set()
    return {int(n) for n in names if n.isdigit()}
