"""What runs in the cloud: every long-running process, in start order.

Pure descriptions (procs.Service); aio/novalxc_aio/setup.py prepares
their configuration and data and starts them.
"""

import functools
import os
import time

from novalxc_aio import compute2
from novalxc_aio import layout
from novalxc_aio import procs
from novalxc_aio import util

RABBITMQ_HOME = layout.state('rabbitmq')
RABBITMQ_ENV = {
    'HOME': RABBITMQ_HOME,  # its Erlang cookie lives there
    'RABBITMQ_NODENAME': 'rabbit@localhost',
    'RABBITMQ_NODE_IP_ADDRESS': layout.HOST,
    'RABBITMQ_NODE_PORT': str(layout.PORTS['rabbitmq']),
    'RABBITMQ_DIST_PORT': '25672',
    'RABBITMQ_CONFIG_FILE': layout.etc('rabbitmq', 'rabbitmq.conf'),
    'RABBITMQ_ENABLED_PLUGINS_FILE': layout.etc('rabbitmq',
                                                'enabled_plugins'),
    'RABBITMQ_MNESIA_BASE': os.path.join(RABBITMQ_HOME, 'mnesia'),
    'RABBITMQ_LOG_BASE': os.path.join(layout.LOGS, 'rabbitmq'),
    'RABBITMQ_LOGS': '-',
    'RABBITMQ_PID_FILE': os.path.join(RABBITMQ_HOME, 'rabbit.pid'),
    # Erlang distribution on loopback only.
    'ERL_EPMD_ADDRESS': layout.HOST,
    'ERL_EPMD_PORT': str(layout.PORTS['epmd']),
    'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS':
        '-kernel inet_dist_use_interface {127,0,0,1}',
    'RABBITMQ_CTL_ERL_ARGS': '-kernel inet_dist_use_interface {127,0,0,1}',
}
RABBITMQCTL = '/usr/lib/rabbitmq/bin/rabbitmqctl'

LXCFS_DIR = '/var/lib/lxcfs'


def rabbitmqctl(*args, check=True, timeout=120, input=None):
    """Run rabbitmqctl against the aio's node (as the rabbitmq user)."""
    return util.run([RABBITMQCTL] + list(args), check=check, capture=True,
                    user='rabbitmq', env=util.clean_env(RABBITMQ_ENV),
                    cwd=RABBITMQ_HOME, timeout=timeout, input=input)


@functools.lru_cache(maxsize=1)
def _queue_consumers(now):
    proc = rabbitmqctl('-q', 'list_queues', 'name', 'consumers',
                       check=False, timeout=60)
    result = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            result[parts[0]] = int(parts[1])
    return result


def queue_consumers():
    """{queue name: consumer count}, cached for a second (one CLI run)."""
    return _queue_consumers(int(time.monotonic()))


def _consumer_probe(queue):
    """Nova's RPC services answer once their queue has a consumer."""
    def probe():
        return queue_consumers().get(queue, 0) > 0
    return probe


def process_running(command):
    """True if any process runs command (its /proc/PID/comm)."""
    for entry in os.listdir('/proc'):
        try:
            with open('/proc/%s/comm' % entry) as f:
                if f.read().strip() == command[:15]:
                    return True
        except (NotADirectoryError, FileNotFoundError, ProcessLookupError):
            continue
    return False


def lxcfs_mounted():
    with open('/proc/self/mountinfo') as f:
        return any(line.split()[4] == LXCFS_DIR and 'lxcfs' in line
                   for line in f)


def lxcfs_serving():
    """True when lxcfs answers; a dead daemon's mount gives ENOTCONN."""
    return os.path.exists(os.path.join(LXCFS_DIR, 'proc', 'meminfo'))


def _ovs_appctl(target, *args):
    return procs.command_probe(['ovs-appctl', '-t', target] + list(args))


def _ovn_appctl_says(target, command, expected):
    def probe():
        proc = util.run(['ovn-appctl', '-t', target, command], check=False,
                        capture=True, timeout=20)
        return proc.returncode == 0 and expected in proc.stdout
    return probe


def _ovsdb(name, db_file, port, schema_db):
    """An ovsdb-server for one OVN database (Northbound or Southbound)."""
    run = layout.OVN_RUN
    return procs.Service(
        name, (
            'ovsdb-server', db_file,
            '--remote=punix:%s/%s.sock' % (run, schema_db),
            '--remote=ptcp:%d:%s' % (port, layout.HOST),
            '--pidfile=%s/%s.pid' % (run, schema_db),
            '--unixctl=%s/%s.ctl' % (run, schema_db),
            '-vconsole:info', '-vsyslog:off'),
        procs.tcp_probe(port), where='tcp:%s:%d' % (layout.HOST, port),
        port=port)


