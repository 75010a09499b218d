"""Privileged entry points that give files to a container's root.

A container's root is a subordinate uid and gid of the host's root (its
idmap's uid_start and gid_start): its writable layers (upper/, work/), the
top directory of its ephemeral disk, its /etc/hostname and its config
drive are made owned by them. chown(2) to another uid needs CAP_CHOWN, and
the directories these go in are root's, so they are made here, in the
``storage_admin`` daemon (its capabilities include CAP_CHOWN), rather
than in nova-compute. Each entry point first checks, in the daemon, that:

- every path is absolute, normalized and strictly below a driver root,
  with no symlink below the root (storage.check_path): nothing of the
  host's is chowned or written;
- an idmap is ``[uid_start, gid_start, size]`` inside root's subordinate
  ranges (storage.check_idmap): nothing is given to the host's root or
  to an id outside the ranges the host set aside for containers;
- a file of /etc is one of ETC_FILES, a text or a config drive within its
  size bound, a config drive's paths relative and inside it;
- a disk's root directory is a mount point (storage.is_mount_root).

A refusal raises PrivilegedCallRefused and makes nothing. What is made is
made without following a symlink at its last component (O_NOFOLLOW, or a
chown that does not follow), and a container's /etc is found as inside
the container (initsystem.resolve_in_root), so a hostile image's links do not
lead a write out of its root.

oslo.privsep's daemon runs with umask 0: every entry point sets UMASK
first, so that nothing it makes is group- or world-writable whatever mode
it asks for.
"""

import errno
import os
import stat

from novalxcdriver import initsystem
from novalxcdriver import privsep
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import storage

UMASK = lxctools.UMASK
# The files of a container's /etc the driver writes.
ETC_FILES = ('hostname',)
# Bytes; a hostname is at most 253 (an FQDN), so this only refuses
# absurd texts.
MAX_ETC_FILE = 64 * 1024
# Bytes of a config drive's paths and data together. What Nova puts in
# it is small (user_data at most 64 KiB, injected files bounded by the
# injected_file* quotas, metadata and vendor data JSON of a few KiB): the
# cap only keeps a call from filling the host's state_path. Well below
# oslo.privsep's 100 MiB message bound.
MAX_CONFIG_DRIVE = 16 * 1024 * 1024

# write_etc_file's reasons for leaving /etc/<name> alone.
NO_ETC = 'no /etc directory'
ETC_FILE_IS_A_DIRECTORY = 'a directory is in the way'

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
             os.O_CLOEXEC)


def _check_name(call, name):
    if name not in ETC_FILES:
        privsep.refuse(call, '%r is not one of /etc\'s %s'
                       % (name, ', '.join(ETC_FILES)))


def _check_text(call, text):
    """Refuse unless text is a str of at most MAX_ETC_FILE bytes; them."""
    if isinstance(text, str):
        try:
            data = text.encode()
        except UnicodeError:  # a lone surrogate
            data = None
        if data is not None and len(data) <= MAX_ETC_FILE:
            return data
    privsep.refuse(call, 'a text is a str of at most %d bytes of UTF-8'
                   % MAX_ETC_FILE)


def _check_files(call, files):
    """Refuse unless files are [relative path, bytes] pairs within bounds.

    :returns: list of (path components, bytes).
    """
    if not isinstance(files, (list, tuple)):
        privsep.refuse(call, 'files is not a list of [path, bytes]')
    checked, seen, total = [], set(), 0
    for entry in files:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or \
                not isinstance(entry[0], str) or \
                not isinstance(entry[1], bytes):
            privsep.refuse(call, '%.100r is not [path, bytes]' % (entry,))
        rel, data = entry
        parts = rel.split('/')
        try:
            name = os.fsencode(rel)
        except UnicodeError:
            name = None
        if name is None or rel.startswith('/') or '\0' in rel or \
                any(p in ('', '.', '..') for p in parts):
            privsep.refuse(call, 'config drive path %r refused' % rel)
        if rel in seen:
            privsep.refuse(call, 'config drive path %r given twice' % rel)
        seen.add(rel)
        total += len(name) + len(data)
        if total > MAX_CONFIG_DRIVE:
            privsep.refuse(call, 'a config drive is at most %d bytes'
                           % MAX_CONFIG_DRIVE)
        checked.append((parts, data))
    return checked


def _subdir(parent_fd, name, uid, gid):
    """Open directory name of parent_fd, made 0500 and owned if missing.

    :returns: its fd (O_NOFOLLOW: a symlink there raises OSError).
    """
    try:
        os.mkdir(name, 0o500, dir_fd=parent_fd)
    except FileExistsError:
        pass
    else:
        os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


