"""Mounts the driver makes on the host, and the host's mount table.

The mounts themselves (loop-mounted disks, idmapped views of images,
overlays, unmounts) are made by the ``storage_admin`` privsep daemon
(:mod:`novalxcdriver.privsep.storage`, where their kernel documentation
is cited); the functions here are their callers' names for them. Reading
the mount table (proc(5) mountinfo) and finding a mount's users need no
privilege beyond reading /proc, and stay in nova-compute.
"""

import collections
import os
import re

# storage imports this module back, for its mountinfo readers.
from novalxcdriver.privsep import storage


def disk_image(path, target):
    """Mount the disk image file path on target through a loop device.

    Its filesystem (ext4 or btrfs) is read from its superblock by the
    daemon: the image is root's.

    :returns: the loop device, '/dev/loopN' (autoclear: it goes with the
        unmount).
    :raises DiskUnreadable: the image holds no known filesystem.
    :raises LoopFailed, MountFailed: nothing is left.
    """
    return storage.mount_disk(path, target)


def untrusted_partition(path, target, fstype, offset, size):
    """Mount bytes offset..offset+size of path: ro, nosuid, nodev, noexec.

    For reading the files of a disk image the host does not trust
    (storage.mount_untrusted): nothing on it runs or opens a device from
    the host's side, and no journal is replayed into the image.

    :param fstype: 'ext4', 'xfs' or 'btrfs'.
    :param offset, size: bytes; size 0 for the rest of the file.
    :returns: the loop device's path.
    :raises LoopFailed, MountFailed: nothing is left.
    """
    return storage.mount_untrusted(path, target, fstype, offset, size)


def idmapped_bind(source, target, idmap):
    """Bind source on target, read-only, shifted into idmap's range.

    A file owned by host uid 0 in source appears owned by the container's
    root (``idmap.uid_start``) under target.

    :param idmap: ids.Idmap.
    :raises MountFailed: a syscall failed (errno text in the message).
    :raises CommandFailed: no user namespace was made.
    """
    storage.idmapped_bind(source, target, idmap.fields())


def idmapped_over(target, disk_idmap, idmap):
    """Stack on target an idmapped bind of itself, disk_idmap to idmap.

    Read-write: the disks a migration brought, shown in the container's
    idmap at the paths every other part of the driver uses; what the
    container writes lands in disk_idmap's range, so the disks move on
    unchanged. unmount_tree takes both mounts off.

    :param disk_idmap, idmap: ids.Idmap of equal size.
    :raises MountFailed, CommandFailed: as idmapped_bind.
    """
    storage.idmapped_over(target, disk_idmap.fields(), idmap.fields())


def overlay(lower, upper, work, target):
    """Mount an overlay of upper (read-write) over lower on target.

    :raises MountFailed: mount(2) failed, or a path holds ',', ':', '\\'
        or a newline (overlay options have no escaping).
    """
    storage.overlay(lower, upper, work, target)


def overlay_readonly(lowers, target):
    """Mount a read-only, nosuid, nodev overlay of lowers (top first).

    :param lowers: list of directories, the topmost first.
    :raises MountFailed: as overlay.
    """
    storage.overlay_readonly(list(lowers), target)


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
    storage.unmount(target)


def unmount_tree(top, points=None):
    """Unmount everything mounted at or below top, deepest first.

    Each mount stacked on a point is undone: umount(2) takes off only the
    top one, and a root remounted twice (a crash, a race of two processes
    before the remount lock) must not survive its destroy.

    :param points: this namespace's mount points, read by the caller
        (``table``) in the same operation; default: read now.
    :raises MountBusy: a mount is in use (see ``unmount``); the ones below
        it are undone already, it and those above it stay.
    :raises MountFailed: umount(2) failed otherwise.
    """
    top = os.path.abspath(top)
    # Nothing mounted there (most calls: a cleanup's), no round trip; the
    # daemon reads the table again.
    if below(top, points):
        storage.unmount_tree(top)


def below(top, points=None):
    """The mount points at or below top (list, in mountinfo's order).

    mountinfo names the resolved paths, so top's realpath is matched too:
    a driver root may be a symlink (/var/lib/nova -> /srv/nova).

    :param points: mount points to look in; default this namespace's.
    """
    tops = _names(top)
    return [p for p in (mounts() if points is None else points)
            if any(p == t or p.startswith(t + '/') for t in tops)]


def is_idmapped(point):
    """True when the top mount at point is idmapped (mountinfo says so).

    point's realpath is matched too, as mountinfo names it.
    """
    names = _names(point)
    found = False
    with open('/proc/self/mountinfo', 'rb') as f:
        data = f.read()
    for line in data.split(b'\n'):
        fields = line.split(b' ')
        # Field 6: the mount's own options (proc(5)).
        if len(fields) > 5 and _unescape(fields[4]) in names:
            found = b'idmapped' in fields[5].split(b',')
    return found


def holders(path):
    """Processes with a cwd, root, executable or open file at or below path.

    Reads the /proc/PID/{cwd,root,exe} and /proc/PID/fd/* links (proc(5));
    processes this one may not inspect (another user's, when not root) or
    that exit meanwhile are skipped. Paths are compared as this process's
    mount namespace names them; the links name resolved paths, so path's
    realpath is matched too (a driver root may be a symlink).

    :returns: list of (pid, comm) pairs, by pid; comm is '?' if unreadable.
    """
    tops = _names(os.path.abspath(path))
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
        if any(_at_or_below(target, top)
               for target in map(_readlink, links) for top in tops):
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

