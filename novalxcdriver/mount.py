"""Mounts the driver makes on the host, through the kernel's syscalls.

An idmapped mount (mount_setattr(2) with MOUNT_ATTR_IDMAP) shows the shared,
unshifted image directory to a container's user namespace as if owned by
that container's range, without chowning a file. Overlay (kernel
Documentation/filesystems/overlayfs.rst) stacks a per-container upper
directory on that view; an overlay mount itself cannot be idmapped, so the
idmap goes on the lower layer. Syscall numbers are x86_64's.
"""

import ctypes
import ctypes.util
import errno
import os
import re

from novalxcdriver import exception

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)

# asm/unistd_64.h
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
# linux/mount.h, fcntl.h
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MOUNT_ATTR_IDMAP = 0x100000
_MNT_DETACH = 2  # sys/mount.h
_MS_RDONLY = 1  # sys/mount.h
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8

# Processes a MountBusy message names at most.
_MAX_NAMED = 10


class _MountAttr(ctypes.Structure):
    # struct mount_attr, linux/mount.h (MOUNT_ATTR_SIZE_VER0 = 32 bytes)
    _fields_ = [('attr_set', ctypes.c_uint64),
                ('attr_clr', ctypes.c_uint64),
                ('propagation', ctypes.c_uint64),
                ('userns_fd', ctypes.c_uint64)]


def _check(result, what, target):
    if result < 0:
        err = ctypes.get_errno()
        raise exception.MountFailed(what=what, target=target,
                                    reason=os.strerror(err))
    return result


def idmapped_bind(source, target, userns_fd):
    """Bind source on target, read-only, shifted by userns_fd's idmap.

    A file owned by host uid 0 in source appears owned by the namespace's
    first mapped host uid (the container's root) under target.

    :param userns_fd: an open /proc/PID/ns/user fd (lxc.user_namespace).
    :raises MountFailed: a syscall failed (errno text in the message).
    """
    # Read-only: the shared image must never be written through a view.
    _idmapped(source, target, userns_fd, _MOUNT_ATTR_RDONLY)


def idmapped_over(target, userns_fd):
    """Stack an idmapped bind of the mount at target on target itself.

    Read-write: the disks a migration brought, shown in the container's
    idmap (lxc.shifting_namespace) at the paths every other part of the
    driver uses. unmount_tree takes both mounts off.

    :raises MountFailed: a syscall failed.
    """
    _idmapped(target, target, userns_fd, 0)


def _idmapped(source, target, userns_fd, extra_attr):
    """open_tree(2) a clone of source, idmap it, move_mount(2) on target.

    The new mount API's idmapped mounts (mount_setattr(2),
    MOUNT_ATTR_IDMAP); nodev always, plus extra_attr.
    """
    what = 'idmapped view of %s' % source
    tree = _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source),
                                _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC),
                  what, target)
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_NODEV | extra_attr,
                          0, 0, userns_fd)
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, tree, b'', _AT_EMPTY_PATH,
                             ctypes.byref(attr), ctypes.sizeof(attr)),
               what, target)
        _check(_libc.syscall(_SYS_MOVE_MOUNT, tree, b'', _AT_FDCWD,
                             os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH),
               what, target)
    finally:
        os.close(tree)


def is_idmapped(point):
    """True when the top mount at point is idmapped (mountinfo says so)."""
    found = False
    with open('/proc/self/mountinfo', 'rb') as f:
        data = f.read()
    for line in data.split(b'\n'):
        fields = line.split(b' ')
        # Field 6: the mount's own options (proc(5)).
        if len(fields) > 5 and _unescape(fields[4]) == point:
            found = b'idmapped' in fields[5].split(b',')
    return found


def overlay(lower, upper, work, target):
    """Mount an overlay of upper (read-write) over lower on target.

    :raises MountFailed: mount(2) failed.
    """
    for path in (lower, upper, work):
        # Overlay options are comma/colon separated with no escaping.
        if any(c in path for c in ',:\\\n'):
            raise exception.MountFailed(
                what='overlay', target=target,
                reason='unsupported character in path %r' % path)
    options = 'lowerdir=%s,upperdir=%s,workdir=%s' % (lower, upper, work)
    _check(_libc.mount(b'overlay', os.fsencode(target), b'overlay', 0,
                       options.encode()), 'overlay', target)


