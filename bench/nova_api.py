"""Through the Nova API of the all-in-one cloud: POST /servers to ACTIVE.

What a cloud user waits for (item 7). ``concurrency`` workers each boot a
server (POST /servers, no network), wait until the API shows it ACTIVE
with no task in progress, record the time since the POST was sent, delete
it and wait until it is gone before booting the next one, so at most
``concurrency`` servers exist at once (the default instance quota is 10).

One poller thread lists the benchmark's servers every ``interval`` seconds
for all workers: ten workers each polling their own server would load
nova-api on a 2-core host and slow what is measured. A server counts as
ACTIVE at the time the listing that first shows it so was received, so a
sample is late by at most one interval plus one listing. The listing at
each interval is the cheap one, ``GET /servers?status=ACTIVE`` and
``GET /servers`` without details (IDs only): the detailed listing makes
nova-api ask Neutron for each server's security groups, about 100 ms of
CPU (nova-api, Neutron, MariaDB) per listing of one networked server
against about 30 ms, which at 0.15 s intervals was 0.4 of a core on a
2-core host during the boot being timed. The detailed listing, for
servers that went to ERROR and their faults, runs once a second.

The cloud is reached with openstacksdk through the clouds.yaml that
``aio/novalxc-aio up`` writes; without it (or with a cloud that does not
answer) the item is skipped with the reason.
"""

import itertools
import os
import re
import threading
import time

from bench import cpu

CLOUDS_YAML = '/etc/novalxc-aio/clouds.yaml'
CLOUD = 'novalxc-demo'
# The aio's admin (aio/novalxc_aio/layout.py CLOUD_ADMIN), for what a
# project member may not do: quotas, flavors, instance names.
ADMIN_CLOUD = 'novalxc-admin'
PREFIX = 'nlxbench-api-'
BOOT_TIMEOUT = 300  # seconds to ACTIVE before a sample counts as failed
DELETE_TIMEOUT = 180
# nova-compute's own timings (nova/compute/manager.py, INFO level).
COMPUTE_LOG = '/var/log/novalxc-aio/nova-compute.log'
_TOOK = re.compile(r'\[instance: ([0-9a-f-]{36})\] Took ([0-9.]+) seconds to '
                   r'(spawn the instance on the hypervisor|build instance)')


class Unavailable(Exception):
    """The all-in-one cloud cannot be used; the message says why."""


def connect(clouds_yaml=CLOUDS_YAML, cloud=CLOUD):
    """An openstacksdk Connection to the all-in-one cloud.

    :raises Unavailable: no clouds.yaml, or the cloud does not answer.
    """
    if not os.path.exists(clouds_yaml):
        raise Unavailable('all-in-one cloud not running (no %s; run '
                          'aio/novalxc-aio up)' % clouds_yaml)
    try:
        import openstack.config
        import openstack.connection
        region = openstack.config.OpenStackConfig(
            config_files=[clouds_yaml], load_envvars=False).get_one(
                cloud=cloud)
        conn = openstack.connection.Connection(config=region)
        conn.authorize()
        return conn
    except Exception as e:  # any failure means: not usable now
        first = (str(e).splitlines() or [''])[0]
        # The connection errors repeat the URL in a long urllib3 repr.
        first = first.split(': HTTPConnectionPool')[0][:120]
        raise Unavailable('all-in-one cloud not running (%s: %s)'
                          % (type(e).__name__, first))


