"""Exceptions raised by novalxcdriver.

Each class says what went wrong and what the operator can do about it. The
driver (driver.py) maps them onto Nova's exceptions where Nova has a meaning
for them (ImageUnacceptable, InstanceNotFound, ...).
"""


class NovaLXCError(Exception):
    """Base class: ``msg_fmt`` is formatted with the keyword arguments."""

    msg_fmt = 'An unknown novalxcdriver error occurred.'

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        super().__init__(self.msg_fmt % kwargs)


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

    msg_fmt = 'archive member %(member)r refused: %(reason)s'


class IdRangeExhausted(NovaLXCError):
    msg_fmt = ('No free container ID: all %(count)d IDs are in use or still '
               'held by leftover artifacts. Delete instances, or widen '
               "root's ranges in /etc/subuid and /etc/subgid.")


class IdmapUnavailable(NovaLXCError):
    msg_fmt = ('Cannot derive container uid/gid ranges: %(reason)s. Add a '
               "line such as 'root:100000:1000000000' to /etc/subuid and "
               '/etc/subgid.')


class MountFailed(NovaLXCError):
    msg_fmt = 'Mounting %(what)s on %(target)s failed: %(reason)s'


class MountBusy(MountFailed):
    """A mount cannot be undone: processes still use files below it."""

    msg_fmt = ('Cannot unmount %(target)s: it is busy, used by %(holders)s. '
               'Stop those processes (or wait for them to exit) and retry; '
               'it is not detached lazily, since its users would keep its '
               'files while it looked unmounted.')


class HostCheckFailed(NovaLXCError):
    msg_fmt = 'This host cannot run LXC instances: %(problems)s'


class ContainerNotFound(NovaLXCError):
    msg_fmt = 'Container %(name)s does not exist.'


class InvalidContainerName(NovaLXCError):
    msg_fmt = ('%(name)r cannot be a container name: only letters, digits, '
               "'-', '_' and '.' are allowed (LXC uses it as a path).")


class ArchiveError(NovaLXCError):
    """A root filesystem archive is not a supported tarball, or is corrupt."""

    msg_fmt = 'archive refused: %(reason)s'


class ContainerExists(NovaLXCError):
    msg_fmt = 'Container %(name)s exists already.'


class InvalidFlavor(NovaLXCError):
    msg_fmt = 'The flavor cannot be honoured on this host: %(reason)s'


class DisksNotMounted(NovaLXCError):
    msg_fmt = ('Container %(name)s has disk I/O throttles but none of its '
               'disks is mounted')
