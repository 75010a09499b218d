"""One function per service: configure it, prepare its data, start it.

Every function is idempotent: it rewrites configuration, does one-time
steps (database schemas, keys) only once, and leaves a running instance
that the aio started alone. Services are started through procs, so each
has a log file and a PID file, and ``down`` can stop exactly them.
"""

import glob
import grp
import hashlib
import json
import os
import pwd
import uuid

from novalxc_aio import api
from novalxc_aio import compute2 as compute2_mod
from novalxc_aio import configs
from novalxc_aio import layout
from novalxc_aio import procs
from novalxc_aio import services
from novalxc_aio import util

_SERVICES = services.by_name()


# Services whose configuration changed during this run: restarted by
# launch() if they already run.
_restart = set()


def restart_later(*names):
    _restart.update(names)


def _config(path, text, readers, mode=0o644, owner=None):
    """Write a configuration file; its readers restart if it changed.

    :param owner: (uid, gid) of the one service user that reads it (a
        file with secrets: mode 0600), (0, its gid) for a file a root
        helper reads too (mode 0640), or None for root's.
    """
    if util.write_file(path, text, mode, owner):
        _restart.update(readers)


def launch(name):
    """Start service name without waiting; restart it if it is stale.

    Stale: its configuration changed in this run, or its command line or
    environment differ from those it was started with.
    """
    service = _SERVICES[name]
    if procs.recorded_pid(name) and (name in _restart or
                                     procs.spec_changed(service)):
        util.say('restarting %s: its code, configuration or command line '
                 'changed', name)
        procs.stop(name)
    _restart.discard(name)
    pid, started = procs.start(service)
    util.say('%s %s (pid %d)', 'started' if started else 'running:',
             name, pid)


def start(*names):
    """Start the named services, then wait until each of them answers.

    A service that dies while starting is started once more (its log keeps
    the first attempt); a second death fails the run.
    """
    for name in names:
        launch(name)
    for name in names:
        _wait(name)


def _wait(name):
    try:
        procs.wait(_SERVICES[name])
    except procs.Exited as e:
        util.warn('%s\nstarting %s once more', e, name)
        launch(name)
        procs.wait(_SERVICES[name])


def _owner(user):
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(user).gr_gid


def system_users():
    """A system user and group per OpenStack service (layout.SYSTEM_USERS).

    No login shell, no home of its own beyond its state directory, no
    supplementary group: each reads only its own configuration and
    writes only its own state.
    """
    for user in layout.SYSTEM_USERS:
        try:
            pwd.getpwnam(user)
            continue
        except KeyError:
            pass
        util.say('adding system user %s', user)
        util.run(['useradd', '--system', '--user-group', '--no-create-home',
                  '--home-dir', layout.state(user), '--shell',
                  '/usr/sbin/nologin', '--comment',
                  'novalxc-aio %s' % user, user])


def _service_dirs(user, *paths, mode=0o750):
    """Directories of user's state, owned by it (older runs: root's)."""
    owner = _owner(user)
    util.makedirs(layout.state(user), mode, owner)
    for path in paths:
        util.makedirs(path, mode, owner)
        util.chown_tree(path, owner)
    return owner


def _version(package):
    """Installed version of a PyPI package in the venv (for markers).

    Read from its .dist-info directory name: no interpreter start-up.
    """
    pattern = os.path.join(layout.VENV, 'lib', 'python3*', 'site-packages',
                           '%s-*.dist-info' % package.replace('-', '_'))
    found = glob.glob(pattern)
    if len(found) != 1:
        raise util.AioError('cannot tell the version of %s in %s' % (
            package, layout.VENV))
    return os.path.basename(found[0])[len(package) + 1:-len('.dist-info')]


def _once(name, version, argv_list, log):
    """Run one-time commands (a db sync) unless done for this version."""
    if util.marker_done(name, version):
        return
    util.say('%s (once per version; log %s)', name, layout.log_file(log))
    for argv in argv_list:
        util.run(argv, log=log)
    util.mark_done(name, version)


