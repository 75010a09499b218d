"""What a migration's destination receives (``storage_admin``).

A cold migration's destination pulls the source's disks into a root
directory of its own (migration.py). Run as root in nova-compute, the
copy would take the source's address and paths from the disk info, which
nova-compute hands over: a compromised nova-compute could have root pull
an attacker's bytes anywhere, or read root's files into a disk its
tenant sees. So the daemon does it, and decides what it trusts itself
(docs/design/issue-14-privsep-inventory.md 5.12):

- the destination: ``<driver root>/rootfs/<digits>`` of this daemon
  (rootdirs.check_root_dir); each disk is a new file the daemon makes
  there (O_EXCL, root's 0600), never a path or a tree it is given;
- what travels: the disk images, ``root.img`` and ``ephemeral.img``
  (receive_disks); a root without a disk's upper layer (flavor root_gb
  0, receive_upper); the image's cache entry when Glance lost the image
  (receive_image). Nothing else, never a tree into a path the caller
  names;
- ``local``, two services of one machine: the source's root directory
  must be reached from ``/`` through directories of root's that only
  root may write to (or sticky, as /tmp), without a symlink, and hold
  the migration's token (rootdirs.TOKEN, root's 0600): only a root that
  root made and the source marked. Each disk, a regular file opened
  without following a link, is copied by the daemon, reflinked or data
  extents only (disks.copy_fd_sparse);
- ``ssh``, another machine: the daemon runs ``ssh <source> tar --create
  ...`` with the options of its own configuration (``[lxc]
  migration_ssh_user``, ``migration_ssh_port``,
  ``migration_ssh_options``), never the caller's: ssh_config(5) options
  such as ProxyCommand run commands. The source's tar stream is parsed
  only by the confined child of unpack.py (mode ``disks``: a user
  namespace of the unpack range, which owns nothing), which writes into
  the files the daemon opened for it and nothing else
  (diskstream.receive).

Trees (an upper layer, a cache entry) travel as ``tar --xattrs``'s
stream too, on either transport, into the confined child: in the
container's range for an upper layer (tarball.unpack_upper), the unpack
range's idmapped view for an image (tarball.unpack_stream's rules, as a
Glance tarball). What a failed copy made is removed before the error is
raised.
"""

import contextlib
import ipaddress
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile

from oslo_log import log as logging

from novalxcdriver import command
from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import privsep
from novalxcdriver.privsep import disks
from novalxcdriver.privsep import imagecache
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import rootdirs
from novalxcdriver.privsep import storage
from novalxcdriver.privsep import unpack

CONF = conf.CONF
LOG = logging.getLogger(__name__)

DISKS = ('root.img', 'ephemeral.img')
TRANSPORTS = ('local', 'ssh')
# At most a day for one disk (the [lxc] migration_timeout it is given).
MAX_TIMEOUT = 24 * 3600
# ssh_config(5) NAME=VALUE, no blank: rsync's -e (migration.py) splits
# its command at blanks.
SSH_OPTION_RE = re.compile(r'^[A-Za-z][A-Za-z0-9]*=[^\s\'"\\]+\Z')
# What the remote shell gets of a path: no quoting needed, none trusted.
_REMOTE_PATH_RE = re.compile(r'^[A-Za-z0-9/._+-]+\Z')
_STDERR_TAIL = 2000


def ssh_command(host):
    """ssh's argv up to the remote command, from this process's config.

    :param host: the source's IP address (a str ipaddress accepts).
    :raises InvalidSSHOption: an ``[lxc] migration_ssh_options`` entry
        is not NAME=VALUE without blanks or quotes.
    """
    argv = ['ssh', '-T', '-o', 'BatchMode=yes', '-p',
            str(CONF.lxc.migration_ssh_port)]
    for option in CONF.lxc.migration_ssh_options:
        if not SSH_OPTION_RE.match(option):
            raise exception.InvalidSSHOption(option=option)
        argv += ['-o', option]
    user = CONF.lxc.migration_ssh_user
    return argv + ['--', '%s%s' % (user + '@' if user else '', host)]


