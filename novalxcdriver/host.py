"""Facts about the compute host: what it has and whether it can run us.

Read from /proc, /sys and the filesystem holding the driver's state; the
LXC version comes through the lxc module. No state, no side effects.
"""

import os
import platform
import shutil
import stat
import time

from oslo_utils import units

from novalxcdriver import lxc
from novalxcdriver import mount
from novalxcdriver.privsep import lxcconf

# What the driver runs (lxc.py) and what newuidmap-based idmaps need.
REQUIRED_TOOLS = ('lxc-start', 'lxc-stop', 'lxc-info', 'lxc-ls',
                  'lxc-freeze', 'lxc-unfreeze', 'unshare', 'newuidmap',
                  'newgidmap', 'lxcfs',
                  # Disks (privsep/disks.py): made, checked, grown.
                  'mkfs.ext4', 'e2fsck', 'resize2fs',
                  # Snapshots (snapshot.py).
                  'zstd', 'tar', 'find', 'nice', 'ionice',
                  # NICs (vif.py); ethtool for Open vSwitch userspace.
                  'ip', 'nsenter', 'ethtool')

# For [lxc] root_disk_fs = btrfs: made, grown (btrfs filesystem resize),
# and fallocate --dig-holes on each new template (privsep/disks.py).
BTRFS_TOOLS = ('mkfs.btrfs', 'btrfs', 'fallocate')

# The host's machine (uname -m), read once: it cannot change while the
# process runs, and Nova's test harness forbids os.uname in tests.
MACHINE = os.uname().machine


def cpu_count():
    """Online host CPUs available to this process (int)."""
    return len(os.sched_getaffinity(0))


def meminfo():
    """/proc/meminfo as a dict of field name to KiB (int)."""
    result = {}
    with open('/proc/meminfo') as f:
        for line in f:
            name, _sep, rest = line.partition(':')
            fields = rest.split()
            if fields and fields[0].isdigit():
                result[name] = int(fields[0])
    return result


def memory_mb():
    """(total, used) host memory in MiB; used excludes reclaimable cache."""
    info = meminfo()
    total = info['MemTotal'] // 1024
    available = info.get('MemAvailable', info['MemFree']) // 1024
    return total, total - available


def disk_gb(path):
    """(total, used, free) GiB of the filesystem holding path (ints)."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize // units.Gi
    free = st.f_bavail * st.f_frsize // units.Gi
    return total, total - free, free


def arch():
    """Host architecture in Nova's terms (e.g. 'x86_64')."""
    return platform.machine()


def lxc_version_int():
    """LXC's version as an integer, Nova style (5.0.2 -> 5000002)."""
    parts = (lxc.version().split('.') + ['0', '0'])[:3]
    major, minor, patch = (int(''.join(c for c in p if c.isdigit()) or 0)
                           for p in parts)
    return major * 1000000 + minor * 1000 + patch


def cgroup_version():
    """2 on a unified (cgroup v2) host, else 1 (cgroups(7))."""
    if os.path.exists('/sys/fs/cgroup/cgroup.controllers'):
        return 2
    return 1


def swap_accounting():
    """True when memory cgroups can limit swap (memsw files, swap.max)."""
    if cgroup_version() == 2:
        return True
    return os.path.exists('/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes')


LXCFS_MOUNT = lxcconf.LXCFS_MOUNT


def process_alive(pid):
    """True if a process with this pid exists (kill(2) with signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def cmdline(pid):
    """The argv of a live process (list of str); [] if gone or a zombie."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [a.decode(errors='replace') for a in raw.split(b'\0')[:-1]]


