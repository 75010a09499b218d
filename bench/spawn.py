"""Spawn latency and image-size independence (items 1, 2 and 6).

For each image and run, one driver sample (driver.spawn until it returns;
the container is then checked RUNNING with lxc-info) and one raw sample
(``lxc-start -d`` of a prepared, identical container), in alternating order
(ABAB, BABA, ...) so that machine noise hits both sides alike. Each
container is destroyed right after its sample: the driver's destroy is
timed (item 6), the raw side times ``lxc-stop -k`` alone.
"""

import time


def _check_running(h, name):
    state = h.state(name)
    if state != 'RUNNING':
        raise RuntimeError('%s is %s right after its start, not RUNNING'
                           % (name, state))


def driver_sample(h, image):
    """Spawn then destroy one instance.

    :returns: dict with spawn and destroy seconds and their phases.
    """
    instance = h.make_instance()
    try:
        seconds, phases = h.spawn(instance, image)
        _check_running(h, instance.name)
    finally:
        destroy, destroy_phases = h.destroy(instance)
    return {'spawn': seconds, 'phases': phases, 'destroy': destroy,
            'destroy_phases': destroy_phases}


def raw_sample(h, image):
    """Start then kill one prepared raw container.

    :returns: dict with spawn (lxc-start -d) and destroy (lxc-stop -k)
        seconds.
    """
    raw = h.prepare_raw(image)
    try:
        seconds = raw.start()
        _check_running(h, raw.name)
        destroy = raw.kill()
    finally:
        raw.remove()
    return {'spawn': seconds, 'destroy': destroy}


def measure(h, images, runs, settle=0.2, log=print):
    """Interleaved driver and raw spawns of every image.

    :param runs: samples per image and side.
    :param settle: seconds of pause after each sample, so the teardown of
        one container does not overlap the next start.
    :returns: {image key: {'driver': [sample], 'raw': [sample]}}; each
        sample also has 'run' and 'first' (True if it went first in its
        pair).
    """
    results = {i.key: {'driver': [], 'raw': []} for i in images}
    samplers = {'driver': driver_sample, 'raw': raw_sample}
    for run in range(runs):
        for image in images:
            order = ('driver', 'raw') if run % 2 == 0 else ('raw', 'driver')
            for position, side in enumerate(order):
                sample = samplers[side](h, image)
                sample.update(run=run, first=position == 0)
                results[image.key][side].append(sample)
                time.sleep(settle)
        last = {k: '%s %.0f/%.0f ms' % (
            k, v['driver'][-1]['spawn'] * 1e3, v['raw'][-1]['spawn'] * 1e3)
            for k, v in results.items()}
        log('  spawn run %d/%d (driver/raw): %s' % (
            run + 1, runs, ', '.join(last.values())))
    return results
