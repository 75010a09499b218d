"""Tests for novalxcdriver.vif: NICs of Nova VIFs, with commands mocked.

Nova's own network model builds the VIFs and os_vif_util converts them for
real; os-vif's plug/unplug, the lxc module and the host's devices are
mocked.
"""

import sys
from unittest import mock

import fixtures
from nova import context as nova_context
from nova import exception as nova_exc
from nova.network import model as network_model
from nova import objects
from nova.tests.unit import fake_instance
import os_vif.objects
from oslo_config import cfg
from oslo_config import fixture as config_fixture
from oslotest import base
from pyroute2 import NetlinkError
from vif_plug_ovs import privsep as vif_plug_privsep  # noqa: F401 (its opts)

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import spec
from novalxcdriver import vif
from tests.unit import base as unit_base

PORT = '4e2a7b3c-5d6e-4f70-8192-a3b4c5d6e7f8'
PORT2 = '9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a'
NET = 'b1c2d3e4-0000-4000-8000-00000000000b'
INSTANCE = '0d7c2b1e-5a3f-4c9b-8e21-7f6a5b4c3d2e'


def network(bridge='br-int', mtu=1442):
    subnet = network_model.Subnet(
        cidr='10.0.0.0/24', gateway=network_model.IP('10.0.0.1'),
        ips=[network_model.FixedIP(address='10.0.0.5')])
    kwargs = {'mtu': mtu} if mtu else {}
    return network_model.Network(id=NET, bridge=bridge, label='tenant',
                                 subnets=[subnet], **kwargs)


def ovs_vif(port_id=PORT, active=False, datapath='netdev', hybrid=False,
            **kwargs):
    """A port as Neutron ML2/OVN binds it on a netdev br-int."""
    details = {
        network_model.VIF_DETAILS_PORT_FILTER: True,
        network_model.VIF_DETAILS_OVS_HYBRID_PLUG: hybrid,
        network_model.VIF_DETAILS_BRIDGE_NAME: 'br-int',
        network_model.VIF_DETAILS_OVS_DATAPATH_TYPE: datapath,
        network_model.VIF_DETAILS_OVS_CREATE_TAP: True,
    }
    values = dict(id=port_id, address='FA:16:3E:12:34:56',
                  network=network(), type=network_model.VIF_TYPE_OVS,
                  details=details, devname=('tap' + port_id)[:14],
                  ovs_interfaceid=port_id, active=active)
    values.update(kwargs)
    return network_model.VIF(**values)


def bridge_vif(port_id=PORT2, bridge='nlxtb1', mtu=1400, **kwargs):
    values = dict(id=port_id, address='fa:16:3e:aa:bb:cc',
                  network=network(bridge, mtu),
                  type=network_model.VIF_TYPE_BRIDGE,
                  devname=('tap' + port_id)[:14], active=True)
    values.update(kwargs)
    return network_model.VIF(**values)


