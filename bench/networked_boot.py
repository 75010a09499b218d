"""A networked boot against the same boot without a network (issue 16 goal 3).

Through the all-in-one cloud's API at concurrency 1: a server on the demo
project's network (``--api-network``, demo-net) and one with
``networks='none'``, same image and flavor, alternating ABBA (networked,
none, none, networked, ...), ``runs`` of each, each deleted before the
next boot. POST to ACTIVE as bench.nova_api times it.

Each networked boot's timeline comes from the services' INFO logs, by
server and port ID, relative to the moment the POST was sent (the logs'
local timestamps against this host's clock: the services run here):

- ``claim``: nova-compute's resource claim succeeded;
- ``port_down``: Neutron's OVN driver reports the new port down (it is
  in OVN's northbound database);
- ``port_bound``: Neutron answered Nova's update of the port that binds
  it to the host (the first ``PUT /v2.0/ports/<id>`` in the access log
  the aio's gunicorn writes, stamped at its end);
- ``network_changed``: Neutron's network-changed event reaches nova-api
  (the port was bound to the host);
- ``plugged``: the driver plugged the VIFs (its "Plugged VIFs" line),
  which also says whether it waits for network-vif-plugged;
- ``ovn_up``: OVN reports the port up (ovn-controller claimed it);
- ``ovn_installed``: the driver saw ovn-controller's mark on the port's
  OVS interface and stopped waiting for network-vif-plugged (its "OVN
  installed the flows" line; [lxc] ovn_installed_timeout);
- ``vif_plugged``: the network-vif-plugged event reaches nova-api;
- ``spawned`` and ``built``: nova-compute's "Took N seconds to spawn /
  build" lines;
- ``active``: the API first showed the server ACTIVE.

The none side's timeline has claim, spawned, built and active. Goal 3:
the networked median at most 1.5x the none median.
"""

import datetime
import os
import re
import time

from bench import nova_api
from bench import stats

GOAL_RATIO = 1.5
SIDES = ('networked', 'none')
NAME_PREFIX = nova_api.PREFIX + 'net-'
LOG_DIR = '/var/log/novalxc-aio'
LOGS = {'compute': nova_api.COMPUTE_LOG,
        'api': os.path.join(LOG_DIR, 'nova-api.log'),
        'neutron': os.path.join(LOG_DIR, 'neutron.log')}
MILESTONES = ('claim', 'port_down', 'port_bound', 'network_changed',
              'plugged', 'ovn_up', 'ovn_installed', 'vif_plugged', 'spawned',
              'built', 'active')

_UUID = r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
_STAMP = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) ')
# (log, milestone, pattern): group 'server' and/or 'port' name the IDs.
_PATTERNS = (
    ('compute', 'claim',
     r'\[instance: (?P<server>%s)\] Claim successful' % _UUID),
    ('compute', 'plugged',
     r'\[instance: (?P<server>%s)\] Plugged VIFs .*; waiting for '
     r'network-vif-plugged of (?P<awaited>.*)$' % _UUID),
    ('compute', 'ovn_installed',
     r'\[instance: (?P<server>%s)\] OVN installed the flows of ' % _UUID),
    ('compute', 'spawned',
     r'\[instance: (?P<server>%s)\] Took [0-9.]+ seconds to spawn' % _UUID),
    ('compute', 'built',
     r'\[instance: (?P<server>%s)\] Took [0-9.]+ seconds to build' % _UUID),
    ('api', 'network_changed',
     r'Creating event network-changed:(?P<port>%s) for instance '
     r'(?P<server>%s)' % (_UUID, _UUID)),
    ('api', 'vif_plugged',
     r'Creating event network-vif-plugged:(?P<port>%s) for instance '
     r'(?P<server>%s)' % (_UUID, _UUID)),
    ('neutron', 'port_down',
     r'OVN reports status down for port: (?P<port>%s)' % _UUID),
    ('neutron', 'ovn_up',
     r'OVN reports status up for port: (?P<port>%s)' % _UUID),
    ('neutron', 'port_bound',
     r'gunicorn\.access "PUT /v2\.0/ports/(?P<port>%s) HTTP/[0-9.]+" 200 '
     % _UUID),
)
_COMPILED = tuple((log, name, re.compile(pattern))
                  for log, name, pattern in _PATTERNS)


