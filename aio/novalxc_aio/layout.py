"""Where everything of the all-in-one cloud lives, and on which port.

One place for paths, ports and names, so that ``up``, ``status``, ``down``
and ``clean`` agree on what belongs to the aio. Nothing here touches the
host.
"""

import os
import re
import socket

# aio/novalxc_aio/layout.py -> the repository root.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
AIO_DIR = os.path.join(REPO, 'aio')

PREFIX = '/opt/novalxc-aio'
VENV = os.path.join(PREFIX, 'venv')
VENV_BIN = os.path.join(VENV, 'bin')
ETC = '/etc/novalxc-aio'
STATE = '/var/lib/novalxc-aio'
LOGS = '/var/log/novalxc-aio'
RUN = '/run/novalxc-aio'
PIDS = os.path.join(RUN, 'pids')
SECRETS = os.path.join(STATE, 'secrets.json')
MARKERS = os.path.join(STATE, 'done')

# The driver's own paths: distinct from the functional tests'
# (/var/lib/novalxc-functional) and from a real deployment's defaults
# (/var/lib/novalxc), so the aio never touches their containers.
LXC_PATH = os.path.join(STATE, 'containers')
DRIVER_STATE = os.path.join(STATE, 'driver')
# Container ID reservations are the machine's (the uid ranges are): every
# driver of this machine, tests and each aio compute, shares one directory.
IDS_PATH = '/var/lib/novalxc/ids'

# Open vSwitch and OVN keep their standard run directories, so that
# ovs-vsctl, ovn-nbctl & co. work without options; their databases live
# in the aio state.
OVS_RUN = '/run/openvswitch'
OVN_RUN = '/run/ovn'

# Rootfs tarballs are built by tests/functional/rootfs_images.py into its
# cache (shared with the functional tests; built once per machine).
IMAGE_CACHE = os.environ.get('NOVALXC_TEST_CACHE',
                             '/var/cache/novalxcdriver-test')

HOST = '127.0.0.1'
# Nova's service host name and OVN's chassis name: the same, so that a port
# bound to this Nova host binds to this chassis.
NOVA_HOST = socket.gethostname()
# It also lands in SQL, OVS settings and queue names: plain names only.
if not re.match(r'^[A-Za-z0-9][A-Za-z0-9.-]*$', NOVA_HOST):
    raise SystemExit('novalxc-aio: unusual host name %r: set a plain host '
                     'name (letters, digits, dots, dashes)' % NOVA_HOST)
REGION = 'RegionOne'

PORTS = {
    'mariadb': 3306,
    'epmd': 4369,
    'rabbitmq': 5672,
    'ovn-nb': 6641,
    'ovn-sb': 6642,
    'keystone': 5000,
    'glance': 9292,
    'placement': 8778,
    'nova-api': 8774,
    # Nova's metadata API; the OVN metadata agent's haproxies forward to it.
    'nova-metadata': 8775,
    'neutron': 9696,
    # nova-serialproxy: websockets to the servers' serial consoles.
    'nova-serialproxy': 6083,
}


def url(service, path=''):
    return 'http://%s:%d%s' % (HOST, PORTS[service], path)


KEYSTONE_URL = url('keystone', '/v3')

# Databases and the MariaDB user that owns each.
DATABASES = {
    'keystone': 'keystone',
    'glance': 'glance',
    'placement': 'placement',
    'nova_api': 'nova',
    'nova': 'nova',
    'nova_cell0': 'nova',
    'neutron': 'neutron',
}

# The system user each OpenStack service's processes run as (issue 14's
# production shape): no uid 0, no capability, only its own files. The
# computes run as nova too, their root work done by the privsep daemons
# they start through sudo (COMPUTE_SUDOERS); the OVN metadata agents as
# neutron, theirs by their privsep daemons and, for the haproxies they
# start in the networks' namespaces, neutron-rootwrap (NEUTRON_SUDOERS).
SYSTEM_USERS = ('keystone', 'glance', 'placement', 'neutron', 'nova')
COMPUTE_USER = 'nova'
SERVICE_ACCOUNTS = {
    'nova-compute': COMPUTE_USER,
    'keystone': 'keystone',
    'glance': 'glance',
    'placement': 'placement',
    'neutron': 'neutron',
    'neutron-ovn-maintenance-worker': 'neutron',
    'neutron-ovn-metadata-agent': 'neutron',
    'nova-api': 'nova',
    'nova-metadata': 'nova',
    'nova-conductor': 'nova',
    'nova-scheduler': 'nova',
    'nova-serialproxy': 'nova',
}