def tar_command(source, names):
    """The remote shell's command sending source's disks names (pure)."""
    return 'tar --create --sparse --numeric-owner --file=- ' \
           '--directory=%s -- %s' % (shlex.quote(source),
                                     ' '.join(shlex.quote(n) for n in names))


def _check_ip(call, source_ip):
    # ipaddress also takes ints, packed bytes and IPv6 scope ids (any
    # text after '%'), none of which belongs on ssh's command line.
    try:
        if type(source_ip) is not str or '%' in source_ip:
            raise ValueError(source_ip)
        ipaddress.ip_address(source_ip)
    except ValueError:
        privsep.refuse(call, 'source_ip %r is no IP address' % (source_ip,))


def _check(call, root, names, source, token, source_ip, transport,
           max_bytes, timeout):
    rootdirs.check_root_dir(call, root)
    if not isinstance(names, (list, tuple)) or not names or \
            not all(isinstance(n, str) and n in DISKS for n in names) or \
            len(set(names)) != len(names):
        privsep.refuse(call, 'names %r are not distinct disks of %s'
                       % (names, ', '.join(DISKS)))
    _check_source(call, source, token, source_ip, transport, max_bytes,
                  timeout)


def _check_transfer(call, source_ip, transport, max_bytes, timeout):
    """Refuse what every receive takes unless it is well formed."""
    _check_ip(call, source_ip)
    if transport not in TRANSPORTS:
        privsep.refuse(call, 'transport %r is not one of %s'
                       % (transport, ', '.join(TRANSPORTS)))
    privsep.check_positive_ints(call, max_bytes=max_bytes, timeout=timeout)
    if timeout > MAX_TIMEOUT:
        privsep.refuse(call, 'timeout %d is above %d s'
                       % (timeout, MAX_TIMEOUT))


def _check_source(call, source, token, source_ip, transport, max_bytes,
                  timeout):
    rootdirs.check_root_shape(call, source)
    if not _REMOTE_PATH_RE.match(source):
        privsep.refuse(call, 'source %r holds characters a migration\'s '
                       'path never has' % (source,))
    if not isinstance(token, str) or not token:
        privsep.refuse(call, 'token %r is not a non-empty str' % (token,))
    _check_transfer(call, source_ip, transport, max_bytes, timeout)


@privsep.storage_admin.entrypoint
def receive_disks(root, names, source, token, source_ip, transport,
                  max_bytes, timeout):
    """Copy a migrating server's disk images into a new root here.

    :param root: this host's new root directory (``<driver root>/rootfs/
        <digits>``), without any of names.
    :param names: list of distinct names of DISKS to take.
    :param source: the source's root directory (``/.../rootfs/<digits>``,
        letters, digits and ``/._+-`` only).
    :param token: the migration's token, from the disk info.
    :param source_ip: the source host's IP address (ssh).
    :param transport: ``local`` (this machine; verified here, see the
        module docstring) or ``ssh``.
    :param max_bytes: the most bytes of each disk's apparent size (> 0).
    :param timeout: seconds per disk (positive int, at most a day); the
        copy is killed after timeout times len(names).
    :returns: {name: apparent size in bytes}.
    :raises PrivilegedCallRefused: an argument fails the checks; local,
        and the source is not a root directory of root's holding the
        token.
    :raises FileExistsError: a disk of names exists in root (left alone).
    :raises UnsafeArchiveMember, ArchiveError: ssh: the source's stream
        was refused (diskstream.receive).
    :raises MigrationDiskRefused: local: a disk is missing, no regular
        file, or larger than max_bytes.
    :raises CommandFailed, CommandTimedOut: ssh failed, or the copy took
        too long.
    :raises OSError: reading or writing failed (e.g. ENOSPC).
    """
    call = 'receive_disks'
    _check(call, root, names, source, token, source_ip, transport,
           max_bytes, timeout)
    # Local: the source is checked before anything is made here.
    local = _source_dir(call, source, token) if transport == 'local' \
        else None
    made = {}
    try:
        for name in names:
            made[name] = os.open(
                os.path.join(root, name),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                os.O_CLOEXEC, disks.IMAGE_MODE)
        if local is not None:
            sizes = _local(local, made, source, max_bytes)
        else:
            sizes = _ssh(made, source, source_ip, max_bytes,
                         timeout * len(names))
        for fd in made.values():
            os.fsync(fd)
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        for name in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root, name))
        raise
    finally:
        for fd in made.values():
            os.close(fd)
        if local is not None:
            os.close(local)
    LOG.info('Received %s from %s (%s)', ', '.join(names),
             source if transport == 'local' else source_ip, transport)
    return sizes