class NicForTest(base.BaseTestCase):

    def test_ovs(self):
        nic = vif.nic_for(ovs_vif(), 2)
        self.assertEqual(spec.NicSpec(
            index=2, name='eth2', mac='fa:16:3e:12:34:56', mtu=1442,
            host_dev='tap4e2a7b3c-5d', peer_dev='nlx4e2a7b3c-5d',
            kind='ovs', bridge='br-int', port_id=PORT), nic)

    def test_bridge(self):
        nic = vif.nic_for(bridge_vif(), 0, name='eth3')
        self.assertEqual(('eth3', 'bridge', 'nlxtb1', 1400),
                         (nic.name, nic.kind, nic.bridge, nic.mtu))

    def test_defaults(self):
        nic = vif.nic_for(bridge_vif(devname=None, network=network(
            'br0', mtu=None)), 0)
        self.assertEqual('tap9f8e7d6c-5b', nic.host_dev)
        self.assertEqual(vif.DEFAULT_MTU, nic.mtu)

    def test_names_fit_ifnamsiz(self):
        nic = vif.nic_for(ovs_vif(), 0)
        self.assertLessEqual(len(nic.host_dev), 15)
        self.assertLessEqual(len(nic.peer_dev), 15)
        self.assertNotEqual(nic.host_dev, nic.peer_dev)

    def test_unsupported_types_refused(self):
        for vif_type in ('vhostuser', 'binding_failed', 'unbound', 'tap',
                         'macvtap', None):
            e = self.assertRaises(
                nova_exc.InvalidInput, vif.nic_for,
                ovs_vif(type=vif_type), 0)
            self.assertIn('vif_type %r' % vif_type, str(e))
            self.assertIn(PORT, str(e))

    def test_direct_vnic_refused(self):
        e = self.assertRaises(nova_exc.InvalidInput, vif.nic_for,
                              ovs_vif(vnic_type='direct'), 0)
        self.assertIn("vnic_type 'direct'", str(e))

    def test_bad_values_refused(self):
        for bad in (ovs_vif(address=None), ovs_vif(address='fa:16:3e'),
                    ovs_vif(devname='tap/../x'),
                    ovs_vif(devname='a-name-longer-than-15'),
                    bridge_vif(bridge=None), bridge_vif(bridge='br 0')):
            self.assertRaises(nova_exc.InvalidInput, vif.nic_for, bad, 0)

    def test_nics_for_in_order(self):
        nics = vif.nics_for([ovs_vif(), bridge_vif()])
        self.assertEqual([(0, 'eth0', PORT), (1, 'eth1', PORT2)],
                         [(n.index, n.name, n.port_id) for n in nics])
        self.assertEqual((), vif.nics_for(None))
        self.assertEqual((), vif.nics_for(network_model.NetworkInfo()))

    def test_free_name(self):
        nics = vif.nics_for([ovs_vif(), bridge_vif()])
        self.assertEqual('eth2', vif.free_name(nics))
        self.assertEqual('eth0', vif.free_name(nics[1:]))
        self.assertEqual('eth0', vif.free_name(()))


class NeutronEventsTest(base.BaseTestCase):

    def test_only_vifs_known_down(self):
        info = network_model.NetworkInfo([
            ovs_vif(PORT, active=False), ovs_vif(PORT2, active=True)])
        self.assertEqual([('network-vif-plugged', PORT)],
                         vif.neutron_events(info))

    def test_unknown_state_is_not_waited_for(self):
        v = ovs_vif()
        del v['active']
        self.assertEqual([], vif.neutron_events([v]))
        self.assertEqual([], vif.neutron_events(None))


def ovn_vif(port_id=PORT, **kwargs):
    """A port as ML2/OVN binds it (its binding names the driver)."""
    v = ovs_vif(port_id, **kwargs)
    v['details']['bound_drivers'] = {'0': 'ovn'}
    return v


class OvnBoundTest(base.BaseTestCase):

    def test_bound_by_ovn(self):
        self.assertTrue(vif.ovn_bound(ovn_vif()))

    def test_not_bound_by_ovn(self):
        agent = ovs_vif()
        agent['details']['bound_drivers'] = {'0': 'openvswitch'}
        hybrid = ovn_vif(hybrid=True)
        bridge = bridge_vif()
        bridge['details'] = {'bound_drivers': {'0': 'ovn'}}
        odd = ovs_vif()
        odd['details']['bound_drivers'] = ['ovn']
        for v in (ovs_vif(), agent, hybrid, bridge, odd):
            self.assertFalse(vif.ovn_bound(v), v)