# A line of mountinfo (proc(5)): root (field 4, the directory of its
# filesystem the mount shows), point (field 5), fstype and source (after
# the ' - ' separator; None if the line has none).
Mount = collections.namedtuple('Mount', 'root point fstype source')


def _unescape(field):
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]),
                                   field))


def parse_mountinfo(data, points=None):
    """The mounts listed in a mountinfo file, in its order (list of Mount).

    Paths are bytes on the kernel's side: they are decoded as the os
    module decodes file names (os.fsdecode), so any name comes back as the
    str that opens it.

    :param data: bytes of a /proc/PID/mountinfo file (proc(5)).
    :param points: if given, the mounts on these points only (a set of
        paths): the other lines' fields are not decoded.
    """
    result = []
    for line in data.split(b'\n'):
        # Single spaces separate the fields; other whitespace is data.
        fields = line.split(b' ')
        if len(fields) > 4:
            point = _unescape(fields[4])
            if points is None or point in points:
                result.append(Mount(_unescape(fields[3]), point,
                                    *_type_and_source(fields)))
    return result


def _read_mountinfo():
    with open('/proc/self/mountinfo', 'rb') as f:
        return f.read()


def mounts():
    """Mount point of every mount in this namespace, in mountinfo order.

    A point appears once per mount stacked on it (list of absolute paths).
    """
    return [m.point for m in table()]


def roots():
    """Each mount's root in its filesystem (set of paths, mountinfo field 4).

    For a bind mount (an idmapped view of an image) this is the source
    directory, relative to its filesystem's root and under its current
    name: a renamed source shows its new name.
    """
    return {m.root for m in table()}


def table():
    """Every mount in this namespace, in mountinfo order (list of Mount).

    One read of the table for an operation that asks several questions of
    it: with hundreds of containers each read is hundreds of lines.
    """
    return parse_mountinfo(_read_mountinfo())


def _separator(fields):
    # proc(5): the optional fields end at the ' - ' field; None: no such.
    try:
        return fields.index(b'-', 6)
    except ValueError:
        return None


def _type_and_source(fields):
    # proc(5): optional fields, then ' - ', fstype and source.
    sep = _separator(fields)
    if sep is not None and len(fields) > sep + 2:
        return _unescape(fields[sep + 1]), _unescape(fields[sep + 2])
    return None, None


def propagation(path):
    """The mount holding path, and whether it is shared.

    Shared (mountinfo's optional field ``shared:N``, proc(5)): the mounts
    made under it reach its peers and slaves, and so do their unmounts
    (mount_namespaces(7), "Shared subtrees"). A mount namespace cloned
    while a container's disk is mounted below path holds a copy of that
    mount: ``ip netns exec`` and LXC make their copies slaves, which
    lose the copy with the driver's unmount only when the mount holding
    path is shared (systemd makes every mount shared at boot). Under a
    private one the copy keeps the disk's filesystem and its loop device
    alive after the unmount, for as long as that namespace lives.

    :param path: an absolute path; its realpath is what is looked up.
    :returns: (mount point, shared) of the last-listed mount whose point
        is the longest one at or above path's realpath.
    """
    real = os.path.realpath(path)
    found = ('/', False)
    for line in _read_mountinfo().split(b'\n'):
        fields = line.split(b' ')
        if len(fields) < 7:
            continue
        point = _unescape(fields[4])
        if _at_or_below(real, point) and len(point) >= len(found[0]):
            optional = fields[6:_separator(fields)]
            found = (point, any(f.startswith(b'shared:') for f in optional))
    return found


def top(point, mounts_=None):
    """(fstype, source) of the top mount on point, or None if none.

    For btrfs, st_dev of a mounted path is an anonymous device, not the
    block device; the mount's fields after the ' - ' separator (proc(5)
    mountinfo: fstype, then source) name the real one.

    mountinfo names the resolved path: point's realpath is matched too.

    :param mounts_: ``table()`` read by the caller; default: read now
        (only the lines of point are decoded whole).
    """
    names = _names(point)
    if mounts_ is None:
        mounts_ = parse_mountinfo(_read_mountinfo(), names)
    found = None
    for m in mounts_:
        if m.point in names and m.source is not None:
            found = (m.fstype, m.source)
    return found


def source(point, mounts_=None):
    """The source (a device's path) of the top mount on point, or None.

    :param mounts_: ``table()`` read by the caller; default: read now.
    """
    found = top(point, mounts_)
    return found[1] if found else None


def mountpoints():
    """Every mount point in this mount namespace (set of absolute paths).

    Resolved paths, as mountinfo names them: ask ``is_mountpoint`` about
    a path that may lead through a symlink.
    """
    return set(mounts())


def is_mountpoint(path, points=None):
    """True when a mount is on path, or on its realpath.

    A driver root may be a symlink (/var/lib/nova -> /srv/nova) and
    mountinfo (proc(5)) names the resolved path. realpath resolves what
    this process may lstat; the rest of the path is kept as it is.

    :param points: ``mountpoints()`` read by the caller; default: read
        now.
    """
    if points is None:
        points = mountpoints()
    # realpath lstats each component: only when the name alone misses.
    return path in points or bool(points) and (
        os.path.realpath(path) in points)


def _names(path):
    """path and its realpath: the names mountinfo may give its mount."""
    return {path, os.path.realpath(path)}
