"""Test tooling: what a failed test left on the host under a root, removed.

Shared by the functional suite's private roots and the hardening suite.
Nothing here is the driver's: the tests check the driver's own destroy;
this only makes sure a failed test leaves nothing, and never deletes
through a mount.
"""

import os
import re
import shutil
import subprocess

from novalxcdriver import conf
from novalxcdriver import mount


def force_clean(root):
    """Kill every container under root, unmount it all, remove it all.

    The safety net behind each test: the driver's own destroy is what the
    tests check; this only makes sure a failed test leaves nothing.
    """
    if not os.path.isdir(root):
        return
    # Whatever lxc_path below root they run from (a second driver's
    # lxc-b/, a crash point's own root).
    for lxc_path, name in containers_under(root):
        subprocess.run(['lxc-stop', '-k', '-n', name, '-P', lxc_path],
                       stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
    unmount_all(root)
    for device in loop_devices(root):
        subprocess.run(['losetup', '-d', device], stderr=subprocess.DEVNULL)
    left = mounts_under(root)
    if left:
        # Never delete through a mount.
        print('test cleanup: %s still has mounts %s; not removed'
              % (root, left))
        return
    shutil.rmtree(root, ignore_errors=True)


def containers_under(path):
    """(lxc_path, name) of each running container whose lxc_path is below.

    Read from the LXC monitors' command lines ("[lxc monitor] LXCPATH
    NAME"), so that a container is found even when its directory is
    gone.
    """
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                # The title LXC writes over its argv, NUL-padded.
                words = f.read().decode('utf-8', 'replace').replace(
                    '\0', ' ').split()
        except OSError:
            continue
        if len(words) == 4 and words[:2] == ['[lxc', 'monitor]'] and \
                words[2].startswith(path + '/'):
            found.append((words[2], words[3]))
    return sorted(set(found))


def unmount_all(path):
    """umount(8) everything at or below path, deepest first, as the host.

    Test tooling (a crash's aftermath, a failed test's leftovers): the
    driver's storage daemon mounts only below its own driver roots, and
    these are the workers'.
    """
    # Passes until nothing changes: mounts stacked on one point (a root
    # disk and its idmapped view) go one per umount.
    left = None
    while True:
        points = mounts_under(path)
        if not points or points == left:
            return
        left = points
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(['umount', point], stderr=subprocess.DEVNULL)


def mounts_under(path):
    """Mount points at or below path, once per mount stacked there."""
    return sorted(p for p in mount.mounts()
                  if p == path or p.startswith(path + '/'))


def loop_devices(path):
    """Loop devices whose backing file is under path (deleted ones too)."""
    found = []
    for dev in sorted(os.listdir('/sys/block')):
        backing = os.path.join('/sys/block', dev, 'loop', 'backing_file')
        try:
            with open(backing) as f:
                target = f.read().strip()
        except (FileNotFoundError, NotADirectoryError):
            continue
        if target.startswith(path + '/'):
            found.append('/dev/' + dev)
    return found


CGROUP_ROOT = '/sys/fs/cgroup'


def payload_cgroup(controller, name):
    """A running container's cgroup directory in a cgroup v1 hierarchy.

    Under ``[lxc] cgroup_parent`` (lxc.cgroup.dir) of this process's
    config; LXC's suffix for a taken name (-N) is not guessed here.
    """
    return os.path.join(CGROUP_ROOT, controller,
                        conf.CONF.lxc.cgroup_parent, 'lxc.payload.' + name)


def cgroups_of(names):
    """Host cgroup directories LXC made for these containers.

    Its payload and monitor groups, ``lxc.(payload|monitor).<name>[-N]``,
    at each hierarchy's root (where LXC puts them without a parent) and
    under ``[lxc] cgroup_parent``, for cgroup v1's hierarchies and v2's.
    """
    names = list(names)
    if not names:
        return []
    return cgroups_matching(r'(%s)(-\d+)?' % '|'.join(
        re.escape(n) for n in names))


def cgroups_matching(name_pattern):
    """cgroups_of for the container names name_pattern (a regex) matches."""
    pattern = re.compile(r'^lxc\.(payload|monitor)\.%s$' % name_pattern)
    tops = [CGROUP_ROOT] + [
        os.path.join(CGROUP_ROOT, c) for c in sorted(os.listdir(CGROUP_ROOT))
        if os.path.isdir(os.path.join(CGROUP_ROOT, c))]
    parent = conf.CONF.lxc.cgroup_parent
    found = []
    for top in tops + ([os.path.join(t, parent) for t in tops]
                       if parent else []):
        try:
            entries = os.listdir(top)
        except (FileNotFoundError, NotADirectoryError):
            continue
        found += [os.path.join(top, e) for e in entries if pattern.match(e)]
    return sorted(found)
