"""Disk I/O throttles at the host's root blkio cgroup (cgroup v1 only).

The container's own cgroup gets its throttles from lxc.conf
(limits.render_io). On cgroup v1, dirty pages are written back by the
kernel's flusher threads in the root cgroup, so the write throttles are
also set there, on the instance's own loop devices (limits.writeback_rules).
Loop devices are reused by later disks: every attach clears what an earlier
user, or a crash, left on the device. On cgroup v2 writeback is charged to
the writer's cgroup (cgroup-v2.rst, "Writeback"), and the root has no
io.max: nothing is done there.
"""

import os

from oslo_log import log as logging

from novalxcdriver import limits as limits_mod

LOG = logging.getLogger(__name__)
ROOT_BLKIO = '/sys/fs/cgroup/blkio'


def _write(rules, root):
    for name, line in rules:
        with open(os.path.join(root, name), 'w') as f:
            f.write(line)


def has_root_rules(root=ROOT_BLKIO):
    """True on cgroup v1 hosts, whose root blkio cgroup takes rules."""
    return os.path.exists(os.path.join(root,
                                       'blkio.throttle.write_bps_device'))


def set_writeback(io_throttles, devices, root=ROOT_BLKIO):
    """Throttle write-back to devices at the root blkio cgroup.

    :param io_throttles: limits.Limits.io.
    :param devices: 'MAJ:MIN' of the instance's own loop devices.
    :raises OSError: the kernel refused a rule.
    """
    if not has_root_rules(root):
        return
    for device in devices:
        _write(limits_mod.writeback_rules(io_throttles, device), root)


def clear(device, root=ROOT_BLKIO):
    """Remove every root blkio throttle of device. Never raises.

    A failure is logged: the device then keeps a throttle until its next
    attach clears it again.
    """
    if not has_root_rules(root):
        return
    try:
        _write(limits_mod.clear_rules(device), root)
    except OSError as e:
        LOG.warning('Cannot clear the blkio throttles of %s: %s', device, e)