def _gunicorn(name, port, path='/', env=None):
    """An OpenStack API: gunicorn run from its gunicorn.conf.py's dir."""
    return procs.Service(
        name, (layout.venv_bin('gunicorn'),),
        procs.http_probe(layout.url(name, path)),
        where=layout.url(name), cwd=layout.etc(name), env=env or {},
        port=port, user=layout.SERVICE_ACCOUNTS[name])


def _oslo_service(name, *config_files, probe, where=''):
    argv = [layout.venv_bin(name)]
    for path in config_files:
        argv += ['--config-file', path]
    return procs.Service(name, tuple(argv), probe, where=where,
                         user=layout.SERVICE_ACCOUNTS.get(name))


def fake_compute_service():
    """nova-compute with Nova's fake driver (up --fake-compute)."""
    return procs.Service(
        'nova-compute-fake', (
            layout.venv_bin('nova-compute'), '--config-file',
            os.path.join(layout.FAKE_ETC, 'nova-cpu.conf')),
        _consumer_probe('compute.' + layout.FAKE_HOST),
        where='queue compute.%s, driver %s' % (layout.FAKE_HOST,
                                               layout.FAKE_DRIVER),
        user=layout.OPTIONAL_SERVICE_ACCOUNTS['nova-compute-fake'])


