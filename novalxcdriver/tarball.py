"""Unpack a root filesystem tarball (a Glance image) into a directory.

The archive comes from a user and is treated as hostile. Its format (plain
tar, gzip, xz, bzip2 or zstd) is detected from its first bytes, never from
a file name, and it is read once, as a stream.

Extraction uses :meth:`tarfile.TarFile.extractall` with a filter of our
own. The stock ``'data'`` and ``'tar'`` filters described in "Extraction
filters" of the Python tarfile documentation
(https://docs.python.org/3/library/tarfile.html#tarfile-extraction-filter)
strip setuid bits and owners, which a rootfs needs; ours keeps numeric
owners, all mode bits, hard links, symlinks, FIFOs, mtimes and extended
attributes, and takes over the safety rules of that document. tarfile calls
the filter for each member just before writing it, so the filter sees what
the previous members left on disk. The first member that breaks a rule
stops the whole unpack:

1. Member names are relative, not empty, without NUL and without a ``..``
   component.
2. No parent of a member, as it is on disk at that moment, is a symlink or
   a non-directory. This also stops a symlink planted by an earlier member,
   or by an earlier archive unpacked into the same directory, from being
   written through: "``a`` -> /elsewhere, then ``a/file``", whose
   two-archive form is CVE-2025-45582.
3. Nothing is replaced through a link: a symlink may replace anything but a
   directory; a directory may only land on a directory; a regular file may
   only replace a regular file (tarfile's open() would follow a symlink and
   block on a FIFO); FIFOs and hard links only go where nothing is yet.
4. A hard link target is relative, has no ``..``, no symlink among its
   parents, and is on disk an already extracted regular file or FIFO (the
   directory starts empty, so whatever is there was extracted). Hard links
   to symlinks are refused: link(2) links the symlink itself, then tarfile
   chowns and chmods the new name, which follows the symlink to wherever it
   points.
5. A relative symlink target, resolved lexically from the link's own
   directory, stays inside the image root (``etc/x -> ../../etc/shadow`` is
   refused). Absolute targets are allowed: Debian roots are full of them,
   inside the container they resolve within the rootfs, and rules 2 to 4
   keep the extractor from ever following a link. Seen from the host such a
   link points into the host's own tree, so any later host-side code that
   writes into the rootfs must not follow symlinks either.
6. No character or block devices (LXC populates /dev itself) and no
   unknown member types; FIFOs are harmless and allowed (an overlayfs
   upper layer's whiteouts, unpack_upper, are the one exception).
7. Regular file sizes, added up, stay within ``max_bytes``, and each file
   fits in the free space of the destination; both are checked before the
   file is written, so a compression bomb stops before it fills the disk.
8. Owners are at most ``max_id`` (the unpacker's user namespace maps
   only ids.UNPACK_IDS ids) and mtimes values the kernel accepts; pax
   and GNU long-name
   headers, which tarfile reads whole into memory, are at most 8 MiB; the
   archive must end with its end-of-archive marker (tarfile itself takes a
   stream cut at a member boundary, or a corrupt header, for the end of a
   complete archive), and compressed data must match its checksums.

Extended attributes come from the ``SCHILY.xattr.*`` pax records that GNU
tar ``--xattrs`` writes. They are set after extractall() has finished,
without following symlinks, because chown clears security.capability and
tarfile chowns a hard-linked inode again when it extracts the link.
``trusted.*`` and ``security.*`` attributes other than
``security.capability`` are left out (xattr(7)): only CAP_SYS_ADMIN of
the host's initial user namespace may set or read them, so no container
can use them, the confined unpacker (privsep.unpack) may not set them,
and overlayfs takes a layer's ``trusted.overlay.*`` for its own
metadata (diskimage.py leaves those out of disk images too).
"""

import bz2
import copy
import gzip
import lzma
import os
import queue
import re
import stat
import tarfile
import threading
import zlib

import zstandard

from novalxcdriver import refusal

