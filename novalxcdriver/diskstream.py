"""A migrating server's disk images, read from a tar stream into files.

Between two hosts the destination's storage_admin daemon runs ``ssh
<source> tar --create --sparse ...`` (privsep/migrationcopy.py) and its
confined child (unpackchild.py, mode ``disks``) reads the stream here. The
source host's tar is not trusted: a compromised or impersonated source
can send anything. So the stream is parsed only in that child, and what
it may do is write the files it was handed, already open:

- each member is a regular file (GNU tar's sparse members included)
  named exactly as one of the expected disks, each once;
- a member's size is at most max_bytes;
- all expected disks arrive, and nothing else follows them.

Blocks of zeros are skipped, so the copy is sparse whether or not the
source's tar sent holes (GNU tar's ``--sparse`` finds them with
SEEK_DATA/SEEK_HOLE, lseek(2)). Each file is truncated to its member's
size and fsync'd: the source deletes its disks once the migration is
confirmed, so this copy must be on disk by then.
"""

import os
import tarfile
import zlib

from novalxcdriver import refusal

# Read in pieces of this many bytes; within one, pieces of BLOCK bytes
# of zeros are not written (a filesystem's block: they stay holes).
CHUNK = 1 << 20
BLOCK = 4096
_ZEROS = bytes(CHUNK)


def receive(stream, files, max_bytes):
    """Read a tar stream of disk images into open files.

    :param stream: binary file object holding an uncompressed tar.
    :param files: {member name: fd open for writing}, each fd an empty
        regular file.
    :param max_bytes: the most bytes a member may hold (its apparent
        size, holes included).
    :returns: {member name: its size in bytes}.
    :raises UnsafeArchiveMember: a member is not an expected disk, comes
        twice, is not a regular file, or is larger than max_bytes.
    :raises ArchiveError: the stream is no tar, is cut short, lacks a
        disk, or holds more after the disks.
    :raises OSError: writing failed (e.g. ENOSPC).
    """
    sizes = {}
    try:
        with tarfile.open(fileobj=stream, mode='r|') as tar:
            for member in tar:
                if len(sizes) == len(files):
                    _refuse(member.name, 'the stream goes on after the '
                                         'disks')
                _check(member, files, sizes, max_bytes)
                source = tar.extractfile(member)
                _copy(source, files[member.name], member.size)
                sizes[member.name] = member.size
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise refusal.ArchiveError(reason='the disks\' stream is '
                                          'corrupt: %s' % (e,))
    missing = sorted(set(files) - set(sizes))
    if missing:
        raise refusal.ArchiveError(reason='the disks\' stream lacks %s'
                                   % ', '.join(missing))
    return sizes


def _refuse(name, reason):
    raise refusal.UnsafeArchiveMember(member=name, reason=reason)


def _check(member, files, sizes, max_bytes):
    if member.name not in files:
        _refuse(member.name, 'not one of the disks asked for (%s)'
                % ', '.join(sorted(files)))
    if member.name in sizes:
        _refuse(member.name, 'it comes twice')
    if not member.isreg():
        _refuse(member.name, 'not a regular file')
    if member.size < 0:
        _refuse(member.name, 'a negative size, %d' % member.size)
    if member.size > max_bytes:
        _refuse(member.name, '%d bytes, above the %d allowed'
                % (member.size, max_bytes))


def _copy(source, fd, size):
    offset = 0
    while offset < size:
        block = source.read(min(CHUNK, size - offset))
        if not block:
            raise refusal.ArchiveError(reason='the disks\' stream ends '
                                              'inside a disk')
        if block != _ZEROS[:len(block)]:
            _write_data(fd, memoryview(block), offset)
        offset += len(block)
    os.ftruncate(fd, size)
    os.fsync(fd)


def _write_data(fd, block, offset):
    """pwrite block's runs of non-zero BLOCK-sized pieces at offset.

    A piece of zeros stays a hole: the source's own data extents may be
    a few KiB apart (a filesystem's scattered metadata).
    """
    start = None
    for i in range(0, len(block) + BLOCK, BLOCK):
        piece = block[i:i + BLOCK]
        zero = not piece or piece == _ZEROS[:len(piece)]
        if not zero and start is None:
            start = i
        elif zero and start is not None:
            run = block[start:i]
            while run:
                written = os.pwrite(fd, run, offset + start)
                run = run[written:]
                start += written
            start = None
