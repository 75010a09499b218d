"""lxcfs: each container's own /proc figures (meminfo, cpuinfo, stat...).

Debian's lxcfs package serves them from a FUSE mount at host.LXCFS_MOUNT;
containers bind its files over their /proc ones (spec.LXCFS_FILES). When no
service runs it (no systemd, or it died), the storage_admin daemon starts
it (privsep.daemons.ensure_lxcfs): lxcfs must be root's.
"""

import os

from novalxcdriver import host
from novalxcdriver import mount
from novalxcdriver.privsep import daemons

SERVING = 'serving'
STALE = 'stale'
ABSENT = 'absent'


def state():
    """SERVING, STALE (a FUSE mount whose daemon died) or ABSENT.

    A dead FUSE daemon leaves its mount answering ENOTCONN to every
    lookup, so "exists" is False while the mount point is still listed
    in /proc/self/mountinfo. Needs no privilege (lxcfs mounts with
    allow_other).
    """
    if os.path.exists(os.path.join(host.LXCFS_MOUNT, 'proc', 'meminfo')):
        return SERVING
    if host.LXCFS_MOUNT in mount.mountpoints():
        return STALE
    return ABSENT


def ensure(state_path, timeout=10):
    """Make lxcfs serve host.LXCFS_MOUNT, starting it if needed.

    Serving (the usual case) costs no privileged call; otherwise the
    daemon detaches a stale mount and starts lxcfs, its output appended
    to ``<state_path>/lxcfs.log``.

    :param state_path: the driver's ``[lxc] state_path``.
    :param timeout: seconds to wait for the files to appear.
    :returns: list of problems (empty once lxcfs serves its files).
    :raises PrivilegedCallRefused: state_path is not a driver root of the
        daemon.
    """
    if state() == SERVING:
        return []
    return daemons.ensure_lxcfs(os.path.normpath(os.path.abspath(
        state_path)), timeout)