def _copy_paste_ini(service, name, readers):
    """Copy a service's stock paste pipeline from the venv, unchanged."""
    src = os.path.join(layout.VENV, 'etc', service, name)
    with open(src) as f:
        _config(layout.etc(service, name), f.read(), readers)


# -- host facilities ----------------------------------------------------------

def lxcfs():
    """lxcfs: per-container /proc/meminfo, cpuinfo, uptime (FUSE)."""
    if services.lxcfs_serving() and not procs.recorded_pid('lxcfs'):
        util.say('lxcfs already runs on %s (not started by the aio): '
                 'containers use it', services.LXCFS_DIR)
        return
    if services.lxcfs_mounted() and not services.lxcfs_serving():
        util.say('lxcfs on %s died and left its mount: detaching it',
                 services.LXCFS_DIR)
        util.run(['umount', '--lazy', services.LXCFS_DIR], log='lxcfs')
    if not procs.recorded_pid('lxcfs'):
        os.makedirs(services.LXCFS_DIR, exist_ok=True)
    start('lxcfs')


# -- MariaDB ------------------------------------------------------------------

def mariadb(secrets):
    """The aio's own MariaDB instance on 127.0.0.1:3306.

    With the databases and one user per service (random passwords).
    """
    mysql = _owner('mysql')
    _config(layout.etc('mysql', 'my.cnf'), configs.my_cnf(), ['mariadb'])
    util.makedirs(os.path.dirname(configs.MYSQL_SOCKET), 0o755, mysql)
    datadir = layout.state('mysql')
    if not os.path.isdir(os.path.join(datadir, 'mysql')):
        util.say('initialising MariaDB data in %s', datadir)
        util.makedirs(datadir, 0o700, mysql)
        util.run(['mariadb-install-db',
                  '--defaults-file=' + layout.etc('mysql', 'my.cnf'),
                  '--skip-test-db',
                  '--auth-root-authentication-method=socket'],
                 log='mariadb-install')
    start('mariadb')
    sql = []
    for user in sorted(set(layout.DATABASES.values())):
        who = "'%s'@'%s'" % (user, layout.HOST)
        password = secrets['db_' + user]
        sql += ["CREATE USER IF NOT EXISTS %s IDENTIFIED BY '%s';" % (
                who, password),
                "ALTER USER %s IDENTIFIED BY '%s';" % (who, password)]
    for database, user in sorted(layout.DATABASES.items()):
        sql += ['CREATE DATABASE IF NOT EXISTS %s;' % database,
                "GRANT ALL PRIVILEGES ON %s.* TO '%s'@'%s';" % (
                    database, user, layout.HOST)]
    # Root logs in through its unix socket (unix_socket auth): the SQL goes
    # on stdin, so no password is ever on a command line.
    _sql('\n'.join(sql))


def _sql(statement):
    """Run one SQL statement as MariaDB's root; return its output text."""
    return util.run(['mariadb', '--defaults-file=' +
                     layout.etc('mysql', 'my.cnf'), '-u', 'root', '-N', '-B'],
                    input=statement.rstrip().rstrip(';') + ';\n',
                    capture=True).stdout.strip()


# -- RabbitMQ -----------------------------------------------------------------

def rabbitmq(secrets):
    """RabbitMQ on 127.0.0.1:5672 (and its epmd), user novalxc."""
    rabbit = _owner('rabbitmq')
    util.makedirs(services.RABBITMQ_HOME, 0o750, rabbit)
    util.makedirs(os.path.join(layout.LOGS, 'rabbitmq'), 0o750, rabbit)
    _config(layout.etc('rabbitmq', 'rabbitmq.conf'), configs.rabbitmq_conf(),
            ['rabbitmq'])
    # No plugins (the management UI would listen on another port).
    _config(layout.etc('rabbitmq', 'enabled_plugins'), '[].\n',
            ['rabbitmq'])
    if procs.port_owner(layout.PORTS['epmd']) and \
            not procs.recorded_pid('epmd'):
        util.say('an epmd already listens on port %d: RabbitMQ uses it',
                 layout.PORTS['epmd'])
    else:
        start('epmd')
    start('rabbitmq')
    services.rabbitmqctl('await_startup', '--timeout', '120')
    users = services.rabbitmqctl('-q', 'list_users').stdout.split()
    if 'novalxc' not in users:
        # Without a password argument rabbitmqctl reads it from stdin.
        services.rabbitmqctl('add_user', 'novalxc',
                             input=secrets['rabbit'] + '\n')
    services.rabbitmqctl('set_permissions', '-p', '/', 'novalxc',
                         '.*', '.*', '.*')


