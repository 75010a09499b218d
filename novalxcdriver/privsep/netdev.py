"""Privileged entry points for the NICs' veth pairs (``net_admin`` context).

Each runs in the privsep daemon, through netlink (pyroute2's IPRoute and
Ethtool), and first checks its arguments there: names must be interface
names (IFNAMSIZ - 1 characters of [A-Za-z0-9_.-], netdevice(7)), a device
to change or delete must be a veth (so the host's own NICs, bridges and
tunnels are out of reach), a master must be a Linux bridge, a pid must be
a process in another network namespace than the host's. A refusal raises
PrivilegedCallRefused and changes nothing; a netlink error comes back as
pyroute2's NetlinkError (its errno and message).

Link attributes are rtnetlink(7)'s; ``ethtool -K DEV tx off`` is what
disable_tx_checksum does, feature by feature (ethtool(8)).
"""

import os
import re

from pyroute2 import ethtool
from pyroute2 import IPRoute

from novalxcdriver import privsep

_IFNAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,15}\Z')
_CONTAINER_IFNAME_RE = re.compile(r'^eth[0-9]{1,4}\Z')
_MAC_RE = re.compile(r'^[0-9a-f][02468ace](:[0-9a-f]{2}){5}\Z')
MIN_MTU = 68  # IPv4's minimum (RFC 791); the veth driver's too.
MAX_MTU = 65535


def check_ifname(call, name, pattern=_IFNAME_RE):
    """Refuse name unless it is a network interface name (pattern)."""
    if not isinstance(name, str) or not pattern.match(name) or \
            name in ('.', '..'):
        privsep.refuse(call, '%r is not an interface name' % (name,))


def check_mac(call, mac):
    """Refuse mac unless it is a unicast MAC, lower case, colon separated."""
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        privsep.refuse(call, '%r is not a unicast MAC address' % (mac,))


def check_mtu(call, mtu):
    """Refuse mtu unless it is an int in [MIN_MTU, MAX_MTU] bytes."""
    if type(mtu) is not int or not MIN_MTU <= mtu <= MAX_MTU:
        privsep.refuse(call, 'MTU %r is not an integer from %d to %d'
                       % (mtu, MIN_MTU, MAX_MTU))


def check_pid(call, pid):
    """Refuse pid unless it is a live process outside our netns."""
    if type(pid) is not int or pid <= 1:
        privsep.refuse(call, 'pid %r is not a container process' % (pid,))
    try:
        theirs = os.stat('/proc/%d/ns/net' % pid).st_ino
    except OSError as e:
        privsep.refuse(call, 'pid %d: %s' % (pid, e.strerror))
    if theirs == os.stat('/proc/self/ns/net').st_ino:
        privsep.refuse(call, 'pid %d is in the host\'s network namespace'
                       % pid)


def _kind(link):
    info = link.get_attr('IFLA_LINKINFO')
    return info.get_attr('IFLA_INFO_KIND') if info is not None else None


def _index_of(ipr, call, dev, kind):
    """Index of dev, refused unless it exists and is of kind."""
    found = ipr.link_lookup(ifname=dev)
    if not found:
        privsep.refuse(call, 'no network device %s' % dev)
    (link,) = ipr.link('get', index=found[0])
    if _kind(link) != kind:
        privsep.refuse(call, '%s is not a %s device' % (dev, kind))
    return found[0]


@privsep.net_admin.entrypoint
def add_veth(host_dev, peer_dev, mac, mtu):
    """Make a veth pair, both ends down in the host's namespace.

    :param host_dev: the host end's name.
    :param peer_dev: the container end's name; it gets mac.
    :param mac: str, e.g. 'fa:16:3e:12:34:56'.
    :param mtu: int, bytes, both ends.
    :raises PrivilegedCallRefused: see the module.
    :raises NetlinkError: e.g. EEXIST when a name is taken.
    """
    call = 'add_veth'
    check_ifname(call, host_dev)
    check_ifname(call, peer_dev)
    check_mac(call, mac)
    check_mtu(call, mtu)
    with IPRoute() as ipr:
        ipr.link('add', ifname=host_dev, kind='veth', mtu=mtu,
                 peer={'ifname': peer_dev, 'address': mac, 'mtu': mtu})


@privsep.net_admin.entrypoint
def delete_veth(dev):
    """Delete veth dev, and with it its other end.

    :raises PrivilegedCallRefused: dev is not a veth (or is missing).
    """
    check_ifname('delete_veth', dev)
    with IPRoute() as ipr:
        ipr.link('del', index=_index_of(ipr, 'delete_veth', dev, 'veth'))


@privsep.net_admin.entrypoint
def set_master(dev, bridge):
    """Make veth dev a port of the Linux bridge named bridge.

    :raises PrivilegedCallRefused: dev is not a veth or bridge is not a
        Linux bridge.
    """
    call = 'set_master'
    check_ifname(call, dev)
    check_ifname(call, bridge)
    with IPRoute() as ipr:
        master = _index_of(ipr, call, bridge, 'bridge')
        ipr.link('set', index=_index_of(ipr, call, dev, 'veth'),
                 master=master)


@privsep.net_admin.entrypoint
def set_up(dev):
    """Set veth dev up (IFF_UP).

    :raises PrivilegedCallRefused: dev is not a veth.
    """
    check_ifname('set_up', dev)
    with IPRoute() as ipr:
        ipr.link('set', index=_index_of(ipr, 'set_up', dev, 'veth'),
                 state='up')


@privsep.net_admin.entrypoint
def disable_tx_checksum(dev):
    """Checksum what veth dev sends in software (ethtool -K DEV tx off).

    Every tx-checksum-* feature is turned off; the kernel then turns off
    the segmentation offloads that depend on them.

    :raises PrivilegedCallRefused: dev is not a veth.
    """
    check_ifname('disable_tx_checksum', dev)
    with IPRoute() as ipr:
        _index_of(ipr, 'disable_tx_checksum', dev, 'veth')
    with ethtool.Ethtool() as eth:
        features = eth.get_features(dev)
        for name, feature in features.features.items():
            if name.startswith('tx-checksum-'):
                feature.enable = False
        eth.set_features(dev, features)


@privsep.net_admin.entrypoint
def move_into(dev, pid, name, mac, mtu):
    """Move veth dev into the network namespace of process pid, and up.

    There it is renamed name (ethN) and given mac and mtu.

    :raises PrivilegedCallRefused: dev is not a veth, pid is not a process
        in another network namespace, or name is not ethN.
    """
    call = 'move_into'
    check_ifname(call, dev)
    check_pid(call, pid)
    check_ifname(call, name, _CONTAINER_IFNAME_RE)
    check_mac(call, mac)
    check_mtu(call, mtu)
    with IPRoute() as ipr:
        ipr.link('set', index=_index_of(ipr, call, dev, 'veth'),
                 net_ns_pid=pid, ifname=name)
    # pyroute2 opens the netlink socket in a child that setns(2)s there.
    # Given a path it would list /proc/PID/ns first, which is the
    # container root's 0500 directory: an fd needs search permission only.
    nsfd = os.open('/proc/%d/ns/net' % pid, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute(netns=nsfd) as ipr:
            (index,) = ipr.link_lookup(ifname=name)
            ipr.link('set', index=index, address=mac, mtu=mtu, state='up')
    finally:
        os.close(nsfd)