def wait_gone(pid, timeout=5.0):
    """Wait until pid has exited, reaping it if it is our child.

    :returns: True if it is gone (or a zombie of another parent) within
        timeout seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            if not cmdline(pid):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def uptime_seconds():
    with open('/proc/uptime') as f:
        return float(f.read().split()[0])


def problems(root_disk_fs='ext4'):
    """Everything this host lacks to run unprivileged LXC containers.

    :param root_disk_fs: filesystem of new root disks ([lxc] root_disk_fs).
    :returns: list of human-readable problems, each saying what to do
        (empty when the host is ready). Subuid ranges are checked by
        ids.IdAllocator.
    """
    found = []
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        found.append('missing commands %s: install the Debian packages lxc, '
                     'uidmap, lxcfs, e2fsprogs, mount and zstd'
                     % ', '.join(missing))
    missing = [t for t in BTRFS_TOOLS if shutil.which(t) is None]
    if root_disk_fs == 'btrfs' and missing:
        found.append('missing commands %s for [lxc] root_disk_fs = btrfs: '
                     'install the Debian packages btrfs-progs and '
                     'util-linux, or set root_disk_fs = ext4'
                     % ', '.join(missing))
    if not os.path.exists('/proc/self/ns/user'):
        found.append('the kernel has no user namespaces '
                     '(CONFIG_USER_NS)')
    else:
        try:
            with open('/proc/sys/user/max_user_namespaces') as f:
                if int(f.read()) == 0:
                    found.append('user namespaces are disabled: set '
                                 'sysctl user.max_user_namespaces > 0')
        except FileNotFoundError:
            pass
    with open('/proc/filesystems') as f:
        if 'overlay' not in f.read().split():
            found.append('the kernel has no overlay filesystem: '
                         'modprobe overlay')
    if not (os.path.isdir('/sys/fs/cgroup/freezer') or
            os.path.exists('/sys/fs/cgroup/cgroup.controllers')):
        found.append('no cgroup freezer: mount the cgroup v1 freezer '
                     'controller or cgroup v2')
    if not os.path.exists('/dev/loop-control'):
        found.append('no loop devices (/dev/loop-control): modprobe loop')
    return found


def private_mount_warning(state_path, wait_seconds):
    """Why the mount holding state_path risks refused remounts, or None.

    Under a private mount, a mount namespace cloned while a container's
    disk is mounted keeps the disk after the driver's unmount
    (mount.propagation). Not a problem init_host refuses: such a disk is
    never mounted twice, its next mount waits for it and then refuses
    (disk.Disk.mount).

    :param wait_seconds: how long that mount waits (disk.ATTACHED_TIMEOUT).
    :returns: a warning naming the mount and what to do, or None when it
        is shared.
    """
    point, shared = mount.propagation(state_path)
    if shared:
        return None
    return ('The mount on %s, which holds state_path %s, is private: a '
            'mount namespace cloned while a container\'s disk is mounted '
            '(ip netns exec, as the OVN metadata agent starts haproxy; '
            'another container starting) keeps the disk\'s filesystem '
            'after the driver unmounts it, and the disk\'s next mount '
            '(hard reboot, power on, a resize\'s revert) waits %d s for it, '
            'then fails. Make it shared, as systemd does at boot: mount '
            '--make-shared %s' % (point, state_path, wait_seconds, point))


def traversal_problems(paths):
    """Directories on the way to paths that container uids cannot cross.

    A container's processes run as host uids of its idmap, "others" to
    every host directory: each directory from / down to lxc_path and
    state_path (those that exist) needs the search bit for others
    (path_resolution(7)), or lxc-start fails with a bare "ABORTING" at
    the container's first start.

    :param paths: absolute directory paths (existing or not).
    :returns: list of problems, each naming the directory and its mode.
    """
    return ['%s (mode %04o) is not searchable by container uids: '
            'chmod o+x %s, or choose [lxc] lxc_path and state_path '
            'below searchable directories' % (directory, mode, directory)
            for directory, mode in unsearchable(paths)]


def unsearchable(paths):
    """Existing directories from / down to each of paths, others -x.

    A path through a symlink (/var/lib/nova -> /srv/nova) is crossed by
    its resolved directories too: stat(2) follows the link, and /srv's
    own mode counts.

    :param paths: absolute directory paths (existing or not).
    :returns: list of (directory, its permission bits), each once, in
        the order met (parents first).
    """
    found = []
    seen = set()
    for path in paths:
        for name in (os.path.abspath(path), os.path.realpath(path)):
            _unsearchable_chain(name, seen, found)
    return found


def _unsearchable_chain(path, seen, found):
    """unsearchable's work for one path: appends to found, adds to seen."""
    chain = []
    current = path
    while True:
        chain.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(chain):
        if directory in seen:
            continue
        seen.add(directory)
        try:
            mode = os.stat(directory).st_mode
        except FileNotFoundError:
            break
        if not mode & stat.S_IXOTH:
            found.append((directory, stat.S_IMODE(mode)))