# -- Open vSwitch and OVN -----------------------------------------------------

def openvswitch(computes=1):
    """ovsdb-server and ovs-vswitchd with the userspace datapath; br-int.

    The bridge uses datapath_type=netdev, so no openvswitch kernel module
    is needed; ovn-controller finds its settings in external_ids. With two
    computes, the geneve tunnel's local address is on the tunnel bridge
    (compute2.py) instead of loopback.
    """
    util.makedirs(layout.state('ovs'), 0o750)
    util.makedirs(layout.OVS_RUN, 0o755)
    if not procs.recorded_pid('ovsdb-server') and \
            procs.unix_socket_answers(layout.OVS_RUN + '/db.sock'):
        raise util.AioError(
            'an Open vSwitch the aio did not start runs on %s/db.sock (the '
            'Debian service?): stop it and run up again' % layout.OVS_RUN)
    db = layout.state('ovs', 'conf.db')
    if not os.path.exists(db):
        util.run(['ovsdb-tool', 'create', db,
                  '/usr/share/openvswitch/vswitch.ovsschema'])
    start('ovsdb-server')
    services_may_use_ovsdb(layout.OVS_RUN)
    util.run(['ovs-vsctl', '--no-wait', 'init'])
    util.run(['ovs-vsctl', '--no-wait', 'set', 'Open_vSwitch', '.',
              'external_ids:system-id=%s' % layout.NOVA_HOST,
              'external_ids:hostname=%s' % layout.NOVA_HOST,
              'external_ids:ovn-remote=tcp:%s:%d' % (
                  layout.HOST, layout.PORTS['ovn-sb']),
              'external_ids:ovn-encap-type=geneve',
              'external_ids:ovn-encap-ip=%s' % (
                  layout.C1_ENCAP_IP if computes > 1 else layout.HOST),
              'external_ids:ovn-bridge-datapath-type=netdev'])
    start('ovs-vswitchd')
    util.run(['ovs-vsctl', '--may-exist', 'add-br', 'br-int', '--',
              'set', 'Bridge', 'br-int', 'datapath_type=netdev',
              'fail_mode=secure', 'other_config:disable-in-band=true'])


def services_may_use_ovsdb(run):
    """nova and neutron may connect to the ovsdb-server socket in run.

    nova-compute (as nova) reads and writes the Open vSwitch database
    itself, as os-vif does everywhere ([os_vif_ovs] ovsdb_connection),
    and so does the OVN metadata agent (as neutron: its namespaces'
    ports on br-int); ovsdb-server makes its socket root's alone, and
    has no option for its owner. Group nova, and an ACL entry for
    neutron: no other user may.
    """
    sock = os.path.join(run, 'db.sock')
    os.chown(sock, 0, _owner(layout.COMPUTE_USER)[1])
    os.chmod(sock, 0o660)
    util.run(['setfacl', '-m', 'u:neutron:rw', sock])


def ovn():
    """OVN: Northbound and Southbound databases, northd, the controller."""
    util.makedirs(layout.state('ovn'), 0o750)
    util.makedirs(layout.OVN_RUN, 0o755)
    for name in ('nb', 'sb'):
        db = layout.state('ovn', 'ovn%s_db.db' % name)
        if not os.path.exists(db):
            util.run(['ovsdb-tool', 'create', db,
                      '/usr/share/ovn/ovn-%s.ovsschema' % name])
    start('ovn-nb', 'ovn-sb')
    start('ovn-northd', 'ovn-controller')


