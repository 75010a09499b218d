"""The text of every configuration file of the cloud.

Pure functions of the generated secrets and layout: ``up`` rewrites the
files on each run, so they always match this code.
"""

import os
import re

from novalxc_aio import layout

# Keystone's service project and the domain of everything.
_DOMAIN = 'Default'


def ini(sections):
    """Render [(section, [(key, value), ...]), ...] as INI text."""
    out = ['# Written by novalxc-aio (aio/novalxc_aio/configs.py); '
           'rewritten by every "up".']
    for section, items in sections:
        out.append('')
        out.append('[%s]' % section)
        for key, value in items:
            if isinstance(value, bool):
                value = 'true' if value else 'false'
            if '\n' in str(value):
                raise ValueError('newline in %s.%s' % (section, key))
            out.append('%s = %s' % (key, value))
    return '\n'.join(out) + '\n'


def db_url(secrets, database):
    user = layout.DATABASES[database]
    return 'mysql+pymysql://%s:%s@%s:%d/%s?charset=utf8' % (
        user, secrets['db_' + user], layout.HOST, layout.PORTS['mariadb'],
        database)


def transport_url(secrets):
    return 'rabbit://novalxc:%s@%s:%d/' % (
        secrets['rabbit'], layout.HOST, layout.PORTS['rabbitmq'])


def keystone_auth(secrets, user):
    """Password auth of a service user in the service project."""
    return [
        ('auth_type', 'password'),
        ('auth_url', layout.KEYSTONE_URL),
        ('project_domain_name', _DOMAIN),
        ('user_domain_name', _DOMAIN),
        ('project_name', 'service'),
        ('username', user),
        ('password', secrets['svc_' + user]),
        ('region_name', layout.REGION),
    ]


def authtoken(secrets, user):
    """[keystone_authtoken]: the middleware validating users' tokens."""
    return [('www_authenticate_uri', layout.KEYSTONE_URL),
            ('service_token_roles_required', True)] + \
        keystone_auth(secrets, user)


def concurrency(service):
    return ('oslo_concurrency',
            [('lock_path', layout.state(service, 'locks'))])


# -- MariaDB ------------------------------------------------------------------

def my_cnf():
    return '\n'.join([
        '# Written by novalxc-aio: the aio\'s own MariaDB instance.',
        '[mysqld]',
        'user = mysql',
        'datadir = %s' % layout.state('mysql'),
        'socket = %s' % layout.RUN + '/mysqld/mysqld.sock',
        'pid-file = %s' % layout.RUN + '/mysqld/mysqld.pid',
        'bind-address = %s' % layout.HOST,
        'port = %d' % layout.PORTS['mariadb'],
        'skip-name-resolve',
        # Each OpenStack service keeps a pool of connections per worker.
        'max_connections = 1000',
        'innodb_buffer_pool_size = 256M',
        'character-set-server = utf8mb3',
        'collation-server = utf8mb3_general_ci',
        '',
        '[client]',
        'socket = %s' % layout.RUN + '/mysqld/mysqld.sock',
        '',
    ])


MYSQL_SOCKET = layout.RUN + '/mysqld/mysqld.sock'


# -- RabbitMQ -----------------------------------------------------------------

def rabbitmq_conf():
    return '\n'.join([
        '# Written by novalxc-aio.',
        'listeners.tcp.default = %s:%d' % (layout.HOST,
                                           layout.PORTS['rabbitmq']),
        'log.console = true',
        'log.console.level = info',
        'log.file = false',
        '',
    ])


# -- Keystone -----------------------------------------------------------------

def keystone_conf(secrets):
    return ini([
        ('DEFAULT', [('debug', False)]),
        ('database', [('connection', db_url(secrets, 'keystone'))]),
        ('token', [('provider', 'fernet')]),
        ('fernet_tokens', [('key_repository',
                            layout.state('keystone', 'fernet-keys'))]),
        # Auth receipts (MFA) are fernet too: the same keys, rather than
        # /etc/keystone/fernet-keys, which only root could open.
        ('fernet_receipts', [('key_repository',
                              layout.state('keystone', 'fernet-keys'))]),
        ('credential', [('key_repository',
                         layout.state('keystone', 'credential-keys'))]),
    ])


# -- Glance -------------------------------------------------------------------