class _HostBase(unit_base.TestCase):
    """lxc, os-vif and the host's devices mocked."""

    def setUp(self):
        super().setUp()
        objects.register_all()
        os_vif.objects.register_all()
        self.useFixture(config_fixture.Config(conf.CONF))
        self.context = nova_context.get_admin_context()
        self.instance = fake_instance.fake_instance_obj(
            self.context, uuid=INSTANCE, project_id='p1')
        # os-vif's OVSDB API (ovsdbapp): what leftovers' removal asks.
        self.ovsdb = self.patch('novalxcdriver.vif._ovsdb').return_value
        self.netdev = self.patch('novalxcdriver.vif.netdev', autospec=True)
        self.devices = {'br-int', 'nlxtb1'}
        self.netdev.add_veth.side_effect = (
            lambda host, peer, mac, mtu: self.devices.update((host, peer)))
        self.netdev.delete_veth.side_effect = self._delete
        self.patch('novalxcdriver.vif.link_exists',
                   side_effect=lambda dev: dev in self.devices)
        self.os_vif = self.patch('novalxcdriver.vif.os_vif')
        self.setup = self.patch('novalxcdriver.vif._setup')

    def _delete(self, dev):
        # A veth pair goes as a whole.
        self.devices -= {dev, 'nlx' + dev[3:]}

    def plugged_osvif(self):
        self.os_vif.plug.assert_called_once()
        obj, info = self.os_vif.plug.call_args.args
        self.assertEqual(INSTANCE, info.uuid)
        return obj


class PlugTest(_HostBase):

    def test_bridge(self):
        nic = vif.plug(self.instance, bridge_vif())
        self.assertEqual(vif.nic_for(bridge_vif(), 0), nic)
        self.assertEqual([
            mock.call.add_veth('tap9f8e7d6c-5b', 'nlx9f8e7d6c-5b',
                               'fa:16:3e:aa:bb:cc', 1400),
            mock.call.set_master('tap9f8e7d6c-5b', 'nlxtb1'),
            mock.call.set_up('tap9f8e7d6c-5b'),
        ], self.netdev.mock_calls)
        self.os_vif.plug.assert_not_called()

    def test_missing_bridge_fails_and_leaves_nothing(self):
        e = self.assertRaises(nova_exc.VirtualInterfacePlugException,
                              vif.plug, self.instance,
                              bridge_vif(bridge='nobr'))
        self.assertIn('Linux bridge nobr does not exist', str(e))
        self.assertEqual({'br-int', 'nlxtb1'}, self.devices)

    def test_ovs_on_userspace_datapath(self):
        vif.plug(self.instance, ovs_vif())
        self.setup.assert_called_once_with()
        self.assertEqual([
            mock.call.add_veth('tap4e2a7b3c-5d', 'nlx4e2a7b3c-5d',
                               'fa:16:3e:12:34:56', 1442),
            # The container end checksums in software (TCP on netdev).
            mock.call.disable_tx_checksum('nlx4e2a7b3c-5d'),
            mock.call.set_up('tap4e2a7b3c-5d'),
        ], self.netdev.mock_calls)
        obj = self.plugged_osvif()
        self.assertIsInstance(obj, os_vif.objects.vif.VIFOpenVSwitch)
        self.assertEqual('ovs', obj.plugin)
        self.assertEqual('tap4e2a7b3c-5d', obj.vif_name)
        self.assertEqual('br-int', obj.network.bridge)
        self.assertEqual(1442, obj.network.mtu)
        profile = obj.port_profile
        self.assertEqual(PORT, profile.interface_id)
        self.assertEqual('netdev', profile.datapath_type)
        # os-vif puts the port on br-int with Neutron's external_ids, on
        # our veth end, not a tap of its own (ovs_create_tap is ignored).
        self.assertTrue(profile.create_port)
        self.assertFalse(profile.create_tap)

    def test_ovs_on_kernel_datapath_keeps_offload(self):
        vif.plug(self.instance, ovs_vif(datapath='system'))
        self.netdev.disable_tx_checksum.assert_not_called()

    def test_hybrid_plug_joins_qbr(self):
        vif.plug(self.instance, ovs_vif(hybrid=True))
        obj = self.plugged_osvif()
        self.assertIsInstance(obj, os_vif.objects.vif.VIFBridge)
        self.assertFalse(obj.port_profile.create_tap)
        self.netdev.set_master.assert_called_once_with(
            'tap4e2a7b3c-5d', 'qbr4e2a7b3c-5d')

    def test_existing_pair_plugged_again(self):
        self.devices.update({'tap4e2a7b3c-5d', 'nlx4e2a7b3c-5d'})
        vif.plug(self.instance, ovs_vif())
        self.netdev.add_veth.assert_not_called()
        self.netdev.disable_tx_checksum.assert_not_called()
        self.os_vif.plug.assert_called_once()

    def test_os_vif_failure_leaves_nothing(self):
        self.os_vif.plug.side_effect = RuntimeError('ovsdb unreachable')
        e = self.assertRaises(nova_exc.VirtualInterfacePlugException,
                              vif.plug, self.instance, ovs_vif())
        self.assertIn('ovsdb unreachable', str(e))
        self.assertIn(PORT, str(e))
        self.os_vif.unplug.assert_called_once()
        self.assertEqual({'br-int', 'nlxtb1'}, self.devices)

    def test_failure_keeps_a_pair_it_did_not_make(self):
        self.devices.update({'tap4e2a7b3c-5d', 'nlx4e2a7b3c-5d'})
        self.os_vif.plug.side_effect = RuntimeError('boom')
        self.assertRaises(nova_exc.VirtualInterfacePlugException,
                          vif.plug, self.instance, ovs_vif())
        self.netdev.delete_veth.assert_not_called()
        self.os_vif.unplug.assert_not_called()

    def test_unsupported_type_makes_nothing(self):
        self.assertRaises(nova_exc.InvalidInput, vif.plug, self.instance,
                          ovs_vif(type='vhostuser'))
        self.assertEqual([], self.netdev.mock_calls + self.ovsdb.mock_calls)


