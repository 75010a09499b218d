"""Disk I/O throttles at the host's root blkio cgroup (cgroup v1 only).

The container's own cgroup gets its throttles from lxc.conf
(limits.render_io). On cgroup v1, dirty pages are written back by the
kernel's flusher threads in the root cgroup, so the write throttles are
also set there, on the instance's own loop devices (limits.writeback_rules),
by the storage_admin daemon (privsep.writeback: the root cgroup's files
are root's). Loop devices are reused by later disks: the daemon clears
each device's rules when it attaches a disk (privsep.storage.mount_disk),
and clear removes them before a disk is unmounted. On cgroup v2 nothing is
done (no round trip either).
"""

from oslo_log import log as logging

from novalxcdriver import exception
from novalxcdriver.privsep import writeback

LOG = logging.getLogger(__name__)


def set_writeback(io_throttles, devices):
    """Throttle write-back to devices at the root blkio cgroup.

    :param io_throttles: limits.Limits.io.
    :param devices: 'MAJ:MIN' of the instance's own loop devices.
    :raises OSError: the kernel refused a rule.
    :raises LoopFailed: a device is no longer attached.
    :raises PrivilegedCallRefused: a device is not one of the driver's
        loop devices.
    """
    if not writeback.has_root_rules():
        return
    writeback.set_writeback([list(t) for t in io_throttles], list(devices))


def clear(device):
    """Remove every root blkio throttle of device. Never raises.

    A failure is logged: the device then keeps a throttle until its next
    attach clears it again.

    :param device: 'MAJ:MIN' of one of the instance's loop devices.
    """
    if not writeback.has_root_rules():
        return
    try:
        writeback.clear_writeback(device)
    except (OSError, exception.LoopFailed,
            exception.PrivilegedCallRefused) as e:
        LOG.warning('Cannot clear the blkio throttles of %s: %s', device, e)
