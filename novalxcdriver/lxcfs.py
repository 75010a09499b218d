"""lxcfs: each container's own /proc figures (meminfo, cpuinfo, stat...).

Debian's lxcfs package serves them from a FUSE mount at host.LXCFS_MOUNT;
containers bind its files over their /proc ones (spec.LXCFS_FILES). When no
service runs it (no systemd, or it died), the driver starts it itself.
"""

import os
import time

from oslo_concurrency import lockutils
from oslo_log import log as logging

from novalxcdriver import exception
from novalxcdriver import host
from novalxcdriver import lxc
from novalxcdriver import mount

LOG = logging.getLogger(__name__)

SERVING = 'serving'
STALE = 'stale'
ABSENT = 'absent'

# lxcfs is one per host, whatever the driver's state_path: so is its lock.
LOCK_PATH = '/run/novalxc'


def state():
    """SERVING, STALE (a FUSE mount whose daemon died) or ABSENT.

    A dead FUSE daemon leaves its mount answering ENOTCONN to every
    lookup, so "exists" is False while the mount point is still listed
    in /proc/self/mountinfo.
    """
    if os.path.exists(os.path.join(host.LXCFS_MOUNT, 'proc', 'meminfo')):
        return SERVING
    if host.LXCFS_MOUNT in mount.mountpoints():
        return STALE
    return ABSENT


def ensure(log_path, timeout=10):
    """Make lxcfs serve host.LXCFS_MOUNT, starting it if needed.

    A stale mount is detached first: containers started before keep
    their dead binds until restarted, as with any lxcfs restart.

    :param log_path: file lxcfs's own output is appended to.
    :param timeout: seconds to wait for the files to appear.
    :returns: list of problems (empty once lxcfs serves its files).
    """
    # Two drivers seeing it stale at once must not stack two daemons.
    with lockutils.lock('novalxc-lxcfs', external=True, lock_path=LOCK_PATH):
        return _ensure(log_path, timeout)


def _ensure(log_path, timeout):
    current = state()
    if current == SERVING:
        return []
    if current == STALE:
        LOG.warning('lxcfs mount %s is stale (its daemon died); detaching '
                    'it. Running containers keep stale /proc files until '
                    'they restart.', host.LXCFS_MOUNT)
        try:
            mount.detach_stale(host.LXCFS_MOUNT)
        except exception.MountFailed as e:
            return ['cannot detach the stale lxcfs mount: %s' % e]
    LOG.info('lxcfs is not running; starting it on %s (log: %s)',
             host.LXCFS_MOUNT, log_path)
    os.makedirs(host.LXCFS_MOUNT, exist_ok=True)
    lxc.start_daemon(['lxcfs', host.LXCFS_MOUNT], log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state() == SERVING:
            return []
        time.sleep(0.1)
    return ['lxcfs did not start on %s: see %s'
            % (host.LXCFS_MOUNT, log_path)]
