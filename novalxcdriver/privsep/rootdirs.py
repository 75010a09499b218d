"""Privileged entry points for a root's directory (``storage_admin``).

A container's root lives in ``<driver root>/rootfs/<cid>/`` (rootfs.py),
a rescue root in its ``rescue/`` (rescue.py): the disks' images and mount
points, the image's idmapped view (``lower``) and the overlay
(``merged``). The directories are root's (0711: containers traverse
them, nothing lists them), so they are made and removed here.

What is checked before anything is done:

- a root's path is ``<driver root>/rootfs/<digits>`` or that followed by
  ``/rescue``, below a root without symlinks (storage.check_path);
- a mount point is ``root`` or ``ephemeral`` of such a path;
- a root is removed only when nothing is mounted at or below it (the
  daemon's own mount table): never a delete through a mount into an
  image, a disk or the host.

A migration's source also leaves a token in its root's directory
(TOKEN, migration.py): found there by the destination, it proves the
disks are on this machine. It is root's 0600: another user of the host
who read it could pass another root off as the migrating one.
"""

import hmac
import os
import re
import shutil
import stat

from oslo_utils import uuidutils

from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import disks as disks_mod
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import ownership
from novalxcdriver.privsep import storage

RESCUE = 'rescue'
MOUNTPOINTS = ('root', 'ephemeral')
LAYERS = ('lower', 'merged')
TOKEN = 'migration-token'
# A token is a UUID; more than this is never one.
_TOKEN_MAX = 64
# ASCII digits: str.isdigit also takes '²'.
CID_RE = re.compile(r'^[0-9]+\Z')


def check_root_dir(call, path, rescue_too=False):
    """Refuse path unless it is ``<driver root>/rootfs/<digits>``.

    :param rescue_too: ``<driver root>/rootfs/<digits>/rescue`` passes
        too.
    """
    storage.check_path(call, path)
    server = path
    if rescue_too and os.path.basename(path) == RESCUE:
        server = os.path.dirname(path)
    rootfs_dir = os.path.dirname(server)
    if not CID_RE.match(os.path.basename(server)) or \
            os.path.basename(rootfs_dir) != 'rootfs' or \
            os.path.dirname(rootfs_dir) not in privsep.driver_roots():
        privsep.refuse(call, '%s is not a root\'s directory (<driver '
                       'root>/rootfs/<id>%s)'
                       % (path, '[/rescue]' if rescue_too else ''))


@privsep.storage_admin.entrypoint
def make_lxc_path(lxc_path, gid):
    """Make lxc_path root:gid, lxctools.SHARED_MODE, as prepare-host would.

    For an unprivileged nova-compute that finds it missing at start (a
    new lxc_path, or one moved away). Only the last component is made:
    a missing parent may be a filesystem not mounted yet. In
    storage_admin: giving it the group takes CAP_CHOWN, which lxc_admin
    has not.

    :param lxc_path: one of the daemon's driver roots, absolute and
        normalized.
    :param gid: nova-compute's group (int >= 0), which then reads the
        containers' configs; the configs hold no secret.
    :raises PrivilegedCallRefused: lxc_path is not a driver root, or gid
        not an int >= 0.
    :raises FileExistsError: it exists (left as it is).
    :raises FileNotFoundError: its parent is missing.
    """
    call = 'make_lxc_path'
    lxctools.check_lxc_path(call, lxc_path)
    if type(gid) is not int or gid < 0:
        privsep.refuse(call, 'gid %r is not an int >= 0' % (gid,))
    os.umask(lxctools.UMASK)
    os.mkdir(lxc_path, 0o700)
    # chown(2) clears setgid: the mode after it.
    os.chown(lxc_path, 0, gid)
    os.chmod(lxc_path, lxctools.SHARED_MODE)


@privsep.storage_admin.entrypoint
def make_root(path, disk_mountpoint):
    """Make a root's directory (0711) with its lower and merged (0755).

    ``<driver root>/rootfs`` is made (0711) if missing; a rescue root's
    server root must exist.

    :param path: the root's directory (check_root_dir, rescue too).
    :param disk_mountpoint: also make ``root/`` (0755), the upper
        layer's home on the host's filesystem when there is no root
        disk.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises FileExistsError: path exists (whoever's it is, it is left).
    :raises OSError: a directory could not be made (path is left, for
        the caller's destroy).
    """
    call = 'make_root'
    check_root_dir(call, path, rescue_too=True)
    if type(disk_mountpoint) is not bool:
        privsep.refuse(call, 'disk_mountpoint %r is not a bool'
                       % (disk_mountpoint,))
    os.umask(lxctools.UMASK)
    if os.path.basename(path) != RESCUE:
        os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    # mkdir, not makedirs: an existing directory belongs to someone.
    os.mkdir(path, 0o711)
    for name in LAYERS + (MOUNTPOINTS[:1] if disk_mountpoint else ()):
        os.mkdir(os.path.join(path, name), 0o755)


