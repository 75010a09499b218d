"""A server's rescue: where its rescue root lives and how it is described.

Nova's rescue (``openstack server rescue``; nova/compute/manager.py
rescue_instance) boots a rescue image with the server's own disk attached;
unrescue boots the server from its own disk again. A container is rescued
as libvirt rescues a guest in its default mode (nova/virt/libvirt/driver.py
rescue):

- the rescue is the same LXC container (instance.name) with another
  config: same container ID, idmap, limits, host name and NICs (Nova keeps
  the server's ports through a rescue);
- its root is a fresh copy-on-write root of the rescue image, laid out as
  any root (rootfs.Rootfs) inside the server's own root directory::

      <state_path>/rootfs/<cid>/rescue/
        root.img, root/   its own writes (upper/, work/), on a disk of the
                          flavor's root_gb when the flavor has one
        lower/, merged/   the rescue image's idmapped view, the overlay
        config-drive/     Nova's metadata with the rescue password, when
                          the server has a config drive or the rescue
                          image asks for one (img_config_drive=mandatory)

- the server's own root, its overlay mounted on the host as always, is
  bind-mounted read-write on /mnt: with the same idmap its files show
  their owners (its root's files are uid 0), and a rescue is for repairing
  it, as libvirt attaches the server's disk read-write. Entering and
  leaving a rescue write nothing there: the rescue guest's own writes are
  its only changes;
- the ephemeral disk is not attached, as in libvirt's default mode; stable
  device rescue (hw_rescue_device, hw_rescue_bus) is refused, as libvirt
  refuses it for LXC.

Only a rescue makes ``<rootfs>/rescue``, in a directory that the record or
the reservation proves is the instance's: what is there is that instance's
rescue scratch, removed when it leaves rescue and with its root at
destroy. The record's ``rescue_image_id`` names the rescue from before its
root is made until that root is gone (Container.rescue, Container.rebuild).
"""

import dataclasses
import os

from nova.compute import vm_states

from novalxcdriver import rootfs as rootfs_mod
from novalxcdriver import spec as spec_mod

DIR_NAME = 'rescue'


def root_of(server_root):
    """The rescue root of a server's root.

    :param server_root: rootfs.Rootfs of the server.
    :returns: rootfs.Rootfs at ``<server_root.path>/rescue`` (not made).
    """
    return rootfs_mod.Rootfs(None, server_root.cid,
                             path=os.path.join(server_root.path, DIR_NAME))


def spec_of(server_spec, rescue_image, rescue_root, config_drive=None):
    """The spec of the rescue container of the server server_spec describes.

    Pure: only the root, its init system, /mnt and the config drive differ
    from the server's; image_id stays the server's (its root's lower
    layer).

    :param server_spec: spec.ContainerSpec of the server itself.
    :param rescue_image: images.CachedImage of the rescue image.
    :param rescue_root: rootfs.Rootfs of the rescue root (root_of).
    :param config_drive: host directory of the rescue's config drive, or
        None.
    :returns: spec.ContainerSpec.
    """
    return dataclasses.replace(
        server_spec, rootfs=rescue_root.merged,
        init_system=rescue_image.init_system, ephemeral=None,
        config_drive=config_drive,
        rescue=spec_mod.RescueSpec(image_id=rescue_image.image_id,
                                   server_rootfs=server_spec.rootfs))


def kept(instance):
    """Whether rebuilding the instance's container keeps its rescue.

    Nova's word decides: vm_state RESCUED is set once the driver's rescue
    returned and left by unrescue only (nova/compute/manager.py). A record
    naming a rescue of an instance in any other state is that of a rescue
    that failed or was cut short: Nova puts such a server in ERROR, from
    which it allows hard reboot and rescue (nova/compute/api.py), and a
    hard reboot gives the server its own root back.

    :param instance: nova.objects.Instance.
    """
    return instance.vm_state == vm_states.RESCUED
