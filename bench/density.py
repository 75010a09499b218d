"""Density: host memory per idle container (item 5).

N containers of one image are started one after the other (systemd ones
are waited for until booted), left idle for ``settle`` seconds, then each
container's memory cgroup is read (cgroup v1 memory.usage_in_bytes and
memory.stat, through lxc-cgroup). The host's MemAvailable before and after
gives a cross-check that also counts what no cgroup is charged for
(kernel objects of the namespaces, the overlay's dentries). Driver and raw
containers are measured in turn; they are the same containers, so the
figures should agree.

Page cache of the shared image is charged to the cgroup that first read it;
the image is read by earlier phases (and by the first container), so these
figures are each container's own memory, which is what one more container
costs.
"""

import time

from bench import machine


def _one_side(h, image, count, side, booted, settle, log):
    started = []  # (name, handle) where handle is an instance or raw
    result = {'containers': []}
    try:
        time.sleep(3)
        before = machine.meminfo_kib('MemAvailable')
        for _ in range(count):
            if side == 'driver':
                instance = h.make_instance()
                started.append((instance.name, instance))
                h.spawn(instance, image)
            else:
                raw = h.prepare_raw(image)
                started.append((raw.name, raw))
                raw.start()
        if booted:
            for name, _handle in started:
                h.wait_booted(name)
        time.sleep(settle)
        after = machine.meminfo_kib('MemAvailable')
        for name, _handle in started:
            result['containers'].append(dict(h.cgroup_memory(name),
                                             name=name))
        result.update(mem_available_before_kib=before,
                      mem_available_after_kib=after,
                      mem_available_drop_per_container=(
                          (before - after) * 1024 / count))
    finally:
        destroys = []
        for _name, handle in started:
            if side == 'driver':
                destroys.append(h.destroy(handle)[0])
            else:
                handle.kill()
                handle.remove()
        result['destroy'] = destroys
    usage = sorted(c['usage'] for c in result['containers'])
    log('  density %s %s: %d containers, median cgroup usage %.1f MiB, '
        'MemAvailable drop %.1f MiB each' % (
            image.key, side, count, usage[len(usage) // 2] / 2 ** 20,
            result['mem_available_drop_per_container'] / 2 ** 20))
    return result


def measure(h, image, count, booted, settle=10, log=print):
    """Memory of count idle containers of image, driver then raw.

    :param booted: wait for systemd to report running/degraded first.
    :param settle: seconds idle before reading memory.
    :returns: {'driver': result, 'raw': result}; a result has
        'containers' (list of dicts: usage, rss, cache, shmem,
        mapped_file, in bytes), MemAvailable before/after (KiB), the drop
        per container (bytes) and, for the driver, 'destroy' seconds of
        each idle container.
    """
    return {side: _one_side(h, image, count, side, booted, settle, log)
            for side in ('driver', 'raw')}