# Compute 2 runs in its own network namespace (compute2.py): it drops to
# COMPUTE_USER itself, and runs only with "up --computes 2"; the
# fake-driver compute only with "up --fake-compute".
OPTIONAL_SERVICE_ACCOUNTS = {
    'nova-compute-2': COMPUTE_USER,
    'neutron-ovn-metadata-agent-2': 'neutron',
    'nova-compute-fake': COMPUTE_USER,
}

# The privsep contexts a compute's daemons run (the driver's and
# os-vif's), each started with "sudo privsep-helper --config-file
# <the compute's nova-cpu.conf>", which COMPUTE_SUDOERS allows, exactly.
PRIVSEP_CONTEXTS = ('novalxc_lxc_admin', 'novalxc_net_admin',
                    'novalxc_storage_admin', 'vif_plug_ovs_privileged',
                    'vif_plug_linux_bridge_privileged')
COMPUTE_SUDOERS = '/etc/sudoers.d/novalxc-aio-nova-compute'
# Their PrivContexts' Python paths (what --privsep_context names).
COMPUTE_PRIVSEP_PYPATHS = (
    'novalxcdriver.privsep.lxc_admin', 'novalxcdriver.privsep.net_admin',
    'novalxcdriver.privsep.storage_admin', 'vif_plug_ovs.privsep.vif_plug',
    'vif_plug_linux_bridge.privsep.vif_plug')
# Neutron's (neutron/privileged/__init__.py), for the metadata agents.
NEUTRON_PRIVSEP_PYPATHS = tuple('neutron.privileged.' + name for name in (
    'default', 'link_cmd', 'namespace_cmd', 'ovs_vsctl_cmd',
    'conntrack_cmd', 'dhcp_release_cmd'))

# The OVN metadata agents' root work: their privsep daemons ("sudo
# privsep-helper --config-file <the agent's file>") and the haproxy each
# starts in a network's namespace ("sudo neutron-rootwrap
# NEUTRON_ROOTWRAP_CONF ip netns exec ...", only the filters of
# NEUTRON_ROOTWRAP_FILTERS). Root's files, in root's directories: a
# file that sudo's commands read as root must not be the caller's.
NEUTRON_SUDOERS = '/etc/sudoers.d/novalxc-aio-neutron-metadata'
NEUTRON_ROOTWRAP_CONF = os.path.join(ETC, 'neutron', 'rootwrap.conf')
NEUTRON_ROOTWRAP_FILTERS = os.path.join(ETC, 'neutron', 'rootwrap.d')


def compute_conf(node=1):
    """nova-cpu.conf of compute node (1 or 2)."""
    return os.path.join(C2_ETC if node == 2 else etc('nova'),
                        'nova-cpu.conf')


def agent_conf(node=1):
    """ovn_metadata_agent.ini of compute node's OVN metadata agent."""
    return os.path.join(C2_ETC if node == 2 else etc('neutron'),
                        'ovn_metadata_agent.ini')


def privsep_helper_command(node=1, conf=None):
    """[<context>] helper_command of compute node's daemons (sudo).

    conf: the file the daemons read (default: the compute's).
    """
    return 'sudo %s --config-file %s' % (venv_bin('privsep-helper'),
                                         conf or compute_conf(node))