def _trusted_dir(call, path):
    """fd of directory path, every step of it root's alone (docstring)."""
    fd = os.open('/', os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in [''] + path.strip('/').split('/'):
            if part:
                try:
                    new = os.open(part, os.O_PATH | os.O_DIRECTORY |
                                  os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as e:
                    privsep.refuse(call, '%s: %s is no directory reached '
                                   'without a link (%s)'
                                   % (path, part, e.strerror))
                os.close(fd)
                fd = new
            st = os.fstat(fd)
            if st.st_uid != 0 or (st.st_mode & 0o022 and
                                  not st.st_mode & stat.S_ISVTX):
                privsep.refuse(call, '%s: %s is not root\'s alone (owner '
                               '%d, mode %o)' % (path, part or '/',
                                                 st.st_uid,
                                                 stat.S_IMODE(st.st_mode)))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _source_dir(call, source, token):
    """source's directory, open, once walked and found holding token."""
    dir_fd = _trusted_dir(call, source)
    try:
        # O_PATH cannot read the token: the directory again, for real.
        real = os.open('.', os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                       dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        if not rootdirs.holds_token(source, token, dir_fd=real):
            privsep.refuse(call, '%s does not hold this migration\'s '
                           'token' % source)
    except BaseException:
        os.close(real)
        raise
    return real


def _local(real, made, source, max_bytes):
    """Copy each disk of made from source's open directory real."""
    sizes = {}
    for name, dst in made.items():
        path = os.path.join(source, name)
        try:
            # O_NONBLOCK: a FIFO there must not hold a daemon thread.
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW |
                          os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=real)
        except OSError as e:
            raise exception.MigrationDiskRefused(path=path,
                                                 reason=e.strerror)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise exception.MigrationDiskRefused(
                    path=path, reason='not a regular file')
            if st.st_size > max_bytes:
                raise exception.MigrationDiskRefused(
                    path=path, reason='%d bytes, above the %d '
                    'allowed' % (st.st_size, max_bytes))
            disks.copy_fd_sparse(src, dst)
            # What was copied, should the file have grown meanwhile.
            sizes[name] = os.fstat(dst).st_size
            if sizes[name] > max_bytes:
                raise exception.MigrationDiskRefused(
                    path=path, reason='it grew to %d bytes during the '
                    'copy, above the %d allowed' % (sizes[name],
                                                    max_bytes))
        finally:
            os.close(src)
    return sizes


def _ssh(made, source, source_ip, max_bytes, timeout):
    names = list(made)
    argv = ssh_command(source_ip) + [tar_command(source, names)]
    result = _through_child(
        argv, lambda open_stdin: unpack._start(
            'receive_disks', [], [], open_stdin, 'disks', max_bytes,
            extra_argv=[a for name, fd in made.items()
                        for a in ('--disk', '%s=%d' % (name, fd))],
            pass_fds=tuple(made.values())), timeout)
    sizes = result.get('sizes')
    if not isinstance(sizes, dict) or sorted(sizes) != sorted(names) or \
            not all(type(n) is int and 0 <= n <= max_bytes
                    for n in sizes.values()):
        raise exception.ArchiveError(
            reason='the receiver reported sizes %r' % (sizes,))
    return sizes


def _through_child(argv, start, timeout):
    """Run argv, its stdout the stdin of the child start starts.

    :param argv: the stream's producer (ssh, or tar here).
    :param start: callable(open_stdin) -> unpack._Unpack, starting the
        confined child with open_stdin() as its stdin.
    :returns: the child's result (unpack._outcome).
    :raises CommandFailed: argv failed (its stderr's tail), whether or
        not the child refused what it got.
    :raises CommandTimedOut: the child ran longer than timeout seconds.
    """
    with tempfile.TemporaryFile() as err:
        producer = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err,
                                    close_fds=True, umask=0o077)
        try:
            try:
                held = start(lambda: os.dup(producer.stdout.fileno()))
            finally:
                # The child holds the stream now: if it dies, the
                # producer gets EPIPE rather than filling a pipe nobody
                # reads.
                producer.stdout.close()
            try:
                result = unpack._wait(
                    held, timeout, lambda: exception.CommandTimedOut(
                        cmd=' '.join(argv), timeout=timeout))
            except exception.ArchiveError:
                # A stream cut short: the producer's failure says why,
                # unless the child's refusal ended it (a broken pipe). An
                # UnsafeArchiveMember is raised as it is: what came was
                # refused, whatever the producer did after.
                _check_producer(producer, argv, err, cut=True)
                raise
            _check_producer(producer, argv, err)
        finally:
            unpack._kill(producer)
    return result


def _check_producer(producer, argv, err, cut=False):
    """Raise CommandFailed if producer failed (its stderr's tail).

    :param cut: the child stopped reading early: a producer killed by
        SIGPIPE, or ssh's silent 255 after its write failed, failed
        because of that, not on its own.
    """
    try:
        command.wait_exit(producer, CONF.lxc.command_timeout)
    except subprocess.TimeoutExpired:
        return
    if not producer.returncode:
        return
    err.seek(0, os.SEEK_END)
    err.seek(max(0, err.tell() - _STDERR_TAIL))
    tail = err.read().decode(errors='replace').strip()
    if cut and (producer.returncode == -signal.SIGPIPE or
                (producer.returncode == 255 and not tail)):
        return
    raise exception.CommandFailed(cmd=' '.join(argv),
                                  exit_code=producer.returncode,
                                  stderr=tail)


# GNU tar's options for an image's cache entry: owners as numbers, the
# xattrs tarball.py keeps (file capabilities) as pax records; an upper
# layer's also sparse (its files are the container's own).
IMAGE_TAR_OPTIONS = ('--create', '--numeric-owner', '--format=posix',
                     '--xattrs', '--xattrs-include=*', '--file=-')
UPPER_TAR_OPTIONS = IMAGE_TAR_OPTIONS + ('--sparse',)


def tree_tar_command(options, directory):
    """The remote shell's command sending directory's tree (pure)."""
    return 'tar %s --directory=%s -- .' % (
        ' '.join(shlex.quote(o) for o in options), shlex.quote(directory))


def _check_entry(call, source, image_id):
    if not isinstance(source, str) or not os.path.isabs(source) or \
            os.path.normpath(source) != source or \
            not _REMOTE_PATH_RE.match(source) or \
            os.path.basename(source) != image_id or \
            os.path.basename(os.path.dirname(source)) != 'images':
        privsep.refuse(call, '%r is not shaped as image %s\'s cache entry '
                       '(/.../images/<image id>, letters, digits and '
                       '/._+- only)' % (source, image_id))


@privsep.storage_admin.entrypoint
def receive_image(rootfs, source, image_id, source_ip, transport,
                  max_bytes, timeout):
    """Unpack another cache's entry of image_id into a partial's rootfs.

    For a migration whose image Glance no longer has: the source's entry
    travels as a tar stream (``tar --create --xattrs`` of its rootfs,
    here or on the source over ssh) into the confined unpacker, which
    applies every rule a Glance tarball meets (tarball.py). Locally the
    entry must be reached as the module docstring says (directories only
    root may write to, no link); the daemon's tar reads it.

    :param rootfs: an image cache partial's empty rootfs
        (unpack.check_rootfs).
    :param source: the source's entry (``/.../images/<image_id>``).
    :param image_id: the image's id, canonical.
    :param source_ip: the source host's IP address (ssh).
    :param transport: ``local`` or ``ssh``.
    :param max_bytes: the most bytes of file data (> 0).
    :param timeout: seconds the copy may take (positive int, at most a
        day).
    :returns: bytes of file data unpacked (for publish's marker).
    :raises PrivilegedCallRefused: an argument fails the checks; local,
        and the entry is not reached through root's directories alone;
        rootfs not empty or being unpacked.
    :raises UnsafeArchiveMember, ArchiveError: the stream was refused.
    :raises CommandFailed, CommandTimedOut: tar or ssh failed, or the
        copy took too long.
    :raises OSError: writing failed (e.g. ENOSPC).
    """
    call = 'receive_image'
    view = unpack.check_rootfs(call, rootfs)
    imagecache.check_image_id(call, image_id)
    _check_entry(call, source, image_id)
    _check_transfer(call, source_ip, transport, max_bytes, timeout)
    source_rootfs = os.path.join(source, imagecache.ROOTFS)
    if transport == 'local':
        os.close(_trusted_dir(call, source_rootfs))
        argv = ['tar'] + list(IMAGE_TAR_OPTIONS) + [
            '--directory=' + source_rootfs, '--', '.']
    else:
        argv = ssh_command(source_ip) + [
            tree_tar_command(IMAGE_TAR_OPTIONS, source_rootfs)]
    unpack._claim(call, rootfs)
    try:
        result = _through_child(
            argv, lambda open_stdin: unpack._start(
                call, [(view, False)], [(rootfs, view, 0)], open_stdin,
                'tarball', max_bytes), timeout)
    finally:
        unpack._unclaim(rootfs)
    LOG.info('Image %s unpacked from %s (%s): %d bytes', image_id,
             source if transport == 'local' else source_ip, transport,
             result['size'])
    return result['size']


# A root without a disk: its directory's layers (rootfs.py).
ROOT_DIR = 'root'
UPPER = 'upper'
WORK = 'work'
# The confined child's idmapped view of the new upper layer, while it runs.
UPPER_VIEW = 'receive-upper'
_OPAQUE = 'trusted.overlay.opaque'


@privsep.storage_admin.entrypoint
def receive_upper(root, source, token, source_ip, transport, idmap,
                  max_bytes, timeout):
    """Copy a migrating root without a disk: its upper layer, here.

    A flavor with root_gb 0 keeps the container's writes in
    ``root/upper`` on the host's filesystem, owned in its range (idmap),
    with overlayfs's whiteouts and opaque marks. The daemon makes
    ``<root>/root`` (root's 0755) and, owned by idmap's root, an empty
    ``upper`` and ``work`` (0755); the source's upper travels as ``tar
    --xattrs --sparse`` (here by the daemon's tar, after the walk and
    token of receive_disks, or on the source over ssh) into the confined
    child (tarball.unpack_upper: an image's rules, whiteouts allowed,
    owners shifted out of the host's range, at most 65535). The child
    runs as the unpack range, as for an image, never as idmap (on this
    host the range of another container maybe): it writes through an
    idmapped view of upper (``<root>/receive-upper``, storage.
    shifting_namespace) that stores its ids n as idmap's. The opaque
    directories it reports get ``trusted.overlay.opaque`` here, reached
    without a link. A failure removes ``<root>/root``.

    :param root: this host's new root directory (``<driver root>/rootfs/
        <digits>``), without ``root``.
    :param source: the source's root directory (receive_disks).
    :param token: the migration's token.
    :param source_ip: the source host's IP address (ssh).
    :param transport: ``local`` or ``ssh``.
    :param idmap: [uid_start, gid_start, size] the layer is owned in
        (inside root's subordinate ranges, not the unpack range, at
        least ids.UNPACK_IDS ids).
    :param max_bytes: the most bytes of file data (> 0).
    :param timeout: seconds (positive int, at most a day).
    :returns: bytes of file data received.
    :raises PrivilegedCallRefused: an argument fails the checks; local,
        and the source is not root's alone or lacks the token.
    :raises FileExistsError: ``<root>/root`` exists (left alone).
    :raises UnsafeArchiveMember, ArchiveError: the stream was refused.
    :raises CommandFailed, CommandTimedOut: tar or ssh failed, or the
        copy took too long.
    :raises OSError: writing failed (e.g. ENOSPC).
    """
    call = 'receive_upper'
    rootdirs.check_root_dir(call, root)
    _check_source(call, source, token, source_ip, transport, max_bytes,
                  timeout)
    checked = storage.check_idmap(call, idmap)
    unpacker = ids.unpack_idmap()
    if checked.uid_start < unpacker.uid_start + unpacker.size and \
            unpacker.uid_start < checked.uid_start + checked.size or \
            checked.gid_start < unpacker.gid_start + unpacker.size and \
            unpacker.gid_start < checked.gid_start + checked.size:
        privsep.refuse(call, 'idmap %r overlaps the unpack range' % (idmap,))
    if checked.size < unpacker.size:
        # The child takes owners 0..65535 and its view shifts as many.
        privsep.refuse(call, 'idmap %r holds fewer than %d ids'
                       % (idmap, unpacker.size))
    source_upper = os.path.join(source, ROOT_DIR, UPPER)
    if transport == 'local':
        os.close(_source_dir(call, source, token))
        os.close(_trusted_dir(call, os.path.join(source, ROOT_DIR)))
        argv = ['tar'] + list(UPPER_TAR_OPTIONS) + [
            '--directory=' + source_upper, '--', '.']
    else:
        argv = ssh_command(source_ip) + [
            tree_tar_command(UPPER_TAR_OPTIONS, source_upper)]
    dest = os.path.join(root, ROOT_DIR)
    os.umask(lxctools.UMASK)
    os.mkdir(dest, 0o755)
    try:
        upper = os.path.join(dest, UPPER)
        for layer in (upper, os.path.join(dest, WORK)):
            os.mkdir(layer, 0o755)
            os.chown(layer, checked.uid_start, checked.gid_start,
                     follow_symlinks=False)
        # The child runs as the unpack range, which owns nothing: not as
        # the disks' range, another container's maybe on this host. Its
        # view of upper shows the disks' ids n as the unpack range's.
        shifted = ids.Idmap(checked.uid_start, checked.gid_start,
                            unpacker.size)
        view = os.path.join(root, UPPER_VIEW)
        result = _through_child(
            argv, lambda open_stdin: unpack._start(
                call, [(view, True)], [(upper, view, 0)], open_stdin,
                'upper', max_bytes,
                extra_argv=['--uid-offset', str(checked.uid_start),
                            '--gid-offset', str(checked.gid_start)],
                view_namespace=storage.shifting_namespace(shifted,
                                                          unpacker)),
            timeout)
        opaque = result.get('opaque')
        if not isinstance(opaque, list):
            raise exception.ArchiveError(
                reason='the receiver reported opaque %r' % (opaque,))
        for rel in opaque:
            _mark_opaque(upper, rel)
        disks.sync_filesystem(dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    LOG.info('Received the upper layer of %s from %s (%s): %d bytes',
             source, source if transport == 'local' else source_ip,
             transport, result['size'])
    return result['size']


def _mark_opaque(upper, rel):
    """Set trusted.overlay.opaque on upper's directory rel, no link."""
    if not isinstance(rel, str) or '\0' in rel or rel.startswith('/'):
        raise exception.ArchiveError(
            reason='the receiver reported opaque %r' % (rel,))
    parts = [p for p in rel.split('/') if p not in ('', '.')]
    if '..' in parts:
        raise exception.ArchiveError(
            reason='the receiver reported opaque %r' % (rel,))
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                 os.O_CLOEXEC)
    try:
        for part in parts:
            new = os.open(part, os.O_RDONLY | os.O_DIRECTORY |
                          os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = new
        os.setxattr(fd, _OPAQUE, b'y')
    finally:
        os.close(fd)