@privsep.storage_admin.entrypoint
def make_owned_dir(path, idmap):
    """Make directory path, mode 0755, owned by the idmap's root.

    :param idmap: [uid_start, gid_start, size] (an ids.Idmap's fields).
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises FileExistsError: path exists.
    :raises IdmapUnavailable: root's subuid or subgid range is unreadable.
    """
    call = 'make_owned_dir'
    storage.check_path(call, path)
    checked = storage.check_idmap(call, idmap)
    os.umask(UMASK)
    os.mkdir(path, 0o755)
    # Not following: had path become a link meanwhile, only it changes.
    os.chown(path, checked.uid_start, checked.gid_start,
             follow_symlinks=False)


@privsep.storage_admin.entrypoint
def write_etc_file(merged, name, text, idmap):
    """Write /etc/<name> of the root mounted at merged: 0644, idmap's root's.

    /etc resolves as inside the container (initsystem.resolve_in_root), so a
    hostile image's links cannot lead the write out of its root; an
    existing /etc/<name> is replaced, a link there never followed. The
    container must be stopped.

    :param name: one of ETC_FILES.
    :param text: str of at most MAX_ETC_FILE bytes (UTF-8).
    :param idmap: [uid_start, gid_start, size].
    :returns: None when written; else why it was left alone, NO_ETC or
        ETC_FILE_IS_A_DIRECTORY.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises IdmapUnavailable: root's subuid or subgid range is unreadable.
    :raises OSError: the write failed.
    """
    call = 'write_etc_file'
    storage.check_path(call, merged)
    _check_name(call, name)
    data = _check_text(call, text)
    checked = storage.check_idmap(call, idmap)
    os.umask(UMASK)
    etc = initsystem.resolve_in_root(merged, '/etc')
    if etc is None or os.path.islink(etc) or not os.path.isdir(etc):
        return NO_ETC
    dir_fd = os.open(etc, _DIR_FLAGS)
    try:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            return ETC_FILE_IS_A_DIRECTORY
        fd = os.open(name, _NEW_FILE, 0o644, dir_fd=dir_fd)
        with os.fdopen(fd, 'wb') as f:
            os.fchown(fd, checked.uid_start, checked.gid_start)
            f.write(data)
    finally:
        os.close(dir_fd)
    return None


@privsep.storage_admin.entrypoint
def write_config_drive(path, files, idmap):
    """Make directory path holding files, all the idmap's root's.

    Directories are 0500 and files 0400, as only root reads a config
    drive it mounts. Every path is checked before anything is made.

    :param path: the directory to make, below a driver root.
    :param files: list of [relative path, bytes]: no path absolute or
        with an empty, '.' or '..' component, none twice, all of them
        and their data at most MAX_CONFIG_DRIVE bytes.
    :param idmap: [uid_start, gid_start, size].
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises FileExistsError: path exists.
    :raises IdmapUnavailable: root's subuid or subgid range is unreadable.
    :raises OSError: a write failed, or one file's path is a directory
        of another's ('a' and 'a/b'); what was made stays.
    """
    call = 'write_config_drive'
    storage.check_path(call, path)
    checked_files = _check_files(call, files)
    checked = storage.check_idmap(call, idmap)
    uid, gid = checked.uid_start, checked.gid_start
    os.umask(UMASK)
    os.mkdir(path, 0o500)
    os.chown(path, uid, gid, follow_symlinks=False)
    top = os.open(path, _DIR_FLAGS)
    try:
        for parts, data in checked_files:
            parent = top
            try:
                for part in parts[:-1]:
                    fd = _subdir(parent, part, uid, gid)
                    if parent != top:
                        os.close(parent)
                    parent = fd
                fd = os.open(parts[-1], _NEW_FILE, 0o400, dir_fd=parent)
                with os.fdopen(fd, 'wb') as f:
                    os.fchown(fd, uid, gid)
                    f.write(data)
            finally:
                if parent != top:
                    os.close(parent)
    finally:
        os.close(top)


@privsep.storage_admin.entrypoint
def give_disk_root(mountpoint, idmap):
    """Ready the root directory of a disk just made and mounted there.

    Mode 0755, owned by the idmap's root, or left host root's when idmap
    is None (a root disk's top directory, holding upper/ and work/); an
    empty lost+found (mkfs.ext4's) is removed.

    :param idmap: [uid_start, gid_start, size], or None.
    :raises PrivilegedCallRefused: the checks (module docstring), or
        mountpoint is not a mount point.
    :raises IdmapUnavailable: root's subuid or subgid range is unreadable.
    """
    call = 'give_disk_root'
    storage.check_path(call, mountpoint)
    checked = None if idmap is None else storage.check_idmap(call, idmap)
    if not storage.is_mount_root(mountpoint):
        privsep.refuse(call, '%s is not a mount point' % mountpoint)
    os.umask(UMASK)
    fd = os.open(mountpoint, _DIR_FLAGS)
    try:
        if checked is not None:
            os.fchown(fd, checked.uid_start, checked.gid_start)
        # After the chown, which clears set-id bits.
        os.fchmod(fd, 0o755)
        try:
            st = os.lstat('lost+found', dir_fd=fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir('lost+found', dir_fd=fd)
            except OSError as e:
                # Not empty: not mkfs's any more; left as it is.
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
    finally:
        os.close(fd)