@privsep.storage_admin.entrypoint
def make_mountpoint(path):
    """Make a disk's mount point (0755) in a root's directory, if missing.

    :param path: ``<root's directory>/root`` or ``.../ephemeral``.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises FileNotFoundError: the root's directory does not exist.
    :raises FileExistsError: something else than a directory is there.
    """
    call = 'make_mountpoint'
    if not isinstance(path, str) or \
            os.path.basename(path) not in MOUNTPOINTS:
        privsep.refuse(call, '%r is not a disk\'s mount point (%s)'
                       % (path, ', '.join(MOUNTPOINTS)))
    check_root_dir(call, os.path.dirname(path), rescue_too=True)
    storage.check_path(call, path)
    os.umask(lxctools.UMASK)
    try:
        # mkdir: a missing root's directory is make_root's, with its modes.
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise


@privsep.storage_admin.entrypoint
def create_root(path, disk_mountpoint, disks, layers, image_rootfs, idmap,
                etc_files):
    """Make a new root and mount it: what a spawn asked in ten calls.

    Each step is the entry point of that name, with its own checks, run
    here in this order: make_root; for each disk disks.create_image,
    make_mountpoint, storage.mount_disk and ownership.give_disk_root;
    ownership.make_owned_dir of upper and work; storage.idmapped_bind of
    image_rootfs on lower; storage.overlay on merged; then
    ownership.write_etc_file of each etc file. One call instead of one
    per step: each round trip costs nova-compute and this daemon about
    0.3 ms of CPU, which at concurrency 10 on two cores bounds the rate.

    :param path: the root's directory (make_root; rescue too).
    :param disk_mountpoint: bool, make_root's: make ``root/`` (no root
        disk).
    :param disks: list of [image_path, mountpoint, size_gb, fs, templates,
        owned]: each made (create_image's arguments), mounted on
        mountpoint, its root given to idmap's root if owned (a bool),
        else left host root's (a root disk's, holding upper and work).
    :param layers: [lower, upper, work, merged].
    :param image_rootfs: the cached image's rootfs, the lower layer.
    :param idmap: [uid_start, gid_start, size] (an ids.Idmap's fields).
    :param etc_files: list of [name, text] (write_etc_file's).
    :returns: list of write_etc_file's results, one per etc file.
    :raises PrivilegedCallRefused: an argument's shape, or a step's
        checks.
    :raises RootfsExists: path exists: nothing was touched.
    :raises CommandFailed, LoopFailed, MountFailed, OSError: as the
        steps; what was made is left for the caller's destroy.
    """
    call = 'create_root'
    if not isinstance(disks, (list, tuple)) or any(
            not isinstance(d, (list, tuple)) or len(d) != 6 or
            type(d[5]) is not bool for d in disks):
        privsep.refuse(call, 'disks %r is not a list of [image_path, '
                       'mountpoint, size_gb, fs, templates, owned]'
                       % (disks,))
    if not isinstance(layers, (list, tuple)) or len(layers) != 4:
        privsep.refuse(call, 'layers %r is not [lower, upper, work, '
                       'merged]' % (layers,))
    if not isinstance(etc_files, (list, tuple)) or any(
            not isinstance(f, (list, tuple)) or len(f) != 2
            for f in etc_files):
        privsep.refuse(call, 'etc_files %r is not a list of [name, text]'
                       % (etc_files,))
    try:
        make_root(path, disk_mountpoint)
    except FileExistsError:
        raise exception.RootfsExists(path=path)
    for image_path, mountpoint, size_gb, fs, templates, owned in disks:
        disks_mod.create_image(image_path, size_gb, fs, templates)
        make_mountpoint(mountpoint)
        storage.mount_disk(image_path, mountpoint)
        ownership.give_disk_root(mountpoint, idmap if owned else None)
    lower, upper, work, merged = layers
    for d in (upper, work):
        ownership.make_owned_dir(d, idmap)
    storage.idmapped_bind(image_rootfs, lower, idmap)
    storage.overlay(lower, upper, work, merged)
    return [ownership.write_etc_file(merged, name, text, idmap)
            for name, text in etc_files]


