"""The container's NICs: Nova's VIFs plugged on the host, one veth pair each.

For each VIF of network_info the driver makes a veth pair. Its host end
takes the VIF's devname (``tapXXXXXXXX-XX``) and is plugged into the VIF's
bridge; its container end (``nlx`` + port id while on the host) carries the
port's MAC and MTU and becomes ethN in the container: a ``phys`` NIC that
LXC moves in at each start and gives back to the host at each stop
(spec.NicSpec). The pair, its bridge port and its settings so outlive
container restarts; they go when the VIF is unplugged.

- vif_type ``ovs`` (Neutron ML2/OVN and ML2/OVS): os-vif's ``ovs`` plugin
  adds the host end to the bridge (br-int) with the external_ids Neutron
  binds by (iface-id, attached-mac, iface-status=active, vm-uuid), as
  libvirt does for its taps; with ``ovs_hybrid_plug`` it makes the per-port
  Linux bridge qbr... linked to br-int, and the host end joins qbr. On a
  userspace (netdev) datapath the container end checksums in software
  (netdev.disable_tx_checksum), or TCP stalls.
- vif_type ``bridge``: the host end joins the Linux bridge named by the
  network, which must exist. Nova 34 and os-vif 5 dropped their Linux
  bridge support, so this is plain netlink (privsep.netdev).

Anything else (vhostuser, direct, macvtap, ...) is refused with
InvalidInput before anything is made.

The veth pairs are made, plugged and moved by the privileged entry points
of novalxcdriver.privsep.netdev (CAP_NET_ADMIN); this module decides what
to do and runs unprivileged. os-vif is set up once per process (_setup):
its privileged calls run in its own privsep daemon, as in any deployment;
when nova-compute runs as root with no ``[vif_plug_ovs_privileged]
helper_command``, that daemon is started without sudo
(privsep.root_helper_command_opt). Its OVSDB calls, and ours through
its OVSDB library (a leftover port's removal), run in nova-compute:
``[os_vif_ovs] ovsdb_connection`` defaults to the local ovsdb-server's
socket instead of os-vif's tcp:127.0.0.1:6640.
"""

import os
import re
import threading
import time

from nova import exception as nova_exc
from nova.network import model as network_model
from nova.network import os_vif_util
import os_vif
from os_vif import objects as osv_objects
from oslo_config import cfg
from oslo_log import log as logging
from pyroute2 import NetlinkError
from vif_plug_ovs import ovs as vif_plug_ovs
from vif_plug_ovs.ovsdb import ovsdb_lib
from vif_plug_ovs import privsep as vif_plug_privsep

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import privsep
from novalxcdriver.privsep import lxcconf
from novalxcdriver.privsep import netdev
from novalxcdriver import spec as spec_mod

CONF = conf.CONF
LOG = logging.getLogger(__name__)

OVSDB_CONNECTION = 'unix:/run/openvswitch/db.sock'
# Network MTU when Neutron gives none (os-vif's network_device_mtu).
DEFAULT_MTU = 1500
KINDS = {
    network_model.VIF_TYPE_OVS: 'ovs',
    network_model.VIF_TYPE_BRIDGE: 'bridge',
}
PEER_PREFIX = lxcconf.PEER_PREFIX
# Interface names: IFNAMSIZ - 1 characters, no '/', ':' or blanks.
# Seconds vif.settle waits for the kernel to delete dying pairs, and polls.
SETTLE_TIMEOUT = 10
SETTLE_POLL = 0.05
# ovn-controller's marks on an OVS interface whose flows it installed
# (ovn_installed), and how often a start looks for them (seconds).
OVN_INSTALLED = 'ovn-installed'
OVN_INSTALLED_TS = 'ovn-installed-ts'
OVN_POLL = 0.02
_IFNAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,15}\Z')
_MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z')

_setup_lock = threading.Lock()
_setup_done = False
# (ovsdb_connection, ovsdb_interface) -> os-vif's OVSDB API (_ovsdb).
_ovsdb_apis = {}


# -- the description: pure ------------------------------------------------

