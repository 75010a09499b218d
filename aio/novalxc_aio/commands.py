"""The sub-commands: up, status, down, clean, openstack."""

import glob
import json
import os
import shutil
import signal
import time

from novalxc_aio import cloud
from novalxc_aio import compute2
from novalxc_aio import install
from novalxc_aio import layout
from novalxc_aio import procs
from novalxc_aio import services
from novalxc_aio import setup
from novalxc_aio import unprivileged
from novalxc_aio import util


def _require_root():
    if os.geteuid() != 0:
        raise util.AioError('run as root: the aio installs packages, runs '
                            'services and starts LXC containers')


def up(computes=1, fake_compute=False):
    """Install, configure and start the whole cloud; idempotent.

    computes: 2 adds a second compute host (compute2.py).
    fake_compute: True adds a compute host with Nova's fake driver
    (layout.FAKE_HOST; the floor of bench/api_floor.py); False stops it.
    """
    _require_root()
    if computes not in (1, 2):
        raise util.AioError('--computes: 1 or 2')
    t0 = time.monotonic()
    install.debian_packages()
    install.subordinate_ids()
    install.inotify_limits()
    if install.virtualenv():
        setup.restart_later(*services.PYTHON_SERVICES)
    if install.this_repo():
        setup.restart_later('nova-compute', 'nova-compute-2',
                            'nova-compute-fake')
    secrets = util.load_secrets()
    util.makedirs(layout.ETC, 0o755)
    util.makedirs(layout.LOGS, 0o755)
    if computes > 1 or os.path.exists(layout.COMPUTES_FILE):
        util.write_file(layout.COMPUTES_FILE, '%d\n' % computes)
    setup.system_users()
    setup.lxcfs()
    setup.mariadb(secrets)
    setup.rabbitmq(secrets)
    setup.openvswitch(computes)
    setup.ovn()
    setup.compute2(secrets, computes)
    setup.keystone(secrets)
    setup.identities(secrets)
    # These start their APIs without waiting, so that one service's
    # database sync overlaps with another's start-up.
    setup.glance(secrets)
    setup.placement(secrets)
    setup.neutron(secrets)
    setup.nova(secrets, computes)
    setup.wait_apis()
    setup.nova_compute(secrets, computes)
    setup.fake_compute(secrets, fake_compute)
    cloud.flavors(secrets)
    cloud.images(secrets)
    cloud.network(secrets)
    cloud.client_config(secrets)
    cloud.check_client()
    util.say('the cloud is up (%.0f s). Try:', time.monotonic() - t0)
    print('  . %s && openstack server list' % layout.etc('demo-openrc'))
    print('  %s demo' % os.path.join(layout.AIO_DIR, 'novalxc-aio'))
    print('  logs: %s/   configs: %s/' % (layout.LOGS, layout.ETC))
    return 0


def status():
    """Print each service, its PID and whether it answers.

    :returns: 0 if every service runs and answers, else 3.
    """
    rows = []
    healthy = True
    for service in services.all_services():
        pid = procs.recorded_pid(service.name)
        try:
            answers = bool(service.probe()) if pid or \
                service.name == 'lxcfs' else False
        except Exception:
            answers = False
        if pid:
            state = 'running'
        elif service.name == 'lxcfs' and answers:
            state = 'not ours'
        else:
            state = 'stopped'
            healthy = False
        healthy = healthy and answers
        rows.append((service.name, str(pid or '-'), state,
                     'yes' if answers else 'NO', service.where))
    widths = [max(len(r[i]) for r in rows + [_HEADER]) for i in range(4)]
    for row in [_HEADER] + rows:
        print('  '.join(c.ljust(w) for c, w in zip(row, widths)) +
              '  ' + row[4])
    print('logs: %s/<service>.log' % layout.LOGS)
    return 0 if healthy else 3


_HEADER = ('SERVICE', 'PID', 'STATE', 'ANSWERS', 'WHERE')