@privsep.storage_admin.entrypoint
def root_ids(top):
    """The container IDs that have a root's directory in top.

    top is 0711 (containers traverse it; nothing else lists it), so
    nova-compute asks here: at its start, which IDs a root still holds.

    :param top: ``<driver root>/rootfs``.
    :returns: sorted list of int (empty when top does not exist).
    :raises PrivilegedCallRefused: top is not a driver root's rootfs.
    """
    call = 'root_ids'
    storage.check_path(call, top)
    if os.path.basename(top) != 'rootfs' or \
            os.path.dirname(top) not in privsep.driver_roots():
        privsep.refuse(call, '%s is not a driver root\'s rootfs directory '
                       '(<driver root>/rootfs)' % top)
    try:
        names = os.listdir(top)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if CID_RE.match(n))


@privsep.storage_admin.entrypoint
def remove_root(path):
    """Delete a root's directory and all it holds (its disks' images).

    :param path: the root's directory (check_root_dir, rescue too).
    :returns: True if it was deleted, False if it did not exist.
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises MountFailed: something is mounted at or below it; nothing
        was deleted.
    """
    call = 'remove_root'
    check_root_dir(call, path, rescue_too=True)
    if not os.path.lexists(path):
        return False
    left = mount.below(path)
    if left:
        raise exception.MountFailed(
            what='cleanup', target=path,
            reason='still mounted: %s' % ', '.join(sorted(set(left))))
    shutil.rmtree(path)
    return True


@privsep.storage_admin.entrypoint
def new_token(path):
    """Write a fresh migration token in a root's directory, durably.

    :param path: the root's directory (check_root_dir).
    :returns: the token, a str (a random UUID).
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises OSError: nothing was written (a full disk: ENOSPC).
    """
    check_root_dir('new_token', path)
    token = uuidutils.generate_uuid()
    os.umask(lxctools.UMASK)
    durable.write(os.path.join(path, TOKEN), token + '\n', mode=0o600)
    return token


@privsep.storage_admin.entrypoint
def remove_token(path):
    """Remove a root's migration token, if any (its migration is over).

    :param path: the root's directory (check_root_dir).
    :returns: True if there was one.
    :raises PrivilegedCallRefused: the checks (module docstring).
    """
    check_root_dir('remove_token', path)
    try:
        os.unlink(os.path.join(path, TOKEN))
    except FileNotFoundError:
        return False
    return True


def check_root_shape(call, path):
    """Refuse path unless it reads ``<anything>/rootfs/<digits>``.

    Absolute and normalized, without NUL; not necessarily below a driver
    root of this daemon.
    """
    if not isinstance(path, str) or not os.path.isabs(path) or \
            os.path.normpath(path) != path or '\0' in path or \
            not CID_RE.match(os.path.basename(path)) or \
            os.path.basename(os.path.dirname(path)) != 'rootfs':
        privsep.refuse(call, '%r is not shaped as a root\'s directory '
                       '(/.../rootfs/<id>)' % (path,))


@privsep.storage_admin.entrypoint
def has_token(path, token):
    """Whether a root's directory holds this migration token.

    The migrating server's root may be another driver's of this machine
    (a second nova-compute service, whose roots this daemon does not
    act in), so only its shape is checked: the file is read, never
    written or returned, and only a file at that one name is compared.

    :param path: the root's directory (check_root_shape): a peer's, from
        a migration's disk info.
    :param token: str, the token the disk info carries.
    :returns: True only if the file is there, a regular file, and holds
        token; False otherwise (no file, another token, an empty one).
    :raises PrivilegedCallRefused: path's shape, or token is not a str.
    """
    call = 'has_token'
    check_root_shape(call, path)
    if not isinstance(token, str):
        privsep.refuse(call, 'token %r is not a str' % (token,))
    return holds_token(path, token)


def holds_token(path, token, dir_fd=None):
    """has_token's answer, unchecked (token a str).

    :param dir_fd: path's directory, open (path is then not used).
    """
    try:
        fd = os.open(TOKEN if dir_fd is not None else
                     os.path.join(path, TOKEN),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                     os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        found = os.read(fd, _TOKEN_MAX + 1).strip()
    finally:
        os.close(fd)
    return bool(token) and hmac.compare_digest(found,
                                               token.encode('utf-8'))