def nic_for(vif, index, name=None):
    """The NicSpec of one Nova VIF.

    :param vif: nova.network.model.VIF.
    :param index: its lxc.net index; it is ethN with N = index unless
        name is given.
    :raises InvalidInput: a vif_type or vnic_type this driver cannot plug,
        or a VIF without a usable MAC, device name or bridge.
    """
    port_id = vif['id']
    vif_type = vif['type']
    vnic_type = vif.get('vnic_type') or network_model.VNIC_TYPE_NORMAL
    if vif_type not in KINDS or vnic_type != network_model.VNIC_TYPE_NORMAL:
        raise nova_exc.InvalidInput(
            reason='novalxcdriver cannot plug port %s of vif_type %r '
                   '(vnic_type %r): it plugs vif_type %s with vnic_type '
                   'normal' % (port_id, vif_type, vnic_type,
                               ' or '.join(sorted(KINDS))))
    network = vif['network'] or network_model.Network()
    host_dev = (vif.get('devname') or
                ('tap' + port_id)[:network_model.NIC_NAME_LEN])
    nic = spec_mod.NicSpec(
        index=index,
        name=name or 'eth%d' % index,
        mac=(vif['address'] or '').lower(),
        mtu=int(network.get_meta('mtu') or DEFAULT_MTU),
        host_dev=host_dev,
        peer_dev=(PEER_PREFIX + port_id)[:network_model.NIC_NAME_LEN],
        kind=KINDS[vif_type],
        bridge=network['bridge'] or '',
        port_id=port_id)
    if not _MAC_RE.match(nic.mac):
        raise nova_exc.InvalidInput(
            reason='port %s has no usable MAC address: %r'
                   % (port_id, vif['address']))
    for what, dev in (('device', nic.host_dev), ('bridge', nic.bridge)):
        if not _IFNAME_RE.match(dev):
            raise nova_exc.InvalidInput(
                reason='port %s: %r cannot be a network %s name'
                       % (port_id, dev, what))
    return nic


def nics_for(network_info):
    """NicSpecs of every VIF of network_info, eth0, eth1, ... in order.

    :raises InvalidInput: as nic_for, for the first VIF refused.
    """
    return tuple(nic_for(vif, i) for i, vif in enumerate(network_info or ()))


def free_name(nics):
    """The first ethN that none of nics is named."""
    names = {nic.name for nic in nics}
    n = 0
    while 'eth%d' % n in names:
        n += 1
    return 'eth%d' % n


def neutron_events(network_info):
    """Events to wait for before the container starts (libvirt's rule).

    Only VIFs known to be down get a network-vif-plugged event: a VIF up
    already, or of unknown state, will not undergo the transition.

    :returns: list of (event name, port id).
    """
    return [('network-vif-plugged', vif['id'])
            for vif in network_info or ()
            if vif.get('active', True) is False]


def ovn_bound(vif):
    """Whether Neutron's ML2/OVN bound the VIF, plugged straight into OVS.

    The binding's vif_details name the mechanism drivers that bound it
    (neutron-lib portbindings.VIF_DETAILS_BOUND_DRIVERS, by level); OVN
    never asks for a hybrid plug.
    """
    details = vif.get('details') or {}
    drivers = details.get('bound_drivers') or {}
    return (vif['type'] == network_model.VIF_TYPE_OVS and
            not vif.is_hybrid_plug_enabled() and
            isinstance(drivers, dict) and 'ovn' in drivers.values())


def _on_userspace_ovs(vif):
    return (vif['type'] == network_model.VIF_TYPE_OVS and
            (vif.get('details') or {}).get(
                network_model.VIF_DETAILS_OVS_DATAPATH_TYPE) ==
            network_model.VIF_DETAILS_OVS_DATAPATH_NETDEV)


# -- the host ---------------------------------------------------------------

def link_exists(dev):
    """Whether network device dev exists in the host's namespace."""
    return os.path.exists(os.path.join('/sys/class/net', dev))