# Compressed formats by magic bytes, as tarfile stream-mode suffixes; zstd
# is not one of them and is decompressed with the zstandard package.
_COMPRESSED_MAGIC = (
    (b'\x1f\x8b', 'gz'),
    (b'\xfd7zXZ\x00', 'xz'),
    (b'BZh', 'bz2'),
    (b'\x28\xb5\x2f\xfd', 'zst'),
)
_TAR_MAGIC = b'ustar'
_TAR_MAGIC_OFFSET = 257

# Things uploaded by mistake, named in the error (offset, magic, name).
# The ISO 9660 check comes before the boot sector one: hybrid ISOs have both.
_KNOWN_NOT_TAR = (
    (0, b'QFI\xfb', 'qcow2'),
    (0, b'KDMV', 'vmdk'),
    (0, b'vhdxfile', 'vhdx'),
    (0, b'hsqs', 'squashfs'),
    (0, b'PK\x03\x04', 'zip'),
    (0, b'\x04\x22\x4d\x18', 'lz4, which is not supported'),
    (0x8001, b'CD001', 'ISO 9660'),
    (510, b'\x55\xaa', 'raw disk image'),
)
_PEEK_BYTES = 0x8001 + len(b'CD001')

# Header types whose whole content tarfile reads into memory.
_METADATA_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                   tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_MAX_HEADER_BYTES = 8 * 1024 * 1024
# Global pax records are copied into every later member.
_MAX_GLOBAL_PAX_RECORDS = 1024
# Extended attributes wait in memory until the end; 100 bytes per
# attribute stand for Python's overhead.
_MAX_XATTR_BYTES = 64 * 1024 * 1024
_XATTR_OVERHEAD = 100
_XATTR_PREFIX = 'SCHILY.xattr.'
# overlayfs's mark of a directory that hides the lower one's entries.
_OPAQUE = b'trusted.overlay.opaque'
# uid/gid 2**32 - 1 means "unchanged" to chown(2).
_MAX_ID = 2 ** 32 - 2
# Directories _MemberFilter remembers; beyond it, it starts again (a
# hostile archive of millions of directories costs lstat calls, not memory).
_MAX_KNOWN_DIRS = 65536
# Far beyond any real mtime (about 34,000 years), still a valid time_t.
_MAX_MTIME = 2 ** 40


def unpack_stream(stream, dest_dir, max_bytes, head=b'', max_id=None):
    """Unpack a root filesystem archive, read once from stream, into dest_dir.

    :param stream: a binary file object at the archive's start; only its
        read(n) is used, so a download can be unpacked as it arrives. The
        archive is a tarball, plain or compressed with gzip, xz, bzip2 or
        zstd, recognised by content. Reading stops at the end of the
        archive plus at most 16 MiB of trailer (and 5 MiB decompressed
        that a thread reads ahead: _ReadAhead), and is done by that
        thread, so stream.read must be callable from another thread.
    :param dest_dir: an existing, empty directory that becomes the root of
        the unpacked tree.
    :param max_bytes: the most bytes of regular file data to write.
    :param head: the archive's first bytes, already read from stream by
        the caller (to classify it); stream goes on from there.
    :param max_id: the highest uid or gid a member may be owned by; None
        for any the kernel takes.
    :returns: the bytes of regular file data written: the sum of the sizes
        of the regular files (a sparse file counts its full size, a hard
        link nothing).
    :raises refusal.ArchiveError: the content is not a supported tarball,
        it is truncated or corrupt, or extraction failed (the reason says
        which).
    :raises refusal.UnsafeArchiveMember: a member breaks a safety rule of
        the module docstring, including the size limits; nothing has been
        written outside dest_dir.
    :raises OSError: writing into dest_dir failed (reading the stream
        fails as ArchiveError).

    On failure dest_dir holds whatever was extracted until then; removing
    it is up to the caller.
    """
    dest_dir = os.fspath(dest_dir)
    member_filter = _MemberFilter(dest_dir, max_bytes,
                                  _MAX_ID if max_id is None else max_id)
    return _unpack(stream, dest_dir, head, member_filter)