class Tracker:
    """Polls the benchmark's servers; tells workers when states change.

    :param interval: seconds between two cheap listings (ACTIVE or not,
        present or gone).
    :param detail_interval: seconds between two detailed listings (ERROR
        and its fault).
    """

    def __init__(self, conn, interval, detail_interval=1.0):
        self._conn = conn
        self._interval = interval
        self._detail_interval = detail_interval
        self._detailed_at = None  # time.monotonic() of the last detailed
        self._cond = threading.Condition()
        self._servers = {}   # id -> (status, task_state, fault)
        self._active_at = {}  # id -> perf_counter time first seen ACTIVE
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='bench-api-poller')
        self.polls = 0
        self.errors = []

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _list(self, detailed):
        """({id: (status, task_state, fault)}, {id of ACTIVE servers}).

        Without details, a present server's state is its last detailed
        one (BUILD until there is one) and ACTIVE comes from Nova's status
        filter, vm_state active: a boot's last save sets it with no task
        left (nova/compute/manager.py, _build_and_run_instance).
        """
        compute = self._conn.compute
        name = '^' + PREFIX
        if detailed:
            states = {s.id: (s.status, s.task_state,
                             (s.fault or {}).get('message'))
                      for s in compute.servers(details=True, name=name)}
            return states, {sid for sid, (status, task, _f)
                            in states.items()
                            if status == 'ACTIVE' and not task}
        active = {s.id for s in compute.servers(details=False, name=name,
                                                status='ACTIVE')}
        present = {s.id for s in compute.servers(details=False, name=name)}
        return ({sid: self._servers.get(sid, ('BUILD', None, None))
                 for sid in present | active}, active)

    def _detailed_due(self):
        """Whether this poll lists in detail; if so, counts it as done."""
        now = time.monotonic()
        if (self._detailed_at is not None and
                now - self._detailed_at < self._detail_interval):
            return False
        self._detailed_at = now
        return True

    def _run(self):
        while not self._stop.is_set():
            try:
                listing = self._list(self._detailed_due())
            except Exception as e:  # a failed poll: try again
                self.errors.append(repr(e))
                listing = None
            now = time.perf_counter()
            if listing is not None:
                with self._cond:
                    self.polls += 1
                    self._servers, active = listing
                    for sid in active:
                        self._active_at.setdefault(sid, now)
                    self._cond.notify_all()
            self._stop.wait(self._interval)

    def wait_active(self, server_id, timeout):
        """perf_counter time the server was first seen ACTIVE.

        :raises RuntimeError: it went to ERROR or timed out.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if server_id in self._active_at:
                    return self._active_at[server_id]
                status = self._servers.get(server_id, (None, None, None))
                if status[0] == 'ERROR':
                    raise RuntimeError('server %s went to ERROR: %s'
                                       % (server_id, status[2]))
                if time.monotonic() > deadline:
                    raise RuntimeError('server %s not ACTIVE after %ss'
                                       % (server_id, timeout))
                self._cond.wait(1)

    def wait_gone(self, server_id, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while server_id in self._servers:
                if time.monotonic() > deadline:
                    raise RuntimeError('server %s not gone after %ss'
                                       % (server_id, timeout))
                self._cond.wait(1)


def _find_ids(conn, image_name, flavor_name):
    image = conn.image.find_image(image_name)
    flavor = conn.compute.find_flavor(flavor_name)
    if image is None or flavor is None:
        raise Unavailable('all-in-one cloud lacks image %s or flavor %s'
                          % (image_name, flavor_name))
    return image.id, flavor.id


def server_names(prefix):
    """prefix00001, prefix00002, ...: an iterator the workers share.

    Made of C-level calls only, so concurrent next() from the workers is
    safe; a generator expression raises "generator already executing"
    when two threads advance it at once.
    """
    return map((prefix.replace('%', '%%') + '%05d').__mod__,
               itertools.count(1))


def _boot_series(conn, tracker, image_id, flavor_id, concurrency, runs,
                 names, keep=False, availability_zone=None,
                 networks='none'):
    """runs boots by concurrency workers; returns (samples, errors).

    :param keep: leave each server running (or in ERROR) once seen ACTIVE
        (or failed) instead of deleting it and waiting until it is gone.
    :param availability_zone: of each server, e.g. 'nova:HOST' (an admin
        forcing a compute host); None: the scheduler chooses.
    :param networks: the servers' networks as POST /servers takes them:
        'none', or [{'uuid': network id}, ...].
    """
    extra = {}
    if availability_zone:
        extra['availability_zone'] = availability_zone
    samples, errors = [], []
    lock = threading.Lock()
    todo = iter(range(runs))

    def worker():
        while True:
            with lock:
                n = next(todo, None)
            if n is None:
                return
            server_id = None
            try:
                start = time.perf_counter()
                server = conn.compute.create_server(
                    name=next(names), image_id=image_id,
                    flavor_id=flavor_id, networks=networks, **extra)
                server_id = server.id
                posted = time.perf_counter() - start
                active = tracker.wait_active(server_id, BOOT_TIMEOUT)
                with lock:
                    samples.append({'seconds': active - start,
                                    'post_seconds': posted,
                                    'concurrency': concurrency,
                                    'server_id': server_id})
            except Exception as e:
                with lock:
                    errors.append(repr(e))
            finally:
                if server_id and not keep:
                    try:
                        conn.compute.delete_server(server_id)
                        tracker.wait_gone(server_id, DELETE_TIMEOUT)
                    except Exception as e:
                        with lock:
                            errors.append('delete: %r' % e)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, errors


def compute_timings(path, offset):
    """nova-compute's "Took N seconds to ..." lines written since offset.

    :returns: {server id: {'compute_spawn': s, 'compute_build': s}}: the
        driver's spawn as nova-compute timed it, and the whole build on
        the compute host (claim, network, spawn, state updates).
    """
    found = {}
    try:
        with open(path, errors='replace') as f:
            f.seek(offset)
            for line in f:
                m = _TOOK.search(line)
                if m:
                    key = ('compute_spawn' if m.group(3).startswith('spawn')
                           else 'compute_build')
                    found.setdefault(m.group(1), {})[key] = float(m.group(2))
    except OSError:
        pass
    return found


def _log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def delete_leftovers(conn, timeout=DELETE_TIMEOUT):
    """Delete every server of the benchmark; return the names left.

    Gives up once no server has gone for timeout seconds, not after
    timeout seconds in all: 200 servers of api-density took 7.5 minutes
    to delete on a busy 2-core host, steadily, and a fixed timeout
    reported most of them as left behind while they were going.
    """
    for server in conn.compute.servers(name='^' + PREFIX):
        try:
            conn.compute.delete_server(server.id)
        except Exception:  # reported through what is left below
            pass
    deadline = time.monotonic() + timeout
    fewest = None
    while True:
        left = [s.name for s in conn.compute.servers(name='^' + PREFIX)]
        if not left:
            return []
        if fewest is None or len(left) < fewest:
            fewest = len(left)
            deadline = time.monotonic() + timeout
        if time.monotonic() >= deadline:
            return left
        time.sleep(1)


def measure(series, image_name='debian-12', flavor_name='lxc.tiny',
            interval=0.15, clouds_yaml=CLOUDS_YAML, cloud=CLOUD,
            compute_log=COMPUTE_LOG, log=print):
    """Boot servers through the API at each (concurrency, runs) of series.

    :param compute_log: nova-compute's log, read for its own timings of
        each server (added to the samples when found).
    :returns: {'skipped': reason} when the cloud cannot be used, else
        {'series': {concurrency: {'samples': [...], 'errors': [...],
        'cpu': cpu.Meter.stop()'s figures for the series}},
        'image', 'flavor', 'poll_interval', 'leftovers'}; seconds.
    """
    try:
        conn = connect(clouds_yaml, cloud)
        image_id, flavor_id = _find_ids(conn, image_name, flavor_name)
    except Unavailable as e:
        log('  API: skipped: %s' % e)
        return {'skipped': str(e)}
    names = server_names(PREFIX)
    result = {'image': image_name, 'flavor': flavor_name,
              'poll_interval': interval, 'series': {}}
    log_offset = _log_size(compute_log)
    tracker = Tracker(connect(clouds_yaml, cloud), interval)
    tracker.start()
    try:
        delete_leftovers(conn)
        # Warm-up: the compute host's image cache, Nova's caches.
        warm, errors = _boot_series(conn, tracker, image_id, flavor_id, 1,
                                    1, names)
        result['warmup'] = {'samples': warm, 'errors': errors}
        for concurrency, runs in series:
            meter = cpu.Meter()
            meter.start()
            samples, errors = _boot_series(conn, tracker, image_id,
                                           flavor_id, concurrency, runs,
                                           names)
            result['series'][str(concurrency)] = {'samples': samples,
                                                  'errors': errors,
                                                  'cpu': meter.stop()}
            secs = sorted(s['seconds'] for s in samples)
            log('  API concurrency %d: %d servers ACTIVE, median %.2f s, '
                '%d errors' % (concurrency, len(secs),
                               secs[len(secs) // 2] if secs else -1,
                               len(errors)))
    finally:
        tracker.stop()
        result['poll_errors'] = tracker.errors[:20]
        result['polls'] = tracker.polls
        result['leftovers'] = delete_leftovers(conn)
    timings = compute_timings(compute_log, log_offset)
    for part in [result.get('warmup')] + list(result['series'].values()):
        for sample in (part or {}).get('samples', []):
            sample.update(timings.get(sample['server_id'], {}))
    return result
