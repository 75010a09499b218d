"""Exceptions raised by novalxcdriver.

Each class says what went wrong and what the operator can do about it. The
driver (driver.py) maps them onto Nova's exceptions where Nova has a meaning
for them (ImageUnacceptable, InstanceNotFound, ...); every one is a Nova
exception too, so one that reaches nova-compute becomes the instance's
fault with this message rather than an unexplained error.
"""

from nova import exception as nova_exc

from novalxcdriver import refusal


def _plain(value):
    # What msgpack carries as it is (oslo.privsep's wire format).
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class NovaLXCError(nova_exc.NovaException):
    """Base class: ``msg_fmt`` is formatted with the keyword arguments.

    ``args`` is ``(message, kwargs)``, kwargs' values made plain (str,
    int, float, bool or None), and the class can be built again from
    them: oslo.privsep sends an exception raised in its daemon as its
    class name and args and raises ``exc_type(*args)`` in the caller
    (oslo_privsep.daemon, remote_call), and pickle does the same. So an
    error of a privileged entry point reaches nova-compute with its class,
    message and kwargs.
    """

    msg_fmt = 'An unknown novalxcdriver error occurred.'

    def __init__(self, *args, **kwargs):
        if args:
            message, kwargs = args
            super().__init__(message=message, **kwargs)
        else:
            super().__init__(**kwargs)
        self.args = (self.message,
                     {k: _plain(v) for k, v in self.kwargs.items()})

    def __str__(self):
        return self.message


class CommandFailed(NovaLXCError):
    msg_fmt = ('Command %(cmd)s failed with exit code %(exit_code)s: '
               '%(stderr)s')


class CommandTimedOut(NovaLXCError):
    msg_fmt = 'Command %(cmd)s did not finish within %(timeout)s seconds.'


class ImageUnpackError(NovaLXCError):
    """A root filesystem archive is corrupt, hostile or not a rootfs."""

    msg_fmt = 'Image %(image_id)s cannot be used as a rootfs: %(reason)s'


class UnsafeArchiveMember(NovaLXCError):
    """One archive member would escape or abuse the image root."""

    msg_fmt = refusal.UnsafeArchiveMember.msg_fmt


class IdRangeExhausted(NovaLXCError):
    msg_fmt = ('No free container ID: all %(count)d IDs are in use or still '
               'held by leftover artifacts. Delete instances, or widen '
               "root's ranges in /etc/subuid and /etc/subgid.")


class IdConflict(NovaLXCError):
    msg_fmt = ('Container ID %(cid)d is reserved twice: %(path)s for '
               'instance %(holder)s (driver state %(owner)s), and '
               '%(legacy)s for instance %(instance)s. Two drivers of this '
               'machine gave one uid range to two containers; move one '
               'instance away (or delete it) before starting this one.')


class IdNotHeld(NovaLXCError):
    msg_fmt = ('Container ID %(cid)d (%(path)s) is not this driver\'s '
               'reservation for instance %(instance)s: it names instance '
               '%(holder)s.')


class IdmapUnavailable(NovaLXCError):
    msg_fmt = ('Cannot derive container uid/gid ranges: %(reason)s. Add a '
               "line such as 'root:100000:1000000000' to /etc/subuid and "
               '/etc/subgid.')


class MountFailed(NovaLXCError):
    msg_fmt = 'Mounting %(what)s on %(target)s failed: %(reason)s'


class LoopFailed(NovaLXCError):
    """A loop device could not be attached, detached or resized."""

    msg_fmt = 'Loop device work on %(path)s failed: %(reason)s'


class MountBusy(MountFailed):
    """A mount cannot be undone: processes still use files below it."""

    msg_fmt = ('Cannot unmount %(target)s: it is busy, used by %(holders)s. '
               'Stop those processes (or wait for them to exit) and retry; '
               'it is not detached lazily, since its users would keep its '
               'files while it looked unmounted.')


class HostCheckFailed(NovaLXCError):
    msg_fmt = 'This host cannot run LXC instances: %(problems)s'


class PrivilegedCallRefused(NovaLXCError):
    """A privileged entry point refused its arguments (novalxcdriver.privsep).

    Nothing was done. Only a bug, or a compromised nova-compute, makes
    this: the driver checks what it sends.
    """

    msg_fmt = '%(call)s refused: %(reason)s'


class ContainerNotFound(NovaLXCError):
    msg_fmt = 'Container %(name)s does not exist.'


class InvalidContainerName(NovaLXCError):
    msg_fmt = ('%(name)r cannot be a container name: only letters, digits, '
               "'-', '_' and '.' are allowed (LXC uses it as a path).")


