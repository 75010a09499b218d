"""What the confined unpacker raises when it refuses its input.

tarball.py, treecopy.py and diskstream.py run in the unpacker child
(unpackchild.py), which reports a refusal as JSON; privsep/unpack.py
raises it again in nova-compute as the exception.py class of the same
name, a Nova exception. These are plain exceptions so that the child
does not import Nova: nova.exception brings oslo.log, oslo.config and
webob, 0.13 s of the child's 0.15 s start on this machine, paid before
each unpack reads its first byte (a first boot's download waits on it).
"""


class Refusal(Exception):
    """Base class: ``msg_fmt`` is formatted with the keyword arguments.

    :ivar kwargs: the keyword arguments, as given (what the child's JSON
        carries).
    """

    msg_fmt = 'refused'

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        super().__init__(self.msg_fmt % kwargs)


class ArchiveError(Refusal):
    """A root filesystem archive is not a supported tarball, or is corrupt.

    kwargs: ``reason``.
    """

    msg_fmt = 'archive refused: %(reason)s'


class UnsafeArchiveMember(Refusal):
    """One archive member would escape or abuse the image root.

    kwargs: ``member`` (its name in the archive), ``reason``.
    """

    msg_fmt = 'archive member %(member)r refused: %(reason)s'


class DiskImageRefused(Refusal):
    """A disk image (qcow2, raw with a partition table) cannot be a rootfs.

    kwargs: ``reason``.
    """

    msg_fmt = 'disk image refused: %(reason)s'