def glance_api_conf(secrets):
    glance = layout.state('glance')
    return ini([
        ('DEFAULT', [('enabled_backends', 'file:file'),
                     ('debug', False)]),
        ('database', [('connection', db_url(secrets, 'glance'))]),
        ('glance_store', [('default_backend', 'file')]),
        ('file', [('filesystem_store_datadir', glance + '/images/')]),
        ('os_glance_staging_store',
         [('filesystem_store_datadir', glance + '/staging/')]),
        ('os_glance_tasks_store',
         [('filesystem_store_datadir', glance + '/tasks/')]),
        ('keystone_authtoken', authtoken(secrets, 'glance')),
        ('paste_deploy', [('flavor', 'keystone'),
                          ('config_file',
                           layout.etc('glance', 'glance-api-paste.ini'))]),
        concurrency('glance'),
    ])


# -- Placement ----------------------------------------------------------------

def placement_conf(secrets):
    return ini([
        ('DEFAULT', [('debug', False)]),
        ('placement_database',
         [('connection', db_url(secrets, 'placement'))]),
        ('api', [('auth_strategy', 'keystone')]),
        ('keystone_authtoken', authtoken(secrets, 'placement')),
    ])


# -- Nova ---------------------------------------------------------------------

def nova_conf(secrets, compute=False, node=1, computes=1, fake=False):
    """nova.conf of the control services, or nova-cpu.conf of nova-compute.

    nova-compute gets no database credentials: it must reach the
    databases through the conductor only (Nova refuses direct access
    from compute and logs every attempt as an error).

    node 2 is the second compute (up --computes 2): its own host name,
    my_ip, state, LXC paths and Open vSwitch; its loopback URLs reach the
    control services through the relay (compute2.py). With two computes,
    compute 1's my_ip is its end of the link to compute 2.

    fake: the nova-cpu.conf of the fake-driver compute (up
    --fake-compute): compute 1's settings but its own host name
    (layout.FAKE_HOST), state and locks, and compute_driver =
    layout.FAKE_DRIVER; no [lxc] section.
    """
    my_ip = layout.HOST
    if compute and computes > 1:
        my_ip = layout.C1_IP
    if node == 2:
        my_ip = layout.C2_IP
    sections = [
        ('DEFAULT', [
            ('host', layout.C2_HOST if node == 2 else
             layout.FAKE_HOST if fake else layout.NOVA_HOST),
            ('my_ip', my_ip),
            ('transport_url', transport_url(secrets)),
            ('state_path', os.path.join(layout.C2_STATE, 'nova')
             if node == 2 else os.path.join(layout.FAKE_STATE, 'nova')
             if fake else layout.state('nova')),
            ('compute_driver', layout.FAKE_DRIVER if fake
             else 'novalxc.LXCDriver'),
            # Containers share the host's CPUs (a vCPU is a CPU share, not
            # a reservation): 128 vCPUs per core lets a two-core host hold
            # the 200 idle one-vCPU servers of the api-density benchmark
            # (bench/api_density.py, issue 16 goal 5); memory is not
            # overcommitted, and it bounds lxc.tiny servers first (about
            # 90 in 24 GiB).
            ('cpu_allocation_ratio', 128.0),
            # One compute host: resize in place (the driver keeps both
            # containers until confirm). With two, a resize moves the
            # server, as the two-host smoke and Tempest expect.
            ('allow_resize_to_same_host', computes == 1),
            ('debug', False),
        ]),
        ('api', [('auth_strategy', 'keystone')]),
        ('wsgi', [('api_paste_config', layout.etc('nova', 'api-paste.ini'))]),
    ]
    if compute:
        # Shelve offloads at once (Nova's default, stated because the
        # smoke relies on it): the snapshot goes to Glance, the container
        # and its disks leave the host, unshelve boots it from the image.
        sections[0][1].append(('shelved_offload_time', 0))
    else:
        sections += [
            ('api_database', [('connection', db_url(secrets, 'nova_api'))]),
            ('database', [('connection', db_url(secrets, 'nova'))]),
        ]
    sections += [
        ('keystone_authtoken', authtoken(secrets, 'nova')),
        # Nova sends its own token along with the user's to Neutron,
        # Glance and Cinder (required for long operations).
        ('service_user', [('send_service_user_token', True)] +
         keystone_auth(secrets, 'nova')),
        ('placement', keystone_auth(secrets, 'placement')),
        # Neutron's OVN metadata agent proxies the servers' requests to
        # nova-metadata, signing the instance ID with the shared secret.
        ('neutron', keystone_auth(secrets, 'neutron') +
         [('service_metadata_proxy', True),
          ('metadata_proxy_shared_secret', secrets['metadata'])]),
        ('glance', [('region_name', layout.REGION)]),
        ('conductor', [('workers', 1)]),
        ('scheduler', [('workers', 1),
                       # up runs discover_hosts once compute is up.
                       ('discover_hosts_in_cells_interval', -1)]),
        ('vnc', [('enabled', False)]),
        ('spice', [('enabled', False)]),
        # Servers' /dev/console through nova-serialproxy: the compute
        # binds a relay per console on proxyclient_address (the driver's
        # serialconsole.py) and hands out base_url with a token.
        ('serial_console', [
            ('enabled', True),
            ('base_url', 'ws://%s:%d/' % (layout.HOST,
                                          layout.PORTS['nova-serialproxy'])),
            ('serialproxy_host', layout.HOST),
            ('serialproxy_port', layout.PORTS['nova-serialproxy']),
            ('proxyclient_address', layout.C2_IP if node == 2
             else layout.HOST),
            ('port_range', '10000:10999')]),
    ]
    if compute and not fake:
        # nova-compute runs as layout.COMPUTE_USER: each privsep daemon
        # through sudo, reading this file (COMPUTE_SUDOERS allows that).
        helper = layout.privsep_helper_command(node)
        sections += [(context, [('helper_command', helper)])
                     for context in layout.PRIVSEP_CONTEXTS]
    if node == 2:
        sections += [
            # One container ID reservation directory for the machine.
            ('lxc', [('lxc_path', layout.C2_LXC_PATH),
                     ('state_path', layout.C2_DRIVER_STATE),
                     ('ids_path', layout.IDS_PATH)]),
            # os-vif plugs the VIFs into compute 2's own Open vSwitch.
            ('os_vif_ovs', [('ovsdb_connection',
                             'unix:%s/db.sock' % layout.C2_OVS_RUN)]),
            ('oslo_concurrency', [('lock_path', os.path.join(
                layout.C2_STATE, 'nova', 'locks'))]),
        ]
    elif fake:
        sections += [
            ('oslo_concurrency', [('lock_path', os.path.join(
                layout.FAKE_STATE, 'nova', 'locks'))]),
        ]
    else:
        sections += [
            ('lxc', [('lxc_path', layout.LXC_PATH),
                     ('state_path', layout.DRIVER_STATE),
                     ('ids_path', layout.IDS_PATH)]),
            # The socket, group nova's (setup.openvswitch): nova-compute
            # removes leftover ports itself, as os-vif adds them.
            ('os_vif_ovs', [('ovsdb_connection',
                             'unix:%s/db.sock' % layout.OVS_RUN)]),
            # Apart from the control services' locks (nova.conf).
            concurrency('nova-compute'),
        ]
    return ini(sections)


