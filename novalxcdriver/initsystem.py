"""Which init an image's root filesystem runs, read as the container would.

Pure reads of a tree, with no privilege of their own: the image cache's
daemon (privsep.imagecache) runs them on an unpacked rootfs before it
publishes it, diskimage.py on a disk image's mounted partitions to find
the root, and privsep.ownership resolves /etc through the same rules.
Paths resolve with the tree as '/' (path_resolution(7) inside a chroot),
so an image's absolute or climbing symlinks never lead to the host's
files.
"""

import os


def resolve_in_root(root, path, max_links=40):
    """Resolve path as the container would see it, without leaving root.

    Symlinks are followed with root as '/', so an absolute or climbing link
    cannot lead outside (path_resolution(7) inside a chroot).

    :returns: the host path inside root, or None when it does not exist.
    """
    parts = [p for p in path.split('/') if p]
    resolved = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == '.':
            continue
        if part == '..':
            if resolved:
                resolved.pop()
            continue
        host = os.path.join(root, *resolved, part)
        if os.path.islink(host):
            links += 1
            if links > max_links:
                return None
            target = os.readlink(host)
            if target.startswith('/'):
                resolved = []
            parts = [p for p in target.split('/') if p] + parts
            continue
        if not os.path.lexists(host):
            return None
        resolved.append(part)
    return os.path.join(root, *resolved)


def detect_init(rootfs):
    """Which init /sbin/init of rootfs is: a key of spec.INIT_SIGNALS.

    :returns: 'systemd', 'busybox', 'sysvinit', or None when there is no
        executable /sbin/init.
    """
    init = resolve_in_root(rootfs, '/sbin/init')
    if init is None or not os.path.isfile(init):
        return None
    if not os.stat(init).st_mode & 0o111:
        return None
    base = os.path.basename(init)
    if 'systemd' in base:
        return 'systemd'
    if 'busybox' in base:
        return 'busybox'
    return 'sysvinit'