def register_opts(conf=CONF):
    """os-vif's [os_vif_ovs] options, with the local OVSDB as default.

    Registered before os-vif loads its plugin, which reads the connection
    then (and registers the same options again, harmlessly).
    """
    # The options' own default (cfg.set_defaults), which survives
    # CONF.reset(), unlike CONF.set_default.
    cfg.set_defaults(vif_plug_ovs.OvsPlugin.CONFIG_OPTS,
                     ovsdb_connection=OVSDB_CONNECTION)
    conf.register_opts(vif_plug_ovs.OvsPlugin.CONFIG_OPTS,
                       group='os_vif_ovs')


register_opts()


def _setup():
    """Load os-vif's plugins once; see the module's docstring."""
    global _setup_done
    _root_helper_default()
    with _setup_lock:
        if _setup_done:
            return
        # nova-compute (nova.cmd.compute) loads the plugins before it loads
        # this driver, so its ovs plugin read ovsdb_connection before
        # register_opts gave it our default: load them again.
        os_vif.initialize(reset=True)
        _setup_done = True


def _ovsdb():
    """os-vif's OVSDB API for [os_vif_ovs] as configured now.

    One per connection and interface, made at first use: the native
    interface connects and keeps a thread reading the database.
    """
    group = CONF.os_vif_ovs
    key = (group.ovsdb_connection, group.ovsdb_interface)
    with _setup_lock:
        if key not in _ovsdb_apis:
            _ovsdb_apis[key] = ovsdb_lib.BaseOVS(group).ovsdb
        return _ovsdb_apis[key]


def _root_helper_default():
    """os-vif's daemon started without sudo when root; see the module.

    Set at each use rather than once: a default does not survive
    CONF.reset() (the tests' config fixture).
    """
    if (os.geteuid() == 0 and
            not CONF.vif_plug_ovs_privileged.helper_command):
        CONF.set_default('helper_command',
                         privsep.root_helper_command_opt(CONF),
                         group='vif_plug_ovs_privileged')


def start_daemons():
    """Start os-vif's privsep daemon, if not started yet.

    As privsep.start_daemons does for the driver's own (why: there).

    :raises: what oslo.privsep's start raises (e.g. FailedToDropPrivileges,
        OSError).
    """
    # Not _setup: os-vif's plugins read [os_vif_ovs] when loaded, which
    # the first plug does.
    _root_helper_default()
    context = vif_plug_privsep.vif_plug
    # Not in client mode, its entry points run in this process.
    if context.client_mode and context.channel is None:
        context.start()


def ovn_installed(vifs, since, timeout, poll=OVN_POLL):
    """Port ids of vifs whose flows ovn-controller installed here.

    ovn-controller sets external_ids:ovn-installed="true" on a port's OVS
    interface once its flows (security groups included) are in place,
    with Port_Binding.up in the southbound database, from which Neutron's
    ML2/OVN reports the port up and Nova hears network-vif-plugged
    (ovn-controller(8); ovn-installed-ts in ms since the epoch, which
    the OVN of Debian 12, 23.03, sets; an OVN that sets no stamp never
    ends the wait). Only marks set since the plug count: a row left by
    an earlier plug of the same name must not pass.

    :param vifs: nova.network.model.VIFs plugged into OVS (ovn_bound).
    :param since: time.time() before the plug (seconds).
    :param timeout: seconds to wait for all of them.
    :returns: set of the port ids whose interface was marked in time.
    """
    pending = {nic_for(v, 0).host_dev: v['id'] for v in vifs}
    since_ms = int(since * 1000)
    installed = set()
    deadline = time.monotonic() + timeout
    while True:
        for dev, port_id in list(pending.items()):
            if _marked_installed(dev, since_ms):
                installed.add(port_id)
                del pending[dev]
        if not pending or time.monotonic() >= deadline:
            return installed
        time.sleep(poll)


