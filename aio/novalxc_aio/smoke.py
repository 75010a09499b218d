"""smoke: the CI check of the whole cloud, networking included.

up; Neutron drives OVN; three busybox servers on demo-net, each booted
with a Neutron port of its own: they get their ports' addresses by DHCP,
ping each other where their security groups allow it and not where they
do not, read the metadata service; one reboots and answers a command on
its serial console (a websocket through nova-serialproxy); another is
snapshotted
(a server booted from the image), shelved and unshelved; the third is
rebuilt on the Debian image (its writes gone, the same container ID,
port and address), rescued with busybox (its root on /mnt) and
unrescued; then a restart mishap on the first: data written inside,
nova-compute stopped, lxc_path moved away, nova-compute started (a new
process, up in the API), its root disk and ID reservation still there,
lxc_path back, a hard reboot through the API (a new init), the data read
back inside; all are deleted. Checks look at the host, not only at the
API: the containers, their addresses inside (lxc-attach), and that
nothing of them remains afterwards (LXC dir, root filesystem and mounts,
container ID reservation, veth pair, OVS port, port binding). Prints one
line per check and "N passed, M failed".
"""

import datetime
import glob
import json
import os
import pwd
import time
import uuid

from novalxc_aio import api
from novalxc_aio import commands
from novalxc_aio import console
from novalxc_aio import demo
from novalxc_aio import layout
from novalxc_aio import procs
from novalxc_aio import setup
from novalxc_aio import util

# Interface names the driver gives a VIF's veth pair (nova's NIC_NAME_LEN).
_VIF_DEV_PREFIXES = ('tap', 'nlx')
_NIC_NAME_LEN = 14


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, what, ok, detail=''):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print('%s: %s%s' % ('PASS' if ok else 'FAIL', what,
                            (' (%s)' % detail) if detail and not ok else ''),
              flush=True)
        return ok

    def wait(self, what, predicate, timeout, interval=0.5):
        """Check that predicate() turns true within timeout seconds."""
        try:
            value, seconds = api.wait_until(what, predicate, timeout,
                                            interval)
        except TimeoutError as e:
            self.check(what, False, str(e))
            return None
        self.check('%s (%.1f s)' % (what, seconds), True)
        return value


_lxc_info = demo.lxc_info
_reservations_of = demo.reservations_of


def _leftovers(name, cids):
    paths = [os.path.join(layout.LXC_PATH, name)]
    for cid in cids:
        paths += [os.path.join(layout.DRIVER_STATE, 'rootfs', cid)]
    found = [p for p in paths if os.path.lexists(p)]
    found += held_ids(name, cids)
    for cid in cids:
        root = os.path.join(layout.DRIVER_STATE, 'rootfs', cid)
        found += [m for m in commands.mounts_under(layout.DRIVER_STATE)
                  if m == root or m.startswith(root + '/')]
    return found


def held_ids(name, cids):
    """The reservations among cids still held for container name.

    The directory is the machine's: once released, an ID may be taken at
    once by another driver of this machine (the functional tests, a
    benchmark), so only a reservation naming this container counts.
    """
    found = []
    for cid in cids:
        path = os.path.join(layout.IDS_PATH, cid)
        try:
            with open(os.path.join(path, 'owner.json')) as f:
                owner = json.load(f)
        except FileNotFoundError:
            if os.path.lexists(path):
                found.append(path)
            continue
        except (OSError, ValueError):
            found.append(path)
            continue
        if owner.get('instance_name') == name:
            found.append(path)
    return found


def _vif_devices(port_ids):
    """Host devices and br-int ports still named after the ports' VIFs."""
    names = {(prefix + port_id)[:_NIC_NAME_LEN]
             for port_id in port_ids for prefix in _VIF_DEV_PREFIXES}
    links = set(os.listdir('/sys/class/net'))
    bridge = set(util.run(['ovs-vsctl', 'list-ports', 'br-int'],
                          capture=True).stdout.split())
    return sorted(names & (links | bridge))


def _ovn_switches():
    return util.run(['ovn-nbctl', 'ls-list'], capture=True).stdout


def _neutron_checks(c, s):
    """Neutron answers, drives OVN, and has what up makes for servers."""
    try:
        agents = s.get('network', '/v2.0/agents?host=' +
                       layout.NOVA_HOST)['agents']
        for agent_type in ('OVN Controller agent', 'OVN Metadata agent'):
            c.check('Neutron sees the %s of %s' % (agent_type,
                                                   layout.NOVA_HOST),
                    any(a['agent_type'] == agent_type and a['alive']
                        for a in agents),
                    json.dumps([(a['agent_type'], a['alive'])
                                for a in agents]))
        net = s.post('network', '/v2.0/networks',
                     {'network': {'name': 'smoke-net'}})['network']
        switch = 'neutron-' + net['id']
        c.wait('a Neutron network becomes an OVN logical switch',
               lambda: switch in _ovn_switches(), 20)
        s.call('DELETE', 'network', '/v2.0/networks/' + net['id'])
        c.wait('deleting it removes the logical switch',
               lambda: switch not in _ovn_switches(), 20)
    except (util.AioError, api.ApiError) as e:
        c.check('Neutron with ML2/OVN', False, str(e))


def _group_ingress(d, name):
    """Protocols the demo project's group name lets in from anywhere."""
    groups = d.get('network', '/v2.0/security-groups?name=%s&project_id=%s'
                   % (name, d.project_id))['security_groups']
    if not groups:
        return None
    return {r['protocol'] for r in groups[0]['security_group_rules']
            if r['direction'] == 'ingress' and
            r['remote_ip_prefix'] == '0.0.0.0/0'}