class ArchiveError(NovaLXCError):
    """A root filesystem archive is not a supported tarball, or is corrupt."""

    msg_fmt = refusal.ArchiveError.msg_fmt


class DiskImageRefused(NovaLXCError):
    """A disk image (qcow2, raw with a partition table) cannot be a rootfs."""

    msg_fmt = refusal.DiskImageRefused.msg_fmt


class ContainerExists(NovaLXCError):
    """A container directory that this instance did not make is in the way."""

    msg_fmt = ('Container %(name)s cannot be made: %(path)s holds a '
               'container that is not this instance\'s (%(reason)s). It '
               'was left as it is; move it out of lxc_path, then retry.')


class RootfsExists(NovaLXCError):
    msg_fmt = ('The root filesystem directory %(path)s exists already and '
               'was not made by this spawn; it was left as it is.')


class ImageGone(NovaLXCError):
    """Neither Glance nor the host's cache holds the image of a root."""

    msg_fmt = ('Image %(image_id)s is gone from Glance and from this '
               'host\'s cache: the root filesystem of instance '
               '%(instance_uuid)s cannot be assembled. Its disks are kept in '
               '%(rootfs)s; rebuild the server on another image, or upload '
               'the image again.')


class RescueUnavailable(NovaLXCError):
    """A rescued server's rescue cannot be assembled again."""

    msg_fmt = ('The rescue of instance %(instance_uuid)s cannot be started '
               'again: %(reason)s. Unrescue the server to boot it from its '
               'own root, kept in %(rootfs)s.')


class IdmapChanged(NovaLXCError):
    msg_fmt = ('Container ID %(cid)d of instance %(instance_uuid)s was made '
               'with host uids %(recorded)s, but the current settings give '
               '%(current)s: [lxc] id_range_size or root\'s ranges in '
               '/etc/subuid and /etc/subgid changed. Set them back; changing '
               'them would remap every existing container.')


class InvalidFlavor(NovaLXCError):
    msg_fmt = 'The flavor cannot be honoured on this host: %(reason)s'


class DisksNotMounted(NovaLXCError):
    msg_fmt = ('Container %(name)s has disk I/O throttles but none of its '
               'disks is mounted')


class ContainerRunningElsewhere(NovaLXCError):
    """Its processes run on its disks, started from another lxc_path."""

    msg_fmt = ('Container %(name)s still runs on its disks (init pid '
               '%(pid)d) but not from lxc_path %(lxc_path)s: its lxc_path '
               'was moved or unmounted while it ran. Put that lxc_path '
               'back, or stop the container there; starting it again would '
               'run two on one disk.')


class DiskUnreadable(NovaLXCError):
    msg_fmt = ('Disk image %(path)s has no filesystem this driver can '
               'mount: %(reason)s')


class SnapshotFailed(NovaLXCError):
    """Taking or streaming a snapshot of a container's root failed.

    The container and its disks are as they were; the half-made image is
    deleted by Nova.
    """

    msg_fmt = 'Snapshot of container %(name)s failed: %(reason)s'


class ReplacementUnreadable(NovaLXCError):
    """The record of a root replacement (a rebuild) cut short is torn."""

    msg_fmt = ('A rebuild of this server was cut short and its record '
               '%(path)s cannot be read (%(reason)s): which image the root '
               'was being rebuilt on is unknown. Rebuild the server again '
               '(openstack server rebuild), which replaces the record.')


class ContainerNotStopped(NovaLXCError):
    msg_fmt = ('Container %(name)s is %(state)s, not STOPPED: its root '
               'cannot be replaced under it. Stop it first.')


class InvalidPortRange(NovaLXCError):
    msg_fmt = ('[serial_console] port_range %(port_range)r is not '
               'START:STOP with 0 < START < STOP <= 65535.')


class ConsolePortsExhausted(NovaLXCError):
    msg_fmt = ('No port of [serial_console] port_range %(port_range)s is '
               'free on %(address)s: widen the range.')


class ContainerNotRunning(NovaLXCError):
    msg_fmt = ('Container %(name)s is %(state)s: its console is served '
               'only while it runs or is paused.')


class ResizeRefused(NovaLXCError):
    msg_fmt = 'Cannot resize: %(reason)s.'


class MigrationUnreadable(NovaLXCError):
    msg_fmt = ('The disk info of this migration is not one this driver '
               'wrote: %(reason)s.')


class MigrationDiskRefused(NovaLXCError):
    msg_fmt = ('Disk %(path)s of the migration\'s source was not copied: '
               '%(reason)s.')


class InvalidSSHOption(NovaLXCError):
    msg_fmt = ('[lxc] migration_ssh_options: %(option)r is not NAME=VALUE '
               'without blanks or quotes.')