# -- Keystone -----------------------------------------------------------------

def keystone(secrets):
    """Keystone on :5000 with fernet tokens; admin bootstrapped."""
    keystone_user = _service_dirs('keystone',
                                  layout.state('keystone', 'locks'))
    _config(layout.etc('keystone', 'keystone.conf'),
            configs.keystone_conf(secrets), ['keystone'], mode=0o600,
            owner=keystone_user)
    _config(layout.etc('keystone', 'gunicorn.conf.py'),
            configs.gunicorn_conf('keystone', 'keystone.wsgi.api:application',
                                  layout.PORTS['keystone']), ['keystone'])
    conf = ['--config-file', layout.etc('keystone', 'keystone.conf')]
    manage = [layout.venv_bin('keystone-manage')] + conf
    _once('keystone-db-sync', _version('keystone'),
          [manage + ['db_sync']], 'keystone-manage')
    for keys, command in (('fernet-keys', 'fernet_setup'),
                          ('credential-keys', 'credential_setup')):
        path = layout.state('keystone', keys)
        if not os.path.exists(os.path.join(path, '0')):
            util.makedirs(path, 0o700, keystone_user)
            util.run(manage + [command, '--keystone-user', 'keystone',
                               '--keystone-group', 'keystone'],
                     log='keystone-manage')
        util.chown_tree(path, keystone_user)
    # Re-run when the admin password changes (marker: its hash only). The
    # password goes through the environment, not the command line.
    admin = hashlib.sha256(secrets['admin'].encode()).hexdigest()
    if not util.marker_done('keystone-bootstrap', admin):
        util.run(manage + [
            'bootstrap',
            '--bootstrap-admin-url', layout.KEYSTONE_URL,
            '--bootstrap-internal-url', layout.KEYSTONE_URL,
            '--bootstrap-public-url', layout.KEYSTONE_URL,
            '--bootstrap-region-id', layout.REGION],
            env=util.clean_env({'OS_BOOTSTRAP_PASSWORD': secrets['admin']}),
            log='keystone-manage')
        util.mark_done('keystone-bootstrap', admin)
    start('keystone')


def identities(secrets):
    """Projects, users, roles, services and endpoints (Keystone API).

    service project: one user per OpenStack service (roles admin and
    service); demo project: user demo with role member.
    """
    wanted = json.dumps([sorted(layout.CATALOG.items()),
                         layout.SERVICE_USERS, layout.DEMO_USER,
                         layout.DEMO_PROJECT, secrets], sort_keys=True)
    wanted = hashlib.sha256(wanted.encode()).hexdigest()
    if util.marker_done('keystone-identities', wanted):
        return
    s = api.Session('admin', secrets['admin'], 'admin')

    def find(kind, **query):
        qs = '&'.join('%s=%s' % kv for kv in sorted(query.items()))
        found = s.get('identity', '/%s?%s' % (kind, qs))[kind]
        return found[0]['id'] if found else None

    def ensure(kind, body, **query):
        existing = find(kind, **query)
        if existing:
            return existing
        singular = kind[:-1]
        return s.post('identity', '/' + kind, {singular: body})[singular]['id']

    roles = {name: ensure('roles', {'name': name}, name=name)
             for name in ('admin', 'member', 'reader', 'service')}
    projects = {name: ensure('projects', {'name': name,
                                          'domain_id': 'default'}, name=name)
                for name in ('service', layout.DEMO_PROJECT)}

    def user(name, password, project, role_names):
        uid = ensure('users', {'name': name, 'password': password,
                               'domain_id': 'default',
                               'default_project_id': projects[project]},
                     name=name)
        for role in role_names:
            s.call('PUT', 'identity', '/projects/%s/users/%s/roles/%s' % (
                projects[project], uid, roles[role]))

    user(layout.DEMO_USER, secrets['demo'], layout.DEMO_PROJECT,
         ['member', 'reader'])
    for name in layout.SERVICE_USERS:
        user(name, secrets['svc_' + name], 'service', ['admin', 'service'])

    for service_type, (name, url) in sorted(layout.CATALOG.items()):
        sid = ensure('services', {'type': service_type, 'name': name},
                     type=service_type)
        for interface in ('public', 'internal'):
            if not find('endpoints', service_id=sid, interface=interface):
                s.post('identity', '/endpoints', {'endpoint': {
                    'service_id': sid, 'interface': interface, 'url': url,
                    'region_id': layout.REGION}})
    util.mark_done('keystone-identities', wanted)


