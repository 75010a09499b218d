"""A container's copy-on-write root filesystem.

Layout under ``<state_path>/rootfs/<cid>`` (named by container ID, so a
leftover directory keeps its ID from being reused)::

    lower/   idmapped, read-only view of the cached image's rootfs
    upper/   the container's own writes (owned by its root, idmap.uid_start)
    work/    overlay's work directory
    merged/  the overlay: lxc.rootfs.path

The image is never written and never chowned; creating a root costs two
mounts whatever the image's size. The driver owns these mounts and removes
them itself: lxc-destroy would delete through a mounted rootfs.
"""

import os
import shutil

from oslo_log import log as logging

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
        self.upper = os.path.join(self.path, 'upper')
        self.work = os.path.join(self.path, 'work')
        self.merged = os.path.join(self.path, 'merged')

    def exists(self):
        return os.path.lexists(self.path)

    def is_mounted(self):
        return self.merged in mount.mountpoints()

    def create(self, image_rootfs, idmap):
        """Make the directories and mount the root over image_rootfs.

        :param idmap: spec.Idmap of the container.
        :raises MountFailed, CommandFailed: the caller destroys on failure.
        """
        os.makedirs(os.path.dirname(self.path), mode=0o711, exist_ok=True)
        # mkdir, not makedirs: an existing directory belongs to someone.
        os.mkdir(self.path, 0o711)
        for d in (self.lower, self.merged):
            os.mkdir(d, 0o755)
        for d in (self.upper, self.work):
            os.mkdir(d, 0o755)
            os.chown(d, idmap.uid_start, idmap.gid_start)
        self.mount(image_rootfs, idmap)

    def mount(self, image_rootfs, idmap):
        """Mount lower and the overlay if they are not (after host boot)."""
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
