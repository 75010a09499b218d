"""A disk image's root filesystem copied into an image cache rootfs.

Run only by the confined child of the storage_admin daemon
(unpackchild.py, ``--mode tree``), as root of a user namespace
mapping 0..65535 onto the unpack range (ids.unpack_idmap), between two
idmapped views of the same range: the partition diskimage.py mounted
(read-only) and the new rootfs. The copy keeps on-disk owners 0..65535;
an owner above 65535, which no container's idmap holds either, reads as
the kernel's overflowuid (65534, user_namespaces(7)) and is copied so.

The source is a filesystem a user wrote (a crafted one may hold names
with '/', a directory twice), so entries are checked, symlinks never
followed, and file data adds up to a limit.
"""

import errno
import os
import stat

from novalxcdriver import refusal
from novalxcdriver import tarball


def copy_tree(src, dest, max_bytes):
    """Copy the tree under src into the empty directory dest.

    Numeric owners, mode bits (setuid, setgid, sticky), mtimes, hard links
    (of regular files and FIFOs), symlinks (never followed), FIFOs and
    extended attributes are kept; device nodes and sockets are skipped
    (LXC makes /dev, and a 0/0 character device would be an overlay
    whiteout in the lower layer), and so are the attributes tarball.py
    leaves out (``trusted.*``, ``security.*`` but security.capability).
    Sparse files stay sparse.

    :param max_bytes: the most bytes of regular file data (sizes added
        up; a hard link counts nothing).
    :returns: (bytes of regular file data copied, device nodes and
        sockets skipped).
    :raises DiskImageRefused: the files exceed max_bytes or the free
        space of dest, the filesystem is corrupt (a directory appears
        twice, an entry's name holds '/' or is '.' or '..'), or a file
        below src cannot be read (EACCES: confined, an owner beyond
        0..65535).
    :raises OSError: reading or writing failed.
    """
    try:
        return _copy_tree(src, dest, max_bytes)
    except PermissionError as e:
        if e.filename is None or not os.fsdecode(e.filename).startswith(
                src.rstrip('/') + '/'):
            raise
        # Confined, the copy reads what the image's owners 0..65535 or
        # others may read: a file or directory only an owner beyond them
        # may read is the image's, not the host's, problem.
        raise refusal.DiskImageRefused(
            reason='%s cannot be read: its owner is beyond the 65536 ids '
                   'a container maps' % os.path.relpath(
                       os.fsdecode(e.filename), src)) from e


def _copy_tree(src, dest, max_bytes):
    copier = _Copier(dest, max_bytes)
    root_st = os.lstat(src)
    seen = {(root_st.st_dev, root_st.st_ino)}
    dirs = [(src, dest, root_st)]
    stack = [(src, dest)]
    while stack:
        src_dir, dest_dir = stack.pop()
        with os.scandir(src_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if '/' in entry.name or entry.name in ('.', '..'):
                # Only a corrupt or crafted filesystem returns these; as a
                # path component of dest they would lead out of it.
                raise refusal.DiskImageRefused(
                    reason='directory %r holds an entry named %r: the '
                           'filesystem is corrupt'
                           % (os.path.relpath(src_dir, src), entry.name))
            s = entry.path
            d = os.path.join(dest_dir, entry.name)
            st = os.lstat(s)
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    raise refusal.DiskImageRefused(
                        reason='directory %r appears twice: the filesystem '
                               'is corrupt' % os.path.relpath(s, src))
                seen.add(key)
                os.mkdir(d, 0o700)
                dirs.append((s, d, st))
                stack.append((s, d))
            else:
                copier.copy(s, d, st)
    # Directories last, deepest first: creating their entries changed
    # their mtimes.
    for s, d, st in reversed(dirs):
        copier.metadata(s, d, st)
    return copier.total, copier.skipped


class _Copier:

    def __init__(self, dest, max_bytes):
        self._dest = dest
        self._max_bytes = max_bytes
        self.total = 0
        self.skipped = 0
        self._links = {}

    def copy(self, s, d, st):
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or
                stat.S_ISFIFO(mode)):
            self.skipped += 1
            return
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and not stat.S_ISLNK(mode):
            first = self._links.get(key)
            if first is not None:
                os.link(first, d, follow_symlinks=False)
                return
            self._links[key] = d
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(d, 0o600)
        else:
            self._account(s, st)
            _copy_data(s, d, st.st_size)
        self.metadata(s, d, st)

    def _account(self, s, st):
        if self.total + st.st_size > self._max_bytes:
            raise refusal.DiskImageRefused(
                reason='its files would exceed the limit of %d bytes '
                       '([lxc] image_max_unpacked_gib)' % self._max_bytes)
        vfs = os.statvfs(self._dest)
        free = vfs.f_bavail * vfs.f_frsize
        needed = min(st.st_size, st.st_blocks * 512)
        if needed > free:
            raise refusal.DiskImageRefused(
                reason='%s needs %d bytes but only %d are free in the '
                       'image cache' % (s, needed, free))
        self.total += st.st_size

    @staticmethod
    def metadata(s, d, st):
        """Give d the metadata of s (whose lstat is st).

        Owner, then mode (chown clears setuid bits), then xattrs (chown
        clears security.capability), then times.
        """
        link = stat.S_ISLNK(st.st_mode)
        os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
        if not link:
            os.chmod(d, stat.S_IMODE(st.st_mode))
        for name, value in _xattrs(s):
            try:
                os.setxattr(d, name, value, follow_symlinks=False)
            except OSError as e:
                if link and e.errno in (errno.EPERM, errno.ENOTSUP):
                    continue
                raise
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns),
                 follow_symlinks=False)


def _xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno == errno.ENOTSUP:
            return []
        raise
    result = []
    for name in names:
        if not tarball.kept_xattr(os.fsencode(name)):
            continue
        try:
            result.append((name, os.getxattr(path, name,
                                             follow_symlinks=False)))
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    return result


def _copy_data(src, dest, size):
    """Copy a regular file's data, keeping its holes.

    Data segments are found with SEEK_DATA/SEEK_HOLE (lseek(2)).
    """
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fout = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                       os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(fin, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # only a hole is left
                        break
                    raise
                end = os.lseek(fin, start, os.SEEK_HOLE)
                os.lseek(fout, start, os.SEEK_SET)
                offset = start
                while offset < end:
                    sent = os.sendfile(fout, fin, offset,
                                       min(end - offset, 1 << 30))
                    if sent == 0:
                        break
                    offset += sent
                pos = end
            os.ftruncate(fout, size)
        finally:
            os.close(fout)
    finally:
        os.close(fin)
