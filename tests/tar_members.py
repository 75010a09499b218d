"""Tar members for tests that build archives: (TarInfo, data) pairs.

Shared by the unit tests of the unpacker (tests/unit/test_tarball.py) and
the hardening suite's hostile images (tests/hardening/images.py). Every
member gets a fixed mtime, so archives are the same from run to run.
tree_snapshot tells both whether an archive changed anything outside.
"""

import io
import os
import stat
import tarfile

MTIME = 1700000000


class Zeros:
    """File-like object that reads as ``size`` zero bytes."""

    def __init__(self, size):
        self.left = size

    def read(self, size=-1):
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def info(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, **kwargs):
    """A TarInfo; kwargs set further attributes (size, linkname, ...)."""
    member = tarfile.TarInfo(name)
    member.type = kind
    member.mode = mode
    member.uid = uid
    member.gid = gid
    member.mtime = MTIME
    for key, value in kwargs.items():
        setattr(member, key, value)
    return member


def reg(name, data=b'', **kwargs):
    return info(name, size=len(data), **kwargs), io.BytesIO(data)


def zeros(name, size):
    return info(name, size=size), Zeros(size)


def directory(name, mode=0o755, **kwargs):
    return info(name, tarfile.DIRTYPE, mode=mode, **kwargs), None


def symlink(name, target):
    return info(name, tarfile.SYMTYPE, mode=0o777, linkname=target), None


def hardlink(name, target, **kwargs):
    return info(name, tarfile.LNKTYPE, linkname=target, **kwargs), None


def fifo(name):
    return info(name, tarfile.FIFOTYPE), None


def device(name, kind):
    return info(name, kind, mode=0o600, devmajor=1, devminor=3), None


def tree_snapshot(top):
    """Everything about a tree that an attack could change.

    :returns: {relative path: (mode, uid, gid, nlink, mtime_ns, content)};
        content is the bytes of a regular file, else None.
    """
    result = {}
    for root, dirs, files in os.walk(top):
        for name in ['.'] + dirs + files:
            path = os.path.normpath(os.path.join(root, name))
            st = os.lstat(path)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as f:
                    content = f.read()
            result[os.path.relpath(path, top)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_nlink,
                st.st_mtime_ns, content)
    return result
