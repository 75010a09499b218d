"""A second compute host in the all-in-one cloud (``up --computes 2``).

Compute 2 is nova-compute with its own Nova host name
(layout.C2_HOST), state, config directory (so its own compute_id, the
node UUID), LXC paths and my_ip, and its own OVN chassis, so that
Neutron binds ports to it. There is no OVS kernel module: each chassis
needs its own userspace ovs-vswitchd, which opens its ports with
AF_PACKET in its own network namespace, and the driver makes a VIF's
veth in the namespace nova-compute runs in. So compute 2's ovsdb-server,
ovs-vswitchd, ovn-controller, OVN metadata agent, sshd and nova-compute
all run in the namespace layout.C2_NETNS, joined to the root namespace by

- a plain veth pair (C1_IP / C2_IP): compute 2's my_ip, the serial
  proxy's connections to its consoles, SSH between the computes;
- a veth pair whose ends are ports of an OVS bridge in each host
  (C2_UNDERLAY_BRIDGE, with C1_ENCAP_IP / C2_ENCAP_IP on it): the
  geneve tunnel between the chassis (userspace tunnelling routes
  through an OVS bridge holding the local address);
- a relay process (relay.py): 127.0.0.1:PORT inside the namespace to
  127.0.0.1:PORT of the root one, for RabbitMQ, the APIs and OVN's
  Southbound database, which keep listening on loopback only.
"""

import os
import pwd
import subprocess

from novalxc_aio import configs
from novalxc_aio import layout
from novalxc_aio import procs
from novalxc_aio import util

NS = layout.C2_NETNS
_USER = layout.OPTIONAL_SERVICE_ACCOUNTS['nova-compute-2']
_AGENT_USER = layout.OPTIONAL_SERVICE_ACCOUNTS['neutron-ovn-metadata-agent-2']
OVS_DB_SOCK = 'unix:%s/db.sock' % layout.C2_OVS_RUN
NOVA_CONF = layout.compute_conf(2)
AGENT_CONF = layout.agent_conf(2)
SSHD_CONF = os.path.join(layout.SSH_DIR, 'sshd_config-%d')
SSH_KEY = os.path.join(layout.SSH_DIR, 'id_ed25519')
HOST_KEY = os.path.join(layout.SSH_DIR, 'ssh_host_ed25519_key')
_RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'relay.py')


def _in_ns(*argv):
    return ('ip', 'netns', 'exec', NS) + tuple(argv)


# nova-compute and sshd of compute 2 need the host's cgroup mounts (LXC),
# a /sys/class/net of their namespace (os-vif and the driver look there
# for their veths) and mounts that outlive them and that the root
# namespace sees (the driver's container roots). "ip netns exec" remounts
# all of /sys (the cgroups go) and makes every mount private, so: enter
# the namespace, take a mount namespace of our own that keeps
# propagation (C2_STATE is a shared mount, see _shared_state), and bind
# only the network directories of a sysfs mounted from inside.
_SYS = os.path.join(layout.C2_RUN, 'sys')
_HOST_VIEW = (
    'set -e; mount -t sysfs novalxc-c2-sys %(sys)s; '
    'mount --bind %(sys)s/class/net /sys/class/net; '
    'mount --bind %(sys)s/devices/virtual/net /sys/devices/virtual/net; '
    'exec "$@"' % {'sys': _SYS})


def _in_host_view(*argv):
    return ('nsenter', '--net=/run/netns/' + NS, '--', 'unshare', '--mount',
            '--propagation', 'unchanged', '--', 'sh', '-c', _HOST_VIEW,
            'sh') + tuple(argv)


