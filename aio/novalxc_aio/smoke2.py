"""smoke --computes 2: a busybox server on each of the two compute hosts.

``up --computes 2``; both computes up in Nova (services, hypervisors)
and both chassis' OVN agents alive in Neutron; then, as the admin, one
busybox server pinned to each host on demo-net (``--availability-zone
nova:HOST``): each ACTIVE on its host, its port bound to that host
(vif_type ovs, ACTIVE), its container RUNNING in that host's lxc_path
(compute 2's seen from its namespace), its port's address on eth0 by
DHCP, each pings the other across the geneve tunnel, each reads its
metadata, and the server on host 2 answers on its serial console through
nova-serialproxy; then the moves (_migration_checks: a cold migration
and a resize, each confirmed, and a resize reverted, with a marker, the
port's address and the other server checked after each, and nothing left
on the host a server left); then both deleted and nothing of them left
on either host (LXC dir, root, mounts, ID reservation, veth, br-int port)
or in Neutron (their ports gone). Reuses smoke.py's checks; ends with "N
passed, M failed" and, unless --keep-up, down.
"""

import glob
import json
import os
import subprocess
import time
import uuid

from novalxc_aio import api
from novalxc_aio import commands
from novalxc_aio import compute2
from novalxc_aio import demo
from novalxc_aio import layout
from novalxc_aio import smoke
from novalxc_aio import util


class _Host:
    """Where one compute keeps its containers, and how to reach them."""

    def __init__(self, name, lxc_path, driver_state, ovs_db, netns=None):
        self.name = name
        self.lxc_path = lxc_path
        self.driver_state = driver_state
        self.ovs_db = ovs_db
        # lxc-* talk to a container's monitor over an abstract socket of
        # the network namespace it started in: enter it (network only).
        self.prefix = ['nsenter', '--net=/run/netns/' + netns, '--'] \
            if netns else []

    def run(self, argv, timeout=60):
        return subprocess.run(self.prefix + argv, capture_output=True,
                              text=True, timeout=timeout)

    def attach(self, name, *argv):
        return self.run(['lxc-attach', '-P', self.lxc_path, '-n', name,
                         '--clear-env', '--'] + list(argv))

    def lxc_info(self, name, flag):
        proc = self.run(['lxc-info', '-P', self.lxc_path, '-n', name, '-H',
                         flag])
        return proc.stdout.strip() if proc.returncode == 0 else ''

    def _owned(self):
        """{cid: owner.json} of this host's reservations."""
        owned = {}
        # The machine's directory, shared by both computes (layout); each
        # reservation names its driver's state_path.
        mine = os.path.realpath(self.driver_state)
        for owner in glob.glob(os.path.join(layout.IDS_PATH, '*',
                                            'owner.json')):
            try:
                with open(owner) as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            if record.get('owner') == mine:
                owned[os.path.basename(os.path.dirname(owner))] = record
        return owned

    def reservations(self, instance_uuid):
        return sorted(cid for cid, record in self._owned().items()
                      if record.get('instance_uuid') == instance_uuid)

    def leftovers(self, name, cids):
        paths = [os.path.join(self.lxc_path, name)]
        for cid in cids:
            paths += [os.path.join(self.driver_state, 'rootfs', cid)]
        found = [p for p in paths if os.path.lexists(p)]
        owned = self._owned()
        found += ['ID reservation %s' % cid for cid in cids
                  if owned.get(cid, {}).get('instance_name') == name]
        for cid in cids:
            root = os.path.join(self.driver_state, 'rootfs', cid)
            found += [m for m in commands.mounts_under(self.driver_state)
                      if m == root or m.startswith(root + '/')]
        return found

    def vif_devices(self, port_id):
        names = {(prefix + port_id)[:smoke._NIC_NAME_LEN]
                 for prefix in smoke._VIF_DEV_PREFIXES}
        links = set(self.run(['ls', '/sys/class/net']).stdout.split()) \
            if not self.prefix else {
                line.split(':')[1].split('@')[0].strip()
                for line in self.run(['ip', '-o', 'link']).stdout.splitlines()}
        bridge = set(util.run(['ovs-vsctl', '--db=' + self.ovs_db,
                               'list-ports', 'br-int'],
                              capture=True).stdout.split())
        return sorted(names & (links | bridge))


# The two computes' logs (novalxc_aio.layout names).
COMPUTE_LOGS = ('nova-compute', 'nova-compute-2')
HOSTS = (
    _Host(layout.NOVA_HOST, layout.LXC_PATH, layout.DRIVER_STATE,
          'unix:%s/db.sock' % layout.OVS_RUN),
    _Host(layout.C2_HOST, layout.C2_LXC_PATH, layout.C2_DRIVER_STATE,
          compute2.OVS_DB_SOCK, netns=layout.C2_NETNS),
)


