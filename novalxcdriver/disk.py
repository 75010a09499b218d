"""Disks: sparse ext4 image files, loop-mounted on the host.

A container's root disk (its overlay upper layer) and its ephemeral disk
are each a file of the flavor's size, so writes beyond it fail with ENOSPC
inside the container and nowhere else. mkfs.ext4 with lazy inode table and
journal init formats even a large sparse file in about 10 ms. The loop
device is detached right after mounting (LO_FLAGS_AUTOCLEAR, loop(4)), so
unmounting frees it and nothing else needs tracking.
"""

import os

from oslo_utils import excutils
from oslo_utils import units

from novalxcdriver import lxc
from novalxcdriver import mount


class Disk:
    """The disk in image_path, mounted on mountpoint.

    :param image_path: the sparse image file.
    :param mountpoint: where the host mounts its filesystem.
    """

    def __init__(self, image_path, mountpoint):
        self.image_path = image_path
        self.mountpoint = mountpoint

    def create(self, size_gb, uid, gid):
        """Make a size_gb GiB ext4 image, mount it, give its root to uid.

        :raises CommandFailed: mkfs.ext4 or losetup failed.
        :raises MountFailed: mount(2) failed.
        """
        with open(self.image_path, 'xb') as f:
            f.truncate(size_gb * units.Gi)
        # -m 0: container root is no host root and could not use the 5%
        # reserved for uid 0.
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

    def mount(self):
        """Mount the image if it is not mounted (after a host reboot)."""
        if self.is_mounted():
            return
        device = lxc.attach_loop(self.image_path)
        try:
            mount.ext4(device, self.mountpoint)
        except Exception:
            with excutils.save_and_reraise_exception():
                lxc.detach_loop(device)
        # Autoclear: the device goes away with the unmount.
        lxc.detach_loop(device)

    def device(self):
        """'MAJ:MIN' of the mounted filesystem's device."""
        st = os.stat(self.mountpoint)
        return '%d:%d' % (os.major(st.st_dev), os.minor(st.st_dev))
