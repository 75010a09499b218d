"""Loop devices (loop(4)) of the driver's disks and unpacked disk images.

A disk is attached and mounted in one privsep call (mount.disk_image),
from a device configured in one LOOP_CONFIGURE ioctl with autoclear set,
so that no crash leaves a device attached; the work on a device once
attached is here, done by the ``storage_admin`` daemon
(:mod:`novalxcdriver.privsep.storage`).
"""

from novalxcdriver.privsep import storage


def set_capacity(device):
    """Make device show its backing file's current size (after a grow).

    :param device: '/dev/loopN', backed by a file below a driver root.
    :raises LoopFailed: the ioctl failed.
    """
    storage.loop_set_capacity(device)


def detach(device):
    """Detach device (losetup -d); a mounted one goes with its unmount.

    A device in use only has autoclear set by LOOP_CLR_FD (loop(4)).

    :param device: '/dev/loopN', backed by a file below a driver root.
    :raises LoopFailed: it is not attached, or the ioctl failed.
    """
    storage.loop_detach(device)