class _Node(smoke._Node):
    def __init__(self, label, host, server):
        self.label = label
        self.host_spec = host
        self.server = server
        self.port = None
        self.address = None
        self.container = None
        self.host = None
        self.cids = []
        self.marker = None


def _cloud_checks(c, s):
    services = s.get('compute', '/os-services?binary=nova-compute')[
        'services']
    hvs = s.get('compute', '/os-hypervisors')['hypervisors']
    agents = s.get('network', '/v2.0/agents')['agents']
    for host in HOSTS:
        c.check('nova-compute of %s enabled and up' % host.name,
                any(x['host'] == host.name and x['state'] == 'up' and
                    x['status'] == 'enabled' for x in services),
                json.dumps(services))
        c.check('hypervisor %s up' % host.name,
                any(h['hypervisor_hostname'] == host.name and
                    h['state'] == 'up' for h in hvs), json.dumps(hvs))
        for kind in ('OVN Controller agent', 'OVN Metadata agent'):
            c.check('Neutron sees the %s of %s alive' % (kind, host.name),
                    any(a['host'] == host.name and a['agent_type'] == kind
                        and a['alive'] for a in agents))


def _boot(c, s, net_id, run):
    nodes = []
    for label, host in zip(('a', 'b'), HOSTS):
        image_id = demo.image_id_of(s, layout.BUSYBOX_IMAGE)
        body = {'server': {
            'name': 'smoke2-%s-%s' % (run, label), 'imageRef': image_id,
            'flavorRef': 'lxc.tiny', 'networks': [{'uuid': net_id}],
            'availability_zone': 'nova:' + host.name}}
        server = s.post('compute', '/servers', body)['server']
        nodes.append(_Node(label, host, demo.Server(s, server['id'])))
    start = time.monotonic()
    for node in nodes:
        node.server.wait_status('ACTIVE', demo.ACTIVE_TIMEOUT)
    c.check('a server on each host ACTIVE (%.1f s)' %
            (time.monotonic() - start), True)
    for node in nodes:
        shown = node.server.show()
        node.container = shown['OS-EXT-SRV-ATTR:instance_name']
        node.host = shown['OS-EXT-SRV-ATTR:host']
        node.cids = node.host_spec.reservations(node.server.id)
        ports = s.get('network', '/v2.0/ports?device_id=' +
                      node.server.id)['ports']
        node.port = ports[0] if ports else None
        node.address = ports[0]['fixed_ips'][0]['ip_address'] \
            if ports else None
    return nodes


def _host_checks(c, s, nodes):
    for n in nodes:
        h = n.host_spec
        c.check('%s is on host %s (nova:%s)' % (n, h.name, h.name),
                n.host == h.name, str(n.host))
        port = s.get('network', '/v2.0/ports/' + n.port['id'])['port']
        binding = (port['binding:host_id'], port['binding:vif_type'],
                   port['status'])
        c.check('port of %s bound to %s as vif_type ovs, ACTIVE' % (
            n, h.name), binding == (h.name, 'ovs', 'ACTIVE'), str(binding))
        state = h.lxc_info(n.container, '-s')
        c.check('container %s RUNNING in %s' % (n.container, h.lxc_path),
                state == 'RUNNING', state)
        c.check('one container ID reserved in %s' % layout.IDS_PATH,
                len(n.cids) == 1, str(n.cids))
        dev = ('tap' + n.port['id'])[:smoke._NIC_NAME_LEN]
        c.check('its VIF %s is a port of br-int in %s\'s Open vSwitch' % (
            dev, h.name), dev in h.vif_devices(n.port['id']))


def _inside_ipv4(n):
    words = n.host_spec.attach(n.container, 'ip', '-o', '-4', 'addr',
                               'show', 'dev', 'eth0').stdout.split()
    return words[words.index('inet') + 1].split('/')[0] \
        if 'inet' in words else None


def _network_checks(c, nodes):
    c.wait('eth0 inside has the port\'s address, by DHCP: %s' %
           ', '.join(map(str, nodes)),
           lambda: [_inside_ipv4(n) for n in nodes] ==
           [n.address for n in nodes], demo.DHCP_TIMEOUT)
    for src, dst in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
        c.check('%s on %s pings %s on %s (geneve between the chassis)' % (
            src, src.host_spec.name, dst, dst.host_spec.name),
            src.host_spec.attach(src.container, 'ping', '-c', '3', '-W',
                                 '2', dst.address).returncode == 0)
    for n in nodes:
        proc = n.host_spec.attach(n.container, 'wget', '-q', '-O', '-',
                                  demo.METADATA_URL)
        try:
            meta = json.loads(proc.stdout)
        except ValueError:
            meta = None
        c.check('metadata from inside %s on %s names the server' % (
            n, n.host_spec.name),
            bool(meta) and meta.get('uuid') == n.server.id, proc.stderr)