def privsep_sudoers_command(conf, pypaths):
    """A sudoers Cmnd: privsep-helper as oslo.privsep starts it, exactly.

    "privsep-helper --config-file conf --privsep_context <one of pypaths>
    --privsep_sock_path <mkdtemp()'s>/privsep.sock" and nothing more, as a
    regular expression over the arguments (sudoers(5), sudo 1.9.10 and
    later: "^...$"). A trailing "*" would let the caller add options of
    its own, and privsep-helper reads them as root: another
    --config-file, or --log-config-append, whose logging configuration
    is code. oslo.privsep's socket is in tempfile.mkdtemp()'s directory
    (the service's TMPDIR unset: /tmp). No "\\", ",", ":" or "=" in
    it, which sudoers would need escaped: "[.]" for a dot.
    """
    def literal(text):
        if not re.fullmatch(r'[A-Za-z0-9_./-]+', text):
            raise ValueError('not a plain path or name: %r' % text)
        return text.replace('.', '[.]')
    return ('%s ^--config-file %s --privsep_context (%s) '
            '--privsep_sock_path /tmp/tmp[a-z0-9_]+/privsep[.]sock$' % (
                venv_bin('privsep-helper'), literal(conf),
                '|'.join(literal(p) for p in pypaths)))


def neutron_root_helper():
    """[AGENT] root_helper of the OVN metadata agents."""
    return 'sudo %s %s' % (venv_bin('neutron-rootwrap'),
                           NEUTRON_ROOTWRAP_CONF)


# Users in Keystone's "service" project, one per service.
SERVICE_USERS = ('glance', 'placement', 'nova', 'neutron')

# Keystone catalog: service type -> (name, url).
CATALOG = {
    'image': ('glance', url('glance')),
    'placement': ('placement', url('placement')),
    'compute': ('nova', url('nova-api', '/v2.1')),
    'network': ('neutron', url('neutron')),
}

DEMO_PROJECT = 'demo'
DEMO_USER = 'demo'
CLOUD_ADMIN = 'novalxc-admin'
CLOUD_DEMO = 'novalxc-demo'
CLOUDS_YAML = os.path.join(ETC, 'clouds.yaml')

# Flavors without swap or ephemeral disks (the driver refuses both).
FLAVORS = (
    # id/name, MiB, vCPUs, root GiB
    ('lxc.tiny', 256, 1, 1),
    ('lxc.small', 1024, 1, 4),
)

# Glance image names of the busybox and Debian 12 rootfs tarballs.
BUSYBOX_IMAGE = 'busybox'
DEBIAN_IMAGE = 'debian-12'
# Debian 12 as a cloud image: cloud-init and sshd; its user is debian.
DEBIAN_CLOUD_IMAGE = 'debian-12-cloud'
DEBIAN_CLOUD_USER = 'debian'

# The demo project's tenant network (geneve, OVN native DHCP) and its
# security groups: "default" gets ICMP and SSH ingress from anywhere,
# NO_ICMP_GROUP only SSH (for isolation checks).
DEMO_NETWORK = 'demo-net'
DEMO_SUBNET = 'demo-subnet'
DEMO_CIDR = '10.0.0.0/24'
NO_ICMP_GROUP = 'no-icmp'
# A network the admin shares with every project (Tempest's servers boot
# on it when its validation logs in over SSH).
SHARED_NETWORK = 'shared-net'
SHARED_SUBNET = 'shared-subnet'
SHARED_CIDR = '10.1.0.0/24'
# The host reaches servers on these networks through a Neutron port of
# each, bound to this host: an OVS internal interface on br-int named
# HOST_ACCESS_PREFIX + the network ID's first 8 characters. No router:
# Debian 12's Open vSwitch (3.1) asserts in its userspace conntrack on
# NAT (conn_update_state) and dies, so no SNAT or floating IPs here.
HOST_ACCESS_PREFIX = 'nlxh'
HOST_ACCESS_OWNER = 'novalxc:host-access'

# The OVN metadata agent: its state (haproxy configs and PID files, the
# UNIX socket the haproxies forward to) and the namespaces it makes, one per
# network (ovnmeta-<network id>) with 169.254.169.254 in it.
METADATA_STATE = os.path.join(STATE, 'ovn-metadata')
METADATA_SOCKET = os.path.join(METADATA_STATE, 'metadata_proxy')
METADATA_NETNS_PREFIX = 'ovnmeta-'


def log_file(name):
    return os.path.join(LOGS, name + '.log')


def pid_file(name):
    return os.path.join(PIDS, name + '.pid')


def etc(*parts):
    return os.path.join(ETC, *parts)


