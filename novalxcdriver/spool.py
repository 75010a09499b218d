"""FIFOs of nova-compute's spool: its streams to and from the daemons.

An image's download goes to the confined unpacker, and a snapshot's
tarball comes from zstd, through a FIFO nova-compute makes in
``<state_path>/spool/`` (images.py, snapshot.py). Through a pipe of the
default 64 KiB, writer and reader take turns every 64 KiB: 115 MB (the
Debian image's tarball) took 0.27 to 0.35 s from a Python writer to a
Python reader, against 0.05 to 0.08 s through a pipe of 1 MiB, on this
project's 2-core test machine.
"""

import fcntl

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# /proc/sys/fs/pipe-max-size's default: the most an unprivileged process
# may ask for (pipe(7)).
PIPE_BYTES = 1 << 20


def widen(fd):
    """Set the capacity of fd's pipe or FIFO to PIPE_BYTES, if allowed.

    fcntl(2) F_SETPIPE_SZ. A refusal (EPERM: above pipe-max-size, or the
    user's pipes already over /proc/sys/fs/pipe-user-pages-soft, pipe(7))
    leaves the pipe as it was: slower, not wrong.

    :param fd: either end of a pipe or FIFO.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError as e:
        LOG.debug('The pipe keeps its size (F_SETPIPE_SZ %d: %s)',
                  PIPE_BYTES, e)
