"""What privsep costs a spawn and a destroy (issue 14).

The same driver spawns and destroys the busybox container with its privsep
contexts reached as shipped, over their daemons' sockets, and run in this
process (client mode off: the entry points' code called directly, which
is what the driver did before the work moved behind privsep). The sides
alternate (ABAB, BABA, ...) so that machine noise hits both alike. No NICs:
the bench's containers have none (the NIC path's cost was measured on its
own: design note, issue 14 section 5).
"""

import contextlib
import time

from novalxcdriver import privsep

from bench import spawn

SIDES = ('daemon', 'in_process')


@contextlib.contextmanager
def in_process():
    """The driver's contexts run their entry points in this process."""
    for context in privsep.CONTEXTS:
        context.set_client_mode(False)
    try:
        yield
    finally:
        for context in privsep.CONTEXTS:
            context.set_client_mode(True)


def measure(h, image, runs, settle=0.2, log=print):
    """Alternating spawn+destroy samples, daemons vs in-process.

    :param runs: samples per side.
    :param settle: seconds of pause after each sample.
    :returns: {'daemon': [sample], 'in_process': [sample]}: samples as
        bench.spawn.driver_sample's, with 'run' and 'first'.
    """
    # nova-compute starts them at init_host; not part of any spawn.
    privsep.start_daemons()
    out = {side: [] for side in SIDES}
    for run in range(runs):
        order = SIDES if run % 2 == 0 else SIDES[::-1]
        for side in order:
            if side == 'in_process':
                with in_process():
                    sample = spawn.driver_sample(h, image)
            else:
                sample = spawn.driver_sample(h, image)
            sample.update(run=run, first=side == order[0])
            out[side].append(sample)
            time.sleep(settle)
        if (run + 1) % 5 == 0:
            log('privsep: %d/%d pairs' % (run + 1, runs))
    return out