def _shared_state():
    """C2_STATE as a shared mount (of itself): mounts there propagate.

    The root's mounts are private here (no systemd): without this, the
    container roots compute 2's driver mounts would exist only in its
    own mount namespace, unseen by the host and lost to its next start.
    """
    with open('/proc/self/mountinfo') as f:
        fields = [line.split() for line in f]
    mine = [f for f in fields if f[4] == layout.C2_STATE]
    if not mine:
        util.run(['mount', '--bind', layout.C2_STATE, layout.C2_STATE])
    if not mine or not any(o.startswith('shared:') for o in mine[-1][6:]
                           if o != '-'):
        util.run(['mount', '--make-shared', layout.C2_STATE])


def ns_run(*argv, **kwargs):
    return util.run(list(_in_ns(*argv)), **kwargs)


def netns_exists():
    return os.path.exists(os.path.join('/run/netns', NS))


def _ns_tcp_probe(port, host='127.0.0.1'):
    def probe():
        return subprocess.run(
            ['nsenter', '--net=/run/netns/' + NS, '/usr/bin/python3', '-c',
             'import socket; socket.create_connection((%r, %d), 2)' % (
                 host, port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=20).returncode == 0
    return probe


def _appctl_probe(target, *args, expected=None, tool='ovs-appctl'):
    """ovs-appctl/ovn-appctl to a daemon of compute 2 (its run dir)."""
    env = util.clean_env({'OVS_RUNDIR': layout.C2_OVS_RUN,
                          'OVN_RUNDIR': layout.C2_OVS_RUN})

    def probe():
        proc = util.run([tool, '-t', target] + list(args), check=False,
                        capture=True, timeout=20, env=env)
        return proc.returncode == 0 and (expected is None or
                                         expected in proc.stdout)
    return probe


def _agent_listening():
    """The agent (in the namespace) listens on its metadata socket."""
    pid = procs.recorded_pid('neutron-ovn-metadata-agent-2')
    if not pid:
        return False
    with open('/proc/%d/net/unix' % pid) as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if len(fields) == 8 and \
                    fields[7] == layout.C2_METADATA_SOCKET and \
                    int(fields[3], 16) & 0x10000:
                return True
    return False


def _consumer_probe(queue):
    from novalxc_aio import services
    return lambda: services.queue_consumers().get(queue, 0) > 0


def _sshd(node):
    ip = layout.C2_IP if node == 2 else layout.C1_IP
    argv = ('/usr/sbin/sshd', '-D', '-e', '-f', SSHD_CONF % node)
    if node == 2:
        argv = _in_host_view(*argv)
        probe = _ns_tcp_probe(22, ip)
    else:
        probe = procs.tcp_probe(22, ip)
    return procs.Service('sshd-%d' % node, argv, probe,
                         where='ssh root@%s' % ip)


def all_services():
    """Compute 2's services (and compute 1's sshd), in start order."""
    run = layout.C2_OVS_RUN
    ovs_env = {'OVS_RUNDIR': run, 'OVN_RUNDIR': run}
    return [
        procs.Service('relay-2', ('/usr/bin/python3', _RELAY, NS) + tuple(
            str(layout.PORTS[n]) for n in layout.C2_RELAYED),
            _ns_tcp_probe(layout.PORTS['keystone']),
            where='127.0.0.1:{%s} in %s -> host' % (
                ','.join(layout.C2_RELAYED), NS)),
        procs.Service('ovsdb-server-2', _in_ns(
            'ovsdb-server', os.path.join(layout.C2_STATE, 'ovs', 'conf.db'),
            '--remote=punix:%s/db.sock' % run,
            '--remote=db:Open_vSwitch,Open_vSwitch,manager_options',
            '--pidfile=%s/ovsdb-server.pid' % run,
            '--unixctl=%s/ovsdb-server.ctl' % run,
            '-vconsole:info', '-vsyslog:off'),
            _appctl_probe(os.path.join(run, 'ovsdb-server.ctl'), 'version'),
            where=OVS_DB_SOCK, env=ovs_env),
        procs.Service('ovs-vswitchd-2', _in_ns(
            'ovs-vswitchd', OVS_DB_SOCK,
            '--pidfile=%s/ovs-vswitchd.pid' % run,
            '--unixctl=%s/ovs-vswitchd.ctl' % run,
            '-vconsole:info', '-vsyslog:off'),
            _appctl_probe(os.path.join(run, 'ovs-vswitchd.ctl'), 'version'),
            where='br-int, %s (netdev) in %s' % (
                layout.C2_UNDERLAY_BRIDGE, NS),
            env=ovs_env),
        procs.Service('ovn-controller-2', _in_ns(
            'ovn-controller', OVS_DB_SOCK,
            '--pidfile=%s/ovn-controller.pid' % run,
            '-vconsole:info', '-vsyslog:off'),
            _appctl_probe('ovn-controller', 'connection-status',
                          expected='connected', tool='ovn-appctl'),
            where='chassis %s (encap %s)' % (layout.C2_HOST,
                                             layout.C2_ENCAP_IP),
            env=ovs_env),
        _sshd(1),
        _sshd(2),
        # The agent makes an ovnmeta-<network> namespace per network, named
        # like compute 1's agent's: it gets a /run/netns of its own (a
        # tmpfs in the private mount namespace "ip netns exec" gives it).
        # As neutron, like compute 1's agent: setpriv after the mount.
        procs.Service('neutron-ovn-metadata-agent-2', _in_ns(
            'sh', '-c', 'mount -t tmpfs novalxc-c2-netns /run/netns && '
            'exec "$@"', 'sh', 'setpriv', '--reuid=' + _AGENT_USER,
            '--regid=' + _AGENT_USER, '--clear-groups', '--inh-caps=-all',
            '--', layout.venv_bin('neutron-ovn-metadata-agent'),
            '--config-file', AGENT_CONF),
            _agent_listening,
            where='169.254.169.254 on %s' % layout.C2_HOST,
            env={'HOME': layout.state(_AGENT_USER)}),
        # As nova, like compute 1; setpriv after the namespaces, which
        # need root. The bounding set stays: sudo starts the daemons.
        procs.Service('nova-compute-2', _in_host_view(
            'setpriv', '--reuid=' + _USER, '--regid=' + _USER,
            '--clear-groups', '--inh-caps=-all', '--',
            layout.venv_bin('nova-compute'), '--config-file', NOVA_CONF),
            _consumer_probe('compute.' + layout.C2_HOST),
            where='queue compute.%s, my_ip %s' % (layout.C2_HOST,
                                                  layout.C2_IP),
            env={'HOME': os.path.join(layout.C2_STATE, 'nova')}),
    ]


PYTHON_SERVICES = ('neutron-ovn-metadata-agent-2', 'nova-compute-2')
NAMES = tuple(s.name for s in all_services())


# -- network --------------------------------------------------------------

def _link_exists(dev, ns=False):
    argv = ['ip'] + (['-n', NS] if ns else []) + ['link', 'show', dev]
    return util.run(argv, check=False, capture=True).returncode == 0


def _addr(dev, cidr, ns=False):
    pre = ['ip'] + (['-n', NS] if ns else [])
    util.run(pre + ['addr', 'replace', cidr, 'dev', dev], capture=True)
    util.run(pre + ['link', 'set', dev, 'up'], capture=True)


def network():
    """The namespace and both veth pairs (idempotent)."""
    if not netns_exists():
        util.run(['ip', 'netns', 'add', NS])
        util.say('made network namespace %s', NS)
    util.run(['ip', '-n', NS, 'link', 'set', 'lo', 'up'])
    for root_end, ns_end in (layout.C2_LINK, layout.C2_UNDERLAY_LINK):
        if not _link_exists(root_end) or not _link_exists(ns_end, ns=True):
            for dev in (root_end,):
                if _link_exists(dev):
                    util.run(['ip', 'link', 'delete', dev])
            util.run(['ip', 'link', 'add', root_end, 'type', 'veth',
                      'peer', 'name', ns_end, 'netns', NS])
            util.say('made veth pair %s - %s (in %s)', root_end, ns_end, NS)
        util.run(['ip', 'link', 'set', root_end, 'up'])
        util.run(['ip', '-n', NS, 'link', 'set', ns_end, 'up'])
    _addr(layout.C2_LINK[0], layout.C1_IP + '/24')
    _addr(layout.C2_LINK[1], layout.C2_IP + '/24', ns=True)


def underlay(node):
    """The tunnel bridge of node's Open vSwitch: its port, its address.

    Its address is the chassis's ovn-encap-ip; ovs-vswitchd's route
    table (read from the kernel of its namespace) sends the geneve
    packets out through it.
    """
    br = layout.C2_UNDERLAY_BRIDGE
    db = [] if node == 1 else ['--db=' + OVS_DB_SOCK]
    util.run(['ovs-vsctl'] + db + [
        '--may-exist', 'add-br', br, '--', 'set', 'Bridge', br,
        'datapath_type=netdev', 'other_config:disable-in-band=true',
        '--', '--may-exist', 'add-port', br,
        layout.C2_UNDERLAY_LINK[node - 1]])
    ip = layout.C1_ENCAP_IP if node == 1 else layout.C2_ENCAP_IP
    _addr(br, ip + '/24', ns=node == 2)


def chassis_settings(node):
    """external_ids of node's Open vSwitch that make it an OVN chassis."""
    host = layout.C2_HOST if node == 2 else layout.NOVA_HOST
    encap = layout.C2_ENCAP_IP if node == 2 else layout.C1_ENCAP_IP
    return ['external_ids:system-id=%s' % host,
            'external_ids:hostname=%s' % host,
            'external_ids:ovn-remote=tcp:%s:%d' % (
                layout.HOST, layout.PORTS['ovn-sb']),
            'external_ids:ovn-encap-type=geneve',
            'external_ids:ovn-encap-ip=%s' % encap,
            'external_ids:ovn-bridge-datapath-type=netdev']


# -- SSH ------------------------------------------------------------------

def ssh_files():
    """Root's key pair, one host key, sshd configs, the client config.

    ``ssh root@172.30.0.1`` / ``ssh root@172.30.0.2`` then work without
    a prompt from either namespace.
    """
    util.makedirs(layout.SSH_DIR, 0o700)
    for key in (SSH_KEY, HOST_KEY):
        if not os.path.exists(key):
            util.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                      'novalxc-aio', '-f', key], capture=True)
    with open(SSH_KEY + '.pub') as f:
        util.write_file(os.path.join(layout.SSH_DIR, 'authorized_keys'),
                        f.read(), mode=0o600)
    with open(HOST_KEY + '.pub') as f:
        host_pub = ' '.join(f.read().split()[:2])
    util.write_file(os.path.join(layout.SSH_DIR, 'known_hosts'),
                    '%s,%s %s\n' % (layout.C1_IP, layout.C2_IP, host_pub),
                    mode=0o644)
    for node, ip in ((1, layout.C1_IP), (2, layout.C2_IP)):
        util.write_file(SSHD_CONF % node, '\n'.join([
            '# Written by novalxc-aio: compute %d\'s sshd.' % node,
            'ListenAddress %s' % ip,
            'Port 22',
            'HostKey %s' % HOST_KEY,
            'PidFile %s' % os.path.join(layout.C2_RUN, 'sshd-%d.pid' % node),
            'AuthorizedKeysFile %s' % os.path.join(layout.SSH_DIR,
                                                   'authorized_keys'),
            'PermitRootLogin prohibit-password',
            'PasswordAuthentication no',
            'KbdInteractiveAuthentication no',
            'UsePAM no',
            'Subsystem sftp /usr/lib/openssh/sftp-server',
            '']), mode=0o600)
    util.write_file(layout.SSH_CLIENT_CONFIG, '\n'.join([
        '# Written by novalxc-aio: root between its compute hosts.',
        'Host %s %s' % (layout.C1_IP, layout.C2_IP),
        '    User root',
        '    IdentityFile %s' % SSH_KEY,
        '    UserKnownHostsFile %s' % os.path.join(layout.SSH_DIR,
                                                   'known_hosts'),
        '    StrictHostKeyChecking yes',
        '    BatchMode yes',
        '']))
    util.makedirs('/run/sshd', 0o755)


