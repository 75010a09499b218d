"""The Nova API under load against its own floor (issue 16 goal 4).

The floor of Nova's control plane on this machine is the same all-in-one
cloud with Nova's fake driver: ``aio/novalxc-aio up --fake-compute`` runs
one more nova-compute, on the same host, whose driver
(nova.virt.fake.PredictableNodeUUIDDriver) spawns by adding the instance
to a dict. Everything else a boot goes through is the same: nova-api,
Keystone, Glance's image lookup, the scheduler and Placement, the
conductor, RabbitMQ, the database and nova-compute's manager (claim,
state updates, the build's bookkeeping).

Servers are booted as the aio's admin (forcing a host is admin-only) with
``availability_zone='nova:<host>'``: the scheduler skips its filters for
a forced host but still claims in Placement, the same on both sides. Both
sides boot without a network (``networks='none'``): the fake compute has
no OVN chassis, so a port could not be bound to it, and a networked boot
would measure Neutron and OVN on one side only. The same image and flavor
(by default the api family's Debian 12 on lxc.tiny) on both sides.

Each side boots ``per_side`` servers at ``concurrency``, in batches of
``batch`` that alternate between the sides in ABBA order (driver, fake,
fake, driver, ...), so that whatever else loads the machine meanwhile
falls on both. A batch is bench.nova_api's series: each worker boots a
server, waits until the API shows it ACTIVE (one shared poller), deletes
it and waits until it is gone, then boots the next. A warm-up boot on
each side first (the compute host's image cache, Nova's caches).

bench.cpu's Meter counts the CPU seconds of each service during each
batch; the batches of a side are summed. nova-compute's own "Took N
seconds to spawn/build" lines, read from each compute's log, say how much
of each boot was the driver's spawn and how much the compute manager's
build around it; a server found in a side's log also proves it was built
on that host.

Without the cloud or the fake compute the item is skipped with the reason.
"""

import os
import time

from bench import cpu
from bench import nova_api
from bench import stats

SIDES = ('driver', 'fake')
# Names start with nova_api.PREFIX, so its delete_leftovers finds them.
NAME_PREFIX = nova_api.PREFIX + 'floor-'
# The logs of the aio's two computes (aio/novalxc_aio/services.py names).
COMPUTE_LOGS = {'driver': nova_api.COMPUTE_LOG,
                'fake': '/var/log/novalxc-aio/nova-compute-fake.log'}
FAKE_SUFFIX = '-fake'  # aio/novalxc_aio/layout.py FAKE_HOST
POLL_INTERVAL = 0.15   # as bench.nova_api: at most 10 servers listed


def schedule(per_side, batch, sides=SIDES):
    """The batches of the run: [(side, servers), ...] in ABBA order.

    Each side gets per_side servers in all, in batches of at most batch;
    the first side leads in even rounds, the second in odd ones, so that
    neither always boots right after the other.
    """
    if per_side < 0 or batch < 1:
        raise ValueError('per_side >= 0 and batch >= 1 needed')
    left = dict.fromkeys(sides, per_side)
    out = []
    rounds = 0
    while any(left.values()):
        order = sides if rounds % 2 == 0 else tuple(reversed(sides))
        for side in order:
            n = min(batch, left[side])
            if n:
                out.append((side, n))
                left[side] -= n
        rounds += 1
    return out


def side_figures(samples):
    """Figures of one side's POST-to-ACTIVE samples, seconds.

    :returns: {'n', 'median', 'p90', 'p95', 'min', 'max', 'post_median',
        'build_median', 'spawn_median', 'on_host'}: post_* is the POST
        request alone; build and spawn are nova-compute's own timings of
        the servers it logged (on_host of them).
    """
    seconds = [s['seconds'] for s in samples]
    s = stats.summary(seconds)
    build = [x['compute_build'] for x in samples if 'compute_build' in x]
    spawn = [x['compute_spawn'] for x in samples if 'compute_spawn' in x]
    return {'n': s['n'], 'median': s['median'],
            'p90': stats.percentile(seconds, 90), 'p95': s['p95'],
            'min': s['min'], 'max': s['max'],
            'post_median': stats.summary(
                x['post_seconds'] for x in samples)['median'],
            'build_median': stats.summary(build)['median'],
            'spawn_median': stats.summary(spawn)['median'],
            'on_host': len(build)}


def add_cpu(total, meter):
    """total plus one bench.cpu.Meter.stop() result (a new dict).

    Seconds add up, services by name (one absent from either counts 0);
    cores is the host's, the same in both. total may be None.
    """
    if total is None:
        return {k: (dict(v) if k == 'services' else v)
                for k, v in meter.items()}
    services = dict(total['services'])
    for name, seconds in meter['services'].items():
        services[name] = round(services.get(name, 0.0) + seconds, 3)
    return {'wall': round(total['wall'] + meter['wall'], 3),
            'cores': meter['cores'],
            'host_busy': round(total['host_busy'] + meter['host_busy'], 3),
            'client': round(total['client'] + meter['client'], 3),
            'services': services,
            'other': round(total['other'] + meter['other'], 3)}


def _secs(value):
    return 'none' if value is None else '%.2f s' % value


def _compute_hosts(admin):
    """{host: (state, status)} of the cloud's nova-compute services."""
    return {s.host: (s.state, s.status) for s in admin.compute.services()
            if s.binary == 'nova-compute'}


