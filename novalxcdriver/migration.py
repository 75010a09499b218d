"""Cold migration and resize: what the source hands over, how it travels.

Nova's sequence (nova/compute/manager.py, resize_instance and
_finish_resize; design.md): the source's ``migrate_disk_and_power_off``
stops the container and returns *disk info*; the destination's
``finish_migration`` receives the disks and starts it there; then the
source's ``confirm_migration`` deletes its copy, or the destination's
``destroy`` and the source's ``finish_revert_migration`` bring the server
back where it was.

The source moves nothing. It stops the container, unmounts its root and
marks its record ``migrating`` (nothing mounts those disks again until the
migration ends); the disk info names where they are. The destination
*pulls* them: it knows its own paths, the source keeps its disks untouched
until confirm (so a revert is a remount), and a destination that fails
halfway deletes only its own copy. The transport:

- the same machine (two nova-compute services of one host, a test cloud):
  a local copy, sparse-aware (reflinks, or data extents only). The
  source leaves a random token beside the disks (``TOKEN_FILE``) and in
  the disk info; only finding that token at the named path proves the
  disks are here (a machine ID can be cloned with a disk image, and
  another host may well have a directory of the same name);
- another machine: over SSH from the source's ``my_ip``, as Nova's
  libvirt driver copies with rsync or scp over SSH (``[libvirt]
  remote_filesystem_transport``): ``tar --sparse``'s stream of the disk
  images, or of a root without a disk's upper layer. The operator gives
  root of each host (the storage_admin privsep daemon runs ssh) an SSH
  key the other hosts accept, as libvirt's cold migration needs; ``[lxc]
  migration_ssh_user`` and ``migration_ssh_port`` choose where it logs
  in.

Everything is copied by the storage_admin daemon
(privsep/migrationcopy.py), which checks the source itself and has the
source's stream parsed by a confined child: nova-compute needs no
privilege for it.

The destination allocates a container ID of its own, so the disks' files
are owned in the source's uid range. They are not chowned: an idmapped
mount stacked on each disk's mount point (mount.idmapped_over,
lxc.shifting_namespace) shows them in the new range, and what the
container writes lands on disk in the old one; the record keeps the
disks' idmap (``disk_idmap``) so every later mount does the same.
"""

import dataclasses
import json
import os

from oslo_log import log as logging
from oslo_utils import netutils
from oslo_utils import units

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver.privsep import migrationcopy
from novalxcdriver.privsep import rootdirs

CONF = conf.CONF
LOG = logging.getLogger(__name__)

_VERSION = 1
TOKEN_FILE = rootdirs.TOKEN
# What of a root directory a destination takes: its disks and, for a
# flavor without a root disk (root_gb 0), the directory holding its
# writes. The config drive is written anew from Nova's instance.
ROOT_DISK = 'root.img'
EPHEMERAL_DISK = 'ephemeral.img'
ROOT_DIR = 'root'


@dataclasses.dataclass(frozen=True)
class DiskInfo:
    """What the source hands over (JSON between the two computes).

    :ivar instance_uuid: the instance migrated.
    :ivar source_host: the source's Nova host.
    :ivar source_ip: the source's my_ip, where rsync reaches it.
    :ivar token: random text the source wrote in rootfs's TOKEN_FILE:
        found there, the disks are on this machine (is_local).
    :ivar rootfs: the source's root directory (rootfs.Rootfs.path).
    :ivar files: names under rootfs to take (ROOT_DISK, EPHEMERAL_DISK,
        ROOT_DIR).
    :ivar idmap: ids.Idmap the disks' files are owned in.
    :ivar image_id: the image the root overlays.
    :ivar image_cache: the source's cache entry of that image
        (images.ImageCache), taken when Glance no longer has it.
    :ivar root_gb: GiB of the root disk now (0: none).
    :ivar ephemeral_gb: GiB of the ephemeral disk now (0: none).
    """

    instance_uuid: str
    source_host: str
    source_ip: str
    token: str
    rootfs: str
    files: tuple
    idmap: ids.Idmap
    image_id: str
    image_cache: str
    root_gb: int
    ephemeral_gb: int

    def to_json(self):
        data = dataclasses.asdict(self)
        data['files'] = list(self.files)
        data['version'] = _VERSION
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        """:raises MigrationUnreadable: not disk info of this driver."""
        try:
            data = json.loads(text)
            if data.pop('version') != _VERSION:
                raise ValueError('version %s' % data.get('version'))
            info = cls(idmap=ids.Idmap(**data.pop('idmap')),
                       files=tuple(data.pop('files')), **data)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise exception.MigrationUnreadable(reason=str(e))
        strs = (info.instance_uuid, info.source_host, info.source_ip,
                info.token, info.rootfs, info.image_id, info.image_cache)
        counts = (info.root_gb, info.ephemeral_gb, info.idmap.uid_start,
                  info.idmap.gid_start, info.idmap.size)
        if not (all(isinstance(s, str) for s in strs + info.files) and
                all(type(n) is int and n >= 0 for n in counts) and
                info.idmap.size > 0):
            raise exception.MigrationUnreadable(
                reason='a field has the wrong type or value')
        if not netutils.is_valid_ip(info.source_ip):
            # It becomes part of rsync's remote argument.
            raise exception.MigrationUnreadable(
                reason='source_ip %r is no IP address' % info.source_ip)
        names = set(info.files)
        if (not names <= {ROOT_DISK, EPHEMERAL_DISK, ROOT_DIR} or
                len(names) != len(info.files) or
                not all(os.path.isabs(p) and '..' not in p.split('/')
                        for p in (info.rootfs, info.image_cache))):
            raise exception.MigrationUnreadable(
                reason='unexpected files %s or paths' % (info.files,))
        return info


