"""Privileged entry points for a root replacement (``storage_admin``).

Nova's rebuild replaces a root's own layers in place (rootfs.py,
``replace_layers``): the record of what the replacement makes
(``replacing.json``), each layer set aside under ``<name>.rebuild-old``
while its new one is made, and the config drive staged as
``config-drive.rebuild-tmp``, then ``config-drive.rebuild-new``, before it
is swapped in. These names lie in root's directories (rootdirs.py), and
the old layers hold the container's files, so they are renamed and
deleted here; nova-compute keeps the order of the steps.

What is checked before anything is done:

- a root's directory is ``<driver root>/rootfs/<digits>`` (the rescue root
  is never replaced), below a root without symlinks (rootdirs);
- a layer's path is one of LAYERS in such a directory, followed by one of
  the suffixes its kind may take (SUFFIXES): nothing else is renamed or
  deleted;
- nothing is deleted while anything is mounted at or below it (the
  daemon's own mount table), as rootdirs.remove_root;
- the record is a whole Replacement: nova-compute cannot write anything
  else in a root's directory through it.
"""

import dataclasses
import json
import os
import shutil

from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import disks
from novalxcdriver.privsep import lxctools
from novalxcdriver.privsep import rootdirs
from novalxcdriver.privsep import storage

RECORD = 'replacing.json'
CONFIG_DRIVE = 'config-drive'
# What a replacement renews, relative to a root's directory.
LAYERS = ('root/upper', 'root/work', 'ephemeral.img', CONFIG_DRIVE)
ASIDE = '.rebuild-old'
STAGED = '.rebuild-new'
STAGING = '.rebuild-tmp'
# The names beside a layer: set aside (all), staged (the config drive,
# written whole under STAGING, then renamed STAGED, then swapped in).
SUFFIXES = {layer: ('', ASIDE) for layer in LAYERS}
SUFFIXES[CONFIG_DRIVE] = ('', ASIDE, STAGED, STAGING)
# Bytes of a record: an image ID, a hostname (at most 255), two values.
MAX_RECORD = 4096
# promote: each staged name's next one.
_NEXT = {STAGING: STAGED, STAGED: ''}