def all_services(computes=None, fake=None):
    """Every service of the cloud, in start order (stop: reverse).

    computes: 1, or 2 for compute 2's services too (default: as the last
    "up" made it). fake: True for the fake-driver compute too (default:
    as the last "up" made it).
    """
    if computes is None:
        computes = layout.computes()
    if fake is None:
        fake = layout.fake_compute()
    extra = compute2.all_services() if computes > 1 else []
    if fake:
        extra.append(fake_compute_service())
    ovs_db = layout.state('ovs', 'conf.db')
    nova_conf = layout.etc('nova', 'nova.conf')
    neutron_confs = (layout.etc('neutron', 'neutron.conf'),
                     layout.etc('neutron', 'plugins', 'ml2', 'ml2_conf.ini'))
    return [
        # lxcfs gives containers their own /proc/meminfo, cpuinfo, uptime
        # (bound into each container's /proc by the driver's lxc.conf).
        procs.Service('lxcfs', ('lxcfs', '--foreground', LXCFS_DIR),
                      lxcfs_serving, where=LXCFS_DIR),
        procs.Service('mariadb', ('/usr/sbin/mariadbd',
                                  '--defaults-file=' +
                                  layout.etc('mysql', 'my.cnf')),
                      procs.tcp_probe(layout.PORTS['mariadb']),
                      where='tcp:%s:%d' % (layout.HOST,
                                           layout.PORTS['mariadb']),
                      port=layout.PORTS['mariadb']),
        # Erlang's port mapper, started here so that RabbitMQ does not
        # spawn a daemon of its own that nothing would stop.
        procs.Service('epmd', ('epmd', '-address', layout.HOST, '-port',
                               str(layout.PORTS['epmd'])),
                      procs.tcp_probe(layout.PORTS['epmd']),
                      where='tcp:%s:%d' % (layout.HOST,
                                           layout.PORTS['epmd']),
                      user='rabbitmq'),
        procs.Service('rabbitmq', ('/usr/lib/rabbitmq/bin/rabbitmq-server',),
                      procs.tcp_probe(layout.PORTS['rabbitmq']),
                      where='amqp://%s:%d' % (layout.HOST,
                                              layout.PORTS['rabbitmq']),
                      env=RABBITMQ_ENV, cwd=RABBITMQ_HOME, user='rabbitmq',
                      port=layout.PORTS['rabbitmq']),
        procs.Service('ovsdb-server', (
            'ovsdb-server', ovs_db,
            '--remote=punix:%s/db.sock' % layout.OVS_RUN,
            '--remote=db:Open_vSwitch,Open_vSwitch,manager_options',
            '--pidfile', '-vconsole:info', '-vsyslog:off'),
            _ovs_appctl('ovsdb-server', 'version'),
            where='unix:%s/db.sock' % layout.OVS_RUN),
        procs.Service('ovs-vswitchd', (
            'ovs-vswitchd', 'unix:%s/db.sock' % layout.OVS_RUN,
            '--pidfile', '-vconsole:info', '-vsyslog:off'),
            _ovs_appctl('ovs-vswitchd', 'version'),
            where='br-int (datapath_type=netdev)'),
        _ovsdb('ovn-nb', layout.state('ovn', 'ovnnb_db.db'),
               layout.PORTS['ovn-nb'], 'ovnnb_db'),
        _ovsdb('ovn-sb', layout.state('ovn', 'ovnsb_db.db'),
               layout.PORTS['ovn-sb'], 'ovnsb_db'),
        procs.Service('ovn-northd', (
            'ovn-northd',
            '--ovnnb-db=unix:%s/ovnnb_db.sock' % layout.OVN_RUN,
            '--ovnsb-db=unix:%s/ovnsb_db.sock' % layout.OVN_RUN,
            '--pidfile', '-vconsole:info', '-vsyslog:off'),
            _ovn_appctl_says('ovn-northd', 'status', 'active')),
        procs.Service('ovn-controller', (
            'ovn-controller', 'unix:%s/db.sock' % layout.OVS_RUN,
            '--pidfile', '-vconsole:info', '-vsyslog:off'),
            _ovn_appctl_says('ovn-controller', 'connection-status',
                             'connected'),
            where='chassis ' + layout.NOVA_HOST),
        _gunicorn('keystone', layout.PORTS['keystone'], '/v3',
                  env={'OS_KEYSTONE_CONFIG_DIR': layout.etc('keystone')}),
        _gunicorn('glance', layout.PORTS['glance'],
                  env={'OS_GLANCE_CONFIG_DIR': layout.etc('glance')}),
        _gunicorn('placement', layout.PORTS['placement'],
                  env={'OS_PLACEMENT_CONFIG_DIR': layout.etc('placement')}),
        # Neutron's OVN hash ring needs the number of API workers; under
        # gunicorn it comes from ASGI_WORKERS.
        _gunicorn('neutron', layout.PORTS['neutron'],
                  env={'OS_NEUTRON_CONFIG_DIR': layout.etc('neutron'),
                       'ASGI_WORKERS': '1'}),
        # Keeps OVN's databases in step with Neutron's (the periodic
        # maintenance tasks an API worker does not run).
        _oslo_service('neutron-ovn-maintenance-worker', *neutron_confs,
                      probe=lambda: True),
        # Servers' requests to 169.254.169.254 reach it through the
        # metadata agent's haproxies.
        _oslo_service('neutron-ovn-metadata-agent',
                      layout.etc('neutron', 'ovn_metadata_agent.ini'),
                      probe=functools.partial(procs.unix_socket_listening,
                                              layout.METADATA_SOCKET),
                      where='169.254.169.254 in ovnmeta-<network> '
                            'namespaces'),
        _gunicorn('nova-api', layout.PORTS['nova-api'],
                  env={'OS_NOVA_CONFIG_DIR': layout.etc('nova')}),
        _gunicorn('nova-metadata', layout.PORTS['nova-metadata'],
                  env={'OS_NOVA_CONFIG_DIR': layout.etc('nova')}),
        _oslo_service('nova-conductor', nova_conf,
                      probe=_consumer_probe('conductor'),
                      where='queue conductor'),
        _oslo_service('nova-scheduler', nova_conf,
                      probe=_consumer_probe('scheduler'),
                      where='queue scheduler'),
        _oslo_service('nova-serialproxy', nova_conf,
                      probe=procs.tcp_probe(
                          layout.PORTS['nova-serialproxy']),
                      where='ws://%s:%d' % (layout.HOST, layout.PORTS[
                          'nova-serialproxy'])),
        _oslo_service('nova-compute', layout.etc('nova', 'nova-cpu.conf'),
                      probe=_consumer_probe('compute.' + layout.NOVA_HOST),
                      where='queue compute.%s, driver novalxc.LXCDriver' %
                      layout.NOVA_HOST),
    ] + extra


# Services running code from the virtualenv (restarted when it changes).
PYTHON_SERVICES = ('keystone', 'glance', 'placement', 'neutron',
                   'neutron-ovn-maintenance-worker',
                   'neutron-ovn-metadata-agent', 'nova-api',
                   'nova-metadata', 'nova-conductor', 'nova-scheduler',
                   'nova-serialproxy', 'nova-compute', 'nova-compute-fake'
                   ) + compute2.PYTHON_SERVICES


def by_name():
    return {s.name: s for s in all_services(computes=2, fake=True)}