def unpack_upper(stream, dest_dir, max_bytes, uid_offset, gid_offset,
                 max_id):
    """Unpack an overlayfs upper layer's tarball (a migrating server's).

    The rules of unpack_stream, and for what an upper layer holds besides
    an image's files (overlayfs.rst, "whiteouts and opaque directories"):

    - whiteouts, character devices 0/0, are made (mknod(2) allows them in
      a user namespace); no other device. overlayfs shares one whiteout
      inode between names, which GNU tar sends as separate devices; a
      stream's hard links between whiteouts are accepted too;
    - owners in the tarball are the host's (GNU tar ``--numeric-owner`` of
      a layer owned in a container's range): uid_offset and gid_offset are
      taken off, and what is left must be 0..max_id; whiteouts, which
      overlayfs makes as its mounter (the host's root), are the
      namespace's root's whoever owned them;
    - a directory's ``trusted.overlay.opaque`` "y" is not set (only the
      host's root may set trusted.* attributes) but returned, for the
      caller to set; other ``trusted.overlay.*`` attributes (origin,
      impure, uuid: inode bookkeeping of the source's overlay) are left
      out, as unpack_stream leaves every trusted.* one out.

    :returns: (bytes of regular file data written, sorted list of the
        opaque directories' paths relative to dest_dir, '.' for itself).
    :raises: as unpack_stream.
    """
    dest_dir = os.fspath(dest_dir)
    member_filter = _MemberFilter(dest_dir, max_bytes, max_id,
                                  uid_offset=uid_offset,
                                  gid_offset=gid_offset, upper=True)
    total = _unpack(stream, dest_dir, b'', member_filter)
    return total, sorted(member_filter.opaque)


def _unpack(stream, dest_dir, head, member_filter):
    try:
        head += _read_head(stream, _PEEK_BYTES - len(head))
    except OSError as e:
        raise _corrupt(e) from e
    compression = _detect(head)
    archive = _Rewound(head, stream)
    source = None
    try:
        source = _ReadAhead(_DECOMPRESSORS[compression](archive))
        # errorlevel=2 turns failures that tarfile would only note
        # (chown, chmod, utime) into exceptions; debug=0 keeps it quiet.
        with tarfile.open(fileobj=source, mode='r|',
                          tarinfo=_CheckedTarInfo, errorlevel=2, debug=0,
                          errors='surrogateescape') as tar:
            tar.extractall(dest_dir,
                           members=_stream_members(tar, member_filter,
                                                   dest_dir),
                           numeric_owner=True, **_NO_STOCK_FILTER)
        _read_to_end(source)
        member_filter.finish()
    except (refusal.ArchiveError, refusal.UnsafeArchiveMember):
        raise
    except tarfile.ExtractError as e:
        cause = ': %s' % e.__cause__ if e.__cause__ else ''
        raise refusal.ArchiveError(
            reason='extraction failed: %s%s' % (e, cause)) from e
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
            zstandard.ZstdError) as e:
        raise _corrupt(e) from e
    except OSError as e:
        # File system calls name the file; an OSError without a name
        # comes from reading and decompressing the archive.
        if e.filename is None:
            raise _corrupt(e) from e
        raise refusal.ArchiveError(
            reason='extraction failed: %s' % e) from e
    finally:
        if source is not None:
            source.stop()
    return member_filter.total


# Decompressors that check the stream's own checksums (gzip CRC-32 and
# length, the xz check, bzip2 block CRCs, the zstd frame checksum) as they
# read; tarfile's own stream mode never checks a gzip CRC.
_DECOMPRESSORS = {
    '': lambda f: f,
    'gz': lambda f: gzip.GzipFile(fileobj=f, mode='rb'),
    'xz': lzma.LZMAFile,
    'bz2': bz2.BZ2File,
    'zst': lambda f: zstandard.ZstdDecompressor().stream_reader(
        f, read_across_frames=True),
}
# tar pads an archive to 10 KiB records after its end-of-archive marker;
# reading on to the end of the compressed stream checks its checksums.
# Beyond this much, the rest is not read.
_MAX_TRAILER_BYTES = 16 * 1024 * 1024
# _ReadAhead's blocks: 1 MiB each (decompressed), at most 4 waiting.
_AHEAD_BLOCK = 1024 * 1024
_AHEAD_BLOCKS = 4


