"""Density through the Nova API: many idle servers kept running (goal 5).

Issue 16's goal 5: keep an idle Debian container at 24 MiB or less, and
give the host's figures for 200 idle busybox and 50 idle Debian servers
booted through the API of the all-in-one cloud: memory, PIDs, and the
time of a ``server list`` of them all.

Each image is measured on its own, busybox first: one server is booted and
deleted (the compute host's image cache, Nova's caches), the host is read,
``count`` servers are booted at ``concurrency`` and kept, and once all are
ACTIVE (Debian ones also booted: systemd running or degraded) and idle
for ``settle`` seconds the host is read again. Then GET /servers/detail of
the project, list fully read, is timed five times, every server is deleted
and the host is read once more. Measuring the images apart gives each its
own baseline; the sum of both is not measured.

The host figures are whole-host: memory used (MemTotal - MemAvailable,
proc(5)), so they include what each server costs outside its container
(LXC's monitor process, kernel objects of the namespaces, the overlay,
nova-compute's own bookkeeping), and the number of processes (numeric
entries of /proc) and threads. Each container's memory cgroup (cgroup v1
memory.usage_in_bytes and memory.stat, as bench.density reads it) is read
too, through lxc-cgroup on the aio's lxc_path, from its instance name.

What the cloud needs: the demo project's quotas (10 instances, 20 cores
by default) are lifted (-1) for the run and restored afterwards, and the
servers use a flavor of the benchmark's own, FLAVOR (64 MiB, 1 vCPU, 1
GiB), created and deleted by it, so that 200 of them fit the host's memory
in Placement; the aio's cpu_allocation_ratio makes room for their vCPUs.
Placement's room is read and recorded before the boots. These need the
aio's admin, ADMIN_CLOUD in the same clouds.yaml.

Without the cloud the item is skipped with the reason, like bench.nova_api.
"""

import os
import statistics
import time

from bench import cpu
from bench import harness
from bench import nova_api

# Glance image names of the aio (aio/novalxc_aio/layout.py BUSYBOX_IMAGE,
# DEBIAN_IMAGE), in the order they are measured; True: systemd, wait until
# it has booted.
IMAGES = (('busybox', 'busybox', False), ('debian', 'debian-12', True))
# The aio's nova-compute's [lxc] lxc_path (layout.LXC_PATH).
AIO_LXC_PATH = '/var/lib/novalxc-aio/containers'
# The benchmark's flavor: small enough in memory that 200 servers fit a
# 24 GiB host in Placement (the aio's lxc.tiny, 256 MiB, holds about 90).
# The container's hard memory limit is the flavor's RAM, well above an
# idle one's use; each container's memory.failcnt is recorded to show it
# was never reached.
FLAVOR = {'name': 'nlxbench-density', 'ram': 64, 'vcpus': 1, 'disk': 1}
# Names start with nova_api.PREFIX, so its delete_leftovers finds them.
NAME_PREFIX = nova_api.PREFIX + 'density-'
# Seconds between the poller's listings while servers boot. Each listing
# returns every server of the run so far (up to 200 with details): polling
# as often as bench.nova_api does (0.15 s) would itself load nova-api.
POLL_INTERVAL = 1.0
LISTINGS = 5
BOOTED_TIMEOUT = 300  # seconds for every Debian server's systemd to boot
# Compute quotas lifted for the run (-1: unlimited), then restored.
QUOTA_KEYS = ('instances', 'cores', 'ram')
_QUOTA_FIELDS = QUOTA_KEYS + (
    'key_pairs', 'metadata_items', 'injected_files',
    'injected_file_content_bytes', 'injected_file_path_bytes',
    'server_groups', 'server_group_members')


def memory_used_kib(meminfo_text):
    """MemTotal - MemAvailable of /proc/meminfo's text, KiB (int)."""
    fields = {}
    for line in meminfo_text.splitlines():
        name, _sep, rest = line.partition(':')
        if rest.split():
            fields[name] = int(rest.split()[0])
    return fields['MemTotal'] - fields['MemAvailable']