# -- up, down, clean ------------------------------------------------------

def prepare(secrets, config):
    """Directories and configuration files; config is setup._config."""
    # The driver's directories are novalxc-prepare-host's
    # (setup.compute_user); nova-compute's own state nova's.
    for path in (layout.C2_STATE, layout.C2_ETC, layout.C2_RUN,
                 layout.C2_OVS_RUN, os.path.join(layout.C2_STATE, 'ovs')):
        util.makedirs(path, 0o711)
    user = pwd.getpwnam(_USER)
    owner = (user.pw_uid, user.pw_gid)
    for path in (os.path.join(layout.C2_STATE, 'nova'),
                 os.path.join(layout.C2_STATE, 'nova', 'locks')):
        util.makedirs(path, 0o700, owner)
    util.makedirs(_SYS, 0o755)
    _shared_state()
    agent = pwd.getpwnam(_AGENT_USER)
    agent_owner = (agent.pw_uid, agent.pw_gid)
    util.makedirs(layout.C2_METADATA_STATE, 0o750, agent_owner)
    util.chown_tree(layout.C2_METADATA_STATE, agent_owner)
    # Root's, their users may read them: the privsep daemons read them
    # as root (setup.compute_user, setup.metadata_agent_user).
    config(NOVA_CONF, configs.nova_conf(secrets, compute=True, node=2,
                                        computes=2),
           ['nova-compute-2'], mode=0o640, owner=(0, owner[1]))
    config(AGENT_CONF, configs.ovn_metadata_agent_conf(secrets, node=2),
           ['neutron-ovn-metadata-agent-2'], mode=0o640,
           owner=(0, agent_owner[1]))
    db = os.path.join(layout.C2_STATE, 'ovs', 'conf.db')
    if not os.path.exists(db):
        util.run(['ovsdb-tool', 'create', db,
                  '/usr/share/openvswitch/vswitch.ovsschema'])