def _read_head(stream, left):
    """Up to left bytes from stream (fewer only at its end)."""
    parts = []
    while left > 0:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b''.join(parts)


class _Rewound:
    """stream as if head had not been read from it: read(n) only."""

    def __init__(self, head, stream):
        self._head = head
        self._stream = stream

    def read(self, n=-1):
        if not self._head:
            return self._stream.read(n)
        if n is None or n < 0:
            data, self._head = self._head + self._stream.read(), b''
            return data
        data, self._head = self._head[:n], self._head[n:]
        return data


class _ReadAhead:
    """source, read by a thread of its own up to a few MiB ahead.

    zlib, lzma, bz2 and zstandard release the GIL while they decompress,
    so decompression runs beside the extraction, on another core (a
    Debian root in zstd: 0.2 s of its 1.4 s unpack). What source.read
    raises, read() raises in the caller's thread, once the data before it
    has been read; so an archive cut short or corrupt fails where it did.
    Only read(n) is offered, and it may return fewer than n bytes
    (tarfile's stream mode and _read_to_end read on until they have
    enough). stop() ends the thread at its next block: source is read at
    most _AHEAD_BLOCKS + 1 blocks past what read() returned.
    """

    def __init__(self, source):
        self._source = source
        self._blocks = queue.Queue(_AHEAD_BLOCKS)
        self._stopped = threading.Event()
        self._block = memoryview(b'')
        self._end = None      # b'' at the end, or what source raised
        self._thread = threading.Thread(target=self._fill, daemon=True,
                                        name='tarball-read-ahead')
        self._thread.start()

    def _fill(self):
        try:
            while not self._stopped.is_set():
                block = self._source.read(_AHEAD_BLOCK)
                self._put(block)
                if not block:
                    return
        except BaseException as e:
            self._put(e)

    def _put(self, item):
        while not self._stopped.is_set():
            try:
                self._blocks.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def read(self, n=-1):
        if n is None or n < 0:
            return b''.join(iter(lambda: self.read(_AHEAD_BLOCK), b''))
        while not self._block:
            if self._end is None:
                item = self._blocks.get()
                if isinstance(item, BaseException) or not item:
                    self._end = item
                else:
                    self._block = memoryview(item).cast('B')
                    continue
            if isinstance(self._end, BaseException):
                raise self._end
            return b''
        data = self._block[:n].tobytes()
        self._block = self._block[n:]
        return data

    def stop(self):
        """Stop reading ahead (the thread ends at its next block)."""
        self._stopped.set()


def _read_to_end(source):
    left = _MAX_TRAILER_BYTES
    while left > 0:
        chunk = source.read(min(left, 1 << 20))
        if not chunk:
            return
        left -= len(chunk)


def _corrupt(error):
    return refusal.ArchiveError(
        reason='archive is truncated or corrupt: %s' % error)


def _detect(head):
    """Return the tarfile compression suffix ('' for plain tar) or raise."""
    for magic, compression in _COMPRESSED_MAGIC:
        if head.startswith(magic):
            return compression
    magic_end = _TAR_MAGIC_OFFSET + len(_TAR_MAGIC)
    if head[_TAR_MAGIC_OFFSET:magic_end] == _TAR_MAGIC:
        return ''
    if not head:
        raise refusal.ArchiveError(reason='not a tar archive: empty file')
    shown = ''.join(chr(b) if 0x20 <= b < 0x7f and b != 0x5c else '\\x%02x' % b
                    for b in head[:8])
    reason = 'not a tar archive: content starts with %s' % shown
    for offset, magic, name in _KNOWN_NOT_TAR:
        if head[offset:offset + len(magic)] == magic:
            reason += ' (%s?)' % name
            break
    raise refusal.ArchiveError(reason=reason)


# Our checks run in _stream_members, on every Python: extractall()'s
# filter argument only exists from 3.11.4 (Debian 12 has 3.11.2), and from
# 3.14 its default, 'data', would strip the setuid bits and owners a rootfs
# needs. Where the argument exists, tell tarfile to add nothing of its own.
_NO_STOCK_FILTER = ({'filter': 'fully_trusted'}
                    if hasattr(tarfile, 'fully_trusted_filter') else {})


