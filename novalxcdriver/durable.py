"""Durable writes: the one way the driver writes a file that must survive.

A power loss after rename(2) but before write-back can leave the new name
pointing at an empty or torn file on ext4 and xfs alike, unless the data
was fsync'd first, and the rename itself is only durable once the parent
directory is fsync'd (fsync(2), "NOTES"; rename(2)). ``write`` does both,
so readers see the old content or the whole new one, before and after a
crash.
"""

import os
import tempfile


def fsync_dir(path):
    """fsync(2) directory path: renames and creations in it become durable.

    :raises OSError: the directory cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path, data, mode=0o644, sync=True):
    """Replace path's content with data, atomically and durably.

    The data goes to a temporary file beside path, is fsync'd, renamed over
    path, and the directory is fsync'd.

    :param data: str (UTF-8 encoded) or bytes.
    :param mode: permission bits of the file.
    :param sync: False skips both fsyncs: the replacement is atomic for
        other processes at once, and the caller makes it durable later
        with :func:`sync` (to keep fsyncs out of a lock, for instance).
    :raises OSError: nothing was replaced (a full disk: ENOSPC); the
        temporary file is removed.
    """
    if isinstance(data, str):
        data = data.encode('utf-8')
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix='.%s.' % os.path.basename(path), suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync:
        fsync_dir(directory)


def sync(path):
    """fsync(2) file path, then its directory: what write(sync=False) skipped.

    Until this returns, a power loss may leave path missing, empty or
    torn (never a mix with other content: the rename was atomic).

    :raises OSError: path cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