def check_resize(old_flavor, new_flavor):
    """Raise unless the disks can take new_flavor's sizes.

    Disks grow, never shrink (a filesystem cannot be cut below its data
    safely, and Nova's libvirt driver refuses the same). A root disk
    cannot come or go: a flavor with root_gb 0 has none (its writes live
    on the host's filesystem, unbounded).

    :raises ResizeRefused: with the reason.
    """
    old_root, new_root = old_flavor.root_gb, new_flavor.root_gb
    if new_root < old_root:
        raise exception.ResizeRefused(
            reason='the root disk cannot shrink from %d GiB to %d GiB' % (
                old_root, new_root))
    if (old_root == 0) != (new_root == 0):
        raise exception.ResizeRefused(
            reason='a flavor with root_gb 0 has no root disk: a server '
                   'cannot move between %d GiB and %d GiB' % (old_root,
                                                              new_root))
    if new_flavor.ephemeral_gb < old_flavor.ephemeral_gb:
        raise exception.ResizeRefused(
            reason='the ephemeral disk cannot shrink from %d GiB to %d '
                   'GiB' % (old_flavor.ephemeral_gb,
                            new_flavor.ephemeral_gb))


def new_token(rootfs):
    """Write a fresh token in rootfs's TOKEN_FILE and return it.

    Written by the storage_admin daemon (privsep.rootdirs.new_token):
    root's directories are root's.
    """
    return rootdirs.new_token(rootfs)


def remove_token(rootfs):
    """Remove rootfs's TOKEN_FILE, if any (the migration is over)."""
    rootdirs.remove_token(rootfs)


def is_local(info):
    """Whether the disks are on this machine (a local copy will do).

    The storage_admin daemon reads the token (privsep.rootdirs.has_token);
    a path that is no root's directory here is not local.
    """
    try:
        return rootdirs.has_token(info.rootfs, info.token)
    except exception.PrivilegedCallRefused as e:
        LOG.debug('The disks of instance %s are not on this machine: %s',
                  info.instance_uuid, e)
        return False


def fetch(info, dest_dir):
    """Copy info's files into dest_dir (which exists, empty of them).

    Through the storage_admin daemon (privsep.migrationcopy): the disk
    images (receive_disks), or a root without a disk's upper layer
    (receive_upper, at most the bytes free where it goes), by a local
    copy or from the source over SSH, the source's stream parsed by a
    confined child.

    :returns: list of the paths made.
    :raises CommandFailed, CommandTimedOut: the copy failed (what it
        made is the caller's to remove).
    :raises ArchiveError, UnsafeArchiveMember, MigrationDiskRefused,
        PrivilegedCallRefused, OSError: the source's disks were refused,
        or could not be written (ENOSPC).
    """
    transport = 'local' if is_local(info) else 'ssh'
    made = []
    images = [name for name in info.files if name != ROOT_DIR]
    if images:
        made += [os.path.join(dest_dir, name) for name in images]
        migrationcopy.receive_disks(
            dest_dir, images, info.rootfs, info.token, info.source_ip,
            transport, max(info.root_gb, info.ephemeral_gb) * units.Gi,
            CONF.lxc.migration_timeout)
    if ROOT_DIR in info.files:
        made.append(os.path.join(dest_dir, ROOT_DIR))
        free = os.statvfs(dest_dir)
        migrationcopy.receive_upper(
            dest_dir, info.rootfs, info.token, info.source_ip, transport,
            list(info.idmap.fields()), max(1, free.f_bavail * free.f_frsize),
            CONF.lxc.migration_timeout)
    # aio/novalxc_aio/smoke2.py reads which transport was taken here.
    LOG.info('Received %s of instance %s from %s (%s)',
             ', '.join(info.files), info.instance_uuid, info.source_host,
             'local copy' if transport == 'local' else 'over SSH')
    return made


def fetch_image(info, rootfs, max_bytes):
    """Unpack the source's cache entry of info's image into rootfs.

    For an image Glance no longer has: the source unpacked it safely
    once, and its entry travels as a tar stream into the confined
    unpacker, which checks it as it checks a Glance tarball
    (privsep.migrationcopy.receive_image; images.ImageCache.receive
    publishes it).

    :param rootfs: an image cache partial's empty rootfs.
    :param max_bytes: the most bytes of file data.
    :returns: bytes of file data unpacked.
    :raises CommandFailed, CommandTimedOut: the copy failed.
    :raises UnsafeArchiveMember, ArchiveError, PrivilegedCallRefused:
        the source's entry was refused.
    """
    local = is_local(info)
    size = migrationcopy.receive_image(
        rootfs, info.image_cache, info.image_id, info.source_ip,
        'local' if local else 'ssh', max_bytes, CONF.lxc.migration_timeout)
    LOG.info('Image %s copied from the cache of %s', info.image_id,
             info.source_host)
    return size