class UnplugTest(_HostBase):

    def test_ovs(self):
        self.devices.update({'tap4e2a7b3c-5d', 'nlx4e2a7b3c-5d'})
        vif.unplug(self.instance, ovs_vif())
        self.os_vif.unplug.assert_called_once()
        obj = self.os_vif.unplug.call_args.args[0]
        self.assertEqual('tap4e2a7b3c-5d', obj.vif_name)
        self.netdev.delete_veth.assert_called_once_with('tap4e2a7b3c-5d')
        self.assertEqual({'br-int', 'nlxtb1'}, self.devices)

    def test_bridge(self):
        self.devices.update({'tap9f8e7d6c-5b', 'nlx9f8e7d6c-5b'})
        vif.unplug(self.instance, bridge_vif())
        self.os_vif.unplug.assert_not_called()
        self.netdev.delete_veth.assert_called_once_with('tap9f8e7d6c-5b')

    def test_idempotent(self):
        vif.unplug(self.instance, bridge_vif())
        self.netdev.delete_veth.assert_not_called()

    def test_unsupported_type_has_nothing_to_unplug(self):
        vif.unplug(self.instance, ovs_vif(type='binding_failed'))
        self.assertEqual([], self.netdev.mock_calls + self.ovsdb.mock_calls)
        self.os_vif.unplug.assert_not_called()

    def test_failure(self):
        self.os_vif.unplug.side_effect = RuntimeError('boom')
        e = self.assertRaises(nova_exc.VirtualInterfaceUnplugException,
                              vif.unplug, self.instance, ovs_vif())
        self.assertIn('boom', str(e))
        vif.unplug(self.instance, ovs_vif(), ignore_errors=True)

    def test_pair_deleted_when_os_vif_fails(self):
        self.devices.update({'tap4e2a7b3c-5d', 'nlx4e2a7b3c-5d'})
        self.os_vif.unplug.side_effect = RuntimeError('no ovsdb')
        e = self.assertRaises(nova_exc.VirtualInterfaceUnplugException,
                              vif.unplug, self.instance, ovs_vif())
        self.assertIn('no ovsdb', str(e))
        self.netdev.delete_veth.assert_called_once_with('tap4e2a7b3c-5d')
        self.assertEqual({'br-int', 'nlxtb1'}, self.devices)


