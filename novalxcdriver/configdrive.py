"""The config drive: Nova's instance metadata as read-only files inside.

A config drive holds what the metadata service serves (Nova's
InstanceMetadata: openstack/<version>/meta_data.json with the hostname,
SSH keys and admin password, user_data, network_data.json, vendor data,
injected files, and the ec2/ tree). A container has no block device to
carry Nova's ISO image, so the same files are written to a host directory,
``<state_path>/rootfs/<cid>/config-drive`` (removed with the rootfs), and
bind-mounted read-only on ``/config-drive``, where cloud-init's ConfigDrive
datasource looks in a container (as with nova-lxd). ``[DEFAULT]
config_drive_format`` does not apply.

When one is made follows Nova (nova.virt.configdrive.required_by): the
server asked for it, ``[DEFAULT] force_config_drive`` for a server never
launched yet, or the image's ``img_config_drive=mandatory``.
"""

import os

from nova.api.metadata import base as instance_metadata
import nova.conf
from nova.objects import fields

from novalxcdriver.privsep import ownership

CONF = nova.conf.CONF
DIR_NAME = 'config-drive'


def required_by(instance, image_meta):
    """Whether the instance gets a config drive.

    Nova's rule (nova.virt.configdrive.required_by), reading the image's
    policy from the image_meta spawn is given rather than from the
    instance's system metadata.
    """
    policy = image_meta.properties.get(
        'img_config_drive', fields.ConfigDrivePolicy.OPTIONAL)
    return bool(instance.config_drive or
                (CONF.force_config_drive and not instance.launched_at) or
                policy == fields.ConfigDrivePolicy.MANDATORY)


def path_for(rootfs_path):
    """Host directory of the config drive of the rootfs at rootfs_path."""
    return os.path.join(rootfs_path, DIR_NAME)


def write(path, instance, injected_files, admin_password, network_info,
          idmap):
    """Write the instance's config drive files under path.

    :param path: the directory to make (path_for).
    :param injected_files: Nova's [(path, contents)] of the server.
    :param admin_password: goes in meta_data.json, if given.
    :param network_info: for network_data.json.
    :param idmap: ids.Idmap of the container: its root owns the files.
    """
    extra_md = {'admin_pass': admin_password} if admin_password else {}
    metadata = instance_metadata.InstanceMetadata(
        instance, content=injected_files, extra_md=extra_md,
        network_info=network_info)
    write_tree(path, metadata.metadata_for_config_drive(), idmap)


def write_tree(path, files, idmap):
    """Write files, (relative path, str or bytes) pairs, under path.

    Directories are 0500 and files 0400, owned by the container's root,
    as only root reads a config drive it mounts. Made by the
    storage_admin daemon (ownership.write_config_drive), str data as
    UTF-8; nothing is made if a path is refused.

    :param idmap: ids.Idmap of the container.
    :raises PrivilegedCallRefused: a path that is absolute or leaves path,
        or over ownership.MAX_CONFIG_DRIVE bytes in all.
    :raises FileExistsError: path exists already.
    """
    files = [[rel, data.encode('utf-8') if isinstance(data, str) else data]
             for rel, data in files]
    ownership.write_config_drive(path, files, idmap.fields())
