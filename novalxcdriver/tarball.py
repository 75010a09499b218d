"""Unpack a root filesystem tarball (a Glance image) into a directory.

The archive comes from a user and is treated as hostile. Its format (plain
tar, gzip, xz, bzip2 or zstd) is detected from its first bytes, never from
a file name, and it is read once, as a stream.

libarchive (through libarchive-c) parses the tar stream and writes the
files (archive_read(3), archive_write_disk(3)): in C, about twice as fast
as Python's tarfile on a Debian root's 8,600 members. Each member is
checked by a filter of our own just before it is written, so the filter
sees what the previous members left on disk; libarchive's own refusals
of ``..`` and of writing through a symlink (ARCHIVE_EXTRACT_SECURE_NODOTDOT,
ARCHIVE_EXTRACT_SECURE_SYMLINKS) stand behind it. The rules take over
those of "Extraction filters" in the Python tarfile documentation
(https://docs.python.org/3/library/tarfile.html#tarfile-extraction-filter),
keeping what a rootfs needs and its stock filters strip: numeric owners,
all mode bits, hard links, symlinks, FIFOs, mtimes and extended
attributes. The first member that breaks a rule stops the whole unpack:

1. Member names are relative, not empty, without NUL and without a ``..``
   component.
2. No parent of a member, as it is on disk at that moment, is a symlink or
   a non-directory. This also stops a symlink planted by an earlier member,
   or by an earlier archive unpacked into the same directory, from being
   written through: "``a`` -> /elsewhere, then ``a/file``", whose
   two-archive form is CVE-2025-45582.
3. Nothing is replaced through a link: a symlink may replace anything but a
   directory; a directory may only land on a directory; a regular file may
   only replace a regular file (an open() would follow a symlink and block
   on a FIFO); FIFOs and hard links only go where nothing is yet.
4. A hard link target is relative, has no ``..``, no symlink among its
   parents, and is on disk an already extracted regular file or FIFO (the
   directory starts empty, so whatever is there was extracted). Hard links
   to symlinks are refused: link(2) links the symlink itself, and a chown
   or chmod of the new name would follow it to wherever it points.
5. A relative symlink target, resolved lexically from the link's own
   directory, stays inside the image root (``etc/x -> ../../etc/shadow`` is
   refused). Absolute targets are allowed: Debian roots are full of them,
   inside the container they resolve within the rootfs, and rules 2 to 4
   keep the extractor from ever following a link. Seen from the host such a
   link points into the host's own tree, so any later host-side code that
   writes into the rootfs must not follow symlinks either.
6. No character or block devices (LXC populates /dev itself); FIFOs are
   harmless and allowed (an overlayfs upper layer's whiteouts,
   unpack_upper, are the one exception). A member of a type tar(5) does
   not define is a regular file, as POSIX.1's pax says.
7. Regular file sizes, added up, stay within ``max_bytes``, and each file
   fits in the free space of the destination; both are checked before the
   file is written, so a compression bomb stops before it fills the disk.
8. Owners are at most ``max_id`` (the unpacker's user namespace maps
   only ids.UNPACK_IDS ids) and mtimes values the kernel accepts; pax
   and GNU long-name headers, which libarchive reads whole into memory,
   are under its 1 MiB limit ("Special header too large"); any warning
   libarchive gives (a pax record it ignored, an owner or time it could
   not set) stops the unpack; the archive must end with its end-of-archive
   marker (libarchive itself takes a stream cut at a member boundary for
   the end of a complete archive), and compressed data must match its
   checksums.

Extended attributes come from the ``SCHILY.xattr.*`` pax records that GNU
tar ``--xattrs`` writes (and libarchive's own ``LIBARCHIVE.xattr.*``).
They are set once every member is written, without following symlinks,
because chown clears security.capability and a later member may chown an
inode again (a hard link's name, or a file replaced by one of the same
name).
``trusted.*`` and ``security.*`` attributes other than
``security.capability`` are left out (xattr(7)): only CAP_SYS_ADMIN of
the host's initial user namespace may set or read them, so no container
can use them, the confined unpacker (privsep.unpack) may not set them,
and overlayfs takes a layer's ``trusted.overlay.*`` for its own
metadata (diskimage.py leaves those out of disk images too).

File flags (``SCHILY.fflags``: chattr(1)'s immutable, append-only) and
pax ACL records (``SCHILY.acl.*``) are not applied (no
ARCHIVE_EXTRACT_FFLAGS or _ACL): an immutable file would outlive the
server's delete. POSIX ACLs written as ``system.posix_acl_*`` extended
attributes are set as such. pax global headers are ignored, as libarchive
ignores them (tarfile applied their records to every later member).
"""