@dataclasses.dataclass(frozen=True)
class Replacement:
    """What a root replacement (Nova's rebuild) makes of a root.

    :ivar image_id: the image the new upper layer overlays.
    :ivar hostname: written to the new root's /etc/hostname.
    :ivar ephemeral_gb: GiB of the new, empty ephemeral disk; 0 keeps the
        ephemeral disk as it is (Nova's preserve_ephemeral, or none).
    :ivar config_drive: whether the new root has a config drive (the one
        staged with rootfs.Rootfs.stage_config_drive).
    """

    image_id: str
    hostname: str
    ephemeral_gb: int = 0
    config_drive: bool = False

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True) + '\n'

    @classmethod
    def from_json(cls, text):
        """:raises ValueError: not a whole Replacement."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError('not a JSON object')
        try:
            replacement = cls(**data)
        except TypeError as e:
            raise ValueError(str(e))
        if not (isinstance(replacement.image_id, str) and
                isinstance(replacement.hostname, str) and
                type(replacement.ephemeral_gb) is int and
                replacement.ephemeral_gb >= 0 and
                isinstance(replacement.config_drive, bool)):
            raise ValueError('a field has the wrong type or value')
        return replacement


def _split(call, path):
    """(root's directory, layer, suffix) of a layer's path, or refuse."""
    if isinstance(path, str):
        for layer, suffixes in SUFFIXES.items():
            for suffix in suffixes:
                tail = '/' + layer + suffix
                if path.endswith(tail):
                    root = path[:-len(tail)]
                    rootdirs.check_root_dir(call, root)
                    storage.check_path(call, path)
                    return root, layer, suffix
    privsep.refuse(call, '%r is not a layer of a root replacement '
                   '(<root\'s directory>/{%s}[%s])'
                   % (path, ','.join(LAYERS),
                      '|'.join(SUFFIXES[CONFIG_DRIVE][1:])))


def _delete(path):
    """Delete the tree or file at path, links not followed."""
    left = mount.below(path)
    if left:
        raise exception.MountFailed(
            what='cleanup', target=path,
            reason='still mounted: %s' % ', '.join(sorted(set(left))))
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


@privsep.storage_admin.entrypoint
def remove_layer(path):
    """Delete a layer (a tree or a file), or a name beside it, if present.

    :param path: a layer's path (module docstring).
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises MountFailed: something is mounted at or below it; nothing
        was deleted.
    """
    _split('remove_layer', path)
    _delete(path)


@privsep.storage_admin.entrypoint
def set_aside(path):
    """Rename a layer to ``<path>.rebuild-old``, if it exists.

    What was aside already is deleted first: it is older still (a
    replacement run again after a crash).

    :param path: a layer's own path, no suffix (module docstring).
    :raises PrivilegedCallRefused: the checks (module docstring).
    :raises MountFailed: the old aside is still mounted on; nothing was
        renamed.
    """
    call = 'set_aside'
    if _split(call, path)[2]:
        privsep.refuse(call, '%s is already a name beside a layer' % path)
    _delete(path + ASIDE)
    if os.path.lexists(path):
        os.rename(path, path + ASIDE)


@privsep.storage_admin.entrypoint
def promote(path):
    """Rename a staged config drive to its next name.

    ``config-drive.rebuild-tmp`` (written whole) becomes
    ``config-drive.rebuild-new`` (staged), and that becomes
    ``config-drive`` (swapped in).

    :param path: the staged name to rename.
    :raises PrivilegedCallRefused: the checks (module docstring), or not
        a staged name.
    :raises FileExistsError: the next name exists (the caller removes
        it first).
    :raises FileNotFoundError: path does not exist.
    """
    call = 'promote'
    root, layer, suffix = _split(call, path)
    if suffix not in _NEXT:
        privsep.refuse(call, '%s is not a staged name (%s)'
                       % (path, ', '.join(_NEXT)))
    target = os.path.join(root, layer + _NEXT[suffix])
    if os.path.lexists(target):
        raise FileExistsError(target)
    os.rename(path, target)


@privsep.storage_admin.entrypoint
def write_record(root, text):
    """Record a replacement in root, durably, after what it names.

    The filesystem holding root is synced first, so a staged config
    drive is on disk before the record names it. The record is 0644:
    nova-compute reads it (it is not secret: an image, a hostname).

    :param root: a root's directory (rootdirs.check_root_dir).
    :param text: Replacement.to_json() of the replacement, at most
        MAX_RECORD bytes.
    :raises PrivilegedCallRefused: the checks, or text is not a whole
        Replacement.
    :raises OSError: nothing was recorded (a full disk: ENOSPC).
    """
    call = 'write_record'
    rootdirs.check_root_dir(call, root)
    try:
        if not isinstance(text, str):
            raise ValueError('not a str')
        if len(text.encode('utf-8', 'surrogatepass')) > MAX_RECORD:
            raise ValueError('more than %d bytes' % MAX_RECORD)
        Replacement.from_json(text)
    except ValueError as e:
        privsep.refuse(call, 'not a replacement record: %s' % e)
    os.umask(lxctools.UMASK)
    disks.sync_filesystem(root)
    durable.write(os.path.join(root, RECORD), text, mode=0o644)


@privsep.storage_admin.entrypoint
def remove_record(root):
    """Forget root's replacement, durably (its layers are on disk).

    The filesystem holding root is synced first.

    :param root: a root's directory (rootdirs.check_root_dir).
    :returns: True if there was a record.
    :raises PrivilegedCallRefused: the checks (module docstring).
    """
    rootdirs.check_root_dir('remove_record', root)
    path = os.path.join(root, RECORD)
    if not os.path.lexists(path):
        return False
    disks.sync_filesystem(root)
    os.unlink(path)
    durable.fsync_dir(root)
    return True
