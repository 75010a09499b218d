"""Boot to service (item 3) and destroy of a booted Debian (item 6).

Driver: from the call of driver.spawn until systemd in the container says
``running`` or ``degraded`` (polled with lxc-attach every 50 ms, as the
functional DebianTest does). Raw: from ``lxc-start -d`` of a prepared,
identical container until the same answer. Alternating order, as in
bench.spawn. Each booted container is then destroyed: driver.destroy is
timed with its cleanup, the raw side times ``lxc-stop -k``.
"""

import time


def driver_sample(h, image):
    instance = h.make_instance()
    try:
        start = time.perf_counter()
        spawn, phases = h.spawn(instance, image)
        booted = h.wait_booted(instance.name) - start
    finally:
        destroy, destroy_phases = h.destroy(instance)
    return {'spawn': spawn, 'boot': booted, 'destroy': destroy,
            'phases': phases, 'destroy_phases': destroy_phases}


def raw_sample(h, image):
    raw = h.prepare_raw(image)
    try:
        start = time.perf_counter()
        spawn = raw.start()
        booted = h.wait_booted(raw.name) - start
        destroy = raw.kill()
    finally:
        raw.remove()
    return {'spawn': spawn, 'boot': booted, 'destroy': destroy}


def measure(h, image, runs, settle=0.5, log=print):
    """Interleaved driver and raw boots of image (a systemd image).

    :returns: {'driver': [sample], 'raw': [sample]}; seconds throughout.
    """
    results = {'driver': [], 'raw': []}
    samplers = {'driver': driver_sample, 'raw': raw_sample}
    for run in range(runs):
        order = ('driver', 'raw') if run % 2 == 0 else ('raw', 'driver')
        for position, side in enumerate(order):
            sample = samplers[side](h, image)
            sample.update(run=run, first=position == 0)
            results[side].append(sample)
            time.sleep(settle)
        log('  boot run %d/%d: driver %.2f s (destroy %.2f s), raw %.2f s'
            % (run + 1, runs, results['driver'][-1]['boot'],
               results['driver'][-1]['destroy'], results['raw'][-1]['boot']))
    return results