class LeftoversTest(_HostBase):

    def test_removed_by_config_names(self):
        nics = vif.nics_for([ovs_vif(), bridge_vif()])
        self.devices.update({'tap4e2a7b3c-5d', 'tap9f8e7d6c-5b'})
        vif.remove_leftovers(nics)
        # From whichever bridge holds it; an error is an error.
        self.ovsdb.del_port.assert_called_once_with('tap4e2a7b3c-5d',
                                                    if_exists=True)
        self.ovsdb.del_port.return_value.execute.assert_called_once_with(
            check_error=True)
        self.assertEqual({'br-int', 'nlxtb1'}, self.devices)

    def test_never_raises(self):
        nics = vif.nics_for([ovs_vif(), bridge_vif()])
        self.devices.update({'tap4e2a7b3c-5d', 'tap9f8e7d6c-5b'})
        # ovsdbapp's errors share no base class.
        self.ovsdb.del_port.return_value.execute.side_effect = RuntimeError(
            'OVSDB Error: no such port')
        vif.remove_leftovers(nics)
        # The OVS port's veth goes all the same.
        self.assertEqual([mock.call('tap4e2a7b3c-5d'),
                          mock.call('tap9f8e7d6c-5b')],
                         self.netdev.delete_veth.call_args_list)
        self.netdev.delete_veth.reset_mock()
        self.devices.add('tap9f8e7d6c-5b')
        self.netdev.delete_veth.side_effect = NetlinkError(16, 'busy')
        vif.remove_leftovers(nics)
        self.netdev.delete_veth.side_effect = (
            exception.PrivilegedCallRefused(call='delete_veth', reason='no'))
        vif.remove_leftovers(nics)
        self.assertEqual(2, self.netdev.delete_veth.call_count)