def _stream_members(tar, member_filter, dest_dir):
    """Yield the checked members one at a time.

    extractall() consumes them lazily, so each check sees the files that
    the members before it wrote. tarfile keeps every member it has read in
    tar.members; a stream of millions of empty headers would hold them all
    in memory.
    """
    while True:
        member = tar.next()
        if member is None:
            return
        del tar.members[:]
        yield member_filter(member, dest_dir)


class _CheckedTarInfo(tarfile.TarInfo):
    """TarInfo that bounds what tarfile reads into memory.

    tarfile documents _proc_member() as the method for subclasses to
    override.
    """

    __slots__ = ()

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            # tarfile takes end of data where a header should start for the
            # end of the archive; a real end has zero blocks.
            raise refusal.ArchiveError(
                reason='archive is truncated or corrupt: data ends before '
                       'the end-of-archive marker') from None
        except tarfile.InvalidHeaderError as e:
            # tarfile takes a bad header after the first for the end of
            # the archive too, and drops every member after it.
            raise refusal.ArchiveError(
                reason='archive is truncated or corrupt: %s at byte %d' % (
                    e, tar.offset)) from None

    def _proc_member(self, tar):
        if self.type in _METADATA_TYPES and self.size > _MAX_HEADER_BYTES:
            raise refusal.ArchiveError(
                reason='a %d-byte metadata header exceeds the limit of %d '
                       'bytes' % (self.size, _MAX_HEADER_BYTES))
        member = super()._proc_member(tar)
        if len(tar.pax_headers) > _MAX_GLOBAL_PAX_RECORDS:
            raise refusal.ArchiveError(
                reason='more than %d global pax records'
                       % _MAX_GLOBAL_PAX_RECORDS)
        return member


def _refuse(member, reason):
    return refusal.UnsafeArchiveMember(member=member.name, reason=reason)


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _kind(mode):
    if stat.S_ISDIR(mode):
        return 'directory'
    if stat.S_ISLNK(mode):
        return 'symlink'
    if stat.S_ISREG(mode):
        return 'regular file'
    return 'special file'


def _member_kind(member):
    if member.isdir():
        return 'directory'
    if member.issym():
        return 'symlink'
    if member.islnk():
        return 'hard link'
    if member.isfifo():
        return 'FIFO'
    return 'regular file'


def _free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def kept_xattr(name):
    """Whether the attribute name (bytes) is set (module docstring)."""
    if name.startswith(b'trusted.'):
        return False
    return not name.startswith(b'security.') or \
        name == b'security.capability'


def _is_whiteout(member):
    return member.ischr() and member.devmajor == 0 and member.devminor == 0


def _xattr_name(keyword):
    # GNU tar escapes '=' and '%' in attribute names inside pax keywords.
    name = re.sub('%(3D|25)', lambda m: '=' if m.group(1) == '3D' else '%',
                  keyword[len(_XATTR_PREFIX):])
    return name.encode('utf-8', 'surrogateescape')