# -- Neutron ------------------------------------------------------------------

def neutron_conf(secrets):
    return ini([
        ('DEFAULT', [
            ('core_plugin', 'ml2'),
            ('service_plugins', 'ovn-router'),
            ('auth_strategy', 'keystone'),
            ('transport_url', transport_url(secrets)),
            ('api_paste_config', layout.etc('neutron', 'api-paste.ini')),
            ('state_path', layout.state('neutron')),
            # Neutron tells Nova when a port goes up or down
            # (network-vif-plugged): needs the [nova] section.
            ('notify_nova_on_port_status_changes', True),
            ('notify_nova_on_port_data_changes', True),
            # Events sent within this many seconds of the last batch wait
            # for the next: a boot's network-vif-plugged follows its
            # network-changed within 2 s (the default), so it waited.
            ('send_events_interval', 1),
            # OVN serves DHCP itself: no DHCP agent to schedule a network
            # to at each port create (it tried, logged a warning, gave up).
            ('dhcp_agent_notification', False),
            ('debug', False),
        ]),
        ('database', [('connection', db_url(secrets, 'neutron'))]),
        ('keystone_authtoken', authtoken(secrets, 'neutron')),
        ('nova', keystone_auth(secrets, 'nova')),
        concurrency('neutron'),
    ])