def schedule(runs, sides=SIDES):
    """[side, ...] of the run: ABBA, runs of each."""
    out = []
    for n in range(runs):
        out += list(sides) if n % 2 == 0 else list(reversed(sides))
    return out


def parse_stamp(line):
    """Seconds since the epoch of a log line's local timestamp, or None."""
    m = _STAMP.match(line)
    if not m:
        return None
    return datetime.datetime.strptime(
        m.group(1), '%Y-%m-%d %H:%M:%S.%f').timestamp()


def events(lines_by_log):
    """Milestones found in the logs' lines (the first of each).

    :param lines_by_log: {'compute' | 'api' | 'neutron': iterable of str}.
    :returns: (by_server, by_port, ports, awaited): by_server and by_port
        map an ID to {milestone: epoch seconds}; ports maps a server to
        the ports of its events; awaited maps a server to its "Plugged
        VIFs" line's list of awaited ports, as logged.
    """
    by_server, by_port, ports, awaited = {}, {}, {}, {}
    for log, lines in lines_by_log.items():
        patterns = [(name, rx) for lg, name, rx in _COMPILED if lg == log]
        for line in lines:
            for name, rx in patterns:
                m = rx.search(line)
                if not m:
                    continue
                stamp = parse_stamp(line)
                if stamp is None:
                    continue
                groups = m.groupdict()
                server, port = groups.get('server'), groups.get('port')
                if server and port:
                    ports.setdefault(server, [])
                    if port not in ports[server]:
                        ports[server].append(port)
                if server:
                    by_server.setdefault(server, {}).setdefault(name, stamp)
                elif port:
                    by_port.setdefault(port, {}).setdefault(name, stamp)
                if name == 'plugged':
                    awaited.setdefault(server, groups['awaited'].strip())
                break
    return by_server, by_port, ports, awaited


def timeline(sample, by_server, by_port, ports):
    """{milestone: seconds after the POST} of one sample's server.

    A port milestone (port_down, port_bound, ovn_up) is its first
    port's.
    """
    server = sample['server_id']
    found = dict(by_server.get(server, {}))
    for port in ports.get(server, [])[:1]:
        for name, stamp in by_port.get(port, {}).items():
            found.setdefault(name, stamp)
    out = {name: round(found[name] - sample['posted_at'], 3)
           for name in MILESTONES if name in found}
    out['active'] = round(sample['seconds'], 3)
    return out


def median_timeline(timelines):
    """{milestone: median seconds} over the timelines that have it."""
    out = {}
    for name in MILESTONES:
        values = [t[name] for t in timelines if name in t]
        if values:
            out[name] = stats.summary(values)['median']
    return out


def _read_from(path, offset):
    try:
        with open(path, errors='replace') as f:
            f.seek(offset)
            return f.read().splitlines()
    except OSError:
        return []


def _log_sizes(logs):
    sizes = {}
    for name, path in logs.items():
        try:
            sizes[name] = os.path.getsize(path)
        except OSError:
            sizes[name] = 0
    return sizes


def _network_id(conn, name):
    network = conn.network.find_network(name)
    if network is None:
        raise nova_api.Unavailable('all-in-one cloud lacks network %s'
                                   % name)
    return network.id