def installed_events(instance, network_info, events, since, timeout):
    """The awaited events of VIFs OVN has installed on this host.

    ovn-controller marks a port's OVS interface installed (ovn_installed)
    with the southbound change from which Neutron reports the port up;
    Neutron's network-vif-plugged then reaches Nova about a second later,
    held by its batching of events to Nova (send_events_interval).

    :param events: the (name, port id) pairs the start waits for.
    :param since: time.time() before the plug (seconds).
    :param timeout: seconds to wait for the marks; 0 waits for none.
    :returns: the pairs of events whose VIFs were marked in time: their
        wait may end (list; empty if none).
    """
    awaited = {tag for _name, tag in events}
    vifs = [v for v in network_info if v['id'] in awaited and ovn_bound(v)]
    if not (timeout > 0 and vifs):
        return []
    installed = ovn_installed(vifs, since, timeout)
    if not installed:
        LOG.info('OVN did not mark %s installed within %s s; waiting for '
                 'Neutron\'s network-vif-plugged',
                 sorted(v['id'] for v in vifs), timeout,
                 instance=instance)
        return []
    LOG.info('OVN installed the flows of %s on this host; not waiting for '
             'Neutron\'s network-vif-plugged of them', sorted(installed),
             instance=instance)
    return [(name, tag) for name, tag in events if tag in installed]


def _marked_installed(dev, since_ms):
    try:
        ids = _ovsdb().db_get('Interface', dev, 'external_ids').execute(
            check_error=True)
    except Exception as e:
        # ovsdbapp's errors have no common base (a row not there yet).
        LOG.debug('Cannot read the external_ids of %s: %s', dev, e)
        return False
    try:
        stamp = int(ids.get(OVN_INSTALLED_TS, ''))
    except ValueError:
        return False
    return ids.get(OVN_INSTALLED) == 'true' and stamp >= since_ms


def _osvif_vif(vif):
    """os-vif's object for an ovs VIF (os_vif_util), to be plugged here."""
    obj = os_vif_util.nova_to_osvif_vif(vif)
    profile = obj.port_profile
    if 'create_tap' in profile.fields:
        # The host end is our veth, never a tap of os-vif's (which it
        # refuses for hybrid plugs anyway).
        profile.create_tap = False
    if isinstance(obj, osv_objects.vif.VIFOpenVSwitch):
        # What libvirt does for <virtualport type='openvswitch'>: the host
        # end goes on the bridge with the external_ids Neutron looks for.
        profile.create_port = True
    return obj


def plug(instance, vif):
    """Make the VIF's veth pair if missing and plug its host end.

    Idempotent: an existing pair is plugged again (after a host reboot or
    a restart that lost it, Nova's plug_vifs).

    :param instance: nova.objects.Instance the VIF belongs to.
    :param vif: nova.network.model.VIF.
    :returns: the VIF's NicSpec (index 0).
    :raises InvalidInput: the VIF is refused (nic_for).
    :raises VirtualInterfacePlugException: plugging failed; what this call
        made is removed.
    """
    nic = nic_for(vif, 0)
    made = not link_exists(nic.host_dev)
    try:
        if made:
            netdev.add_veth(nic.host_dev, nic.peer_dev, nic.mac, nic.mtu)
            if _on_userspace_ovs(vif):
                netdev.disable_tx_checksum(nic.peer_dev)
        if nic.kind == 'bridge':
            if not link_exists(nic.bridge):
                raise nova_exc.VirtualInterfacePlugException(
                    'port %s: Linux bridge %s does not exist on this host'
                    % (nic.port_id, nic.bridge))
            netdev.set_master(nic.host_dev, nic.bridge)
        else:
            _setup()
            obj = _osvif_vif(vif)
            os_vif.plug(obj, os_vif_util.nova_to_osvif_instance(instance))
            if isinstance(obj, osv_objects.vif.VIFBridge):
                # Hybrid plug: qbr... stands between us and br-int.
                netdev.set_master(nic.host_dev, obj.bridge_name)
        netdev.set_up(nic.host_dev)
    except Exception as e:
        LOG.error('Plugging port %s (%s) failed: %s', nic.port_id,
                  nic.host_dev, e, instance=instance)
        if made:
            unplug(instance, vif, ignore_errors=True)
        if isinstance(e, nova_exc.NovaException):
            raise
        raise nova_exc.VirtualInterfacePlugException(
            'port %s (%s): %s' % (nic.port_id, nic.host_dev, e)) from e
    return nic


