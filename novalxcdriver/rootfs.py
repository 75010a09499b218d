"""A container's copy-on-write root filesystem.

Layout under ``<state_path>/rootfs/<cid>`` (named by container ID, so a
leftover directory keeps its ID from being reused)::

    root.img       the root disk: root_gb GiB of ext4 (disk.Disk)
    root/          its mount point, holding
      upper/       the container's own writes (owned by its root)
      work/        overlay's work directory
    ephemeral.img  the ephemeral disk, when the flavor has one
    ephemeral/     its mount point, bind-mounted on /mnt in the container
    lower/         idmapped, read-only view of the cached image's rootfs
    merged/        the overlay: lxc.rootfs.path

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
from novalxcdriver import lxc
from novalxcdriver import mount

LOG = logging.getLogger(__name__)


class Rootfs:
    """The root filesystem of container ID cid.

    :param state_path: the driver's state directory ([lxc] state_path).
    """

    def __init__(self, state_path, cid):
        self.cid = cid
        self.path = os.path.join(state_path, 'rootfs', str(cid))
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

    def create(self, image_rootfs, idmap, root_gb=0, ephemeral_gb=0):
        """Make the disks and directories and mount the root.

        :param idmap: ids.Idmap of the container.
        :param root_gb: GiB of the root disk; 0 for none (unbounded).
        :param ephemeral_gb: GiB of the ephemeral disk; 0 for none.
        :raises MountFailed, CommandFailed: the caller destroys on failure.
        """
        os.makedirs(os.path.dirname(self.path), mode=0o711, exist_ok=True)
        # mkdir, not makedirs: an existing directory belongs to someone.
        os.mkdir(self.path, 0o711)
        for d in (self.lower, self.merged):
            os.mkdir(d, 0o755)
        if root_gb:
            self.root_disk.create(root_gb, 0, 0)
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

    def unmount(self):
        mount.unmount_tree(self.path)

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