def _check_hosts(admin, hosts):
    found = _compute_hosts(admin)
    for side, host in hosts.items():
        if found.get(host) != ('up', 'enabled'):
            raise nova_api.Unavailable(
                'the %s compute %s is not up and enabled (%s)%s' % (
                    side, host, found.get(host, 'absent'),
                    '; run aio/novalxc-aio up --fake-compute'
                    if side == 'fake' else ''))


def _listdir(path):
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def measure(per_side=30, batch=10, concurrency=10, image_name='debian-12',
            flavor_name='lxc.tiny', hosts=None,
            clouds_yaml=nova_api.CLOUDS_YAML,
            admin_cloud=nova_api.ADMIN_CLOUD, compute_logs=None,
            lxc_path='/var/lib/novalxc-aio/containers',
            interval=POLL_INTERVAL, log=print):
    """Boot per_side servers on each of the two computes, alternating.

    :param hosts: {'driver': host, 'fake': host}; by default this
        machine's host name and the same with FAKE_SUFFIX (the aio's).
    :param compute_logs: {side: nova-compute's log}, COMPUTE_LOGS.
    :param lxc_path: the driver compute's lxc_path: a container directory
        that is there after the run and was not before is a leftover.
    :returns: {'skipped': reason} when the cloud or a compute cannot be
        used, else {'sides': {side: {'host', 'samples', 'errors', 'cpu'}},
        'schedule', 'batches', 'warmup', 'image', 'flavor', 'concurrency',
        'per_side', 'batch', 'poll_interval', 'leftovers',
        'host_leftovers'}; seconds.
    """
    if hosts is None:
        import socket
        name = socket.gethostname()
        hosts = {'driver': name, 'fake': name + FAKE_SUFFIX}
    compute_logs = compute_logs or COMPUTE_LOGS
    try:
        admin = nova_api.connect(clouds_yaml, admin_cloud)
        image_id, flavor_id = nova_api._find_ids(admin, image_name,
                                                 flavor_name)
        _check_hosts(admin, hosts)
    except nova_api.Unavailable as e:
        log('  api-floor: skipped: %s' % e)
        return {'skipped': str(e)}
    plan = schedule(per_side, batch)
    result = {'image': image_name, 'flavor': flavor_name,
              'concurrency': concurrency, 'per_side': per_side,
              'batch': batch, 'poll_interval': interval,
              'schedule': plan, 'batches': [], 'warmup': {},
              'sides': {side: {'host': hosts[side], 'samples': [],
                               'errors': [], 'cpu': None}
                        for side in SIDES}}
    left = nova_api.delete_leftovers(admin)
    if left:
        raise RuntimeError('servers of an earlier run are left: %s' % left)
    containers_before = _listdir(lxc_path)
    offsets = {side: nova_api._log_size(compute_logs[side])
               for side in SIDES}
    names = {side: nova_api.server_names('%s%s-' % (NAME_PREFIX, side))
             for side in SIDES}
    tracker = nova_api.Tracker(nova_api.connect(clouds_yaml, admin_cloud),
                               interval)
    tracker.start()
    try:
        for side in SIDES:
            warm, errors = nova_api._boot_series(
                admin, tracker, image_id, flavor_id, 1, 1, names[side],
                availability_zone='nova:' + hosts[side])
            result['warmup'][side] = {'samples': warm, 'errors': errors}
        for number, (side, count) in enumerate(plan):
            meter = cpu.Meter()
            meter.start()
            started = time.perf_counter()
            samples, errors = nova_api._boot_series(
                admin, tracker, image_id, flavor_id,
                min(concurrency, count), count, names[side],
                availability_zone='nova:' + hosts[side])
            figures = meter.stop()
            for sample in samples:
                sample['batch'] = number
            part = result['sides'][side]
            part['samples'] += samples
            part['errors'] += errors
            part['cpu'] = add_cpu(part['cpu'], figures)
            result['batches'].append({
                'side': side, 'servers': count,
                'seconds': time.perf_counter() - started,
                'median': stats.summary(
                    s['seconds'] for s in samples)['median'],
                'errors': len(errors)})
            log('  api-floor batch %d/%d, %s: %d/%d ACTIVE, median %s, '
                '%d errors' % (number + 1, len(plan), side, len(samples),
                               count, _secs(result['batches'][-1]['median']),
                               len(errors)))
    finally:
        tracker.stop()
        result['poll_errors'] = tracker.errors[:20]
        result['polls'] = tracker.polls
        result['leftovers'] = nova_api.delete_leftovers(admin)
    result['host_leftovers'] = sorted(_listdir(lxc_path) - containers_before)
    for side in SIDES:
        timings = nova_api.compute_timings(compute_logs[side], offsets[side])
        part = result['sides'][side]
        for sample in part['samples'] + result['warmup'][side]['samples']:
            sample.update(timings.get(sample['server_id'], {}))
        f = side_figures(part['samples'])
        log('  api-floor %s (%s): median %s, p90 %s, n=%d, nova-compute '
            'build %s, spawn %s' % (
                side, hosts[side], _secs(f['median']), _secs(f['p90']),
                f['n'], _secs(f['build_median']), _secs(f['spawn_median'])))
    return result