# -- Glance, Placement --------------------------------------------------------

def glance(secrets):
    """Glance on :9292, images in a file store under the aio state."""
    glance_user = _service_dirs('glance', *[
        layout.state('glance', sub)
        for sub in ('images', 'staging', 'tasks', 'locks')])
    _config(layout.etc('glance', 'glance-api.conf'),
            configs.glance_api_conf(secrets), ['glance'], mode=0o600,
            owner=glance_user)
    _copy_paste_ini('glance', 'glance-api-paste.ini', ['glance'])
    _config(layout.etc('glance', 'gunicorn.conf.py'),
            configs.gunicorn_conf('glance', 'glance.wsgi.api:application',
                                  layout.PORTS['glance']), ['glance'])
    _once('glance-db-sync', _version('glance'), [[
        layout.venv_bin('glance-manage'), '--config-file',
        layout.etc('glance', 'glance-api.conf'), 'db_sync']], 'glance-manage')
    launch('glance')


def placement(secrets):
    """Placement on :8778."""
    placement_user = _service_dirs('placement',
                                   layout.state('placement', 'locks'))
    _config(layout.etc('placement', 'placement.conf'),
            configs.placement_conf(secrets), ['placement'], mode=0o600,
            owner=placement_user)
    _config(layout.etc('placement', 'gunicorn.conf.py'),
            configs.gunicorn_conf('placement',
                                  'placement.wsgi.api:application',
                                  layout.PORTS['placement']), ['placement'])
    _once('placement-db-sync', _version('openstack-placement'), [[
        layout.venv_bin('placement-manage'), '--config-file',
        layout.etc('placement', 'placement.conf'), 'db', 'sync']],
        'placement-manage')
    launch('placement')


# -- Neutron ------------------------------------------------------------------

def neutron(secrets):
    """neutron-server (API on :9696) with ML2/OVN, and its helpers.

    OVN maintenance, and the OVN metadata agent (169.254.169.254 on each
    network, proxied to nova-metadata).
    """
    neutron_conf = layout.etc('neutron', 'neutron.conf')
    ml2_conf = layout.etc('neutron', 'plugins', 'ml2', 'ml2_conf.ini')
    readers = ['neutron', 'neutron-ovn-maintenance-worker']
    neutron_user = _service_dirs('neutron', layout.state('neutron', 'locks'))
    _config(neutron_conf, configs.neutron_conf(secrets), readers, mode=0o600,
            owner=neutron_user)
    _config(ml2_conf, configs.ml2_conf(), readers)
    _copy_paste_ini('neutron', 'api-paste.ini', ['neutron'])
    _config(layout.etc('neutron', 'gunicorn.conf.py'),
            configs.gunicorn_conf('neutron', 'neutron.wsgi.api:application',
                                  layout.PORTS['neutron']), ['neutron'])
    _once('neutron-db-sync', _version('neutron'), [[
        layout.venv_bin('neutron-db-manage'), '--config-file', neutron_conf,
        '--config-file', ml2_conf, 'upgrade', 'heads']], 'neutron-db-manage')
    launch('neutron')
    launch('neutron-ovn-maintenance-worker')
    metadata_agent_user()
    # Root's, neutron may read it: its privsep daemons read it as root.
    _config(layout.agent_conf(), configs.ovn_metadata_agent_conf(secrets),
            ['neutron-ovn-metadata-agent'], mode=0o640,
            owner=(0, neutron_user[1]))
    util.makedirs(layout.METADATA_STATE, 0o750, neutron_user)
    util.chown_tree(layout.METADATA_STATE, neutron_user)
    launch('neutron-ovn-metadata-agent')