class OvnInstalledTest(_HostBase):
    """ovn-controller's marks read from the Interface rows (ovsdbapp)."""

    SINCE = 1796630900.0   # time.time() before the plug

    def setUp(self):
        super().setUp()
        self.sleep = self.patch('time.sleep')
        # Each read: what the Interface row's external_ids are then.
        self.rows = {}
        self.reads = []
        self.ovsdb.db_get.side_effect = self._db_get

    def _db_get(self, table, name, column):
        self.assertEqual(('Interface', 'external_ids'), (table, column))
        self.reads.append(name)
        command = mock.Mock()
        values = self.rows.get(name)
        if isinstance(values, list):
            values = values.pop(0) if len(values) > 1 else values[0]
        if isinstance(values, Exception):
            command.execute.side_effect = values
        else:
            command.execute.return_value = values
        return command

    @staticmethod
    def marked(ms_after=0, flag='true'):
        return {'iface-id': PORT, 'ovn-installed': flag,
                'ovn-installed-ts': str(int(OvnInstalledTest.SINCE * 1000) +
                                        ms_after)}

    def test_waits_for_the_mark(self):
        dev = vif.nic_for(ovn_vif(), 0).host_dev
        # Not there yet, then there unmarked, then marked.
        self.rows[dev] = [RuntimeError('Cannot find Interface'),
                          {'iface-id': PORT}, self.marked(35)]
        self.assertEqual({PORT}, vif.ovn_installed([ovn_vif()], self.SINCE,
                                                   10))
        self.assertEqual([dev] * 3, self.reads)
        self.assertEqual(2, self.sleep.call_count)

    def test_a_mark_from_before_the_plug_does_not_count(self):
        dev = vif.nic_for(ovn_vif(), 0).host_dev
        for stale in (self.marked(-1), self.marked(5, flag='false'),
                      dict(self.marked(5), **{'ovn-installed-ts': 'x'}),
                      {'ovn-installed': 'true'}):
            self.rows[dev] = [stale]
            self.assertEqual(set(), vif.ovn_installed(
                [ovn_vif()], self.SINCE, 0))

    def test_some_marked_in_time(self):
        self.patch('time.monotonic', side_effect=[0, 0, 5, 11])
        first, second = ovn_vif(PORT), ovn_vif(PORT2)
        self.rows[vif.nic_for(first, 0).host_dev] = [self.marked(1)]
        self.rows[vif.nic_for(second, 0).host_dev] = [{}]
        self.assertEqual({PORT}, vif.ovn_installed([first, second],
                                                   self.SINCE, 10))
        # The marked one is not read again.
        self.assertEqual(1, self.reads.count(vif.nic_for(first, 0).host_dev))
        self.assertEqual(3, self.reads.count(vif.nic_for(second, 0).host_dev))

    def test_installed_events(self):
        info = network_model.NetworkInfo([
            ovn_vif(PORT, active=False), bridge_vif(PORT2)])
        events = [('network-vif-plugged', PORT),
                  ('network-vif-plugged', PORT2)]
        self.rows[info[0]['devname']] = [self.marked(2)]
        log = self.useFixture(fixtures.FakeLogger())
        self.assertEqual([('network-vif-plugged', PORT)],
                         vif.installed_events(self.instance, info, events,
                                              self.SINCE, 10))
        self.assertIn('OVN installed the flows of [%r]' % PORT, log.output)
        # Not waited for: no OVN VIF among the events, or no time.
        self.assertEqual([], vif.installed_events(
            self.instance, info, events[1:], self.SINCE, 10))
        self.assertEqual([], vif.installed_events(
            self.instance, info, events, self.SINCE, 0))
        self.assertEqual(1, len(self.reads))

    def test_none_marked(self):
        info = network_model.NetworkInfo([ovn_vif(PORT, active=False)])
        self.rows[info[0]['devname']] = [{}]
        log = self.useFixture(fixtures.FakeLogger())
        self.assertEqual([], vif.installed_events(
            self.instance, info, [('network-vif-plugged', PORT)],
            self.SINCE, 0.01))
        self.assertIn('OVN did not mark', log.output)


