"""Write-back throttles at the host's root blkio cgroup (``storage_admin``).

On cgroup v1 the kernel's flusher threads write a container's dirty pages
back from the root cgroup, not the container's
(Documentation/admin-guide/cgroup-v1/blkio-controller.rst), so the
container's own write throttle (lxc.conf, limits.render_io) would not bind
its buffered writes; limits.writeback_rules gives the same throttle to the
instance's own loop devices at the root. Those files are root's 0644 in
the host's cgroup tree, so they are written here, in the daemon. On cgroup
v2 write-back is charged to the writer's cgroup (cgroup-v2.rst,
"Writeback") and the root has no io.max: there is nothing to do.

Each entry point takes device numbers (``'MAJ:MIN'``) and refuses one
that is not a loop device backed by a file below a driver root
(:func:`novalxcdriver.privsep.storage.check_path`): a caller cannot
throttle, or unthrottle, the host's own disks. Throttle values are checked
too; the lines written are rendered here, never taken from the caller.
"""

import os
import re

from oslo_log import log as logging

from novalxcdriver import exception
from novalxcdriver import limits
from novalxcdriver import privsep
from novalxcdriver.privsep import storage

LOG = logging.getLogger(__name__)

ROOT_BLKIO = '/sys/fs/cgroup/blkio'
# sysfs names a block device by number (sysfs-dev(5) ABI:
# /sys/dev/block/MAJ:MIN).
_NUMBER_RE = re.compile(r'^[0-9]{1,4}:[0-9]{1,7}\Z')
_LOOP_NAME_RE = re.compile(r'^loop[0-9]+\Z')
# blkio takes u64 values; limits.py's kinds are the ones a flavor sets.
_MAX_VALUE = (1 << 64) - 1


def has_root_rules(root=None):
    """True on cgroup v1 hosts, whose root blkio cgroup takes rules.

    Needs no privilege: nova-compute asks before a round trip.
    """
    return os.path.exists(os.path.join(root or ROOT_BLKIO,
                                       'blkio.throttle.write_bps_device'))


def check_device(call, number):
    """Refuse number unless it is a loop device's, backed below a root.

    :param number: 'MAJ:MIN'.
    :raises PrivilegedCallRefused: not that shape, not a loop device, or
        backed by a file outside the driver roots.
    :raises LoopFailed: a loop device with nothing attached (any more).
    """
    if not isinstance(number, str) or not _NUMBER_RE.match(number):
        privsep.refuse(call, '%r is not a device number MAJ:MIN'
                       % (number,))
    sysfs = os.path.join(storage.SYS_DEV_BLOCK, number)
    if not os.path.isdir(os.path.join(sysfs, 'loop')):
        # A detached loop device has no loop/ either: told apart by
        # its driver's name, which sysfs keeps.
        if _LOOP_NAME_RE.match(os.path.basename(os.path.realpath(sysfs))):
            raise exception.LoopFailed(path=number, reason='not attached')
        privsep.refuse(call, '%s is not a loop device' % number)
    try:
        with open(os.path.join(sysfs, 'loop', 'backing_file')) as f:
            backing = f.read().rstrip('\n')
    except FileNotFoundError:
        raise exception.LoopFailed(path=number, reason='not attached')
    storage.check_backing(call, backing)


def check_throttles(call, io_throttles):
    """Refuse io_throttles unless it is Limits.io's shape.

    :param io_throttles: [[kind, bytes or IOs per second], ...] with each
        kind one of limits.py's disk_* kinds, once.
    :returns: the same as a tuple of tuples.
    """
    if not isinstance(io_throttles, (list, tuple)):
        privsep.refuse(call, '%r is not a list of throttles'
                       % (io_throttles,))
    result = []
    for pair in io_throttles:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and
                pair[0] in limits.IO_KINDS and type(pair[1]) is int and
                0 <= pair[1] <= _MAX_VALUE):
            privsep.refuse(call, '%r is not [kind, value] with a kind of '
                           '%s' % (pair, ', '.join(limits.IO_KINDS)))
        result.append((pair[0], pair[1]))
    if len({kind for kind, _value in result}) != len(result):
        privsep.refuse(call, 'a kind repeats in %r' % (io_throttles,))
    return tuple(result)


def _write(rules):
    for name, line in rules:
        with open(os.path.join(ROOT_BLKIO, name), 'w') as f:
            f.write(line)


@privsep.storage_admin.entrypoint
def set_writeback(io_throttles, devices):
    """Throttle write-back to each of devices at the root blkio cgroup.

    :param io_throttles: Limits.io, as a list of [kind, value].
    :param devices: list of 'MAJ:MIN' of the instance's own loop devices.
    :raises PrivilegedCallRefused: check_device, check_throttles.
    :raises LoopFailed: a device is no longer attached.
    :raises OSError: the kernel refused a rule (cgroup v1 only; nothing is
        written on cgroup v2).
    """
    call = 'set_writeback'
    io_throttles = check_throttles(call, io_throttles)
    if not isinstance(devices, (list, tuple)):
        privsep.refuse(call, '%r is not a list of devices' % (devices,))
    for number in devices:
        check_device(call, number)
    if not has_root_rules():
        return
    for number in devices:
        _write(limits.writeback_rules(io_throttles, number))


@privsep.storage_admin.entrypoint
def clear_writeback(number):
    """Remove every root blkio throttle of the loop device number.

    :param number: 'MAJ:MIN'.
    :raises PrivilegedCallRefused: check_device.
    :raises LoopFailed: the device is no longer attached (its next attach
        clears it: clear_attached).
    :raises OSError: the kernel refused a rule.
    """
    check_device('clear_writeback', number)
    if has_root_rules():
        _write(limits.clear_rules(number))


def clear_attached(device):
    """Clear what throttles loop device '/dev/loopN' had, in the daemon.

    For storage.mount_disk, right after the attach: loop devices are
    reused, and an earlier user's throttle (or a crash's) must not follow
    the device to this disk. A failure is logged: the disk then keeps
    that throttle until its next attach.
    """
    if not has_root_rules():
        return
    try:
        rdev = os.stat(device).st_rdev
        _write(limits.clear_rules('%d:%d' % (os.major(rdev),
                                             os.minor(rdev))))
    except OSError as e:
        LOG.warning('Cannot clear the blkio throttles of %s: %s', device, e)