def open_vswitch(start, services_may_use_ovsdb):
    """Compute 2's ovsdb-server, ovs-vswitchd, br-int, tunnel bridge.

    start and services_may_use_ovsdb: setup's.
    """
    start('ovsdb-server-2')
    services_may_use_ovsdb(layout.C2_OVS_RUN)
    vsctl = ['ovs-vsctl', '--db=' + OVS_DB_SOCK]
    util.run(vsctl + ['--no-wait', 'init'])
    util.run(vsctl + ['--no-wait', 'set', 'Open_vSwitch', '.'] +
             chassis_settings(2))
    start('ovs-vswitchd-2')
    util.run(vsctl + ['--may-exist', 'add-br', 'br-int', '--',
                      'set', 'Bridge', 'br-int', 'datapath_type=netdev',
                      'fail_mode=secure', 'other_config:disable-in-band=true'])
    underlay(2)


def stop_all():
    """Stop compute 2's services (and compute 1's sshd); {name: pid}."""
    return procs.stop(*reversed(NAMES))


def remove_network():
    """The namespace, both veth pairs, the root tunnel bridge."""
    util.run(['ovs-vsctl', '--timeout=10', '--if-exists', 'del-br',
              layout.C2_UNDERLAY_BRIDGE], check=False, capture=True)
    for dev in (layout.C2_LINK[0], layout.C2_UNDERLAY_LINK[0]):
        if _link_exists(dev):
            util.run(['ip', 'link', 'delete', dev], check=False)
            util.say('removed veth pair %s', dev)
    if netns_exists():
        util.run(['ip', 'netns', 'delete', NS], check=False)
        util.say('removed network namespace %s', NS)
    if os.path.exists(layout.SSH_CLIENT_CONFIG):
        os.unlink(layout.SSH_CLIENT_CONFIG)