def state(*parts):
    return os.path.join(STATE, *parts)


def venv_bin(name):
    return os.path.join(VENV_BIN, name)


# -- a second compute host (up --computes 2; aio/novalxc_aio/compute2.py) ----
#
# Compute 2 runs in the network namespace C2_NETNS with its own Open vSwitch
# (userspace datapath), ovn-controller (chassis C2_HOST), OVN metadata agent,
# sshd and nova-compute. Two veth pairs join it to the root namespace: one
# plain (control: my_ip, serial consoles, SSH), one whose ends are ports of
# each host's OVS bridge C2_UNDERLAY_BRIDGE carrying the geneve tunnel
# (OVS userspace tunnelling needs its local IP on an OVS bridge).
COMPUTES_FILE = os.path.join(ETC, 'computes')
C2_HOST = NOVA_HOST + '-2'
C2_NETNS = 'novalxc-c2'
C2_STATE = os.path.join(STATE, 'compute2')
C2_ETC = os.path.join(ETC, 'compute2')
C2_RUN = os.path.join(RUN, 'compute2')
C2_OVS_RUN = os.path.join(C2_RUN, 'openvswitch')
C2_LXC_PATH = os.path.join(C2_STATE, 'containers')
C2_DRIVER_STATE = os.path.join(C2_STATE, 'driver')
C2_METADATA_STATE = os.path.join(C2_STATE, 'ovn-metadata')
C2_METADATA_SOCKET = os.path.join(C2_METADATA_STATE, 'metadata_proxy')
# Control link: root end, namespace end, their addresses (/24).
C2_LINK = ('novalxc-c2a', 'novalxc-c2b')
C1_IP = '172.30.0.1'
C2_IP = '172.30.0.2'
# Tunnel underlay link: each end a port of C2_UNDERLAY_BRIDGE in its host.
C2_UNDERLAY_LINK = ('novalxc-t1', 'novalxc-t2')
C2_UNDERLAY_BRIDGE = 'br-nlxt'
C1_ENCAP_IP = '172.30.1.1'
C2_ENCAP_IP = '172.30.1.2'
# Root's SSH key for migrations between the computes, and the sshd config.
SSH_DIR = os.path.join(ETC, 'ssh')
SSH_CLIENT_CONFIG = '/etc/ssh/ssh_config.d/novalxc-aio.conf'
# The loopback ports compute 2's services reach through the relay.
C2_RELAYED = ('rabbitmq', 'keystone', 'glance', 'placement', 'nova-api',
              'nova-metadata', 'neutron', 'ovn-sb')


def computes():
    """How many compute hosts the last "up" made (1 or 2)."""
    try:
        with open(COMPUTES_FILE) as f:
            return int(f.read().strip() or 1)
    except (FileNotFoundError, ValueError):
        return 1


# -- a compute host with Nova's fake driver (up --fake-compute) ----------
#
# The floor of Nova's control plane for issue 16 goal 4 (bench/api_floor.py):
# one more nova-compute, in the root namespace like compute 1, with
# compute_driver = FAKE_DRIVER under its own host name FAKE_HOST, its own
# config directory and state (Nova looks for its node identity file,
# compute_id, in both). It has no OVN chassis, so only servers without a
# network (--nic none) can be built on it. Off unless "up --fake-compute"
# asked for it (FAKE_COMPUTE_FILE records that); a plain "up" stops it.
FAKE_COMPUTE_FILE = os.path.join(ETC, 'fake-compute')
FAKE_HOST = NOVA_HOST + '-fake'
FAKE_ETC = os.path.join(ETC, 'fake-compute.d')
FAKE_STATE = os.path.join(STATE, 'fake-compute')
# SmallFakeDriver's inventory (2 vCPUs, 8 GiB, 1 TiB) with a node UUID
# derived from the node name, uuid5(NAMESPACE_DNS, FAKE_HOST), so that it
# is the same at each start (FakeDriver's changes with each process).
FAKE_DRIVER = 'fake.PredictableNodeUUIDDriver'


def fake_compute():
    """True if the last "up" started the fake-driver compute."""
    return os.path.exists(FAKE_COMPUTE_FILE)