class OvsdbTest(unit_base.TestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        self.base_ovs = self.patch('novalxcdriver.vif.ovsdb_lib.BaseOVS')
        self.patch('novalxcdriver.vif._ovsdb_apis', new={})

    def test_one_api_per_connection(self):
        first = vif._ovsdb()
        self.assertIs(first, vif._ovsdb())
        self.base_ovs.assert_called_once_with(conf.CONF.os_vif_ovs)
        self.cfg.config(group='os_vif_ovs', ovsdb_connection='tcp:1.2.3.4:1')
        vif._ovsdb()
        self.assertEqual(2, self.base_ovs.call_count)


class HotPlugTest(_HostBase):

    def test_moved_named_and_up(self):
        nic = vif.nic_for(ovs_vif(), 1)
        vif.hot_plug(4242, nic)
        self.assertEqual([
            mock.call.move_into('nlx4e2a7b3c-5d', 4242, 'eth1',
                                'fa:16:3e:12:34:56', 1442),
        ], self.netdev.mock_calls)


class SetupTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cfg = self.useFixture(config_fixture.Config(conf.CONF))
        for target, value in (('novalxcdriver.vif._setup_done', False),):
            patcher = mock.patch(target, value)
            patcher.start()
            self.addCleanup(patcher.stop)
        patcher = mock.patch('novalxcdriver.vif.os_vif')
        self.os_vif = patcher.start()
        self.addCleanup(patcher.stop)
        # A default, which the config fixture does not reset.
        self.addCleanup(conf.CONF.set_default, 'helper_command', None,
                        group='vif_plug_ovs_privileged')

    def helper_command(self):
        return conf.CONF.vif_plug_ovs_privileged.helper_command

    def test_once_as_root_with_a_daemon_started_without_sudo(self):
        with mock.patch('os.geteuid', return_value=0):
            vif._setup()
            vif._setup()
        self.os_vif.initialize.assert_called_once_with(reset=True)
        self.assertEqual(vif.OVSDB_CONNECTION,
                         conf.CONF.os_vif_ovs.ovsdb_connection)
        # os-vif's privileged calls go to its own daemon (never in
        # nova-compute), which root starts with this Python, no sudo.
        self.assertEqual('%s -m oslo_privsep.daemon' % sys.executable,
                         self.helper_command())

    def test_default_set_again_after_a_conf_reset(self):
        with mock.patch('os.geteuid', return_value=0):
            vif._setup()
            conf.CONF.reset()
            conf.CONF.set_default('helper_command', None,
                                  group='vif_plug_ovs_privileged')
            self.assertIsNone(self.helper_command())
            vif._setup()
        self.assertIn('oslo_privsep.daemon', self.helper_command())
        self.os_vif.initialize.assert_called_once_with(reset=True)

    def test_helper_command_respected(self):
        vif._setup()  # registers the groups
        self.cfg.config(group='vif_plug_ovs_privileged',
                        helper_command='privsep-helper --x')
        with mock.patch('novalxcdriver.vif._setup_done', False), \
                mock.patch('os.geteuid', return_value=0):
            vif._setup()
        self.assertEqual('privsep-helper --x', self.helper_command())

    def test_not_root_uses_privsep_default(self):
        with mock.patch('os.geteuid', return_value=1000):
            vif._setup()
        # sudo privsep-helper, oslo.privsep's own default.
        self.assertIsNone(self.helper_command())

    def test_daemons_started_once(self):
        contexts = (vif.vif_plug_privsep.vif_plug,)
        for ctx in contexts:
            patcher = mock.patch.object(ctx, 'channel', None)
            patcher.start()
            self.addCleanup(patcher.stop)
            self.useFixture(fixtures.MockPatchObject(
                ctx, 'start', side_effect=lambda c=ctx: setattr(
                    c, 'channel', object())))
        with mock.patch('os.geteuid', return_value=0):
            vif.start_daemons()
            vif.start_daemons()
        for ctx in contexts:
            ctx.start.assert_called_once_with()
        # Started without sudo as root; os-vif's plugins not loaded yet:
        # they read [os_vif_ovs] at the first plug.
        self.assertIn('oslo_privsep.daemon', self.helper_command())
        self.os_vif.initialize.assert_not_called()

    def test_no_daemon_for_contexts_run_in_process(self):
        ctx = vif.privsep.net_admin
        self.useFixture(fixtures.MockPatchObject(ctx, 'start'))
        ctx.set_client_mode(False)
        self.addCleanup(ctx.set_client_mode, True)
        with mock.patch.object(vif.vif_plug_privsep.vif_plug, 'start'):
            vif.start_daemons()
        ctx.start.assert_not_called()

    def test_configured_connection_wins(self):
        vif._setup()
        self.cfg.config(group='os_vif_ovs', ovsdb_connection='tcp:1.2.3.4:1')
        self.assertEqual('tcp:1.2.3.4:1',
                         conf.CONF.os_vif_ovs.ovsdb_connection)


class PluginsLoadedFirstTest(base.BaseTestCase):
    """nova-compute loads os-vif's plugins before it loads the driver."""

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(conf.CONF))
        patcher = mock.patch('novalxcdriver.vif._setup_done', False)
        patcher.start()
        self.addCleanup(patcher.stop)
        opts = vif.vif_plug_ovs.OvsPlugin.CONFIG_OPTS
        self.addCleanup(cfg.set_defaults, opts,
                        ovsdb_connection=vif.OVSDB_CONNECTION)
        self.addCleanup(vif.os_vif.initialize, reset=True)
        # os-vif's own default, as when nova.cmd.compute initialises it.
        cfg.set_defaults(opts, ovsdb_connection='tcp:127.0.0.1:6640')
        vif.os_vif.initialize(reset=True)
        self.assertEqual('tcp:127.0.0.1:6640', self.ovs_plugin_connection())
        cfg.set_defaults(opts, ovsdb_connection=vif.OVSDB_CONNECTION)

    @staticmethod
    def ovs_plugin_connection():
        return vif.os_vif._EXT_MANAGER['ovs'].obj.ovsdb.connection

    def test_ovs_plugin_gets_the_local_socket(self):
        with mock.patch('os.geteuid', return_value=1000):
            vif._setup()
        self.assertEqual(vif.OVSDB_CONNECTION, self.ovs_plugin_connection())