def _where(c, s, n, host, what):
    """Checks of n after a move to host; updates n's host and IDs."""
    shown = n.server.show()
    c.check('%s: %s is on %s' % (what, n, host.name),
            shown['OS-EXT-SRV-ATTR:host'] == host.name,
            shown['OS-EXT-SRV-ATTR:host'])
    n.host_spec, n.host = host, host.name
    n.cids = host.reservations(n.server.id)
    state = host.lxc_info(n.container, '-s')
    c.check('%s: container %s RUNNING in %s' % (what, n.container,
                                                host.lxc_path),
            state == 'RUNNING', state)
    port = n.server.s.get('network', '/v2.0/ports/' + n.port['id'])['port']
    c.check('%s: the same port, bound to %s, ACTIVE, the same address' % (
        what, host.name),
        (port['binding:host_id'], port['status'],
         port['fixed_ips'][0]['ip_address']) ==
        (host.name, 'ACTIVE', n.address), str((port['binding:host_id'],
                                               port['status'])))
    c.check('%s: the marker written before the move is there' % what,
            n.host_spec.attach(n.container, 'cat', '/root/moved').stdout
            .strip() == n.marker)
    c.wait('%s: eth0 has the address again, by DHCP' % what,
           lambda: _inside_ipv4(n) == n.address, demo.DHCP_TIMEOUT)


def _left_checks(c, n, host, cids, what):
    """Nothing of n stays on host, which it left (its IDs there cids)."""
    left = host.leftovers(n.container, cids)
    c.check('%s: nothing of %s stays on %s (dir, root, mounts, ID)' % (
        what, n, host.name), not left, ', '.join(left))
    c.check('%s: lxc-info on %s no longer knows it' % (what, host.name),
            host.lxc_info(n.container, '-s') == '')
    devices = host.vif_devices(n.port['id'])
    c.check('%s: no veth or br-int port of %s stays on %s' % (
        what, n, host.name), not devices, ', '.join(devices))


def _ping(c, src, dst, what):
    c.check('%s: %s on %s pings %s on %s' % (
        what, src, src.host_spec.name, dst, dst.host_spec.name),
        src.host_spec.attach(src.container, 'ping', '-c', '3', '-W', '2',
                             dst.address).returncode == 0)


def _move(c, n, body, what):
    """POST a move; wait for VERIFY_RESIZE; return its seconds.

    Both computes are on this machine: the destination must have found
    the source's migration token and copied the disks locally
    (novalxcdriver.migration logs which transport it took).
    """
    n.marker = uuid.uuid4().hex
    n.host_spec.attach(n.container, 'sh', '-c',
                       'echo %s > /root/moved && sync' % n.marker)
    offsets = {log: smoke._log_size(log) for log in COMPUTE_LOGS}
    seconds = n.server.action(body, 'VERIFY_RESIZE', demo.STEP_TIMEOUT)
    c.check('%s -> VERIFY_RESIZE (%.1f s)' % (what, seconds), True)
    received = _received(n.server.id, offsets)
    c.check('%s: the disks came by local copy (the same machine)' % what,
            received and all('(local copy)' in line for line in received),
            '; '.join(received) or 'no "Received" line logged')
    return seconds


def _received(server_id, offsets):
    """The computes' "Received ... of instance server_id" lines since."""
    found = []
    for log, offset in offsets.items():
        try:
            with open(layout.log_file(log), errors='replace') as f:
                f.seek(offset)
                found += [line.strip()[-120:] for line in f
                          if 'Received ' in line and server_id in line and
                          'novalxcdriver.migration' in line]
        except OSError:
            continue
    return found