class _MemberFilter(object):
    """The extraction filter: checks one member, tracks sizes and xattrs."""

    def __init__(self, dest_dir, max_bytes, max_id=_MAX_ID, uid_offset=0,
                 gid_offset=0, upper=False):
        self._dest = dest_dir
        self._max_bytes = max_bytes
        self._max_id = max_id
        self._offsets = {'uid': uid_offset, 'gid': gid_offset}
        # An overlayfs upper layer (unpack_upper).
        self._upper = upper
        self.opaque = set()
        self.total = 0
        self._xattrs = {}
        self._xattr_bytes = 0
        # tarfile does not set a symlink's mtime; done once it exists.
        self._pending_symlink = None
        # Paths seen on disk as real directories. One stays one for the
        # rest of the unpack: only this unpack writes the tree, rule 3 lets
        # nothing but a directory land on a directory, and tarfile never
        # removes one. Saves an lstat per parent per member (a Debian root
        # has 8,600 members 4 to 6 deep).
        self._dirs = set()

    def __call__(self, member, path):
        self._finish_symlink()
        parts = self._split(member, member.name, 'name')
        self._check_type(member)
        self._check_metadata(member)
        self._check_parents(member, parts, 'path')
        target = os.path.join(self._dest, *parts)
        if not parts:
            if not member.isdir():
                raise _refuse(member, 'a %s cannot replace the image root'
                              % _member_kind(member))
        else:
            self._check_replace(member, target)
        changes = {'name': '/'.join(parts) or '.',
                   'mode': member.mode & 0o7777}
        if self._whiteout(member):
            # The overlay's mounter owns them, the host's root; here the
            # namespace's root does (overlayfs looks at the type alone).
            changes['uid'] = changes['gid'] = 0
        else:
            for field, offset in self._offsets.items():
                if offset:
                    changes[field] = getattr(member, field) - offset
        if member.islnk():
            changes['linkname'] = self._check_hard_link(member)
        elif member.issym():
            self._check_symlink(member, parts)
            self._pending_symlink = (target, member.mtime)
        elif member.isreg():
            self._account_size(member)
        self._collect_xattrs(member, changes['name'])
        # A copy, as TarInfo.replace() (Python >= 3.11.4) would make.
        checked = copy.copy(member)
        for key, value in changes.items():
            setattr(checked, key, value)
        return checked

    def finish(self):
        """Apply what must wait until extractall() has returned."""
        self._finish_symlink()
        # Parents are real directories (rule 2) and tarfile never removes
        # a directory, so only the last component could be a link.
        for name, xattrs in self._xattrs.items():
            path = os.path.join(self._dest, name)
            for key, value in xattrs:
                try:
                    os.setxattr(path, key, value, follow_symlinks=False)
                except OSError as e:
                    raise refusal.ArchiveError(
                        reason='cannot set extended attribute %s on %r: %s'
                               % (key.decode('utf-8', 'backslashreplace'),
                                  name, e.strerror)) from e

    def _finish_symlink(self):
        if self._pending_symlink is not None:
            path, mtime = self._pending_symlink
            self._pending_symlink = None
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    @staticmethod
    def _split(member, path, what):
        """Return the components of a member path, refusing unsafe ones."""
        if not path:
            raise _refuse(member, 'empty %s' % what)
        if '\0' in path:
            raise _refuse(member, 'NUL byte in %s' % what)
        if path.startswith('/'):
            raise _refuse(member, 'absolute %s %r' % (what, path))
        parts = [p for p in path.split('/') if p not in ('', '.')]
        if '..' in parts:
            raise _refuse(member, "'..' in %s %r" % (what, path))
        return parts

    def _check_type(self, member):
        if self._upper and _is_whiteout(member):
            return
        if member.ischr() or member.isblk():
            raise _refuse(member, 'device node (LXC creates /dev itself)')
        if not (member.isreg() or member.isdir() or member.issym() or
                member.islnk() or member.isfifo()):
            raise _refuse(member, 'unsupported member type %r'
                          % member.type.decode('ascii', 'backslashreplace'))

    def _whiteout(self, member):
        """Whether member is an upper layer's whiteout, or a link to one."""
        if not self._upper:
            return False
        if _is_whiteout(member):
            return True
        if not member.islnk():
            return False
        parts = self._split(member, member.linkname, 'hard link target')
        st = _lstat(os.path.join(self._dest, *parts)) if parts else None
        return st is not None and stat.S_ISCHR(st.st_mode) and \
            st.st_rdev == 0

    def _check_metadata(self, member):
        for field in ('uid', 'gid'):
            if self._whiteout(member):
                break
            value = getattr(member, field)
            if not 0 <= value <= _MAX_ID:
                raise _refuse(member, 'invalid %s %r' % (field, value))
            offset = self._offsets[field]
            if not offset <= value <= offset + self._max_id:
                raise _refuse(member, '%s %d is outside %d..%d, the ids '
                              'its files may be owned by'
                              % (field, value, offset,
                                 offset + self._max_id))
        mtime = member.mtime
        # Also false for NaN and infinities.
        if not abs(mtime) < _MAX_MTIME:
            raise _refuse(member, 'invalid mtime %r' % mtime)

    def _check_parents(self, member, parts, what):
        """Refuse a path whose existing parents are not real directories."""
        path = self._dest
        for i, part in enumerate(parts[:-1]):
            path = os.path.join(path, part)
            if path in self._dirs:
                continue
            st = _lstat(path)
            if st is None:
                # tarfile creates the missing rest as plain directories.
                return
            if not stat.S_ISDIR(st.st_mode):
                raise _refuse(member, '%s goes through the %s %r' % (
                    what, _kind(st.st_mode), '/'.join(parts[:i + 1])))
            if len(self._dirs) >= _MAX_KNOWN_DIRS:
                self._dirs.clear()
            self._dirs.add(path)

    @staticmethod
    def _check_replace(member, target):
        st = _lstat(target)
        if st is None:
            return
        existing = st.st_mode
        if stat.S_ISDIR(existing):
            allowed = member.isdir()
        elif stat.S_ISLNK(existing):
            allowed = member.issym()
        elif stat.S_ISREG(existing):
            allowed = member.isreg() or member.issym()
        else:
            allowed = member.issym()
        if not allowed:
            raise _refuse(member, 'a %s cannot replace the existing %s' % (
                _member_kind(member), _kind(existing)))

    def _check_hard_link(self, member):
        parts = self._split(member, member.linkname, 'hard link target')
        if not parts:
            raise _refuse(member, 'hard link to the image root')
        self._check_parents(member, parts, 'hard link target')
        linkname = '/'.join(parts)
        st = _lstat(os.path.join(self._dest, *parts))
        if st is None:
            raise _refuse(member, 'hard link target %r has not been '
                          'extracted' % linkname)
        whiteout = self._upper and stat.S_ISCHR(st.st_mode) and \
            st.st_rdev == 0
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode) or
                whiteout):
            raise _refuse(member, 'hard link to the %s %r' % (
                _kind(st.st_mode), linkname))
        return linkname

    @staticmethod
    def _check_symlink(member, parts):
        target = member.linkname
        if not target:
            raise _refuse(member, 'empty symlink target')
        if '\0' in target:
            raise _refuse(member, 'NUL byte in symlink target')
        if target.startswith('/'):
            return
        depth = len(parts) - 1
        for part in target.split('/'):
            if part == '..':
                depth -= 1
                if depth < 0:
                    raise _refuse(member, 'symlink target %r climbs out of '
                                  'the image root' % target)
            elif part not in ('', '.'):
                depth += 1

    def _account_size(self, member):
        size = member.size
        if member.sparse:
            if any(n < 0 for chunk in member.sparse for n in chunk):
                raise _refuse(member, 'invalid sparse map')
            # The chunks are written before the file is cut to its size.
            size = max(size, sum(n for _, n in member.sparse))
        if size < 0:
            raise _refuse(member, 'invalid size %d' % size)
        if self.total + size > self._max_bytes:
            raise _refuse(member, 'unpacked files would exceed the limit of '
                          '%d bytes' % self._max_bytes)
        free = _free_bytes(self._dest)
        if size > free:
            raise _refuse(member, 'needs %d bytes but only %d are free'
                          % (size, free))
        self.total += size

    def _collect_xattrs(self, member, name):
        # A member replacing an earlier one of the same name replaces its
        # attributes too.
        self._xattrs.pop(name, None)
        self.opaque.discard(name)
        xattrs = [(_xattr_name(k), v.encode('utf-8', 'surrogateescape'))
                  for k, v in member.pax_headers.items()
                  if k.startswith(_XATTR_PREFIX)]
        if self._upper and member.isdir() and \
                (_OPAQUE, b'y') in xattrs:
            self.opaque.add(name)
        xattrs = [(k, v) for k, v in xattrs if kept_xattr(k)]
        if not xattrs:
            return
        self._xattr_bytes += sum(len(k) + len(v) + _XATTR_OVERHEAD
                                 for k, v in xattrs)
        if self._xattr_bytes > _MAX_XATTR_BYTES:
            raise _refuse(member, 'extended attributes exceed %d bytes in '
                          'total' % _MAX_XATTR_BYTES)
        self._xattrs[name] = xattrs