import bz2
import ctypes
import gzip
import lzma
import os
import queue
import re
import stat
import threading
import zlib

from libarchive import entry as la_entry
from libarchive import exception as la_exception
from libarchive import extract as la_extract
from libarchive import ffi as la_ffi
from libarchive import read as la_read
import zstandard

from novalxcdriver import refusal

# Compressed formats by magic bytes, each decompressed in Python
# (_DECOMPRESSORS), so that libarchive reads plain tar only.
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

# Extended attributes wait in memory until the end; 100 bytes per
# attribute stand for Python's overhead.
_MAX_XATTR_BYTES = 64 * 1024 * 1024
_XATTR_OVERHEAD = 100
# overlayfs's mark of a directory that hides the lower one's entries.
_OPAQUE = b'trusted.overlay.opaque'
# uid/gid 2**32 - 1 means "unchanged" to chown(2).
_MAX_ID = 2 ** 32 - 2
# Directories _MemberFilter remembers; beyond it, it starts again (a
# hostile archive of millions of directories costs lstat calls, not memory).
_MAX_KNOWN_DIRS = 65536
# Names _MemberFilter remembers as written; beyond it, it looks each
# member's name up on disk again (memory, as above).
_MAX_KNOWN_NAMES = 1 << 20
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
        _extract(_Feed(source), dest_dir, member_filter)
        _read_to_end(source)
        member_filter.finish()
    except (refusal.ArchiveError, refusal.UnsafeArchiveMember):
        raise
    except (EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as e:
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


# archive_write_disk(3): owners, all mode bits and times as the archive
# has them, and libarchive's own refusal of '..' and of writing through a
# symlink, behind our rules. Extended attributes are set by
# _MemberFilter.finish, not by libarchive. A member's atime is its pax
# atime record's, else the time of the unpack (tarfile made it the mtime).
_EXTRACT_FLAGS = (la_extract.EXTRACT_OWNER | la_extract.EXTRACT_PERM |
                  la_extract.EXTRACT_TIME |
                  la_extract.EXTRACT_SECURE_NODOTDOT |
                  la_extract.EXTRACT_SECURE_SYMLINKS)
_TAR_BLOCK = 512
# The end-of-archive marker: two zero blocks (tar(5)).
_END_MARKER_BYTES = 2 * _TAR_BLOCK


def _extract(feed, dest_dir, member_filter):
    """Write each checked member of the tar stream that feed gives.

    libarchive parses the headers and writes the files; each member is
    checked by member_filter just before it is written, so each check sees
    what the members before it left on disk. Raises refusal.ArchiveError
    for what libarchive refuses or fails at.
    """
    # As given: libarchive looks at every component of the paths it writes
    # (ARCHIVE_EXTRACT_SECURE_SYMLINKS), and the confined unpacker may not
    # look at the parents of its working directory.
    root = os.fsencode(dest_dir)
    entry = la_entry.ArchiveEntry()
    buff, size, offset = ctypes.c_void_p(), ctypes.c_size_t(), \
        ctypes.c_longlong()
    try:
        # Only tar: the stream is already decompressed (_DECOMPRESSORS).
        with la_read.new_archive_read('tar', 'none') as archive, \
                la_extract.new_archive_write_disk(_EXTRACT_FLAGS) as writer:
            read_callback = la_ffi.READ_CALLBACK(feed.read)
            la_ffi.read_open(archive, None, la_ffi.NO_OPEN_CB, read_callback,
                             la_ffi.NO_CLOSE_CB)
            data_end = 0
            while True:
                r = _call(feed, la_ffi.read_next_header2, archive,
                          entry._entry_p)
                if r == la_ffi.ARCHIVE_EOF:
                    break
                _check_warning(archive, r, 'reading')
                member = _Member(entry)
                checked = member_filter(member)
                _apply(entry, member, checked, root)
                name = checked['name']
                _write(feed, writer, name, la_ffi.write_header,
                       entry._entry_p)
                # libarchive's tar reader gives only regular files data
                # (a hard link's or FIFO's is a damaged header to it).
                while _call(
                        feed, la_ffi.read_data_block, archive,
                        ctypes.byref(buff), ctypes.byref(size),
                        ctypes.byref(offset)) != la_ffi.ARCHIVE_EOF:
                    _write(feed, writer, name, la_ffi.write_data_block,
                           buff, size, offset)
                _write(feed, writer, name, la_ffi.write_finish_entry)
                data_end = la_ffi.filter_bytes(archive, -1)
            # libarchive takes data ending where a header should start for
            # the end of the archive; a real end has two zero blocks.
            padded_end = -(-data_end // _TAR_BLOCK) * _TAR_BLOCK
            if la_ffi.filter_bytes(archive, -1) - padded_end < \
                    _END_MARKER_BYTES:
                raise refusal.ArchiveError(
                    reason='archive is truncated or corrupt: data ends '
                           'before the end-of-archive marker')
            # Directories get their modes and times here (their fixups).
            _write(feed, writer, '.', la_ffi.write_close)
    except la_exception.ArchiveError as e:
        if feed.error is not None:
            raise feed.error from None
        raise refusal.ArchiveError(
            reason='archive is truncated or corrupt: %s' % e.msg) from None


def _call(feed, function, *args):
    """function(*args), raising what the stream's read raised instead."""
    try:
        return function(*args)
    finally:
        if feed.error is not None:
            raise feed.error


def _check_warning(archive, retcode, doing):
    # libarchive goes on after ARCHIVE_WARN (a header it could not fully
    # read, an owner or time it could not set); an unpack does not.
    if retcode == la_ffi.ARCHIVE_WARN:
        raise refusal.ArchiveError(reason='%s: %s' % (
            doing, la_ffi._error_string(archive)))


def _write(feed, writer, name, function, *args):
    """function(writer, *args): a write call of libarchive's for member name.

    Its failure (a full disk, an owner the kernel refuses) raises
    refusal.ArchiveError naming the member.
    """
    try:
        retcode = _call(feed, function, writer, *args)
    except la_exception.ArchiveError as e:
        reason = e.msg if isinstance(e.msg, str) else repr(e.msg)
        if e.errno and e.errno > 0:
            reason += ' (%s)' % os.strerror(e.errno)
        raise refusal.ArchiveError(reason='extraction failed: writing %r: %s'
                                   % (name, reason)) from None
    if retcode == la_ffi.ARCHIVE_WARN:
        _check_warning(writer, retcode,
                       'extraction failed: writing %r' % name)


def _apply(entry, member, checked, root):
    """Set checked's path, mode, owners and link target on entry."""
    la_ffi.entry_copy_pathname(entry._entry_p, _under(root, checked['name']))
    la_ffi.entry_set_perm(entry._entry_p, checked['mode'])
    la_ffi.entry_set_uid(entry._entry_p, checked.get('uid', member.uid))
    la_ffi.entry_set_gid(entry._entry_p, checked.get('gid', member.gid))
    if 'linkname' in checked:
        _entry_copy_hardlink(entry._entry_p,
                             _under(root, checked['linkname']))
    _entry_xattr_clear(entry._entry_p)


def _under(root, name):
    if name == '.':
        return root
    return root + b'/' + name.encode('utf-8', 'surrogateescape')


class _Feed:
    """The libarchive read callback over a source's read(n).

    What read raises is kept for the caller: an exception cannot cross
    libarchive's C frames, and returning -1 only makes it report a read
    error of its own.
    """

    def __init__(self, source):
        self._source = source
        self._block = None   # libarchive reads it until the next call
        self.error = None

    def read(self, archive_p, context, buffer_pp):
        try:
            self._block = self._source.read(_AHEAD_BLOCK)
        except BaseException as e:
            self.error = e
            return -1
        buffer_pp[0] = ctypes.cast(ctypes.c_char_p(self._block),
                                   ctypes.c_void_p)
        return len(self._block)


def _libarchive_function(name, argtypes, restype):
    """A libarchive function libarchive-c does not wrap (its own copy)."""
    function = la_ffi.libarchive['archive_' + name]
    function.argtypes = argtypes
    function.restype = restype
    return function


_entry_copy_hardlink = _libarchive_function(
    'entry_copy_hardlink', (ctypes.c_void_p, ctypes.c_char_p), None)
_entry_xattr_clear = _libarchive_function(
    'entry_xattr_clear', (ctypes.c_void_p,), None)
_entry_xattr_reset = _libarchive_function(
    'entry_xattr_reset', (ctypes.c_void_p,), ctypes.c_int)
_entry_xattr_next = _libarchive_function(
    'entry_xattr_next', (ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p),
                         ctypes.POINTER(ctypes.c_void_p),
                         ctypes.POINTER(ctypes.c_size_t)), ctypes.c_int)


def _entry_xattrs(entry_p):
    """[(name bytes, value bytes)] of a libarchive entry."""
    xattrs = []
    if not _entry_xattr_reset(entry_p):
        return xattrs
    name, value, size = ctypes.c_char_p(), ctypes.c_void_p(), \
        ctypes.c_size_t()
    while _entry_xattr_next(entry_p, ctypes.byref(name), ctypes.byref(value),
                            ctypes.byref(size)) == la_ffi.ARCHIVE_OK:
        xattrs.append((_xattr_name(name.value),
                       ctypes.string_at(value, size.value)
                       if size.value else b''))
    return xattrs


def _xattr_name(name):
    # GNU tar escapes '=' and '%' in SCHILY.xattr keywords (its xattrs.c);
    # libarchive hands the keyword's rest over as it is.
    return re.sub(b'%(3D|25)', lambda m: b'=' if m.group(1) == b'3D' else b'%',
                  name)


class _Member:
    """A libarchive entry as the checks see it (the names of TarInfo)."""

    __slots__ = ('name', 'linkname', 'mode', 'uid', 'gid', 'mtime', 'size',
                 'kind', 'devmajor', 'devminor', 'xattrs')

    def __init__(self, entry):
        p = entry._entry_p
        self.name = _text(la_ffi.entry_pathname(p))
        self.mode = la_ffi.entry_mode(p)
        self.kind = stat.S_IFMT(self.mode)
        self.linkname = ''
        self.devmajor = self.devminor = 0
        if self.kind == stat.S_IFDIR:
            # tar(5) writes directory names with a trailing slash.
            self.name = self.name.rstrip('/') or self.name[:1]
        elif self.kind == stat.S_IFLNK:
            self.linkname = _text(la_ffi.entry_symlink(p))
        elif self.kind == stat.S_IFCHR or self.kind == stat.S_IFBLK:
            self.devmajor = la_ffi.entry_rdevmajor(p)
            self.devminor = la_ffi.entry_rdevminor(p)
        hardlink = la_ffi.entry_hardlink(p)
        if hardlink is not None:
            self.kind = _HARDLINK
            self.linkname = _text(hardlink)
        self.uid = la_ffi.entry_uid(p)
        self.gid = la_ffi.entry_gid(p)
        self.mtime = la_ffi.entry_mtime(p)
        self.size = la_ffi.entry_size(p)
        self.xattrs = _entry_xattrs(p)

    def isdir(self):
        return self.kind == stat.S_IFDIR

    def issym(self):
        return self.kind == stat.S_IFLNK

    def islnk(self):
        return self.kind == _HARDLINK

    def isreg(self):
        return self.kind == stat.S_IFREG

    def isfifo(self):
        return self.kind == stat.S_IFIFO

    def ischr(self):
        return self.kind == stat.S_IFCHR

    def isblk(self):
        return self.kind == stat.S_IFBLK


# Not a file type: libarchive gives a hard link its target's type (often
# none) and its target's name in the hard link field.
_HARDLINK = -1


def _text(raw):
    return '' if raw is None else raw.decode('utf-8', 'surrogateescape')


# Decompressors that check the stream's own checksums (gzip CRC-32 and
# length, the xz check, bzip2 block CRCs, the zstd frame checksum) as they
# read.
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
    (_Feed and _read_to_end take what comes). stop() ends the thread at
    its next block: source is read at most _AHEAD_BLOCKS + 1 blocks past
    what read() returned.
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
    """Return the compression (a _DECOMPRESSORS key) or raise."""
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


def _is_empty(path):
    with os.scandir(path) as entries:
        return next(entries, None) is None


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
        # libarchive leaves the times of a directory that was already
        # there, such as the root, as they are; finish() sets the root's.
        self._root_mtime = None
        self._xattrs = {}
        self._xattr_bytes = 0
        # Names (relative, '/'-separated) seen on disk as real
        # directories. One stays one for the rest of the unpack: only this
        # unpack writes the tree, rule 3 lets nothing but a directory land
        # on a directory, and libarchive never removes one. Saves an lstat
        # per parent per member (a Debian root has 8,600 members 4 to 6
        # deep).
        self._dirs = set()
        # Into an empty tree only this unpack writes, a name is on disk
        # only if a member had it or had it as a parent (libarchive makes
        # missing parents): the names it gave so far (relative, '/'
        # joined), so that a new name's replace check needs no lstat.
        # None: look every name up (dest_dir was not empty, or too many).
        self._names = set() if _is_empty(dest_dir) else None
        # Free bytes as last read, less what members took since; read
        # again when a member may not fit.
        self._free = None

    def __call__(self, member):
        """Check member; return what to write it as.

        :returns: {'name': its path relative to the root ('.' for the
            root), 'mode': its permission bits, and 'uid', 'gid' when
            they change, 'linkname' (relative) for a hard link}.
        :raises refusal.UnsafeArchiveMember: it breaks a rule.
        """
        parts = self._split(member, member.name, 'name')
        self._check_type(member)
        self._check_metadata(member)
        self._check_parents(member, parts, 'path')
        target = os.path.join(self._dest, *parts)
        if not parts:
            if not member.isdir():
                raise _refuse(member, 'a %s cannot replace the image root'
                              % _member_kind(member))
            self._root_mtime = member.mtime
        else:
            self._check_replace_of(member, parts, target)
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
        elif member.isreg():
            self._account_size(member)
        self._collect_xattrs(member, changes['name'])
        return changes

    def finish(self):
        """Apply what must wait until every member is written."""
        # Parents are real directories (rule 2) and nothing removes a
        # directory (rule 3), so only the last component could be a link.
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
        if self._root_mtime is not None:
            os.utime(self._dest, (self._root_mtime, self._root_mtime))

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
            raise _refuse(member, 'unsupported member type (%s)'
                          % _kind(member.kind))

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
        dirs = self._dirs
        if len(parts) > 1 and '/'.join(parts[:-1]) in dirs:
            # Its parents were checked with it, and stay directories.
            return
        name = None
        for part in parts[:-1]:
            name = part if name is None else name + '/' + part
            if name in dirs:
                continue
            st = _lstat(os.path.join(self._dest, name))
            if st is None:
                # libarchive creates the missing rest as directories.
                return
            if not stat.S_ISDIR(st.st_mode):
                raise _refuse(member, '%s goes through the %s %r' % (
                    what, _kind(st.st_mode), name))
            if len(dirs) >= _MAX_KNOWN_DIRS:
                dirs.clear()
            dirs.add(name)

    def _check_replace_of(self, member, parts, target):
        """_check_replace where target may exist; remember its name."""
        names = self._names
        if names is None:
            self._check_replace(member, target)
            return
        name = '/'.join(parts)
        if name in names:
            self._check_replace(member, target)
        elif len(names) + len(parts) > _MAX_KNOWN_NAMES:
            self._names = None
            self._check_replace(member, target)
            return
        names.add(name)
        for i in range(len(parts) - 1, 0, -1):
            parent = '/'.join(parts[:i])
            if parent in names:
                break
            names.add(parent)

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
        # A sparse file's size is its full size; libarchive writes no data
        # beyond it.
        size = member.size
        if size < 0:
            raise _refuse(member, 'invalid size %d' % size)
        if self.total + size > self._max_bytes:
            raise _refuse(member, 'unpacked files would exceed the limit of '
                          '%d bytes' % self._max_bytes)
        if size and (self._free is None or size > self._free):
            # Read again only when the estimate says it may not fit: it
            # does not count metadata or block rounding, so a member it
            # lets through may still meet a full disk, which libarchive's
            # write reports (ENOSPC).
            self._free = _free_bytes(self._dest)
            if size > self._free:
                raise _refuse(member, 'needs %d bytes but only %d are free'
                              % (size, self._free))
        if self._free is not None:
            self._free -= size
        self.total += size

    def _collect_xattrs(self, member, name):
        # A member replacing an earlier one of the same name replaces its
        # attributes too.
        self._xattrs.pop(name, None)
        self.opaque.discard(name)
        xattrs = member.xattrs
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