def metadata_agent_user():
    """What the OVN metadata agents need to run as neutron (issue 14).

    A sudoers rule that lets neutron start exactly the agents' privsep
    daemons (privsep-helper with an agent's own file, one of Neutron's
    contexts and oslo.privsep's socket) and neutron-rootwrap with this
    aio's rootwrap.conf, whose filters let through only the agents'
    haproxies.
    """
    agents = ['neutron-ovn-metadata-agent', 'neutron-ovn-metadata-agent-2']
    _config(layout.NEUTRON_ROOTWRAP_CONF, configs.neutron_rootwrap_conf(),
            agents)
    _config(os.path.join(layout.NEUTRON_ROOTWRAP_FILTERS,
                         'ovn-metadata-agent.filters'),
            configs.metadata_agent_filters(), agents)
    rule = ', '.join([layout.privsep_sudoers_command(
        layout.agent_conf(node), layout.NEUTRON_PRIVSEP_PYPATHS)
        for node in (1, 2)] + ['%s %s *' % (
            layout.venv_bin('neutron-rootwrap'),
            layout.NEUTRON_ROOTWRAP_CONF)])
    if util.write_file(layout.NEUTRON_SUDOERS, 'neutron ALL=(root) '
                       'NOPASSWD: %s\n' % rule, 0o440):
        util.run(['visudo', '-c', '-q', '-f', layout.NEUTRON_SUDOERS])


# -- Nova ---------------------------------------------------------------------

def compute2(secrets, computes):
    """Compute 2's namespace, links, chassis and sshds (or their stop).

    Its nova-compute and metadata agent start in nova_compute(), once the
    APIs answer. With one compute, whatever compute 2 ran is stopped
    (its namespace and state stay until "clean").
    """
    if computes < 2:
        stopped = compute2_mod.stop_all()
        for name, pid in sorted(stopped.items()):
            util.say('stopped %s (pid %d): one compute asked', name, pid)
        if stopped:
            # Its metadata agent's haproxies daemonize out of its group.
            from novalxc_aio import commands
            for pid in commands._stop_metadata_proxies(
                    states=(layout.C2_METADATA_STATE,)):
                util.say('stopped compute 2\'s metadata haproxy (pid %d)',
                         pid)
        return
    compute2_mod.network()
    compute2_mod.prepare(secrets, _config)
    compute2_mod.ssh_files()
    start('relay-2')
    compute2_mod.open_vswitch(start, services_may_use_ovsdb)
    compute2_mod.underlay(1)
    start('ovn-controller-2', 'sshd-1', 'sshd-2')