def ml2_conf():
    return ini([
        ('ml2', [('type_drivers', 'local,flat,vlan,geneve'),
                 ('tenant_network_types', 'geneve'),
                 ('mechanism_drivers', 'ovn'),
                 ('extension_drivers', 'port_security'),
                 ('overlay_ip_version', 4)]),
        ('ml2_type_geneve', [('vni_ranges', '1:65536'),
                             ('max_header_size', 38)]),
        ('ml2_type_flat', [('flat_networks', '*')]),
        ('securitygroup', [('enable_security_group', True)]),
        ('ovn', [
            ('ovn_nb_connection', 'tcp:%s:%d' % (layout.HOST,
                                                 layout.PORTS['ovn-nb'])),
            ('ovn_sb_connection', 'tcp:%s:%d' % (layout.HOST,
                                                 layout.PORTS['ovn-sb'])),
            ('ovn_l3_scheduler', 'leastloaded'),
            # A metadata port per network, and DHCP's route to
            # 169.254.169.254 through it (neutron-ovn-metadata-agent).
            ('ovn_metadata_enabled', True),
        ]),
    ])


# Privsep contexts of Neutron's agents (neutron/privileged/__init__.py).
_PRIVSEP_SECTIONS = ('privsep', 'privsep_link', 'privsep_namespace',
                     'privsep_ovs_vsctl', 'privsep_conntrack',
                     'privsep_dhcp_release')


def ovn_metadata_agent_conf(secrets, node=1):
    """The OVN metadata agent's only configuration file.

    It needs no database or message bus: it reads the OVN Southbound
    database and the local OVSDB, makes the ovnmeta-<network> namespaces
    with a haproxy each, and forwards to nova-metadata. node 2: compute
    2's agent (its own state, socket and Open vSwitch). The agent runs as
    neutron: its privsep daemons start through sudo, reading this file,
    and the haproxies through neutron-rootwrap (layout.NEUTRON_SUDOERS);
    each haproxy drops to the agent's user.
    """
    if node == 2:
        state, socket_path = layout.C2_METADATA_STATE, \
            layout.C2_METADATA_SOCKET
        ovsdb = 'unix:%s/db.sock' % layout.C2_OVS_RUN
    else:
        state, socket_path = layout.METADATA_STATE, layout.METADATA_SOCKET
        ovsdb = 'unix:%s/db.sock' % layout.OVS_RUN
    helper = layout.privsep_helper_command(conf=layout.agent_conf(node))
    return ini([
        ('DEFAULT', [
            ('state_path', state),
            ('metadata_proxy_socket', socket_path),
            ('nova_metadata_host', layout.HOST),
            ('nova_metadata_port', layout.PORTS['nova-metadata']),
            ('metadata_proxy_shared_secret', secrets['metadata']),
            ('debug', False),
        ]),
        ('AGENT', [('root_helper', layout.neutron_root_helper())]),
        ('ovs', [('ovsdb_connection', ovsdb)]),
        ('ovn', [('ovn_sb_connection', 'tcp:%s:%d' % (
            layout.HOST, layout.PORTS['ovn-sb']))]),
        ('oslo_concurrency', [('lock_path', os.path.join(state, 'locks'))]),
    ] + [(section, [('helper_command', helper)])
         for section in _PRIVSEP_SECTIONS])


def neutron_rootwrap_conf():
    """rootwrap.conf of the agents' neutron-rootwrap (oslo.rootwrap).

    Only this aio's filters, and only the system's directories to find
    the commands in: never a directory a service user can write.
    """
    return ini([('DEFAULT', [
        ('filters_path', layout.NEUTRON_ROOTWRAP_FILTERS),
        ('exec_dirs', '/usr/sbin,/usr/bin,/sbin,/bin'),
        ('use_syslog', False),
    ])])