def _process_tree(pid):
    """pid and its descendants (gunicorn's workers, oslo's children)."""
    children = {}
    for name in filter(str.isdigit, os.listdir('/proc')):
        try:
            ppid = int(procs.stat_fields(int(name))[1])
        except (OSError, TypeError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return sorted(tree)


def _credentials(pid):
    """(uids, gids, groups, CapEff, CapPrm) of pid from /proc/PID/status."""
    with open('/proc/%d/status' % pid) as f:
        status = dict(line.rstrip('\n').split(':\t', 1)
                      for line in f if ':\t' in line)
    return (status['Uid'].split(), status['Gid'].split(),
            status['Groups'].split(), int(status['CapEff'], 16),
            int(status['CapPrm'], 16))


def _service_user_checks(c):
    """Each OpenStack service runs as its own user; only privsep is root.

    From /proc (issue 14): every process of the service has the user's
    uid and gid as real, effective, saved and filesystem ids, no
    supplementary group and no capability (effective or permitted). The
    computes (nova-compute, and compute 2 and the fake-driver one when
    running) too; a compute's root work is its privsep daemons'
    (_privsep_daemon_checks).
    """
    accounts = dict(layout.SERVICE_ACCOUNTS)
    accounts.update((name, user) for name, user in
                    layout.OPTIONAL_SERVICE_ACCOUNTS.items()
                    if procs.recorded_pid(name))
    for name, user in sorted(accounts.items()):
        account = pwd.getpwnam(user)
        pid = procs.recorded_pid(name)
        if not pid:
            c.check('%s runs as %s' % (name, user), False, 'not running')
            continue
        bad = []
        tree = _process_tree(pid)
        for p in tree:
            try:
                uids, gids, groups, eff, prm = _credentials(p)
            except (OSError, KeyError):
                continue  # gone meanwhile
            if set(uids) != {str(account.pw_uid)} or \
                    set(gids) != {str(account.pw_gid)} or groups or \
                    eff or prm:
                bad.append('pid %d: uids %s gids %s groups %s CapEff %x '
                           'CapPrm %x' % (p, ','.join(uids), ','.join(gids),
                                          ','.join(groups), eff, prm))
        c.check('%s runs as %s (uid %d, %d processes, no capability, no '
                'other group)' % (name, user, account.pw_uid, len(tree)),
                account.pw_uid != 0 and not bad, '; '.join(bad))
    for name, node in (('nova-compute', 1), ('nova-compute-2', 2)):
        if name in accounts:
            _privsep_daemon_checks(c, name, layout.compute_conf(node))
    metadata_agent_checks(c)
    _sudo_rule_checks(c, layout.COMPUTE_USER, layout.compute_conf(),
                      layout.COMPUTE_PRIVSEP_PYPATHS[0])
    _sudo_rule_checks(c, 'neutron', layout.agent_conf(),
                      layout.NEUTRON_PRIVSEP_PYPATHS[0])


def _sudo_rule_checks(c, user, conf, context):
    """What user may run as root through sudo: privsep-helper exactly.

    Asked of sudo itself ("sudo -n -l <command>" as the user): the command
    oslo.privsep runs is allowed; with an option of the user's own after
    it (privsep-helper would read a logging configuration as root), or
    another config file, or another service's context, it is not.
    """
    sock = '/tmp/tmpsmoke_0/privsep.sock'

    def allowed(*args):
        return util.run(
            ['setpriv', '--reuid=' + user, '--regid=' + user,
             '--clear-groups', 'sudo', '-n', '-l',
             layout.venv_bin('privsep-helper')] + list(args),
            check=False, capture=True).returncode == 0

    exact = ['--config-file', conf, '--privsep_context', context,
             '--privsep_sock_path', sock]
    refused = {
        'an option of its own': exact + ['--log-config-append', '/tmp/x'],
        'another config file': exact[:2] + ['--config-file', '/tmp/x'] +
        exact[2:],
        'another context': exact[:3] + ['os_brick.privileged.default'] +
        exact[4:],
    }
    runs = allowed(*exact)
    let = [what for what, args in sorted(refused.items()) if allowed(*args)]
    c.check('%s may sudo privsep-helper exactly as oslo.privsep runs it, '
            'not with %s' % (user, ', '.join(sorted(refused))),
            runs and not let,
            'allowed: %s' % ', '.join(let) if runs else
            'the exact command is refused')


def metadata_agent_checks(c, served=False):
    """The OVN metadata agents' root work: privsep daemons, haproxies.

    An agent starts its privsep daemons on first use (a network's
    namespace on its chassis) and a haproxy per network: none is a
    failure only if served (servers on demo-net on each host running an
    agent). Each haproxy, started through neutron-rootwrap as root, runs
    as the agent's user.
    """
    for name, node in (('neutron-ovn-metadata-agent', 1),
                       ('neutron-ovn-metadata-agent-2', 2)):
        if not procs.recorded_pid(name):
            continue
        _privsep_daemon_checks(c, name, layout.agent_conf(node),
                               need_daemons=served)
        user = pwd.getpwnam(layout.OPTIONAL_SERVICE_ACCOUNTS.get(
            name, layout.SERVICE_ACCOUNTS.get(name)))
        state = layout.C2_METADATA_STATE if node == 2 else \
            layout.METADATA_STATE
        found, bad = [], []
        for p in _haproxies(state):
            try:
                uids, gids = _credentials(p)[:2]
            except (OSError, KeyError):
                continue
            found.append(p)
            if set(uids) != {str(user.pw_uid)} or \
                    set(gids) != {str(user.pw_gid)}:
                bad.append('pid %d: uids %s gids %s' % (
                    p, ','.join(uids), ','.join(gids)))
        c.check('%s\'s %d haproxies run as %s' % (
            name, len(found), user.pw_name),
                (found or not served) and not bad,
                '; '.join(bad) or 'no haproxy found')


def _haproxies(state):
    """PIDs of the haproxies whose configuration is in state."""
    prefix = os.path.join(state, 'ovn-metadata-proxy') + '/'
    found = []
    for entry in filter(str.isdigit, os.listdir('/proc')):
        argv = _argv(int(entry))
        if argv and os.path.basename(argv[0]) == 'haproxy' and \
                any(a.startswith(prefix) for a in argv):
            found.append(int(entry))
    return found


def _argv(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return [a.decode(errors='replace')
                    for a in f.read().split(b'\0')[:-1]]
    except OSError:
        return []


def _privsep_daemon_checks(c, name, conf, need_daemons=True):
    """A service's privsep daemons: root, its own, one per context.

    oslo.privsep's helper forks its daemon away from sudo, and the daemon
    keeps the session of the service (a compute, an OVN metadata agent)
    that started it: the root processes of that session are the daemons,
    whose argv name the service's config file, each with its own
    context, and what they run (the lxc-* tools; containers' monitors
    leave the session). need_daemons: no daemon is a failure.
    """
    pid = procs.recorded_pid(name)
    helper = layout.venv_bin('privsep-helper')
    daemons, contexts, bad, rooted = [], [], [], {}
    for entry in filter(str.isdigit, os.listdir('/proc')):
        p = int(entry)
        fields = procs.stat_fields(p)
        if not fields or int(fields[3]) != pid or p == pid:
            continue
        argv = _argv(p)
        try:
            uids = _credentials(p)[0]
        except (OSError, KeyError):
            continue
        if helper not in argv:
            if '0' in uids:
                rooted[p] = (int(fields[1]), argv, uids)
            continue
        daemons.append(p)
        i = argv.index(helper)
        if argv[i + 1:i + 3] != ['--config-file', conf]:
            bad.append('privsep daemon %d reads %s' % (p, argv[i + 1:i + 3]))
        if '--privsep_context' in argv:
            contexts.append(argv[argv.index('--privsep_context') + 1])
        if set(uids) != {'0'}:
            bad.append('privsep daemon %d runs as uid %s' % (
                p, ','.join(uids)))
    for p, (ppid, argv, uids) in sorted(rooted.items()):
        while ppid in rooted:
            ppid = rooted[ppid][0]
        if ppid not in daemons:
            bad.append('pid %d (%s) runs as uid %s' % (
                p, ' '.join(argv)[:80], ','.join(uids)))
    if len(set(contexts)) != len(contexts):
        bad.append('a context twice: %s' % sorted(contexts))
    c.check('%s\'s root work is its %d privsep daemons\' alone (uid 0, '
            'each its own context: %s; no other root process in its '
            'session)' % (name, len(daemons), ', '.join(sorted(contexts))),
            (daemons or not need_daemons) and not bad,
            '; '.join(bad) or 'no daemon found')


def _demo_network_checks(c, d):
    """demo-net with DHCP, and the two security groups, as up made them."""
    subnets = d.get('network', '/v2.0/subnets?name=' +
                    layout.DEMO_SUBNET)['subnets']
    c.check('%s has subnet %s with DHCP' % (layout.DEMO_NETWORK,
                                            layout.DEMO_CIDR),
            any(sn['cidr'] == layout.DEMO_CIDR and sn['enable_dhcp']
                for sn in subnets), json.dumps(subnets))
    default = _group_ingress(d, 'default')
    no_icmp = _group_ingress(d, layout.NO_ICMP_GROUP)
    c.check('security groups: default lets ICMP and SSH in, %s only SSH'
            % layout.NO_ICMP_GROUP,
            default is not None and {'icmp', 'tcp'} <= default and
            no_icmp == {'tcp'}, 'default %s, %s %s' % (
                default, layout.NO_ICMP_GROUP, no_icmp))


def _ping(name, address):
    """True if container name gets an ICMP echo reply from address."""
    return demo.attach(name, 'ping', '-c', '3', '-W', '2',
                       address).returncode == 0


def _tcp_answer(name, address, port):
    """How address answers container name's TCP SYN to port.

    'refused' (a RST: let through, nothing listens), 'timeout' (dropped),
    or what nc said.
    """
    proc = demo.attach(name, 'nc', '-w', '3', address, str(port))
    said = (proc.stderr + proc.stdout).lower()
    for word in ('refused', 'timed out'):
        if word in said:
            return word.split()[0]
    return said.strip() or 'exit %d' % proc.returncode


class _Node:
    """One smoke server: its port, its server, its container."""

    def __init__(self, label, port, server):
        self.label = label
        self.port = port
        self.server = server
        self.address = port['fixed_ips'][0]['ip_address']
        self.container = None
        self.host = None
        self.cids = []

    def __str__(self):
        return '%s (%s)' % (self.label, self.address)


def _boot(c, s, d, net_id, run):
    """Ports and busybox servers a, b (default group) and c (no-icmp)."""
    groups = {name: d.get('network', '/v2.0/security-groups?name=%s&'
                          'project_id=%s' % (name, d.project_id))[
                              'security_groups'][0]['id']
              for name in ('default', layout.NO_ICMP_GROUP)}
    nodes = []
    for label, group in (('a', 'default'), ('b', 'default'),
                         ('c', layout.NO_ICMP_GROUP)):
        name = 'smoke-%s-%s' % (run, label)
        port = d.post('network', '/v2.0/ports', {'port': {
            'name': name, 'network_id': net_id,
            'security_groups': [groups[group]]}})['port']
        nodes.append(_Node(label, port, None))
        nodes[-1].server = demo.Server.boot(
            d, name, layout.BUSYBOX_IMAGE, 'lxc.tiny',
            networks=[{'port': port['id']}])
    start = time.monotonic()
    for node in nodes:
        node.server.wait_status('ACTIVE', demo.ACTIVE_TIMEOUT)
    c.check('3 servers ACTIVE, a port each (%.1f s)' %
            (time.monotonic() - start), True)
    for node in nodes:
        shown = s.get('compute', '/servers/' + node.server.id)['server']
        node.container = shown['OS-EXT-SRV-ATTR:instance_name']
        node.host = shown['OS-EXT-SRV-ATTR:host']
        node.cids = _reservations_of(node.server.id)
    return nodes


def _running_checks(c, s, nodes):
    c.check('servers on host %s' % layout.NOVA_HOST,
            all(n.host == layout.NOVA_HOST for n in nodes),
            ', '.join(n.host for n in nodes))
    states = [_lxc_info(n.container, '-s') for n in nodes]
    c.check('containers RUNNING', states == ['RUNNING'] * len(nodes),
            ', '.join(states))
    c.check('one container ID reserved per server',
            all(len(n.cids) == 1 for n in nodes),
            ', '.join(str(n.cids) for n in nodes))
    c.wait('console logs show the boot',
           lambda: all('busybox booted' in n.server.console()
                       for n in nodes), 60)
    bindings = []
    for n in nodes:
        port = s.get('network', '/v2.0/ports/' + n.port['id'])['port']
        bindings.append((port['binding:host_id'], port['binding:vif_type'],
                         port['status']))
    c.check('ports bound to %s as vif_type ovs, ACTIVE' % layout.NOVA_HOST,
            all(b == (layout.NOVA_HOST, 'ovs', 'ACTIVE') for b in bindings),
            str(bindings))


def _network_checks(c, nodes, mtu):
    a, b, cc = nodes

    def addressed():
        found = [demo.inside_ipv4(n.container) for n in nodes]
        return found if [f[0] for f in found] == [
            n.address for n in nodes] else None
    found = c.wait('eth0 inside has the port\'s address, by DHCP: %s' %
                   ', '.join(map(str, nodes)), addressed, 60)
    if found:
        c.check('eth0 MTU inside is the network\'s (%d)' % mtu,
                all(f[1] == mtu for f in found), str([f[1] for f in found]))
    c.check('%s pings %s (default group lets ICMP in)' % (a, b),
            _ping(a.container, b.address))
    c.check('%s pings %s (its egress is open)' % (cc, a),
            _ping(cc.container, a.address))
    c.check('%s cannot ping %s (group %s: no ICMP in)' % (
        a, cc, layout.NO_ICMP_GROUP), not _ping(a.container, cc.address))
    answer = _tcp_answer(a.container, cc.address, 22)
    c.check('%s reaches %s on tcp/22 (refused, not dropped: SSH is let in)'
            % (a, cc), answer == 'refused', answer)
    meta = demo.metadata(a.container)
    c.check('metadata from inside %s: meta_data.json names the server' % a,
            bool(meta) and meta.get('uuid') == a.server.id, str(meta))


def _reboot_check(c, node):
    pid = _lxc_info(node.container, '-p')
    seconds = node.server.action({'reboot': {'type': 'SOFT'}}, 'ACTIVE')
    new_pid = _lxc_info(node.container, '-p')
    c.check('reboot -> ACTIVE (%.1f s) with a new init' % seconds,
            new_pid and new_pid != pid and
            _lxc_info(node.container, '-s') == 'RUNNING',
            'init pid %s -> %s' % (pid, new_pid))
    c.wait('after the reboot, eth0 has %s again' % node.address,
           lambda: demo.inside_ipv4(node.container)[0] == node.address, 30)


def _serial_console_checks(c, node):
    """The busybox shell on node's /dev/console, through the websocket."""
    try:
        url = console.serial_url(node.server.s, node.server.id)
    except api.ApiError as e:
        c.check('serial console: console url show --serial', False, str(e))
        return
    c.check('serial console: console url show --serial gives %s' %
            url.split('?')[0] + '?token=...',
            url.startswith('ws://%s:%d/' % (
                layout.HOST, layout.PORTS['nova-serialproxy'])), url)
    token = 'serial-%s' % uuid.uuid4().hex[:8]
    # The shell's arithmetic answers, not the echo of the line typed.
    command = 'echo %s-$((6*7))' % token
    try:
        _seen, seconds = console.exchange(
            url, b'\n' + command.encode() + b'\n',
            ('%s-42' % token).encode())
    except Exception as e:  # a websocket error, a timeout: a FAIL line
        c.check('serial console: %s answered through nova-serialproxy' %
                node, False, str(e))
        return
    c.check('serial console: `%s` answered by the shell of %s through '
            'nova-serialproxy (%.2f s)' % (command, node, seconds), True)
    c.check('serial console: the console log recorded it too',
            '%s-42' % token in node.server.console(length=50),
            'not in the last 50 lines')


SNAPSHOT_FILE = '/root/snapshot-marker'
SHELVE_FILE = '/root/shelve-marker'
# What a snapshot stages, as novalxcdriver/snapshot.py names it (the
# driver is not importable here): <rootfs>/snapshot-<image> and, on a
# btrfs root disk, the subvolume <rootfs>/root/.snapshot-<image>.
_SNAPSHOT_STAGES = ('snapshot-*', os.path.join('root', '.snapshot-*'))


def _snapshot_leftovers(cids):
    found = []
    for cid in cids:
        root = os.path.join(layout.DRIVER_STATE, 'rootfs', cid)
        for pattern in _SNAPSHOT_STAGES:
            found += glob.glob(os.path.join(glob.escape(root), pattern))
        found += [m for m in commands.mounts_under(root)
                  if '/snapshot-' in m or '/.snapshot-' in m]
    return sorted(set(found))


def _snapshot_checks(c, s, d, node, net_id):
    """server image create of a running server, and a server booted from it.

    A marker written inside first (not synced: the snapshot must see
    it); the server stays ACTIVE and its container keeps its init
    throughout; the image is an active raw/bare rootfs for LXC; nothing
    of the snapshot stays on the host; a server booted from the image
    has the marker; it is deleted, leaving nothing. The image is
    deleted at the end.
    """
    name = s.get('compute', '/servers/' + node.server.id)['server']['name']
    try:
        token = demo.write_marker(node.container, SNAPSHOT_FILE)
    except util.AioError as e:
        c.check('snapshot: wrote %s in %s' % (SNAPSHOT_FILE, node), False,
                str(e))
        return
    before = demo.state_and_pid(node.container)
    seen = set()
    log_offset = _log_size('nova-compute')
    start = time.monotonic()
    image_id = node.server.create_image(name + '-snapshot')
    copy = None
    try:
        try:
            found, _s, statuses = node.server.wait_image(
                image_id,
                lambda: seen.add(demo.state_and_pid(node.container)))
        except (util.AioError, TimeoutError) as e:
            c.check('snapshot: server image create of %s -> image active'
                    % node, False, '%s; %s' % (e, _logged_problems(
                        'nova-compute', log_offset, node.server.id)))
            return
        c.check('snapshot: server image create of %s -> image active '
                '(%.1f s)' % (node, time.monotonic() - start), True)
        seen.add(demo.state_and_pid(node.container))
        c.check('snapshot: %s stayed ACTIVE, its container RUNNING with '
                'init pid %s throughout (no downtime)' % (node, before[1]),
                before[0] == 'RUNNING' and statuses == ['ACTIVE'] and
                seen == {before},
                'server statuses %s; container (state, init pid) before %s, '
                'during and after %s' % (statuses, before, sorted(seen)))
        problems = demo.image_problems(found, node.server.id)
        c.check('snapshot: the image is raw/bare, hypervisor_type lxc '
                '(%.1f MB)' % ((found.get('size') or 0) / 1e6),
                not problems, problems)
        left = _snapshot_leftovers(node.cids)
        c.check('snapshot: no staging directory, subvolume or mount of it '
                'remains', not left, ', '.join(left))

        start = time.monotonic()
        copy = demo.Server.boot(d, name + '-copy', None, 'lxc.tiny',
                                networks=[{'uuid': net_id}],
                                image_id=image_id)
        copy.wait_status('ACTIVE', demo.ACTIVE_TIMEOUT)
        c.check('snapshot: a server booted from the image -> ACTIVE '
                '(%.1f s)' % (time.monotonic() - start), True)
        container = s.get('compute', '/servers/' + copy.id)['server'][
            'OS-EXT-SRV-ATTR:instance_name']
        cids = _reservations_of(copy.id)
        read = demo.read_marker(container, SNAPSHOT_FILE)
        c.check('snapshot: %s inside it holds what was written in %s' % (
            SNAPSHOT_FILE, node), read == token,
            'wrote %r, read %r' % (token, read[:200]))
        seconds = copy.delete()
        copy = None
        left = _leftovers(container, cids)
        c.check('snapshot: that server deleted (%.1f s), nothing of it '
                'remains on the host' % seconds,
                cids and not left and _lxc_info(container, '-s') == '',
                'container IDs %s; %s' % (cids, ', '.join(left)))
    except (util.AioError, api.ApiError, TimeoutError) as e:
        c.check('snapshot: a server from the snapshot', False, '%s; %s' % (
            e, _logged_problems('nova-compute', log_offset,
                                copy.id if copy else node.server.id)))
    finally:
        demo.cleanup(copy)
        demo.delete_image(d, image_id)


def _shelve_checks(c, s, d, node):
    """Shelve (offloaded: nothing left on the host), then unshelve.

    A marker written inside first is there after the unshelve, the
    server keeps its port and address (eth0 gets it again by DHCP), and
    Nova deletes the shelve's image. node.cids becomes the new
    reservation (the delete checks look for it).
    """
    name = s.get('compute', '/servers/' + node.server.id)['server']['name']
    try:
        token = demo.write_marker(node.container, SHELVE_FILE)
    except util.AioError as e:
        c.check('shelve: wrote %s in %s' % (SHELVE_FILE, node), False, str(e))
        return
    seconds = _action(c, node, 'shelve: %s -> SHELVED_OFFLOADED' % node,
                      {'shelve': None}, 'SHELVED_OFFLOADED')
    if seconds is None:
        return
    c.check('shelve: %s -> SHELVED_OFFLOADED (%.1f s)' % (node, seconds),
            True)
    shelved = d.get('image', '/v2/images?name=%s-shelved' % name)['images']
    c.check('shelve: its image %s-shelved is active in Glance' % name,
            [i['status'] for i in shelved] == ['active'],
            str([(i['id'], i['status']) for i in shelved]))
    left = _leftovers(node.container, node.cids)
    c.check('shelve: nothing of the container remains on the host',
            not left and _lxc_info(node.container, '-s') == '' and
            not _reservations_of(node.server.id),
            'lxc-info %r; %s; reservations %s' % (
                _lxc_info(node.container, '-s'), ', '.join(left),
                _reservations_of(node.server.id)))
    port = d.get('network', '/v2.0/ports/' + node.port['id'])['port']
    c.check('shelve: its port is kept, with address %s' % node.address,
            port['device_id'] == node.server.id and
            port['fixed_ips'][0]['ip_address'] == node.address,
            'device %s, %s' % (port['device_id'], port['fixed_ips']))

    seconds = _action(c, node, 'unshelve: %s -> ACTIVE' % node,
                      {'unshelve': None}, 'ACTIVE')
    node.cids = _reservations_of(node.server.id)
    if seconds is None:
        return
    state = _lxc_info(node.container, '-s')
    c.check('unshelve: %s -> ACTIVE (%.1f s), container RUNNING, one '
            'container ID' % (node, seconds),
            state == 'RUNNING' and len(node.cids) == 1,
            'state %r, container IDs %s' % (state, node.cids))
    read = demo.read_marker(node.container, SHELVE_FILE)
    c.check('unshelve: %s inside %s holds what was written before the '
            'shelve' % (SHELVE_FILE, node), read == token,
            'wrote %r, read %r' % (token, read[:200]))
    ports = [p['id'] for p in d.get('network', '/v2.0/ports?device_id=' +
                                    node.server.id)['ports']]
    c.check('unshelve: the same port %s' % node.port['id'],
            ports == [node.port['id']], str(ports))
    c.wait('unshelve: eth0 has %s again' % node.address,
           lambda: demo.inside_ipv4(node.container)[0] == node.address, 30)
    c.wait('unshelve: Nova deleted the shelve image',
           lambda: not any(demo.image(d, i['id']) for i in shelved), 30)


REBUILD_FILE = '/root/rebuild-marker'
RESCUE_FILE = '/root/rescue-marker'
OS_RELEASE = '/etc/os-release'  # Debian's; the busybox image has none


def _container_now(node):
    """(LXC state, init pid, host uid of its init) of node's container."""
    state, pid = demo.state_and_pid(node.container)
    return state, pid, demo.host_uid(pid)


def _is_debian(node, prefix=''):
    return 'Debian' in demo.read_marker(node.container, prefix + OS_RELEASE)


def _rebuild_checks(c, d, nodes, node):
    """Rebuild node (a busybox server) on the Debian image.

    A marker written inside first is gone afterwards and the root is
    Debian's; the container keeps its container ID and idmap (the host
    uid of its init), its port and address; eth0 gets the address again
    by DHCP and another server reaches it as before (tcp/22 refused, not
    dropped: node is in no-icmp).
    """
    try:
        demo.write_marker(node.container, REBUILD_FILE)
    except util.AioError as e:
        c.check('rebuild: wrote %s in %s' % (REBUILD_FILE, node), False,
                str(e))
        return
    before = _container_now(node)
    image_id = demo.image_id_of(d, layout.DEBIAN_IMAGE)
    # For the check after it too.
    log_offset = _log_size('nova-compute')
    seconds = _action(
        c, node, 'rebuild: %s on %s -> ACTIVE' % (node, layout.DEBIAN_IMAGE),
        {'rebuild': {'imageRef': image_id}}, 'ACTIVE', demo.ACTIVE_TIMEOUT)
    if seconds is None:
        return
    after = _container_now(node)
    c.check('rebuild: %s on %s -> ACTIVE (%.1f s), container RUNNING with '
            'a new init' % (node, layout.DEBIAN_IMAGE, seconds),
            after[0] == 'RUNNING' and after[1] and after[1] != before[1],
            '(state, init pid) %s -> %s; %s' % (
                before[:2], after[:2], _logged_problems(
                    'nova-compute', log_offset, node.server.id)))
    cids = _reservations_of(node.server.id)
    c.check('rebuild: the same container ID %s and idmap (its root is host '
            'uid %s)' % (','.join(node.cids), before[2]),
            cids == node.cids and after[2] == before[2],
            'container IDs %s -> %s, host uid %s -> %s' % (
                node.cids, cids, before[2], after[2]))
    image_ref = (node.server.show().get('image') or {}).get('id')
    gone = demo.is_absent(node.container, REBUILD_FILE)
    c.check('rebuild: its root is %s\'s (%s), %s is gone' % (
        layout.DEBIAN_IMAGE, OS_RELEASE, REBUILD_FILE),
        image_ref == image_id and _is_debian(node) and gone,
        'image %s (wanted %s), %s %r, marker %s' % (
            image_ref, image_id, OS_RELEASE,
            demo.read_marker(node.container, OS_RELEASE)[:100],
            'gone' if gone else 'still there'))
    ports = d.get('network', '/v2.0/ports?device_id=' +
                  node.server.id)['ports']
    c.check('rebuild: the same port %s, address %s' % (
        node.port['id'], node.address),
        [(p['id'], p['fixed_ips'][0]['ip_address']) for p in ports] ==
        [(node.port['id'], node.address)],
        str([(p['id'], p['fixed_ips']) for p in ports]))
    c.wait('rebuild: eth0 has %s again, by DHCP' % node.address,
           lambda: demo.inside_ipv4(node.container)[0] == node.address, 60)
    other = next(n for n in nodes if n is not node)
    answer = _tcp_answer(other.container, node.address, 22)
    c.check('rebuild: %s reaches %s on tcp/22 again (refused, not dropped)'
            % (other, node), answer == 'refused', answer)


def _rescue_checks(c, d, node):
    """Rescue node (now Debian) with the busybox image, then unrescue.

    While rescued, the same container runs busybox with node's root on
    /mnt, where a marker written before shows with its owner uid 0; after
    the unrescue the marker is in / again, the rescue root is gone, the
    container ID the same, eth0 has the address again.
    """
    try:
        token = demo.write_marker(node.container, RESCUE_FILE)
    except util.AioError as e:
        c.check('rescue: wrote %s in %s' % (RESCUE_FILE, node), False, str(e))
        return
    before = _container_now(node)
    rescue_root = (demo.rescue_root(node.cids[0], node.container)
                   if node.cids else None)
    seconds = _action(
        c, node, 'rescue: %s with %s -> RESCUE' % (node, layout.BUSYBOX_IMAGE),
        {'rescue': {'rescue_image_ref': demo.image_id_of(
            d, layout.BUSYBOX_IMAGE)}}, 'RESCUE')
    if seconds is None:
        return
    rescued = _container_now(node)
    cids = _reservations_of(node.server.id)
    c.check('rescue: %s with %s -> RESCUE (%.1f s), container RUNNING with '
            'a new init, the same container ID and idmap' % (
                node, layout.BUSYBOX_IMAGE, seconds),
            rescued[0] == 'RUNNING' and rescued[1] and
            rescued[1] != before[1] and cids == node.cids and
            rescued[2] == before[2],
            '(state, init pid, host uid) %s -> %s, container IDs %s -> %s'
            % (before, rescued, node.cids, cids))
    c.check('rescue: %s runs on / (no %s), its root %s is there' % (
        layout.BUSYBOX_IMAGE, OS_RELEASE, rescue_root),
        demo.is_absent(node.container, OS_RELEASE) and
        rescue_root and os.path.isdir(rescue_root),
        '%s inside: %r; %s %s' % (
            OS_RELEASE, demo.read_marker(node.container, OS_RELEASE)[:100],
            rescue_root, 'is there' if rescue_root and
            os.path.isdir(rescue_root) else 'is not there'))
    on_mnt = '/mnt' + RESCUE_FILE
    read = demo.read_marker(node.container, on_mnt)
    owner = demo.file_owner(node.container, on_mnt)
    c.check('rescue: %s inside holds the marker, owner uid 0 (and %s is '
            'Debian\'s)' % (on_mnt, '/mnt' + OS_RELEASE),
            read == token and owner == '0' and _is_debian(node, '/mnt'),
            'wrote %r, read %r, owner %r, /mnt%s %r' % (
                token, read[:200], owner, OS_RELEASE, demo.read_marker(
                    node.container, '/mnt' + OS_RELEASE)[:100]))

    seconds = _action(c, node, 'unrescue: %s -> ACTIVE' % node,
                      {'unrescue': None}, 'ACTIVE')
    if seconds is None:
        return
    after = _container_now(node)
    cids = _reservations_of(node.server.id)
    c.check('unrescue: %s -> ACTIVE (%.1f s), container RUNNING with a new '
            'init, the same container ID and idmap' % (node, seconds),
            after[0] == 'RUNNING' and after[1] and after[1] != rescued[1]
            and cids == node.cids and after[2] == before[2],
            '(state, init pid, host uid) %s -> %s, container IDs %s -> %s'
            % (rescued, after, node.cids, cids))
    read = demo.read_marker(node.container, RESCUE_FILE)
    c.check('unrescue: %s inside holds the marker, / is Debian again' %
            RESCUE_FILE, read == token and _is_debian(node),
            'wrote %r, read %r; %s %r' % (
                token, read[:200], OS_RELEASE, demo.read_marker(
                    node.container, OS_RELEASE)[:100]))
    left = ([rescue_root] if rescue_root and os.path.lexists(rescue_root)
            else []) + [m for m in commands.mounts_under(layout.DRIVER_STATE)
                        if rescue_root and (m + '/').startswith(
                            rescue_root + '/')]
    c.check('unrescue: no rescue root (%s) or mount of it remains' %
            rescue_root, rescue_root and not left,
            ', '.join(left) or 'no container ID')
    c.wait('unrescue: eth0 has %s again' % node.address,
           lambda: demo.inside_ipv4(node.container)[0] == node.address, 60)


def _resize_here_checks(c, s, nodes):
    """A resize on the server's own host (one compute host): confirmed.

    Both containers until confirm, under two IDs; the marker written
    before, the port and the address kept; the set-aside one gone after.
    """
    node, other = nodes[0], nodes[1]
    marker = uuid.uuid4().hex
    demo.attach(node.container, 'sh', '-c',
                'echo %s > /root/resized && sync' % marker)
    old = list(node.cids)
    seconds = node.server.action({'resize': {'flavorRef': 'lxc.small'}},
                                 'VERIFY_RESIZE')
    shown = s.get('compute', '/servers/' + node.server.id)['server']
    both = _reservations_of(node.server.id)
    c.check('resize here: %s -> VERIFY_RESIZE on %s (%.1f s), two '
            'container IDs until confirm' % (node, layout.NOVA_HOST,
                                             seconds),
            shown['OS-EXT-SRV-ATTR:host'] == layout.NOVA_HOST and
            len(both) == 2 and set(old) < set(both),
            '%s, IDs %s' % (shown['OS-EXT-SRV-ATTR:host'], both))
    c.check('resize here: container RUNNING, the marker written before '
            'is there',
            _lxc_info(node.container, '-s') == 'RUNNING' and
            demo.attach(node.container, 'cat', '/root/resized')
            .stdout.strip() == marker)
    df = demo.attach(node.container, 'df', '-k', '/').stdout.split()
    c.check('resize here: its root disk grew to lxc.small\'s 4 GiB',
            len(df) > 8 and int(df[8]) > 3.5 * (1 << 20), ' '.join(df))
    seconds = node.server.action({'confirmResize': None}, 'ACTIVE')
    node.cids = _reservations_of(node.server.id)
    root = os.path.join(layout.DRIVER_STATE, 'rootfs', old[0])
    left = [p for p in [root] if os.path.lexists(p)]
    left += held_ids(node.container, old)
    left += [m for m in commands.mounts_under(layout.DRIVER_STATE)
             if m == root or m.startswith(root + '/')]
    c.check('resize confirmed (%.1f s): the container set aside is gone '
            '(root, mounts, ID %s), one ID left' % (seconds, old[0]),
            not left and len(node.cids) == 1 and node.cids != old,
            ', '.join(left) + ' IDs %s' % node.cids)
    c.wait('resize confirmed: eth0 has %s again' % node.address,
           lambda: demo.inside_ipv4(node.container)[0] == node.address,
           demo.DHCP_TIMEOUT)
    c.check('resize confirmed: %s pings %s' % (node, other),
            _ping(node.container, other.address))


# Where the mishap moves lxc_path meanwhile: a sibling, same filesystem.
MISHAP_AWAY = layout.LXC_PATH + '.mishap-away'
MISHAP_FILE = '/root/mishap'
COMPUTE_UP_TIMEOUT = 180


def _compute_service(s):
    """nova-compute's service record of this host in the API, or None."""
    found = s.get('compute', '/os-services?binary=nova-compute&host=' +
                  layout.NOVA_HOST)['services']
    return found[0] if found else None


def _utc_now():
    # The API's updated_at: naive UTC, ISO 8601, as Nova's clock wrote it.
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _reported_since(s, since):
    """The compute service if it is up and reported after since (UTC)."""
    service = _compute_service(s)
    if not service or service['state'] != 'up' or \
            not service.get('updated_at'):
        return None
    updated = datetime.datetime.fromisoformat(
        service['updated_at'].rstrip('Z').split('+')[0])
    return service if updated >= since else None


def _root_disk(cid, root_gb, token):
    """(ok, what) about the container's root disk on the host.

    root_gb > 0: <state_path>/rootfs/<cid>/root.img is there (and, when
    it is mounted, its upper layer holds the mishap file); root_gb 0: the
    upper layer on the host's filesystem holds the mishap file.
    """
    root = os.path.join(layout.DRIVER_STATE, 'rootfs', cid)
    upper_file = os.path.join(root, 'root', 'upper',
                              MISHAP_FILE.lstrip('/'))
    mounted = os.path.join(root, 'root') in commands.mounts_under(
        layout.DRIVER_STATE)

    def upper_holds():
        try:
            with open(upper_file) as f:
                read = f.read().strip()
        except OSError as e:
            return False, e.strerror or str(e)
        return read == token, 'holds %r, not what was written' % read[:100]
    if root_gb:
        img = os.path.join(root, 'root.img')
        try:
            size = os.stat(img).st_size
        except OSError as e:
            return False, '%s: %s; %s' % (
                img, e.strerror, ('%s holds %s' % (root, _listing(root)))
                if os.path.isdir(root) else '%s is gone' % root)
        if not mounted:
            return True, '%s, %.1f GiB, not mounted' % (img, size / 2 ** 30)
        held, why = upper_holds()
        return held, '%s, %.1f GiB, mounted; %s: %s' % (
            img, size / 2 ** 30, upper_file, 'holds it' if held else why)
    held, why = upper_holds()
    return held, '%s: %s' % (upper_file, 'holds it' if held else why)


def _listing(path, limit=20):
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        return '(%s)' % (e.strerror or e)
    more = ' ... (%d in all)' % len(names) if len(names) > limit else ''
    return '[%s]%s' % (', '.join(names[:limit]), more)


def _put_lxc_path_back(c):
    """Rename MISHAP_AWAY back to lxc_path; check line; True if done.

    nova-compute may have made an empty lxc_path meanwhile: rename(2)
    replaces an empty directory. A non-empty one is a FAIL; it is then
    moved aside (kept for a look) so that the original comes back and the
    checks after this one see the servers again.
    """
    what = 'mishap: lxc_path %s moved back' % layout.LXC_PATH
    if not os.path.lexists(layout.LXC_PATH):
        os.rename(MISHAP_AWAY, layout.LXC_PATH)
        return c.check(what, True)
    made = _listing(layout.LXC_PATH)
    try:
        os.rename(MISHAP_AWAY, layout.LXC_PATH)
    except OSError as e:
        aside = '%s.mishap-made-%d' % (layout.LXC_PATH, int(time.time()))
        os.rename(layout.LXC_PATH, aside)
        os.rename(MISHAP_AWAY, layout.LXC_PATH)
        return c.check(what, False, 'nova-compute made %s and put %s in it '
                       '(%s); that one is now %s' % (
                           layout.LXC_PATH, made, e.strerror, aside))
    return c.check(what + ' (over the empty one nova-compute made)', True)


def _stop_compute(c):
    """Stop nova-compute only; its pid, or None (a FAIL line) if not."""
    pid = procs.recorded_pid('nova-compute')
    if not pid:
        c.check('mishap: nova-compute stopped', False, 'it was not running')
        return None
    start = time.monotonic()
    procs.stop('nova-compute')
    # Not procs.recorded_pid: stop() removed the PID file. A zombie
    # (waiting for PID 1 to reap it) counts as gone.
    gone = not procs.alive(pid)
    c.check('mishap: nova-compute stopped (pid %d, %.1f s)' % (
        pid, time.monotonic() - start), gone, 'pid %d still runs' % pid)
    return pid if gone else None


def _start_compute(c, s, old_pid):
    """Start nova-compute; True once it is a new process, up in the API."""
    since = _utc_now()
    start = time.monotonic()
    try:
        setup.start('nova-compute')
    except util.AioError as e:
        return c.check('mishap: nova-compute started', False, str(e))
    new_pid = procs.recorded_pid('nova-compute')
    if not c.check('mishap: nova-compute is a new process (pid %s -> %s)'
                   % (old_pid, new_pid), new_pid and new_pid != old_pid,
                   'pid %s -> %s' % (old_pid, new_pid)):
        return False
    try:
        service, _w = api.wait_until(
            'nova-compute up in the API', lambda: _reported_since(s, since),
            COMPUTE_UP_TIMEOUT, 1)
    except TimeoutError:
        return c.check('mishap: nova-compute up in the API, reported since '
                       'its start', False, 'after %ds: %s; log %s:\n%s' % (
                           COMPUTE_UP_TIMEOUT, _compute_service(s),
                           layout.log_file('nova-compute'),
                           procs.tail(layout.log_file('nova-compute'))))
    return c.check('mishap: nova-compute up in the API, init_host done '
                   '(%.1f s after its start)' % (time.monotonic() - start),
                   True)


def _mishap_check(c, s, node):
    """A server's data survives a restart of nova-compute without lxc_path.

    Data written inside node's container; nova-compute stopped, lxc_path
    moved away, nova-compute started (so its init_host sees no container
    at all), the disks checked; lxc_path back, a hard reboot through the
    API, the data read back inside. Whatever fails, lxc_path is put back
    and nova-compute left running, so that the delete checks can run.
    """
    start = time.monotonic()
    try:
        _mishap(c, s, node)
    finally:
        util.say('mishap: %.1f s in all', time.monotonic() - start)


def _mishap(c, s, node):
    token = 'mishap-%s' % uuid.uuid4().hex
    proc = demo.attach(node.container, 'sh', '-c', 'echo %s > %s && sync'
                       % (token, MISHAP_FILE))
    if not c.check('mishap: wrote %s in %s and synced' % (MISHAP_FILE, node),
                   proc.returncode == 0, 'exit %d: %s' % (
                       proc.returncode, proc.stderr.strip()[-500:])):
        return
    if len(node.cids) != 1:
        c.check('mishap: %s has one container ID' % node, False,
                str(node.cids))
        return
    cid = node.cids[0]
    root_gb = s.get('compute', '/servers/' + node.server.id)[
        'server']['flavor']['disk']
    if os.path.lexists(MISHAP_AWAY):
        try:
            os.rmdir(MISHAP_AWAY)  # an empty leftover of an earlier run
        except OSError:
            c.check('mishap: %s is free' % MISHAP_AWAY, False,
                    'it holds %s' % _listing(MISHAP_AWAY))
            return
    moved = False
    try:
        old_pid = _stop_compute(c)
        if not old_pid:
            return
        os.rename(layout.LXC_PATH, MISHAP_AWAY)
        moved = True
        c.check('mishap: lxc_path moved away to %s' % MISHAP_AWAY, True)
        log_offset = _log_size('nova-compute')
        compute_up = _start_compute(c, s, old_pid)
        ok, what = _root_disk(cid, root_gb, token)
        c.check('mishap: %s\'s root disk is still there (%s)' % (
            node, what if ok else 'root_gb %d' % root_gb), ok,
            what + '; ' + _logged_problems('nova-compute', log_offset,
                                           node.server.id))
        c.check('mishap: its container ID %s is still reserved' % cid,
                _reservations_of(node.server.id) == [cid],
                'reservations %s' % _reservations_of(node.server.id))
        if compute_up:
            c.check('mishap: nova-compute still up after that',
                    procs.recorded_pid('nova-compute') and
                    (_compute_service(s) or {}).get('state') == 'up',
                    'pid %s, service %s' % (
                        procs.recorded_pid('nova-compute'),
                        _compute_service(s)))
        _put_lxc_path_back(c)
    except OSError as e:
        c.check('mishap: moving lxc_path', False, str(e))
    finally:
        # After an error above: put things back for the checks after.
        if moved and os.path.isdir(MISHAP_AWAY):
            try:
                _put_lxc_path_back(c)
            except OSError as e:
                c.check('mishap: lxc_path back from %s' % MISHAP_AWAY,
                        False, str(e))
        if not procs.recorded_pid('nova-compute'):
            print('mishap: starting nova-compute again', flush=True)
            setup.start('nova-compute')
    pid = _lxc_info(node.container, '-p')
    seconds = _action(c, node, 'mishap: hard reboot -> ACTIVE',
                      {'reboot': {'type': 'HARD'}}, 'ACTIVE')
    if seconds is None:
        return
    new_pid = _lxc_info(node.container, '-p')
    state = _lxc_info(node.container, '-s')
    # Nova sets ACTIVE again when the driver's reboot fails while the
    # container still runs: only a new init shows a reboot.
    rebooted = state == 'RUNNING' and new_pid and new_pid != pid
    c.check('mishap: hard reboot -> ACTIVE (%.1f s), container RUNNING with '
            'a new init' % seconds, rebooted,
            'state %r, init pid %r -> %r; %s' % (
                state, pid, new_pid, _logged_problems(
                    'nova-compute', log_offset, node.server.id)))
    proc = demo.attach(node.container, 'cat', MISHAP_FILE)
    read = proc.stdout.strip()
    c.check('mishap: after the hard reboot, %s inside %s holds what was '
            'written' % (MISHAP_FILE, node), rebooted and read == token,
            'wrote %r, read %r (exit %d%s)%s' % (
                token, read[:200], proc.returncode,
                ': ' + proc.stderr.strip()[-300:] if proc.returncode
                else '', '' if rebooted else
                '; not a reboot: that is the old init\'s view, not what '
                'the disk holds'))


def _action(c, node, what, body, status, timeout=demo.STEP_TIMEOUT):
    """POST an action on node's server; seconds until it reached status.

    On an error, or status not reached in time: the check what fails
    with nova-compute's last problem logged about the server since the
    action, and None is returned.
    """
    log_offset = _log_size('nova-compute')
    try:
        return node.server.action(body, status, timeout)
    except (util.AioError, api.ApiError, TimeoutError) as e:
        c.check(what, False, '%s; %s' % (e, _logged_problems(
            'nova-compute', log_offset, node.server.id)))
        return None


def _log_size(name):
    try:
        return os.path.getsize(layout.log_file(name))
    except OSError:
        return 0


def _logged_problems(name, offset, server_id, limit=400):
    """The last WARNING or ERROR about server_id in name's log since offset.

    Nova sets a server ACTIVE again when the driver's reboot fails while
    its container runs; the reason is only in nova-compute's log (and an
    instance fault the API shows for servers in ERROR only).
    """
    try:
        with open(layout.log_file(name), errors='replace') as f:
            f.seek(offset)
            lines = [line.strip() for line in f
                     if server_id in line and
                     (' WARNING ' in line or ' ERROR ' in line)]
    except OSError as e:
        return '(%s: %s)' % (layout.log_file(name), e.strerror)
    if not lines:
        return 'no warning about it in %s' % layout.log_file(name)
    line = lines[-1]
    # After "[instance: UUID]" if Nova logged it so, else after the
    # request context "[req-... - - -]".
    said = (line.split(server_id + ']', 1)[1] if server_id + ']' in line
            else line.split('] ', 1)[-1])
    return '%s says: %s' % (layout.log_file(name), said.strip()[:limit])


def _delete_checks(c, s, nodes):
    start = time.monotonic()
    for node in nodes:
        node.server.s.call('DELETE', 'compute', '/servers/' + node.server.id)
    for node in nodes:
        api.wait_until('server %s deleted' % node.server.id,
                       lambda: not node.server.s.exists(
                           'compute', '/servers/' + node.server.id),
                       demo.STEP_TIMEOUT)
    c.check('delete -> gone from the API (%.1f s)' %
            (time.monotonic() - start), True)
    c.check('lxc-info no longer knows the containers',
            all(_lxc_info(n.container, '-s') == '' for n in nodes))
    left = [p for n in nodes for p in _leftovers(n.container, n.cids)]
    c.check('nothing of the servers remains on the host', not left,
            ', '.join(left))
    c.check('no container ID reservation remains',
            not any(_reservations_of(n.server.id) for n in nodes))
    bindings = []
    for n in nodes:
        port = s.get('network', '/v2.0/ports/' + n.port['id'])['port']
        bindings.append((port['device_id'], port['binding:host_id']))
    c.check('ports unbound (no device, no host)',
            all(b == ('', '') for b in bindings), str(bindings))
    devices = _vif_devices([n.port['id'] for n in nodes])
    c.check('no veth or br-int port of theirs remains', not devices,
            ', '.join(devices))


def smoke(keep_up=False):
    """up, three servers with networking, reboot, delete, down.

    :returns: 0 if every check passed, else 1.
    """
    c = Checks()
    try:
        c.check('up', commands.up() == 0)
    except util.AioError as e:
        c.check('up', False, str(e))
        print('%d passed, %d failed' % (c.passed, c.failed))
        return 1
    secrets = util.load_secrets()
    s = demo.session(secrets, 'admin')
    d = demo.session(secrets, 'demo')
    _neutron_checks(c, s)
    _service_user_checks(c)
    nodes = []
    try:
        _demo_network_checks(c, d)
        net = d.get('network', '/v2.0/networks/' +
                    demo.network_id(d))['network']
        nodes = _boot(c, s, d, net['id'], uuid.uuid4().hex[:6])
        _running_checks(c, s, nodes)
        _network_checks(c, nodes, net['mtu'])
        _reboot_check(c, nodes[0])
        _serial_console_checks(c, nodes[0])
        _snapshot_checks(c, s, d, nodes[1], net['id'])
        _shelve_checks(c, s, d, nodes[1])
        _rebuild_checks(c, d, nodes, nodes[2])
        _rescue_checks(c, d, nodes[2])
        _mishap_check(c, s, nodes[0])
        _resize_here_checks(c, s, nodes)
        # Again after the lifecycle and the mishap's restart: new daemons.
        _privsep_daemon_checks(c, 'nova-compute', layout.compute_conf())
        metadata_agent_checks(c, served=True)
        _delete_checks(c, s, nodes)
    except (util.AioError, api.ApiError, TimeoutError) as e:
        c.check('servers with networking', False, str(e))
        for node in nodes:
            if node.server is not None:
                demo.cleanup(node.server)
    for node in nodes:
        try:
            d.call('DELETE', 'network', '/v2.0/ports/' + node.port['id'])
        except api.ApiError as e:
            if e.status != 404:
                print('could not delete port %s: %s' % (node.port['id'], e))
    if not keep_up:
        c.check('down', commands.down() == 0)
    print('%d passed, %d failed' % (c.passed, c.failed))
    return 0 if c.failed == 0 else 1