def nova(secrets, computes=1):
    """nova-api, nova-metadata, conductor, scheduler, serialproxy.

    Cells are set up once.
    """
    conf = layout.etc('nova', 'nova.conf')
    nova_user = _service_dirs('nova', layout.state('nova', 'locks'))
    _config(conf, configs.nova_conf(secrets, computes=computes),
            ['nova-api', 'nova-metadata', 'nova-conductor',
             'nova-scheduler', 'nova-serialproxy'], mode=0o600,
            owner=nova_user)
    # nova-compute's own file, root's: its privsep daemons read it
    # through sudo as root, so nova may read it, not write it.
    _config(layout.compute_conf(),
            configs.nova_conf(secrets, compute=True, computes=computes),
            ['nova-compute'], mode=0o640, owner=(0, nova_user[1]))
    _copy_paste_ini('nova', 'api-paste.ini', ['nova-api', 'nova-metadata'])
    for name, app in (('nova-api', 'nova.wsgi.osapi_compute:application'),
                      ('nova-metadata', 'nova.wsgi.metadata:application')):
        _config(layout.etc(name, 'gunicorn.conf.py'),
                configs.gunicorn_conf(name, app, layout.PORTS[name]), [name])
    # The driver's directories are novalxc-prepare-host's (nova_compute).
    util.makedirs(layout.state('nova-compute'), 0o755)
    util.makedirs(layout.state('nova-compute', 'locks'), 0o700, nova_user)
    util.chown_tree(layout.state('nova-compute', 'locks'), nova_user)
    manage = [layout.venv_bin('nova-manage'), '--config-file', conf]
    version = _version('nova')
    _once('nova-api-db-sync', version, [manage + ['api_db', 'sync']],
          'nova-manage')
    if not util.marker_done('nova-cells'):
        util.run(manage + ['cell_v2', 'map_cell0'], log='nova-manage')
        cells = util.run(manage + ['cell_v2', 'list_cells'],
                         capture=True).stdout
        if ' cell1 ' not in cells:
            util.run(manage + ['cell_v2', 'create_cell', '--name', 'cell1'],
                     log='nova-manage')
        util.mark_done('nova-cells')
    _once('nova-db-sync', version, [manage + ['db', 'sync']], 'nova-manage')
    for name in ('nova-api', 'nova-metadata', 'nova-conductor',
                 'nova-scheduler', 'nova-serialproxy'):
        launch(name)


def nova_compute(secrets, computes=1):
    """nova-compute with compute_driver = novalxc.LXCDriver.

    Boots scheduled before nova-compute has finished init_host go to
    ERROR: wait until it consumes its RPC queue, map the host into cell1
    and wait until its hypervisor is listed and up. With two computes,
    compute 2's metadata agent and nova-compute too.
    """
    names = ['nova-compute']
    if computes > 1:
        names += ['neutron-ovn-metadata-agent-2', 'nova-compute-2']
    compute_user(computes)
    start(*names)
    for host in [layout.NOVA_HOST] + (
            [layout.C2_HOST] if computes > 1 else []):
        _compute_in_api(secrets, host)


def compute_user(computes=1):
    """What nova-compute needs to run as layout.COMPUTE_USER (issue 14).

    A sudoers rule that lets it start exactly its privsep daemons
    (privsep-helper with its own nova-cpu.conf, one of its contexts and
    oslo.privsep's socket: layout.privsep_sudoers_command), and the
    driver's directories of each compute,
    made and given by novalxc-prepare-host as an operator would run it;
    Nova's own state (the node's compute_id) the user's too.
    """
    owner = _owner(layout.COMPUTE_USER)
    nodes = (1, 2) if computes > 1 else (1,)
    rule = ', '.join(layout.privsep_sudoers_command(
        layout.compute_conf(node), layout.COMPUTE_PRIVSEP_PYPATHS)
        for node in (1, 2))
    if util.write_file(layout.COMPUTE_SUDOERS, '%s ALL=(root) NOPASSWD: '
                       '%s\n' % (layout.COMPUTE_USER, rule), 0o440):
        util.run(['visudo', '-c', '-q', '-f', layout.COMPUTE_SUDOERS])
    for node in nodes:
        util.run([layout.venv_bin('novalxc-prepare-host'), '--user',
                  layout.COMPUTE_USER, '--config-file',
                  layout.compute_conf(node)], log='nova-compute')
    util.chown_tree(layout.state('nova'), owner)
    if computes > 1:
        util.chown_tree(os.path.join(layout.C2_STATE, 'nova'), owner)