def down():
    """Stop what up started, by recorded PID, in reverse start order.

    The OpenStack services stop together (each takes seconds to finish
    cleanly); then OVN, Open vSwitch, RabbitMQ, MariaDB one by one. lxcfs
    stays if containers use it: stopping it would break their /proc.
    """
    _require_root()
    order = [s.name for s in services.all_services(computes=2, fake=True)]
    openstack = [n for n in reversed(order)
                 if n in services.PYTHON_SERVICES]
    # Also PID files of services this version no longer knows.
    tiers = [[n for n in procs.recorded_names() if n not in order],
             openstack]
    tiers += [[n] for n in reversed(order) if n not in openstack]
    for names in tiers:
        if names == ['lxcfs'] and procs.recorded_pid('lxcfs'):
            users = _lxcfs_users()
            if users:
                util.say('lxcfs left running: containers use it (pids %s)',
                         ' '.join(map(str, users)))
                continue
        for name, pid in sorted(procs.stop(*names).items()):
            util.say('stopped %s (pid %d)', name, pid)
    for pid in _stop_metadata_proxies():
        util.say('stopped metadata haproxy (pid %d)', pid)
    remaining = [n for n in procs.recorded_names()
                 if procs.recorded_pid(n) and n != 'lxcfs']
    if remaining:
        util.warn('still running: %s', ' '.join(remaining))
    return 1 if remaining else 0


def _metadata_proxies(states=(layout.METADATA_STATE,
                              layout.C2_METADATA_STATE)):
    """{PID file: PID} of the haproxies the OVN metadata agent runs.

    One per network, each in its ovnmeta- namespace. haproxy daemonizes
    into a session of its own, so stopping the agent does not stop them.
    A PID counts only if that process runs haproxy on a configuration of
    the agent's.
    """
    found = {}
    paths = []
    for state in states:
        paths += glob.glob(os.path.join(state, 'external', 'pids',
                                        '*.pid.haproxy'))
    for path in paths:
        try:
            with open(path) as f:
                pid = int(f.read().split()[0])
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                argv = f.read().decode(errors='replace').split('\0')
        except (OSError, ValueError, IndexError):
            continue
        if os.path.basename(argv[0]) == 'haproxy' and any(
                a.startswith(state + '/') for a in argv for state in states):
            found[path] = pid
    return found


def _stop_metadata_proxies(timeout=10, **kwargs):
    """SIGTERM the agents' haproxies; returns their PIDs."""
    found = _metadata_proxies(**kwargs)
    for path, pid in found.items():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while _metadata_proxies(**kwargs) and time.monotonic() < deadline:
        time.sleep(0.2)
    for path in found:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return sorted(found.values())


def _remove_metadata_namespaces():
    """The ovnmeta-<network> namespaces (and the veths in them)."""
    proc = util.run(['ip', 'netns', 'list'], check=False, capture=True)
    for line in proc.stdout.splitlines():
        name = line.split()[0] if line.split() else ''
        if name.startswith(layout.METADATA_NETNS_PREFIX):
            util.run(['ip', 'netns', 'delete', name], check=False,
                     capture=True)
            util.say('removed network namespace %s', name)


def _lxcfs_users():
    """PIDs in other mount namespaces with lxcfs mounts (containers)."""
    ours = os.readlink('/proc/self/ns/mnt')
    users = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            if os.readlink('/proc/%s/ns/mnt' % entry) == ours:
                continue
            with open('/proc/%s/mountinfo' % entry) as f:
                if 'lxcfs' in f.read():
                    users.append(int(entry))
        except OSError:
            continue
    return users


def clean(remove_venv=False):
    """down, then remove every bit of aio state (not the packages).

    Containers under the aio's lxc_path are killed and their root
    filesystems unmounted before anything is deleted: removing files
    through a mounted root would reach into the shared image.
    """
    _require_root()
    down()
    configs = []
    for lxc_path in (layout.LXC_PATH, layout.C2_LXC_PATH,
                     unprivileged.LXC_PATH):
        found = sorted(glob.glob(os.path.join(lxc_path, '*', 'config')))
        for config in found:
            name = os.path.basename(os.path.dirname(config))
            # lxc-stop reaches the monitor through an abstract socket of
            # the network namespace the container started in.
            netns = ['nsenter', '--net=/run/netns/' + layout.C2_NETNS,
                     '--'] if lxc_path == layout.C2_LXC_PATH and \
                compute2.netns_exists() else []
            util.run(netns + ['lxc-stop', '-k', '-P', lxc_path, '-n', name],
                     check=False, capture=True, timeout=60)
            util.say('killed container %s', name)
        configs += found
    _remove_veths(configs)
    # Compute 2's namespace (its VIFs' veths and ovnmeta namespaces go
    # with it), the links to it, the root's tunnel bridge.
    compute2.remove_network()
    for mountpoint in mounts_under(layout.STATE):
        util.run(['umount', mountpoint], check=False, capture=True)
    left = mounts_under(layout.STATE)
    if left:
        raise util.AioError('still mounted, not removing %s: %s' % (
            layout.STATE, ', '.join(left)))
    _remove_ovs_taps()
    _remove_metadata_namespaces()
    _remove_reservations()
    paths = [layout.STATE, layout.ETC, layout.LOGS]
    if procs.recorded_pid('lxcfs'):
        # down left it for containers that use it: keep its PID file.
        util.say('keeping %s: lxcfs still runs', layout.RUN)
    else:
        paths.append(layout.RUN)
    if remove_venv:
        paths.append(layout.PREFIX)
    for path in paths:
        if os.path.lexists(path):
            shutil.rmtree(path)
            util.say('removed %s', path)
    # They let the computes' user, the metadata agents' and the
    # unprivileged check's start root daemons.
    for sudoers in (layout.COMPUTE_SUDOERS, layout.NEUTRON_SUDOERS,
                    unprivileged.SUDOERS):
        if os.path.lexists(sudoers):
            os.unlink(sudoers)
            util.say('removed %s', sudoers)
    util.say('clean: packages and the image cache %s are kept',
             layout.IMAGE_CACHE)
    return 0