class SettleTest(_HostBase):
    """Pairs that died with a stopped container's network namespace."""

    def setUp(self):
        super().setUp()
        self.nic = vif.nic_for(ovs_vif(), 1)
        self.sleep = self.patch('time.sleep')
        self.inside = self.patch('novalxcdriver.vif.names_in',
                                 return_value=set())

    def dying(self, polls):
        """The host end stays polls more checks, then the kernel is done."""
        self.devices.add(self.nic.host_dev)
        left = [polls]

        def exists(dev):
            if dev == self.nic.host_dev and left[0] == 0:
                self.devices.discard(dev)
            elif dev == self.nic.host_dev:
                left[0] -= 1
            return dev in self.devices
        vif.link_exists.side_effect = exists

    def test_waits_for_the_kernel_to_delete_a_dying_pair(self):
        self.dying(polls=5)
        self.assertEqual([self.nic], vif.settle([self.nic]))
        self.assertNotIn(self.nic.host_dev, self.devices)
        self.assertGreaterEqual(self.sleep.call_count, 3)
        self.netdev.delete_veth.assert_not_called()

    def test_deletes_one_that_outlives_the_timeout(self):
        self.dying(polls=10 ** 6)
        self.assertEqual([self.nic], vif.settle([self.nic], timeout=0))
        self.netdev.delete_veth.assert_called_once_with(self.nic.host_dev)

    def test_live_pairs_are_left_alone(self):
        both = vif.nic_for(bridge_vif(), 0)
        self.devices.update({both.host_dev, both.peer_dev})
        gone = self.nic  # neither end: plug makes it
        self.assertEqual([], vif.settle([both, gone]))
        self.sleep.assert_not_called()
        self.assertEqual([], self.netdev.mock_calls)

    def test_container_end_inside_the_running_container(self):
        self.devices.add(self.nic.host_dev)
        self.inside.return_value = {'lo', 'eth0', 'eth1'}
        self.assertEqual([], vif.settle([self.nic], pid=4242))
        self.inside.assert_called_once_with(4242)
        # Not inside the new init's namespace: it died with the old one.
        self.inside.return_value = {'lo', 'eth0'}
        self.dying(polls=1)
        self.assertEqual([self.nic], vif.settle([self.nic], pid=4242))


class NamesInTest(base.BaseTestCase):

    def test_names_from_proc_net_dev(self):
        dev = ('Inter-|   Receive |  Transmit\n'
               ' face |bytes    packets\n'
               '    lo:       0       0\n'
               '  eth0: 1234 5\n')
        with mock.patch('builtins.open',
                        mock.mock_open(read_data=dev)) as m:
            self.assertEqual({'lo', 'eth0'}, vif.names_in(7))
        m.assert_called_once_with('/proc/7/net/dev')

    def test_gone(self):
        self.assertEqual(set(), vif.names_in(2 ** 22 + 1))