def fake_compute(secrets, on):
    """The fake-driver compute (layout.FAKE_HOST), or its stop.

    Nova refuses to start a compute a second time without its node
    identity file (compute_id in its state_path), which only drivers
    that call nova.virt.node write; the fake driver does not, so it is
    written here with the UUID layout.FAKE_DRIVER reports for its node.
    Stopped, its service stays in Nova, disabled at once: Nova would
    take service_down_time (60 s) to see it down, and the scheduler could
    place a server there meanwhile. It is enabled again before it starts.
    """
    if not on:
        if os.path.exists(layout.FAKE_COMPUTE_FILE):
            os.unlink(layout.FAKE_COMPUTE_FILE)
        # Disabled while it runs: Nova tells the compute (an RPC call),
        # which would wait rpc_response_timeout (60 s) for a stopped one.
        _fake_service_enabled(secrets, False)
        for name, pid in sorted(procs.stop('nova-compute-fake').items()):
            util.say('stopped %s (pid %d): no --fake-compute', name, pid)
        return
    state = os.path.join(layout.FAKE_STATE, 'nova')
    owner = _owner(layout.COMPUTE_USER)
    util.makedirs(layout.FAKE_ETC, 0o711)
    for path in (state, os.path.join(state, 'locks')):
        util.makedirs(path, 0o700, owner)
    compute_id = os.path.join(state, 'compute_id')
    if not os.path.exists(compute_id):
        util.write_file(compute_id, '%s\n' % uuid.uuid5(
            uuid.NAMESPACE_DNS, layout.FAKE_HOST))
    _config(os.path.join(layout.FAKE_ETC, 'nova-cpu.conf'),
            configs.nova_conf(secrets, compute=True, fake=True),
            ['nova-compute-fake'], mode=0o600, owner=owner)
    util.chown_tree(state, owner)
    util.write_file(layout.FAKE_COMPUTE_FILE, '1\n')
    # Enabled before it starts: Nova then skips its RPC to a compute it
    # sees down, and the compute clears the COMPUTE_STATUS_DISABLED trait
    # of its resource provider itself at start. Enabled just after the
    # start, the API still saw it down, and the trait (which keeps the
    # scheduler away) stayed until its next periodic update, a minute.
    _fake_service_enabled(secrets, True)
    start('nova-compute-fake')
    _compute_in_api(secrets, layout.FAKE_HOST)


def _fake_service_enabled(secrets, enabled):
    """Enable or disable the fake compute's service in Nova (if any)."""
    s = api.Session('admin', secrets['admin'], 'admin')
    found = s.get('compute', '/os-services?binary=nova-compute&host=%s'
                  % layout.FAKE_HOST)['services']
    status = 'enabled' if enabled else 'disabled'
    for service in found:
        if service['status'] == status:
            continue
        body = {'status': status}
        if not enabled:
            body['disabled_reason'] = 'novalxc-aio: up without --fake-compute'
        s.call('PUT', 'compute', '/os-services/%s' % service['id'], body)
        util.say('%s %s in Nova', status, layout.FAKE_HOST)


def _compute_in_api(secrets, host):
    """Map host into cell1, wait for its hypervisor up in the API."""
    # Map the host into cell1; the scheduler cannot place servers on an
    # unmapped host. The mapping lives in the API database.

    def mapped():
        return _sql('SELECT COUNT(*) FROM nova_api.host_mappings '
                    "WHERE host = '%s'" % host) != '0'

    def discover():
        if mapped():
            return True
        util.run([layout.venv_bin('nova-manage'), '--config-file',
                  layout.etc('nova', 'nova.conf'), 'cell_v2',
                  'discover_hosts'], log='nova-manage')
        return mapped()
    util.wait_for('host %s mapped to cell1' % host, discover, 60,
                  interval=2)
    s = api.Session('admin', secrets['admin'], 'admin')

    def hypervisor_up():
        # The list, not detail: detail asks the driver for the host's uptime.
        hvs = s.get('compute', '/os-hypervisors')['hypervisors']
        return any(h['hypervisor_hostname'] == host and
                   h['state'] == 'up' and h['status'] == 'enabled'
                   for h in hvs)
    util.wait_for('hypervisor %s up in the Nova API' % host,
                  hypervisor_up, 120, interval=1)


def wait_apis():
    """Wait for the services the functions above started without waiting."""
    for name in ('glance', 'placement', 'neutron',
                 'neutron-ovn-metadata-agent', 'nova-api', 'nova-metadata',
                 'nova-conductor', 'nova-scheduler', 'nova-serialproxy'):
        _wait(name)
        util.say('%s answers', name)