def _remove_reservations():
    """Remove the container ID reservations the aio's drivers hold.

    They live in the machine's directory (layout.IDS_PATH), shared with
    whatever else runs the driver here; each names its driver's
    state_path, which for the aio's is under layout.STATE.
    """
    top = os.path.realpath(layout.STATE) + '/'
    for owner in glob.glob(os.path.join(layout.IDS_PATH, '*',
                                        'owner.json')):
        try:
            with open(owner) as f:
                held_by = json.load(f).get('owner') or ''
        except (OSError, ValueError):
            continue
        if (held_by + '/').startswith(top):
            shutil.rmtree(os.path.dirname(owner))
            util.say('removed the reservation %s', os.path.dirname(owner))


# The driver's one reader of the NICs a container config names, run in the
# virtualenv (the driver is installed there): prints their host ends.
_HOST_DEVS = '\n'.join([
    'import sys',
    'from novalxcdriver import spec',
    'for path in sys.argv[1:]:',
    '    with open(path) as f:',
    '        print(*[nic.host_dev for nic in spec.parse_nics(f.read())])',
])


def _remove_veths(configs):
    """Delete the veth pairs of the containers whose configs are given.

    A container stopped outside Nova keeps its VIFs' pairs on the host (the
    driver unplugs them when Nova deletes the server).
    """
    python = layout.venv_bin('python')
    if not configs or not os.path.exists(python):
        return
    proc = util.run([python, '-c', _HOST_DEVS] + configs, check=False,
                    capture=True, timeout=120)
    if proc.returncode != 0:
        util.warn('cannot read the NICs of the containers: %s',
                  proc.stderr.strip()[-500:])
        return
    for dev in proc.stdout.split():
        if os.path.exists(os.path.join('/sys/class/net', dev)):
            util.run(['ip', 'link', 'delete', dev], check=False,
                     capture=True)
            util.say('removed veth pair %s', dev)


def _remove_ovs_taps():
    """The tap devices of the userspace datapath (br-int, ovs-netdev).

    ovs-vswitchd leaves them behind when it stops; with the aio's OVS
    database gone they belong to nothing. The host's own ports
    (cloud.host_access, nlxh<network>) too: left behind, each keeps a
    route to its network's subnet, which the next cloud's new network of
    the same subnet loses to (the kernel picks the stale, link-down one).
    """
    if services.process_running('ovs-vswitchd'):
        return
    host_access = [d for d in os.listdir('/sys/class/net')
                   if d.startswith(layout.HOST_ACCESS_PREFIX)]
    for dev in ['br-int', 'ovs-netdev', layout.C2_UNDERLAY_BRIDGE] + \
            host_access:
        if os.path.exists('/sys/class/net/%s/tun_flags' % dev):
            util.run(['ip', 'link', 'delete', dev], check=False,
                     capture=True)
            util.say('removed tap device %s', dev)


def mounts_under(top):
    """Mount points below top, deepest first (mountinfo(5) field 5)."""
    found = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            point = line.split()[4].replace('\\040', ' ')
            if point.startswith(top.rstrip('/') + '/'):
                found.append(point)
    return sorted(set(found), key=lambda p: (-p.count('/'), p))


def openstack(args):
    """Run the venv's openstack CLI with the aio's clouds.yaml.

    OS_CLOUD defaults to the demo user; pass --os-cloud novalxc-admin for
    the admin.
    """
    env = dict(os.environ)
    env['OS_CLIENT_CONFIG_FILE'] = layout.CLOUDS_YAML
    env.setdefault('OS_CLOUD', layout.CLOUD_DEMO)
    argv = [layout.venv_bin('openstack')] + list(args)
    os.execve(argv[0], argv, env)