def overlay_readonly(lowers, target):
    """Mount a read-only overlay of lowers (top first) on target.

    With no upper layer the overlay is read-only by itself (overlayfs
    docs, "Multiple lower layers"); nosuid and nodev are set too, since
    host processes read the tree. Whiteouts and opaque directories in
    the upper lowers apply to those below.

    :param lowers: list of directories, the topmost first.
    :raises MountFailed: mount(2) failed.
    """
    for path in lowers:
        if any(c in path for c in ',:\\\n'):
            raise exception.MountFailed(
                what='overlay', target=target,
                reason='unsupported character in path %r' % path)
    options = 'lowerdir=%s' % ':'.join(lowers)
    _check(_libc.mount(b'overlay', os.fsencode(target), b'overlay',
                       _MS_RDONLY | _MS_NOSUID | _MS_NODEV,
                       options.encode()), 'overlay', target)


def block_device(device, target, fstype):
    """Mount device's fstype filesystem on target, nodev.

    :param fstype: 'ext4' or 'btrfs'.
    :raises MountFailed: mount(2) failed.
    """
    _check(_libc.mount(os.fsencode(device), os.fsencode(target),
                       fstype.encode(), _MS_NODEV, None),
           '%s %s' % (fstype, device), target)


def readonly(device, target, fstype, options):
    """Mount device's fstype filesystem on target: ro, nosuid, nodev, noexec.

    For reading a filesystem the host does not trust (a disk image's):
    nothing on it runs or opens a device from the host's side.

    :param fstype: the kernel's filesystem name ('ext4', 'xfs', 'btrfs').
    :param options: the filesystem's mount data (mount(8)
        "FILESYSTEM-SPECIFIC MOUNT OPTIONS"), e.g. 'noload'.
    :raises MountFailed: mount(2) failed.
    """
    _check(_libc.mount(os.fsencode(device), os.fsencode(target),
                       fstype.encode(),
                       _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                       options.encode()),
           '%s %s' % (fstype, device), target)


def unmount(target):
    """Unmount target. Idempotent; never detaches lazily.

    A lazy detach (umount2(2) MNT_DETACH) of a busy mount takes it out of
    mountinfo while its users keep it: callers' "still mounted" checks
    then pass, and a destroy deletes the tree and frees the uid range
    while those processes still run in it. A busy mount is refused
    instead.

    :raises MountBusy: EBUSY; the message names the processes using files
        at or below target (see ``holders``).
    :raises MountFailed: for errors other than 'not mounted'.
    """
    if _libc.umount2(os.fsencode(target), 0) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return
    if err == errno.EBUSY:
        found = holders(target)
        if found:
            names = ', '.join('pid %d (%s)' % h for h in found[:_MAX_NAMED])
            if len(found) > _MAX_NAMED:
                names += ' and %d more' % (len(found) - _MAX_NAMED)
        else:
            names = ('no process of this mount namespace (a mount below '
                     'it, or a kernel user such as a loop device)')
        raise exception.MountBusy(target=target, holders=names)
    raise exception.MountFailed(what='unmount', target=target,
                                reason=os.strerror(err))


def holders(path):
    """Processes with a cwd, root, executable or open file at or below path.

    Reads the /proc/PID/{cwd,root,exe} and /proc/PID/fd/* links (proc(5));
    processes this one may not inspect (another user's, when not root) or
    that exit meanwhile are skipped. Paths are compared as this process's
    mount namespace names them.

    :returns: list of (pid, comm) pairs, by pid; comm is '?' if unreadable.
    """
    top = os.path.abspath(path)
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        proc = os.path.join('/proc', name)
        links = [os.path.join(proc, n) for n in ('cwd', 'root', 'exe')]
        try:
            links += [os.path.join(proc, 'fd', fd)
                      for fd in os.listdir(os.path.join(proc, 'fd'))]
        except OSError:
            pass
        if any(_at_or_below(_readlink(link), top) for link in links):
            found.append((int(name), _comm(proc)))
    return sorted(found)