def measure(runs, image_name='debian-12', flavor_name='lxc.tiny',
            network_name='demo-net', clouds_yaml=nova_api.CLOUDS_YAML,
            cloud=nova_api.CLOUD, logs=None, interval=0.15, log=print):
    """Boot runs servers of each side, alternating; their timelines.

    :param logs: {'compute', 'api', 'neutron': path}; LOGS by default.
    :returns: {'skipped': reason} without the cloud; else {'sides':
        {side: {'samples': [...], 'errors': [...], 'figures':
        stats.summary of seconds, 'timeline': median_timeline}},
        'ratio', 'goal', 'met', 'awaited', 'image', 'flavor', 'network',
        'leftovers'}; seconds.
    """
    logs = dict(LOGS, **(logs or {}))
    try:
        conn = nova_api.connect(clouds_yaml, cloud)
        image_id, flavor_id = nova_api._find_ids(conn, image_name,
                                                 flavor_name)
        net_id = _network_id(conn, network_name)
    except nova_api.Unavailable as e:
        log('  networked boot: skipped: %s' % e)
        return {'skipped': str(e)}
    networks = {'networked': [{'uuid': net_id}], 'none': 'none'}
    names = nova_api.server_names(NAME_PREFIX)
    result = {'image': image_name, 'flavor': flavor_name,
              'network': network_name, 'goal': GOAL_RATIO,
              'sides': {side: {'samples': [], 'errors': []}
                        for side in SIDES}}
    offsets = _log_sizes(logs)
    tracker = nova_api.Tracker(nova_api.connect(clouds_yaml, cloud),
                               interval)
    tracker.start()
    try:
        nova_api.delete_leftovers(conn)
        # Warm-up, one of each: the image cache, Nova's and Neutron's.
        for side in SIDES:
            nova_api._boot_series(conn, tracker, image_id, flavor_id, 1, 1,
                                  names, networks=networks[side])
        for side in schedule(runs):
            posted_at = time.time()
            samples, errors = nova_api._boot_series(
                conn, tracker, image_id, flavor_id, 1, 1, names,
                networks=networks[side])
            for sample in samples:
                sample['posted_at'] = posted_at
            result['sides'][side]['samples'] += samples
            result['sides'][side]['errors'] += errors
            log('  networked boot: %s %s' % (side, ', '.join(
                '%.2f s' % s['seconds'] for s in samples) or errors))
    finally:
        tracker.stop()
        result['leftovers'] = nova_api.delete_leftovers(conn)
    by_server, by_port, ports, awaited = events(
        {name: _read_from(path, offsets[name])
         for name, path in logs.items()})
    for side in SIDES:
        part = result['sides'][side]
        timelines = []
        for sample in part['samples']:
            sample['timeline'] = timeline(sample, by_server, by_port, ports)
            sample['ports'] = ports.get(sample['server_id'], [])
            if sample['server_id'] in awaited:
                sample['awaited'] = awaited[sample['server_id']]
            timelines.append(sample['timeline'])
        part['figures'] = stats.summary(s['seconds']
                                        for s in part['samples'])
        part['timeline'] = median_timeline(timelines)
    medians = [result['sides'][side]['figures']['median']
               for side in SIDES]
    result['ratio'] = (round(medians[0] / medians[1], 3)
                       if all(medians) else None)
    result['met'] = (result['ratio'] is not None and
                     result['ratio'] <= GOAL_RATIO)
    networked = result['sides']['networked']['samples']
    result['awaited'] = sum(1 for s in networked
                            if s.get('awaited', '').startswith('['))
    result['ovn_installed'] = sum(1 for s in networked
                                  if 'ovn_installed' in s['timeline'])
    return result


def describe(result):
    """One line per side and the timeline, for the log and RESULTS.md."""
    if 'skipped' in result:
        return ['skipped: %s' % result['skipped']]
    lines = []
    for side in SIDES:
        part = result['sides'][side]
        f = part['figures']
        lines.append('%s: median %.2f s (n=%d, min %.2f, max %.2f), '
                     '%d errors' % (side, f['median'] or 0, f['n'],
                                    f['min'] or 0, f['max'] or 0,
                                    len(part['errors'])))
        lines.append('  timeline (median s after the POST): ' + ', '.join(
            '%s +%.2f' % (name, part['timeline'][name])
            for name in MILESTONES if name in part['timeline']))
    return lines
