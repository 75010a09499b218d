"""NICs of real containers: Linux bridge and Open vSwitch ports (as root).

Each test makes its own bridges, named after this process (nlxtb<pid>,
nlxtc<pid>, nlxtd<pid>, nlxto<pid>) on addresses of the benchmarking range
198.18/15, and removes them; the hot-plug DHCP test runs a dnsmasq of its
own on its bridge alone. The Open vSwitch test needs a running ovs-vswitchd
with its database at /run/openvswitch/db.sock (the all-in-one cloud's, or
the Debian service's; NOVALXC_TEST_OVSDB names another); it adds a
userspace (netdev) bridge of its own beside br-int and never touches
anything else.
"""

import os
import socket
import subprocess
import threading
import time
from unittest import mock
import uuid

import fixtures
from nova.compute import manager as compute_manager
from nova import exception as nova_exc
from nova.network import model as network_model
from nova import objects
from oslo_config import fixture as config_fixture

from novalxcdriver import conf
from novalxcdriver import vif as vif_mod
from tests.functional import base
from tests.functional import rootfs_images

CONF = conf.CONF
OVSDB = os.environ.get('NOVALXC_TEST_OVSDB', vif_mod.OVSDB_CONNECTION)


def run(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def links():
    """Names of the host's network devices (set)."""
    out = run('ip', '-o', 'link', 'show').stdout
    return {line.split(':')[1].strip().split('@')[0]
            for line in out.splitlines()}


def ovs_running():
    """Whether an ovs-vswitchd runs and OVSDB answers."""
    if not any(_comm(pid) == 'ovs-vswitchd' for pid in os.listdir('/proc')
               if pid.isdigit()):
        return False
    try:
        return run('ovs-vsctl', '--db=' + OVSDB, '--timeout=5', 'show',
                   check=False).returncode == 0
    except FileNotFoundError:
        return False


def _comm(pid):
    try:
        with open('/proc/%s/comm' % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def make_vif(vif_type, bridge, mtu=1400, **kwargs):
    port_id = str(uuid.uuid4())
    mac = 'fa:16:3e:%02x:%02x:%02x' % tuple(os.urandom(3))
    subnet = network_model.Subnet(
        cidr='198.18.0.0/15', ips=[network_model.FixedIP(address='0.0.0.0')])
    network = network_model.Network(
        id=str(uuid.uuid4()), bridge=bridge, label='test',
        subnets=[subnet], mtu=mtu)
    return network_model.VIF(
        id=port_id, address=mac, network=network, type=vif_type,
        devname=('tap' + port_id)[:14], active=True, **kwargs)


def ovs_vif(bridge, mtu=1442, hybrid=False):
    """A port as Neutron ML2/OVN binds it on a userspace datapath.

    hybrid: as ML2/OVS with its iptables firewall binds it instead.
    """
    return make_vif(
        network_model.VIF_TYPE_OVS, bridge, mtu,
        details={network_model.VIF_DETAILS_PORT_FILTER: True,
                 network_model.VIF_DETAILS_OVS_HYBRID_PLUG: hybrid,
                 network_model.VIF_DETAILS_BRIDGE_NAME: bridge,
                 network_model.VIF_DETAILS_OVS_DATAPATH_TYPE: 'netdev',
                 network_model.VIF_DETAILS_OVS_CREATE_TAP: True})


class _NetworkingBase(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.image_id = self.busybox_image()
        self.tag = os.getpid()

    def addr(self, subnet, host):
        # A /24 of 198.18/15 of this process's own: concurrent test
        # processes must not put one address on two bridges.
        return '198.18.%d.%d' % ((self.tag % 60) * 4 + subnet, host)

    def linux_bridge(self, prefix, address):
        name = '%s%d' % (prefix, self.tag)
        run('ip', 'link', 'add', name, 'type', 'bridge')
        self.addCleanup(run, 'ip', 'link', 'delete', name, check=False)
        run('ip', 'link', 'set', name, 'up')
        run('ip', 'addr', 'add', address + '/24', 'dev', name)
        return name

    def spawn_with(self, network_info, power_on=True):
        instance = self.make_instance()
        self.driver.spawn(self.ctxt, instance, self.image_meta(self.image_id),
                          [], None, {}, network_info=network_info,
                          power_on=power_on)
        return instance

    def sh(self, instance, script, check=True):
        return self.attach(instance.name, '/bin/sh', '-c', script,
                           check=check)

    def nic_inside(self, instance, name):
        """(MAC, MTU) of the container's NIC name."""
        out = self.sh(instance, 'cat /sys/class/net/%s/address '
                                '/sys/class/net/%s/mtu' % (name, name))
        mac, mtu = out.stdout.split()
        return mac, int(mtu)

    def names_inside(self, instance):
        out = self.sh(instance, 'ls /sys/class/net').stdout.split()
        return sorted(n for n in out if n != 'lo')

    def ping(self, instance, nic, address, target):
        self.sh(instance, 'busybox ip addr add %s/24 dev %s' % (address, nic))
        result = self.sh(instance, 'busybox ping -c 1 -W 5 ' + target,
                         check=False)
        self.assertEqual(0, result.returncode, result.stdout + result.stderr)

    def assert_unplugged(self, vif, bridge=None):
        """No end of vif's pair is left, nor a port of it on bridge."""
        ends = {vif['devname'], (vif_mod.PEER_PREFIX + vif['id'])[:14]}
        self.assertEqual(set(), ends & links())
        if bridge:
            self.assertEqual(
                [], os.listdir('/sys/class/net/%s/brif' % bridge))


class LinuxBridgeTest(_NetworkingBase):

    def setUp(self):
        super().setUp()
        self.bridge = self.linux_bridge('nlxtb', self.addr(1, 1))

    def test_nic_on_linux_bridge(self):
        vif = make_vif('bridge', self.bridge, mtu=1400)
        instance = self.spawn_with([vif])
        nic = vif_mod.nic_for(vif, 0)
        # eth0 inside, with the port's MAC and MTU; the host end on the
        # bridge, named after the VIF.
        self.assertEqual(['eth0'], self.names_inside(instance))
        self.assertEqual((vif['address'], 1400),
                         self.nic_inside(instance, 'eth0'))
        self.assertEqual([nic.host_dev],
                         os.listdir('/sys/class/net/%s/brif' % self.bridge))
        self.assertNotIn(nic.peer_dev, links())
        self.ping(instance, 'eth0', self.addr(1, 2), self.addr(1, 1))

        # A stop hands the container end back; a start takes it again.
        self.driver.power_off(instance)
        self.assertIn(nic.peer_dev, links())
        self.driver.power_on(self.ctxt, instance, [vif])
        self.assertEqual((vif['address'], 1400),
                         self.nic_inside(instance, 'eth0'))
        self.ping(instance, 'eth0', self.addr(1, 2), self.addr(1, 1))

        self.driver.destroy(self.ctxt, instance, [vif])
        self.assert_unplugged(vif, self.bridge)

    def test_destroy_without_network_info_leaves_nothing(self):
        vif = make_vif('bridge', self.bridge)
        instance = self.spawn_with([vif])
        self.driver.destroy(self.ctxt, instance, [])
        self.assert_unplugged(vif, self.bridge)

    def test_missing_bridge_fails_boot_cleanly(self):
        vif = make_vif('bridge', 'nlxtx%d' % self.tag)
        instance = self.make_instance()
        e = self.assertRaises(
            nova_exc.VirtualInterfacePlugException, self.driver.spawn,
            self.ctxt, instance, self.image_meta(self.image_id), [], None,
            {}, network_info=[vif])
        self.assertIn('does not exist', str(e))
        self.assertFalse(self.driver.instance_exists(instance))
        self.assertIsNone(self.driver._ids.find(instance.uuid))
        self.assert_unplugged(vif, self.bridge)

    def test_unsupported_vif_type_fails_boot_cleanly(self):
        vif = make_vif('vhostuser', self.bridge)
        instance = self.make_instance()
        e = self.assertRaises(
            nova_exc.InvalidInput, self.driver.spawn, self.ctxt, instance,
            self.image_meta(self.image_id), [], None, {},
            network_info=[vif])
        self.assertIn("vif_type 'vhostuser'", str(e))
        self.assertFalse(self.driver.instance_exists(instance))
        self.assertIsNone(self.driver._ids.find(instance.uuid))
        self.assert_unplugged(vif, self.bridge)

    def test_hot_plug_and_unplug(self):
        second = self.linux_bridge('nlxtc', self.addr(3, 1))
        first = make_vif('bridge', self.bridge)
        instance = self.spawn_with([first])
        vif = make_vif('bridge', second, mtu=1300)
        nic = vif_mod.nic_for(vif, 1)

        self.driver.attach_interface(self.ctxt, instance, None, vif)
        self.assertEqual(['eth0', 'eth1'], self.names_inside(instance))
        self.assertEqual((vif['address'], 1300),
                         self.nic_inside(instance, 'eth1'))
        self.assertEqual([nic.host_dev],
                         os.listdir('/sys/class/net/%s/brif' % second))
        self.ping(instance, 'eth1', self.addr(3, 2), self.addr(3, 1))

        # A soft reboot (LXC restarts init with the NICs it started with)
        # and a hard one keep it.
        for reboot_type in ('SOFT', 'HARD'):
            self.driver.reboot(self.ctxt, instance, [first, vif],
                               reboot_type)
            self.assertEqual(['eth0', 'eth1'], self.names_inside(instance),
                             reboot_type)
            self.assertEqual((vif['address'], 1300),
                             self.nic_inside(instance, 'eth1'))
            self.ping(instance, 'eth1', self.addr(3, 2), self.addr(3, 1))

        self.driver.detach_interface(self.ctxt, instance, vif)
        self.assertEqual(['eth0'], self.names_inside(instance))
        self.assert_unplugged(vif, second)
        # Gone from the config too: a restart does not bring it back.
        self.driver.power_off(instance)
        self.driver.power_on(self.ctxt, instance, [first])
        self.assertEqual(['eth0'], self.names_inside(instance))

        self.driver.destroy(self.ctxt, instance, [first])
        self.assert_unplugged(first, self.bridge)

    def test_attach_to_stopped_container(self):
        first = make_vif('bridge', self.bridge)
        instance = self.spawn_with([first], power_on=False)
        vif = make_vif('bridge', self.bridge)
        self.driver.attach_interface(self.ctxt, instance, None, vif)
        self.driver.power_on(self.ctxt, instance, [first, vif])
        self.assertEqual(['eth0', 'eth1'], self.names_inside(instance))
        self.assertEqual(vif['address'],
                         self.nic_inside(instance, 'eth1')[0])
        self.driver.destroy(self.ctxt, instance, [first, vif])
        self.assert_unplugged(first, self.bridge)
        self.assert_unplugged(vif)


class RebootFromInsideTest(_NetworkingBase):
    """A guest's own reboot keeps the NICs attached since its start."""

    # The driver learns of the restart from its state watcher.
    watch_interval = 0.2

    def setUp(self):
        super().setUp()
        self.bridge = self.linux_bridge('nlxtr', self.addr(2, 1))

    def test_hot_plugged_nic_back_after_reboot_from_inside(self):
        first = make_vif('bridge', self.bridge)
        instance = self.spawn_with([first])
        vif = make_vif('bridge', self.bridge, mtu=1300)
        self.driver.attach_interface(self.ctxt, instance, None, vif)
        self.assertEqual(['eth0', 'eth1'], self.names_inside(instance))
        # What Nova's database would give: the instance's network_info.
        self.useFixture(fixtures.MockPatchObject(
            self.driver, '_instance_and_network_info',
            return_value=(instance, [first, vif])))
        pid = self.lxc_pid(instance.name)

        # The attached shell dies with the rest (SIGTERM, 143).
        self.sh(instance, 'reboot', check=False)
        self.wait_for(lambda: self.lxc_state(instance.name) == 'RUNNING'
                      and self.lxc_pid(instance.name) not in (None, pid))
        self.wait_for(lambda: self.names_inside(instance) == ['eth0',
                                                              'eth1'])
        self.assertEqual((vif['address'], 1300),
                         self.nic_inside(instance, 'eth1'))
        # The NIC appears inside before the driver has set it up (CI once
        # pinged in between: "Network is unreachable").
        self.wait_for(lambda: int(self.sh(
            instance, 'cat /sys/class/net/eth1/flags').stdout, 16) & 1)
        self.ping(instance, 'eth1', self.addr(2, 3), self.addr(2, 1))

        self.driver.destroy(self.ctxt, instance, [first, vif])
        self.assert_unplugged(first, self.bridge)
        self.assert_unplugged(vif, self.bridge)


class OpenVSwitchTest(_NetworkingBase):
    """A port as ML2/OVN binds it, on a userspace bridge of our own."""

    def setUp(self):
        super().setUp()
        if not ovs_running():
            self.skipTest('ovs-vswitchd is not running, or its database '
                          'does not answer on %s' % OVSDB)
        self.useFixture(config_fixture.Config(CONF)).config(
            group='os_vif_ovs', ovsdb_connection=OVSDB)
        self.bridge = 'nlxto%d' % self.tag
        self.vsctl('add-br', self.bridge, '--', 'set', 'bridge',
                   self.bridge, 'datapath_type=netdev')
        self.addCleanup(self.vsctl, '--if-exists', 'del-br', self.bridge)
        # The bridge's internal port is the host's end of the network.
        base.require_root(self)
        self.wait_for(lambda: self.bridge in links(), timeout=10)
        run('ip', 'link', 'set', self.bridge, 'up')
        run('ip', 'addr', 'add', self.addr(2, 1) + '/24', 'dev', self.bridge)

    def vsctl(self, *args):
        return run('ovs-vsctl', '--db=' + OVSDB, '--timeout=30',
                   *args).stdout.strip()

    def external_ids(self, dev):
        out = self.vsctl('--', 'get', 'Interface', dev, 'external_ids')
        return dict(item.split('=', 1) for item in
                    out.strip('{}').replace('"', '').split(', ') if item)

    def tcp_from(self, instance, payload_kib=256):
        """Send payload_kib KiB by TCP from the container to the host."""
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind((self.addr(2, 1), 0))
        server.listen(1)
        server.settimeout(20)
        received = []

        def accept():
            conn, _addr = server.accept()
            conn.settimeout(20)
            with conn:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    received.append(len(data))

        thread = threading.Thread(target=accept)
        thread.start()
        result = self.sh(
            instance, 'busybox dd if=/dev/zero bs=1024 count=%d 2>/dev/null '
            '| busybox nc -w 10 %s %d' % (
                payload_kib, self.addr(2, 1), server.getsockname()[1]),
            check=False)
        thread.join(30)
        self.assertEqual(payload_kib * 1024, sum(received),
                         result.stdout + result.stderr)

    def test_nic_on_ovs_userspace_bridge(self):
        vif = ovs_vif(self.bridge)
        instance = self.spawn_with([vif])
        nic = vif_mod.nic_for(vif, 0)
        # The host end is the bridge's port, with what Neutron binds by.
        self.assertIn(nic.host_dev,
                      self.vsctl('list-ports', self.bridge).split())
        self.assertEqual({'iface-id': vif['id'],
                          'attached-mac': vif['address'],
                          'iface-status': 'active',
                          'vm-uuid': instance.uuid},
                         self.external_ids(nic.host_dev))
        self.assertEqual((vif['address'], 1442),
                         self.nic_inside(instance, 'eth0'))
        # Checksums in software on the container end: TCP works.
        pid = self.lxc_pid(instance.name)
        features = run('nsenter', '--target', str(pid), '--net', '--',
                       'ethtool', '-k', 'eth0').stdout
        self.assertIn('tx-checksumming: off', features)
        self.ping(instance, 'eth0', self.addr(2, 2), self.addr(2, 1))
        self.tcp_from(instance)

        self.driver.destroy(self.ctxt, instance, [vif])
        self.assertNotIn(nic.host_dev,
                         self.vsctl('list-ports', self.bridge).split())
        self.assert_unplugged(vif)

    def test_hot_plug_ovs_port(self):
        lb = self.linux_bridge('nlxtb', self.addr(1, 1))
        first = make_vif('bridge', lb)
        instance = self.spawn_with([first])
        vif = ovs_vif(self.bridge)
        nic = vif_mod.nic_for(vif, 1)
        self.driver.attach_interface(self.ctxt, instance, None, vif)
        self.assertEqual(['eth0', 'eth1'], self.names_inside(instance))
        self.assertEqual(vif['id'],
                         self.external_ids(nic.host_dev)['iface-id'])
        self.ping(instance, 'eth1', self.addr(2, 2), self.addr(2, 1))
        self.tcp_from(instance, payload_kib=64)

        self.driver.detach_interface(self.ctxt, instance, vif)
        self.assertEqual(['eth0'], self.names_inside(instance))
        self.assertNotIn(nic.host_dev,
                         self.vsctl('list-ports', self.bridge).split())
        self.assert_unplugged(vif)
        self.driver.destroy(self.ctxt, instance, [first])
        self.assert_unplugged(first, lb)

    def test_hybrid_plug(self):
        vif = ovs_vif(self.bridge, hybrid=True)
        instance = self.spawn_with([vif])
        nic = vif_mod.nic_for(vif, 0)
        short = vif['id'][:11]
        # os-vif's qbr bridge and qvb/qvo pair stand between the host end
        # and the OVS bridge, which has qvo with Neutron's external_ids.
        self.assertEqual(
            sorted([nic.host_dev, 'qvb' + short]),
            sorted(os.listdir('/sys/class/net/qbr%s/brif' % short)))
        self.assertEqual(vif['id'],
                         self.external_ids('qvo' + short)['iface-id'])
        self.ping(instance, 'eth0', self.addr(2, 2), self.addr(2, 1))
        self.tcp_from(instance, payload_kib=64)
        self.driver.destroy(self.ctxt, instance, [vif])
        self.assertEqual('', self.vsctl('list-ports', self.bridge))
        self.assertEqual(set(), {'qbr' + short, 'qvb' + short,
                                 'qvo' + short} & links())
        self.assert_unplugged(vif)

    def _waiting_virtapi(self):
        """Nova's own ComputeVirtAPI: a start waits for Neutron's events.

        With nova-compute's InstanceEvents; no Neutron here sends any.
        """
        virtapi = compute_manager.ComputeVirtAPI(
            mock.Mock(instance_events=compute_manager.InstanceEvents()))
        real = getattr(self.driver, '_driver', self.driver)
        self.useFixture(fixtures.MockPatchObject(real, 'virtapi', virtapi))
        return virtapi

    def _ovn_vif(self):
        vif = ovs_vif(self.bridge)
        vif['active'] = False
        vif['details']['bound_drivers'] = {'0': 'ovn'}
        return vif

    def test_ovn_installed_ends_the_wait(self):
        # What ovn-controller does once the port's flows are in place;
        # Neutron's network-vif-plugged never comes here, so without the
        # mark the start would fail after vif_plugging_timeout.
        self.flags_timeouts(vif_plugging=60)
        virtapi = self._waiting_virtapi()
        vif = self._ovn_vif()
        dev = vif_mod.nic_for(vif, 0).host_dev

        def ovn_controller():
            for _ in range(600):
                if self.external_ids_or_none(dev, 'iface-id') == vif['id']:
                    self.vsctl('set', 'Interface', dev,
                               'external_ids:ovn-installed="true"',
                               'external_ids:ovn-installed-ts="%d"'
                               % (time.time() * 1000))
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=ovn_controller)
        thread.start()
        self.addCleanup(thread.join)
        log = self.useFixture(fixtures.FakeLogger())
        instance = self.spawn_with([vif])
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.assertIn("OVN installed the flows of ['%s']" % vif['id'],
                      log.output)
        # Neutron's event, when it comes, is one Nova still expects.
        event = objects.InstanceExternalEvent(
            name='network-vif-plugged', tag=vif['id'], status='completed')
        self.assertIsNotNone(
            virtapi._compute.instance_events.pop_instance_event(instance,
                                                                event))
        self.ping(instance, 'eth0', self.addr(2, 2), self.addr(2, 1))
        self.driver.destroy(self.ctxt, instance, [vif])
        self.assert_unplugged(vif)

    def test_no_ovn_mark_waits_for_neutron(self):
        # No ovn-controller: the wait for Neutron's event goes on, and
        # times out as ever (vif_plugging_is_fatal), leaving nothing.
        self.flags_timeouts(vif_plugging=2, ovn_installed=1)
        self._waiting_virtapi()
        vif = self._ovn_vif()
        self.assertRaises(nova_exc.VirtualInterfaceCreateException,
                          self.spawn_with, [vif])
        self.assertEqual('', self.vsctl('list-ports', self.bridge))
        self.assert_unplugged(vif)

    def flags_timeouts(self, vif_plugging, ovn_installed=10):
        fixture = self.useFixture(config_fixture.Config(CONF))
        fixture.config(vif_plugging_timeout=vif_plugging)
        fixture.config(ovn_installed_timeout=ovn_installed, group='lxc')

    def external_ids_or_none(self, dev, key):
        result = run('ovs-vsctl', '--db=' + OVSDB, '--timeout=5',
                     '--if-exists', 'get', 'Interface', dev,
                     'external_ids:' + key, check=False)
        return result.stdout.strip().strip('"') or None

    def test_destroy_without_network_info_removes_ovs_port(self):
        vif = ovs_vif(self.bridge)
        instance = self.spawn_with([vif])
        self.driver.destroy(self.ctxt, instance, [])
        self.assertEqual('', self.vsctl('list-ports', self.bridge))
        self.assert_unplugged(vif)


class HotPlugDHCPTest(_NetworkingBase):
    """A NIC hot-plugged into a running guest gets its address by DHCP.

    As in a cloud image, the test images (rootfs_images, busybox with dhcp
    and Debian) configure each ethN by DHCP when it comes, without udevd.
    A dnsmasq of this test's own serves DHCP on a bridge of its own.
    """

    def setUp(self):
        super().setUp()
        self.bridge = self.linux_bridge('nlxtd', self.addr(0, 1))
        tmp = self.useFixture(fixtures.TempDir()).path
        self.leases = os.path.join(tmp, 'leases')
        self.dnsmasq_log = os.path.join(tmp, 'dnsmasq.log')
        # DHCP only (DNS off), bound to this test's bridge alone.
        dnsmasq = subprocess.Popen(
            ['dnsmasq', '--keep-in-foreground', '--conf-file=/dev/null',
             '--port=0', '--bind-interfaces', '--interface=' + self.bridge,
             '--except-interface=lo', '--pid-file=', '--no-ping',
             '--dhcp-range=%s,%s,255.255.255.0,1h' % (self.addr(0, 10),
                                                      self.addr(0, 250)),
             '--dhcp-leasefile=' + self.leases, '--log-dhcp',
             '--log-facility=' + self.dnsmasq_log])
        self.addCleanup(dnsmasq.wait, 10)
        self.addCleanup(dnsmasq.terminate)

    def leased(self, mac):
        """The address dnsmasq leased to mac, or None."""
        try:
            with open(self.leases) as f:
                for line in f:
                    fields = line.split()
                    if fields[1:2] == [mac]:
                        return fields[2]
        except FileNotFoundError:
            pass
        return None

    def ipv4_inside(self, instance, nic):
        """The container's NIC's IPv4 address, or None."""
        out = self.sh(instance, 'ip -4 -o addr show dev ' + nic,
                      check=False).stdout.split()
        if 'inet' not in out:
            return None
        return out[out.index('inet') + 1].split('/')[0]

    def wait_for_address(self, instance, nic, vif, timeout):
        try:
            address = self.wait_for(lambda: self.leased(vif['address']),
                                    timeout)
            return self.wait_for(
                lambda: self.ipv4_inside(instance, nic) == address and
                address, timeout)
        except self.failureException:
            with open(self.dnsmasq_log) as f:
                self.fail('%s got no address by DHCP within %ss; dnsmasq: '
                          '%s' % (nic, timeout, f.read()[-2000:]))

    def check_hot_plug(self, image_id, booted=lambda instance: True):
        first = make_vif('bridge', self.bridge)
        instance = self.make_instance()
        self.driver.spawn(self.ctxt, instance, self.image_meta(image_id),
                          [], None, {}, network_info=[first])
        self.wait_for_address(instance, 'eth0', first, timeout=60)
        self.wait_for(lambda: booted(instance), timeout=60)

        vif = make_vif('bridge', self.bridge)
        self.driver.attach_interface(self.ctxt, instance, None, vif)
        self.wait_for_address(instance, 'eth1', vif, timeout=30)

        self.driver.detach_interface(self.ctxt, instance, vif)
        self.assertEqual(['eth0'], self.names_inside(instance))
        self.assert_unplugged(vif)
        # Its DHCP client goes with it; eth0's stays.
        self.wait_for(lambda: 'eth1' not in self.sh(instance, 'ps -ef')
                      .stdout, timeout=10)
        self.assertIn('eth0', self.sh(instance, 'ps -ef').stdout)
        self.driver.destroy(self.ctxt, instance, [first])
        self.assert_unplugged(first, self.bridge)

    def test_busybox(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        self.check_hot_plug(self.add_image(rootfs_images.busybox_tarball(
            os.path.join(tmp, 'bb.tar.gz'), dhcp=True)))

    def test_debian(self):
        def booted(instance):
            # Hot-plugged, not configured by the boot's own ifup -a.
            return self.sh(instance, 'systemctl is-active ifupdown-netlink',
                           check=False).stdout.strip() == 'active'

        self.check_hot_plug(self.add_image(rootfs_images.debian_tarball()),
                            booted)