def _readlink(link):
    try:
        return os.readlink(link)
    except OSError:
        return None


def _at_or_below(path, top):
    # A deleted file's link reads '<path> (deleted)': still inside.
    return path is not None and (path == top or top == '/' or
                                 path.startswith(top + '/') or
                                 path == top + ' (deleted)')


def _comm(proc):
    try:
        with open(os.path.join(proc, 'comm'), 'rb') as f:
            return os.fsdecode(f.read().rstrip(b'\n'))
    except OSError:
        return '?'


# proc(5): mountinfo escapes space, tab, newline and backslash in paths
# as octal (the kernel's show_mountinfo mangles exactly " \t\n\\").
_ESCAPE = re.compile(rb'\\(040|011|012|134)')


def _unescape(field):
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]),
                                   field))


def parse_mountinfo(data):
    """The mounts listed in a mountinfo file, in its order.

    Paths are bytes on the kernel's side: they are decoded as the os
    module decodes file names (os.fsdecode), so any name comes back as the
    str that opens it.

    :param data: bytes of a /proc/PID/mountinfo file (proc(5)).
    :returns: list of (root, point) str pairs: root (field 4) is the
        directory of its filesystem the mount shows, which is a bind
        mount's source under its current name; point (field 5) is where
        it is mounted.
    """
    result = []
    for line in data.split(b'\n'):
        # Single spaces separate the fields; other whitespace is data.
        fields = line.split(b' ')
        if len(fields) > 4:
            result.append((_unescape(fields[3]), _unescape(fields[4])))
    return result


def _mountinfo():
    with open('/proc/self/mountinfo', 'rb') as f:
        return parse_mountinfo(f.read())


def mounts():
    """Mount point of every mount in this namespace, in mountinfo order.

    A point appears once per mount stacked on it (list of absolute paths).
    """
    return [point for _, point in _mountinfo()]


def roots():
    """Each mount's root in its filesystem (set of paths, mountinfo field 4).

    For a bind mount (an idmapped view of an image) this is the source
    directory, relative to its filesystem's root and under its current
    name: a renamed source shows its new name.
    """
    return {root for root, _ in _mountinfo()}


def source(point):
    """The source (a device's path) of the top mount on point, or None.

    For btrfs, st_dev of a mounted path is an anonymous device, not the
    block device; the mount's source field (proc(5) mountinfo, after the
    ' - ' separator: fstype, then source) names the real one.
    """
    with open('/proc/self/mountinfo', 'rb') as f:
        data = f.read()
    found = None
    for line in data.split(b'\n'):
        fields = line.split(b' ')
        if len(fields) > 4 and _unescape(fields[4]) == point:
            try:
                sep = fields.index(b'-', 6)
            except ValueError:
                continue
            if len(fields) > sep + 2:
                found = _unescape(fields[sep + 2])
    return found


def mountpoints():
    """Every mount point in this mount namespace (set of absolute paths)."""
    return set(mounts())


def detach_stale(target):
    """Detach a mount lazily (umount2(2) MNT_DETACH). Idempotent.

    Only for a mount nothing is deleted under, such as lxcfs's FUSE mount
    once its daemon died: its users keep it until they let go, as with any
    lxcfs restart. Never for a container's disks (see ``unmount``).

    :raises MountFailed: for errors other than 'not mounted'.
    """
    if _libc.umount2(os.fsencode(target), _MNT_DETACH) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOENT):
        raise exception.MountFailed(what='lazy unmount', target=target,
                                    reason=os.strerror(err))


def unmount_tree(top):
    """Unmount everything mounted at or below top, deepest first.

    Each mount stacked on a point is undone: umount(2) takes off only the
    top one, and a root remounted twice (a crash, a race of two processes
    before the remount lock) must not survive its destroy.

    :raises MountBusy: a mount is in use (see ``unmount``); the ones below
        it are undone already, it and those above it stay.
    :raises MountFailed: umount(2) failed otherwise.
    """
    top = os.path.abspath(top)
    inside = [p for p in mounts() if p == top or p.startswith(top + '/')]
    for point in sorted(inside, key=len, reverse=True):
        unmount(point)