def task_count(proc='/proc'):
    """Processes and threads on the host, from proc's numeric entries.

    :returns: {'processes': n, 'threads': n} (threads: entries of each
        process's task directory; a process gone meanwhile is skipped).
    """
    processes = threads = 0
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            threads += len(os.listdir(os.path.join(proc, entry, 'task')))
        except OSError:  # exited since the listing
            continue
        processes += 1
    return {'processes': processes, 'threads': threads}


def host_snapshot(proc='/proc'):
    """The host's memory used (KiB), processes and threads, now."""
    with open(os.path.join(proc, 'meminfo')) as f:
        used = memory_used_kib(f.read())
    return dict(task_count(proc), mem_used_kib=used, time=time.time())


def room(inventory, usage, need):
    """How many more servers needing need fit, per resource class.

    Placement's capacity of a class is (total - reserved) x
    allocation_ratio, less what is allocated.

    :param inventory: {resource class: {'total', 'reserved',
        'allocation_ratio'}} of one resource provider.
    :param usage: {resource class: amount allocated}.
    :param need: {resource class: amount per server} (MEMORY_MB in MiB,
        DISK_GB in GiB, VCPU).
    :returns: {resource class: servers (int, 0 if the class is absent)}.
    """
    found = {}
    for rc, amount in need.items():
        inv = inventory.get(rc)
        if inv is None:
            found[rc] = 0
            continue
        capacity = (inv['total'] - inv['reserved']) * inv['allocation_ratio']
        found[rc] = max(0, int((capacity - usage.get(rc, 0)) // amount))
    return found


def quota_restore(before, defaults):
    """How to put the project's compute quotas back after the run.

    :param before: the project's quota set before the run (dict).
    :param defaults: the cloud's default quota set (dict).
    :returns: ('revert', {}) when the project had no value of its own (all
        equal to the defaults: deleting its quotas makes it follow the
        defaults again), else ('update', {key: value before} of
        QUOTA_KEYS).
    """
    if all(before.get(k) == defaults.get(k) for k in _QUOTA_FIELDS):
        return 'revert', {}
    return 'update', {k: before[k] for k in QUOTA_KEYS}


def _quota_dict(quota_set):
    return {k: getattr(quota_set, k, None) for k in _QUOTA_FIELDS}


def _placement(admin):
    """Placement's inventory and usage of each provider, and its room.

    :returns: {'providers': {name: {'inventory', 'usage', 'room'}},
        'room': servers of FLAVOR that fit on all of them together} or
        {'error': text}; only a record, the boots go ahead either way.
    """
    need = {'VCPU': FLAVOR['vcpus'], 'MEMORY_MB': FLAVOR['ram'],
            'DISK_GB': FLAVOR['disk']}
    found = {'providers': {}, 'room': 0}
    try:
        for rp in admin.placement.resource_providers():
            inventory = {
                i.resource_class: {'total': i.total, 'reserved': i.reserved,
                                   'allocation_ratio': i.allocation_ratio}
                for i in admin.placement.resource_provider_inventories(rp)}
            usage = admin.placement.fetch_resource_provider_usages(
                rp).usages or {}
            fits = room(inventory, usage, need)
            found['providers'][rp.name] = {'inventory': inventory,
                                           'usage': usage, 'room': fits}
            if all(rc in inventory for rc in need):
                found['room'] += min(fits.values())
    except Exception as e:  # a record only
        return {'error': repr(e)}
    return found


def _make_flavor(admin):
    """FLAVOR, made anew (a killed run's one is deleted first)."""
    old = admin.compute.find_flavor(FLAVOR['name'])
    if old is not None:
        admin.compute.delete_flavor(old.id)
    return admin.compute.create_flavor(
        name=FLAVOR['name'], ram=FLAVOR['ram'], vcpus=FLAVOR['vcpus'],
        disk=FLAVOR['disk'], is_public=True)


def _instance_names(admin, prefix):
    """{server id: instance name} of the servers named prefix*."""
    return {s.id: s.instance_name for s in admin.compute.servers(
        details=True, all_projects=True, name='^' + prefix)}


def _cgroup(name, lxc_path):
    """The container's memory cgroup figures, bytes, and its failcnt."""
    found = dict(harness.cgroup_memory(name, lxc_path), name=name)
    for key, field in (('memory.max_usage_in_bytes', 'max_usage'),
                       ('memory.failcnt', 'failcnt')):
        found[field] = int(harness.run(
            ['lxc-cgroup', '-n', name, '-P', lxc_path, key]))
    return found


def _wait_booted(names, lxc_path, timeout=BOOTED_TIMEOUT):
    """Wait until systemd runs in each container; return those that do."""
    waiting = set(names)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for name in sorted(waiting):
            if harness.system_state(name, lxc_path) in \
                    harness.BOOTED_STATES:
                waiting.discard(name)
        if waiting:
            time.sleep(1)
    return [n for n in names if n not in waiting]


def _time_listings(conn, runs=LISTINGS):
    """GET /servers/detail of the project runs times, each fully read.

    :returns: list of {'seconds', 'servers'}.
    """
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        n = sum(1 for _s in conn.compute.servers(details=True))
        out.append({'seconds': time.perf_counter() - start, 'servers': n})
    return out


def _one_image(conn, admin, clouds_yaml, cloud, key, image_id, booted,
               flavor_id, count, concurrency, settle, lxc_path, log):
    """Boot count idle servers of one image, read the host, delete them."""
    prefix = '%s%s-' % (NAME_PREFIX, key)
    names = nova_api.server_names(prefix)
    phase = {'count': count}
    tracker = nova_api.Tracker(nova_api.connect(clouds_yaml, cloud),
                               POLL_INTERVAL)
    tracker.start()
    try:
        warm, errors = nova_api._boot_series(
            conn, tracker, image_id, flavor_id, 1, 1, names)
        phase['warmup'] = {'samples': warm, 'errors': errors}
        time.sleep(3)  # the warm-up server's memory is freed
        phase['before'] = host_snapshot()
        start = time.perf_counter()
        samples, errors = nova_api._boot_series(
            conn, tracker, image_id, flavor_id, concurrency, count, names,
            keep=True)
        phase['boot_seconds'] = time.perf_counter() - start
    finally:
        tracker.stop()
    phase.update(samples=samples, errors=errors, polls=tracker.polls,
                 poll_errors=tracker.errors[:20])
    log('  api-density %s: %d/%d ACTIVE in %.1f s (%.2f/s), %d errors' % (
        key, len(samples), count, phase['boot_seconds'],
        len(samples) / max(phase['boot_seconds'], 1e-9), len(errors)))
    active = {s['server_id'] for s in samples}
    instances = {sid: name for sid, name in
                 _instance_names(admin, prefix).items() if sid in active}
    if booted:
        start = time.perf_counter()
        up = _wait_booted(sorted(instances.values()), lxc_path)
        phase['booted'] = len(up)
        phase['booted_seconds'] = time.perf_counter() - start
        log('  api-density %s: systemd booted in %d/%d after %.1f s more'
            % (key, len(up), len(instances), phase['booted_seconds']))
    meter = cpu.Meter()
    meter.start()
    time.sleep(settle)
    phase['idle_cpu'] = meter.stop()
    phase['after'] = host_snapshot()
    phase['cgroups'], phase['cgroup_errors'] = [], []
    for name in sorted(instances.values()):
        try:
            phase['cgroups'].append(_cgroup(name, lxc_path))
        except Exception as e:  # counted: found vs ACTIVE in the report
            phase['cgroup_errors'].append('%s: %r' % (name, e))
    phase['listings'] = _time_listings(conn)
    log('  api-density %s: memory used +%.0f MiB, %+d processes; server '
        'list median %.2f s' % (
            key, (phase['after']['mem_used_kib'] -
                  phase['before']['mem_used_kib']) / 1024,
            phase['after']['processes'] - phase['before']['processes'],
            statistics.median(x['seconds'] for x in phase['listings'])))
    start = time.perf_counter()
    phase['leftovers'] = nova_api.delete_leftovers(
        conn, timeout=max(nova_api.DELETE_TIMEOUT, 2 * count))
    phase['delete_seconds'] = time.perf_counter() - start
    phase['host_leftovers'] = sorted(
        n for n in instances.values()
        if os.path.exists(os.path.join(lxc_path, n)))
    time.sleep(3)
    phase['after_delete'] = host_snapshot()
    log('  api-density %s: deleted in %.1f s, left: %s' % (
        key, phase['delete_seconds'],
        (phase['leftovers'] + phase['host_leftovers']) or 'none'))
    return phase


def measure(counts, settle=10, concurrency=10, clouds_yaml=None,
            cloud=nova_api.CLOUD, admin_cloud=nova_api.ADMIN_CLOUD,
            lxc_path=AIO_LXC_PATH, log=print):
    """Idle servers of each image of IMAGES through the API, kept running.

    :param counts: {'busybox': n, 'debian': n}; 0 leaves an image out.
    :param settle: seconds idle before the host and cgroups are read.
    :returns: {'skipped': reason} when the cloud cannot be used, else
        {'images': {key: phase}, 'flavor', 'placement', 'quotas',
        'concurrency', 'settle_seconds', 'poll_interval', 'leftovers'};
        a phase holds the host snapshots 'before', 'after' (all up and
        idle) and 'after_delete' (mem_used_kib, processes, threads), the
        boot samples and errors, 'boot_seconds', 'cgroups' (bytes),
        'listings' (seconds), 'delete_seconds', 'idle_cpu'
        (cpu.Meter.stop() over the settle period) and its leftovers.
    """
    clouds_yaml = clouds_yaml or nova_api.CLOUDS_YAML
    try:
        conn = nova_api.connect(clouds_yaml, cloud)
        admin = nova_api.connect(clouds_yaml, admin_cloud)
        image_ids = {}
        for key, name, _booted in IMAGES:
            image = conn.image.find_image(name)
            if image is None and counts.get(key):
                raise nova_api.Unavailable(
                    'all-in-one cloud lacks image %s' % name)
            image_ids[key] = image.id if image else None
    except nova_api.Unavailable as e:
        log('  api-density: skipped: %s' % e)
        return {'skipped': str(e)}
    project = conn.current_project_id
    result = {'flavor': dict(FLAVOR), 'concurrency': concurrency,
              'settle_seconds': settle, 'poll_interval': POLL_INTERVAL,
              'images': {}}
    left = nova_api.delete_leftovers(conn)
    if left:
        raise RuntimeError('servers of an earlier run are left: %s' % left)
    before = _quota_dict(admin.compute.get_quota_set(project))
    how, values = quota_restore(before, _quota_dict(
        admin.compute.get_quota_set_defaults(project)))
    result['quotas'] = {'before': before, 'restore': how}
    flavor = None
    try:
        admin.compute.update_quota_set(project, **{k: -1 for k in
                                                   QUOTA_KEYS})
        flavor = _make_flavor(admin)
        result['placement'] = _placement(admin)
        if result['placement'].get('room', 0) < max(counts.values()):
            log('  api-density: WARNING: Placement has room for %s '
                'servers of %s MiB: %s' % (
                    result['placement'].get('room'), FLAVOR['ram'],
                    result['placement']))
        for key, _name, booted in IMAGES:
            if not counts.get(key):
                continue
            result['images'][key] = _one_image(
                conn, admin, clouds_yaml, cloud, key, image_ids[key],
                booted, flavor.id, counts[key], concurrency, settle,
                lxc_path, log)
    finally:
        result['leftovers'] = nova_api.delete_leftovers(
            conn, timeout=max(nova_api.DELETE_TIMEOUT,
                              2 * max(counts.values())))
        if flavor is not None:
            admin.compute.delete_flavor(flavor.id)
        if how == 'revert':
            admin.compute.revert_quota_set(project)
        else:
            admin.compute.update_quota_set(project, **values)
    return result