def metadata_agent_filters():
    """The rootwrap filters of what the OVN metadata agents run as root.

    Neutron 29's OVN metadata agent runs one command through its
    root_helper (all else is its privsep contexts'): "ip netns exec
    <namespace> env PROCESS_TAG=haproxy-<network> haproxy -f
    <state_path>/ovn-metadata-proxy/<network>.conf"
    (neutron/agent/linux/external_process.py, agent/metadata/
    driver_base.py). Neutron's own rootwrap.filters would also let any
    "ip" command and any haproxy or env PROCESS_TAG=... haproxy command
    line through; these filters only that one, with the agents' own
    state directories (oslo.rootwrap: IpNetnsExecFilter matches the inner
    command against the other filters; RegExpFilter every argument).
    """
    states = '(%s)' % '|'.join(re.escape(p) for p in (
        layout.METADATA_STATE, layout.C2_METADATA_STATE))
    return '\n'.join([
        '# Written by novalxc-aio: the OVN metadata agents\' haproxies.',
        '[Filters]',
        'ip_exec: IpNetnsExecFilter, ip, root',
        'haproxy_env: RegExpFilter, env, root, env, '
        'PROCESS_TAG=haproxy-[-0-9a-f]+, haproxy, -f, '
        '%s/ovn-metadata-proxy/[-0-9a-f]+\\.conf' % states,
        ''])


# -- gunicorn -----------------------------------------------------------------

# gunicorn's access log on its stdout (the service's log) in the format
# of oslo.log's lines. gunicorn lays this over its own logging config one
# key deep, so the rest of that is repeated: its error log on stderr, and
# a root logger left as Python's (the service's oslo.log sets it up).
ACCESS_LOG_CONFIG = {
    'version': 1,
    'disable_existing_loggers': False,
    'root': {'level': 'WARNING', 'handlers': []},
    'formatters': {
        'access': {'format': '%(asctime)s.%(msecs)03d %(process)d INFO '
                             '%(name)s %(message)s',
                   'datefmt': '%Y-%m-%d %H:%M:%S'},
        'generic': {'format': '%(asctime)s [%(process)d] [%(levelname)s] '
                              '%(message)s',
                    'datefmt': '[%Y-%m-%d %H:%M:%S %z]'}},
    'handlers': {
        'access': {'class': 'logging.StreamHandler', 'formatter': 'access',
                   'stream': 'ext://sys.stdout'},
        'error_console': {'class': 'logging.StreamHandler',
                          'formatter': 'generic',
                          'stream': 'ext://sys.stderr'}},
    'loggers': {
        'gunicorn.access': {'handlers': ['access'], 'level': 'INFO',
                            'propagate': False},
        'gunicorn.error': {'handlers': ['error_console'], 'level': 'INFO',
                           'propagate': False}},
}


def gunicorn_conf(name, wsgi_app, port, threads=4):
    """gunicorn.conf.py of one API, read from the service's directory.

    The WSGI apps of Nova and Neutron parse sys.argv as their own command
    line, so gunicorn gets no arguments and takes everything from here.
    """
    return '\n'.join([
        '# Written by novalxc-aio: %s API under gunicorn.' % name,
        'wsgi_app = %r' % wsgi_app,
        'bind = [%r]' % ('%s:%d' % (layout.HOST, port)),
        # One process with a few threads: enough for one user, light on
        # a two-core machine. The OpenStack APIs run in threading mode.
        'workers = 1',
        'threads = %d' % threads,
        'timeout = 300',
        # Nova lists a page of servers' ports from Neutron with up to 150
        # device_id=<uuid> filters in one URL (nova/network/
        # security_group_api.py MAX_SEARCH_IDS), about 7 KB: gunicorn's
        # default 4094 made GET /servers/detail fail (500) once a project
        # had about 85 servers. 8190 is gunicorn's largest bounded value.
        'limit_request_line = 8190',
        # An idle keep-alive connection is closed after this many seconds
        # (gunicorn's default: 2). A client that sends on a pooled
        # connection just as the server closes it gets "connection reset"
        # or "closed without response", and a POST is not retried: 2 of
        # 200 POST /servers of the api-density benchmark failed so, with
        # ten clients whose connections sat idle about 2 s. Longer than
        # any idle gap of the aio's clients under load.
        'keepalive = 60',
        'graceful_timeout = 10',
        'proc_name = %r' % ('novalxc-aio-' + name),
        # gunicorn 27 opens a control socket by default; not needed.
        'control_socket_disable = True',
        # Each request with its time in milliseconds, stamped when it
        # ends as the services stamp theirs: where a boot's seconds go
        # (bench/networked_boot.py reads Neutron's port binding here).
        'access_log_format = %r' % '"%(r)s" %(s)s %(M)sms',
        'logconfig_dict = %r' % ACCESS_LOG_CONFIG,
        '',
    ])