def unplug(instance, vif, ignore_errors=False):
    """Unplug the VIF's host end and delete its veth pair. Idempotent.

    A VIF that plug refuses has nothing to unplug.

    :raises VirtualInterfaceUnplugException: unless ignore_errors.
    """
    try:
        nic = nic_for(vif, 0)
    except nova_exc.InvalidInput:
        return
    errors = []
    if nic.kind == 'ovs':
        try:
            _setup()
            os_vif.unplug(_osvif_vif(vif),
                          os_vif_util.nova_to_osvif_instance(instance))
        except Exception as e:
            errors.append(e)
    # The pair goes even when os-vif failed: it is ours, not os-vif's.
    try:
        if link_exists(nic.host_dev):
            netdev.delete_veth(nic.host_dev)
    except Exception as e:
        errors.append(e)
    if errors:
        reason = '; '.join(str(e) for e in errors)
        LOG.warning('Unplugging port %s (%s) failed: %s', nic.port_id,
                    nic.host_dev, reason, instance=instance)
        if not ignore_errors:
            raise nova_exc.VirtualInterfaceUnplugException(
                reason='port %s (%s): %s' % (nic.port_id, nic.host_dev,
                                             reason))


def remove_leftovers(nics):
    """Delete what is left of nics' pairs and OVS ports; never raises.

    For a container destroyed without its network_info: its config still
    names each host end (spec.parse_nics).
    """
    for nic in nics:
        try:
            if nic.kind == 'ovs':
                _setup()
                _ovsdb().del_port(nic.host_dev, if_exists=True).execute(
                    check_error=True)
        except Exception as e:
            # ovsdbapp's errors have no common base; the veth goes anyway.
            LOG.warning('Cannot remove the OVS port %s of port %s: %s',
                        nic.host_dev, nic.port_id, e)
        try:
            if link_exists(nic.host_dev):
                netdev.delete_veth(nic.host_dev)
        except (exception.NovaLXCError, OSError, NetlinkError) as e:
            LOG.warning('Cannot remove %s of port %s: %s', nic.host_dev,
                        nic.port_id, e)


def names_in(pid):
    """Network device names in the network namespace of process pid.

    From /proc/PID/net/dev (proc(5)); empty when pid is gone.
    """
    try:
        with open('/proc/%d/net/dev' % pid) as f:
            lines = f.readlines()[2:]
    except OSError:
        return set()
    return {line.split(':', 1)[0].strip() for line in lines}


def settle(nics, pid=None, timeout=SETTLE_TIMEOUT):
    """Wait for the kernel to delete pairs that died with a container.

    A NIC's container end that LXC does not give back when the container
    stops (one attached after its start) dies with its network namespace,
    and the kernel deletes the pair, host end included, some time after
    lxc-stop returned (cleanup_net runs from a workqueue). Until then the
    host end looks alive: plugging it would fail, or start a container
    whose NIC then vanishes. A pair is dying when its container end is
    neither on the host nor, if pid is given (the container's init after
    LXC restarted it), in pid's network namespace.

    :param nics: the container's NicSpecs (its config's).
    :param pid: None when the container is stopped.
    :param timeout: seconds to wait for all of them; a pair still there
        then is deleted (its container end is lost anyway).
    :returns: the NicSpecs that were dying.
    """
    inside = names_in(pid) if pid is not None else set()
    dying = [nic for nic in nics
             if link_exists(nic.host_dev) and not link_exists(nic.peer_dev)
             and nic.name not in inside]
    deadline = time.monotonic() + timeout
    for nic in dying:
        while link_exists(nic.host_dev):
            if time.monotonic() >= deadline:
                LOG.warning('The veth pair of port %s (%s) outlived its '
                            'container\'s network namespace by %d s; '
                            'deleting it', nic.port_id, nic.host_dev,
                            timeout)
                try:
                    netdev.delete_veth(nic.host_dev)
                except (exception.NovaLXCError, NetlinkError) as e:
                    LOG.warning('Cannot delete %s: %s', nic.host_dev, e)
                break
            time.sleep(SETTLE_POLL)
    return dying


def hot_plug(pid, nic):
    """Move nic's container end into the running container of init pid.

    It takes its name there (ethN), the port's MAC and MTU, and goes up.
    """
    netdev.move_into(nic.peer_dev, pid, nic.name, nic.mac, nic.mtu)