def _migration_checks(c, s, nodes):
    """a: cold migrate to host 2, confirm; resize back to host 1, confirm.

    b: resize to host 1, revert (back on host 2, as it was). Each move:
    the marker written inside before it, the same port and address, the
    other server reached; what the server left goes from that host.
    """
    a, b = nodes
    home, other = HOSTS
    cids = a.cids
    _move(c, a, {'migrate': None}, 'cold migrate a')
    _where(c, s, a, other, 'migrated a')
    _ping(c, a, b, 'migrated a')
    seconds = a.server.action({'confirmResize': None}, 'ACTIVE')
    c.check('confirm -> ACTIVE (%.1f s)' % seconds, True)
    _left_checks(c, a, home, cids, 'confirmed a')

    cids = a.cids
    _move(c, a, {'resize': {'flavorRef': 'lxc.small'}}, 'resize a')
    _where(c, s, a, home, 'resized a')
    _ping(c, a, b, 'resized a')
    _ping(c, b, a, 'resized a')
    df = a.host_spec.attach(a.container, 'df', '-k', '/').stdout.split()
    c.check('resized a: its root disk grew to lxc.small\'s 4 GiB',
            len(df) > 8 and int(df[8]) > 3.5 * (1 << 20), ' '.join(df))
    seconds = a.server.action({'confirmResize': None}, 'ACTIVE')
    c.check('confirm -> ACTIVE (%.1f s)' % seconds, True)
    _left_checks(c, a, other, cids, 'confirmed a')

    cids = b.cids
    _move(c, b, {'resize': {'flavorRef': 'lxc.small'}}, 'resize b')
    _where(c, s, b, home, 'resized b')
    moved_cids = b.cids
    seconds = b.server.action({'revertResize': None}, 'ACTIVE')
    c.check('revert b -> ACTIVE (%.1f s)' % seconds, True)
    _where(c, s, b, other, 'reverted b')
    c.check('reverted b: its flavor is lxc.tiny again',
            b.server.show()['flavor']['original_name'] == 'lxc.tiny')
    c.check('reverted b: the same container ID as before',
            b.cids == cids, '%s, %s' % (b.cids, cids))
    _left_checks(c, b, home, moved_cids, 'reverted b')
    _ping(c, b, a, 'reverted b')


def _delete_checks(c, s, nodes):
    start = time.monotonic()
    for n in nodes:
        s.call('DELETE', 'compute', '/servers/' + n.server.id)
    for n in nodes:
        api.wait_until('server %s deleted' % n.server.id,
                       lambda: not s.exists('compute',
                                            '/servers/' + n.server.id),
                       demo.STEP_TIMEOUT)
    c.check('delete -> both gone from the API (%.1f s)' %
            (time.monotonic() - start), True)
    c.check('the two servers hold different container IDs (one '
            'reservation directory for the machine)',
            set(nodes[0].cids).isdisjoint(nodes[1].cids),
            '%s, %s' % (nodes[0].cids, nodes[1].cids))
    for n in nodes:
        h = n.host_spec
        c.check('lxc-info on %s no longer knows %s' % (h.name, n.container),
                h.lxc_info(n.container, '-s') == '')
        left = h.leftovers(n.container, n.cids)
        c.check('nothing of %s remains on %s' % (n, h.name), not left,
                ', '.join(left))
        c.check('no container ID reservation of %s remains on %s' % (
            n, h.name), not h.reservations(n.server.id))
        devices = h.vif_devices(n.port['id'])
        c.check('no veth or br-int port of %s remains on %s' % (n, h.name),
                not devices, ', '.join(devices))
    c.wait('their ports are gone from Neutron (Nova made them)',
           lambda: not any(s.exists('network', '/v2.0/ports/' + n.port['id'])
                           for n in nodes), 30)


def smoke2(keep_up=False):
    """up --computes 2, a server on each host, networking, delete, down.

    :returns: 0 if every check passed, else 1.
    """
    c = smoke.Checks()
    try:
        c.check('up --computes 2', commands.up(computes=2) == 0)
    except util.AioError as e:
        c.check('up --computes 2', False, str(e))
        print('%d passed, %d failed' % (c.passed, c.failed))
        return 1
    secrets = util.load_secrets()
    s = demo.session(secrets, 'admin')
    d = demo.session(secrets, 'demo')
    _cloud_checks(c, s)
    # Both computes as nova, each with its own privsep daemons.
    smoke._service_user_checks(c)
    nodes = []
    try:
        nodes = _boot(c, s, demo.network_id(d), uuid.uuid4().hex[:6])
        _host_checks(c, s, nodes)
        _network_checks(c, nodes)
        # The serial proxy (root namespace) reaches compute 2's console
        # relay on its my_ip.
        smoke._serial_console_checks(c, nodes[1])
        _migration_checks(c, s, nodes)
        # Again after the migrations: what the daemons ran has ended.
        for name, node in (('nova-compute', 1), ('nova-compute-2', 2)):
            smoke._privsep_daemon_checks(c, name, layout.compute_conf(node))
        smoke.metadata_agent_checks(c, served=True)
        _delete_checks(c, s, nodes)
    except (util.AioError, api.ApiError, TimeoutError) as e:
        c.check('a server on each host', False, str(e))
        for n in nodes:
            demo.cleanup(n.server)
    if not keep_up:
        c.check('down', commands.down() == 0)
    print('%d passed, %d failed' % (c.passed, c.failed))
    return 0 if c.failed == 0 else 1
