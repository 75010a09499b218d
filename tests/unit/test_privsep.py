"""The privsep contexts, their entry points' checks, and exceptions that cross.

The entry points run here in-process (client mode off) with netlink
mocked: what is asserted is what each refuses before touching netlink and
the netlink requests it makes otherwise. Through a real daemon:
tests/functional/test_privsep.py.
"""

import inspect
import os
import pickle
import re
import sys
from unittest import mock

import fixtures
from oslo_config import cfg
from oslo_rootwrap import wrapper as rootwrap_wrapper

from novalxcdriver import exception
from novalxcdriver import privsep
from novalxcdriver.privsep import netdev
from tests.unit import base as unit_base

MAC = 'fa:16:3e:12:34:56'


class ExceptionsCrossTest(unit_base.TestCase):
    """oslo.privsep raises exc_type(*e.args) in the caller (remote_call)."""

    @staticmethod
    def every_error():
        for _, cls in inspect.getmembers(exception, inspect.isclass):
            if issubclass(cls, exception.NovaLXCError):
                # Values msgpack cannot carry (an exception) where the
                # format takes any object, numbers elsewhere.
                kwargs = {k: (OSError(5, 'EIO') if conv in 'sr' else 42)
                          for k, conv in re.findall(r'%\((\w+)\)(\w)',
                                                    cls.msg_fmt)}
                yield cls, kwargs

    def test_every_error_is_rebuilt_from_its_args(self):
        seen = 0
        for cls, kwargs in self.every_error():
            e = cls(**kwargs)
            again = cls(*e.args)
            self.assertIs(type(e), type(again))
            self.assertEqual(str(e), str(again))
            self.assertEqual(e.format_message(), again.format_message())
            for k, v in kwargs.items():
                self.assertEqual(v if v == 42 else str(v), again.kwargs[k])
            self.assertEqual(str(e), str(pickle.loads(pickle.dumps(e))))
            seen += 1
        self.assertGreater(seen, 30)

    def test_args_are_plain(self):
        e = exception.CommandFailed(cmd=['ip'], exit_code=2, stderr=b'x')
        message, kwargs = e.args
        self.assertEqual(str(e), message)
        self.assertEqual({'cmd': "['ip']", 'exit_code': 2, 'stderr': "b'x'",
                          'code': 500}, kwargs)
        # The original values stay in kwargs, for this process's readers.
        self.assertEqual(['ip'], e.kwargs['cmd'])


class CheckPositiveIntsTest(unit_base.TestCase):

    def test_positive_ints_pass(self):
        privsep.check_positive_ints('call', a=1, b=2 ** 62)

    def test_the_first_wrong_one_named(self):
        for bad in (0, -1, 1.0, True, '3', None):
            e = self.assertRaises(
                exception.PrivilegedCallRefused, privsep.check_positive_ints,
                'my_call', good=5, wrong=bad, later=0)
            self.assertIn('my_call', str(e))
            self.assertIn('wrong %r is not a positive int' % (bad,), str(e))


class HelperCommandTest(unit_base.TestCase):

    PRIVSEP = ['sudo', 'privsep-helper', '--config-file', '/etc/nova.conf',
               '--privsep_context', 'x.y', '--privsep_sock_path', '/t/s']

    def test_root_without_sudo(self):
        with mock.patch('os.geteuid', return_value=0):
            cmd = privsep.helper_command(self.PRIVSEP, None)
        self.assertEqual([sys.executable, '-m', 'oslo_privsep.daemon',
                          '--config-file', '/etc/nova.conf',
                          '--privsep_context', 'x.y',
                          '--privsep_sock_path', '/t/s'], cmd)

    def test_configured_helper_wins(self):
        with mock.patch('os.geteuid', return_value=0):
            self.assertIs(self.PRIVSEP, privsep.helper_command(
                self.PRIVSEP, 'my-helper'))

    def test_not_root_keeps_sudo(self):
        with mock.patch('os.geteuid', return_value=1000):
            self.assertIs(self.PRIVSEP,
                          privsep.helper_command(self.PRIVSEP, None))

    def test_context_uses_it(self):
        with mock.patch('os.geteuid', return_value=0):
            cmd = privsep.net_admin.helper_command('/t/s')
        self.assertEqual([sys.executable, '-m', 'oslo_privsep.daemon'],
                         cmd[:3])
        self.assertEqual(['--privsep_context',
                          'novalxcdriver.privsep.net_admin',
                          '--privsep_sock_path', '/t/s'], cmd[-4:])

    def test_option_for_other_contexts_has_config_files(self):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'nova conf')
        with open(path, 'w'):
            pass
        conf = cfg.ConfigOpts()
        conf(['--config-file', path], default_config_files=[])
        self.assertEqual("%s -m oslo_privsep.daemon --config-file '%s'"
                         % (sys.executable, path),
                         privsep.root_helper_command_opt(conf))

    def test_option_for_unparsed_config(self):
        self.assertEqual('%s -m oslo_privsep.daemon' % sys.executable,
                         privsep.root_helper_command_opt(cfg.ConfigOpts()))


def link(kind):
    """A netlink link message whose IFLA_LINKINFO kind is kind."""
    info = mock.Mock()
    info.get_attr.side_effect = {'IFLA_INFO_KIND': kind}.get
    msg = mock.Mock()
    msg.get_attr.side_effect = {'IFLA_LINKINFO': info}.get
    return msg


class _InProcess(unit_base.TestCase):
    """Entry points called in this process, netlink mocked."""

    def setUp(self):
        super().setUp()
        for ctx in privsep.CONTEXTS:
            ctx.set_client_mode(False)
            self.addCleanup(ctx.set_client_mode, True)
        # name -> (index, kind) of the host's devices.
        self.links = {'tap1': (7, 'veth'), 'nlx1': (8, 'veth'),
                      'br0': (9, 'bridge'), 'eth0': (2, None),
                      'br-int': (10, 'openvswitch')}
        self.ipr = mock.MagicMock()
        self.ipr.__enter__.return_value = self.ipr
        self.ipr.link_lookup.side_effect = lambda ifname: (
            [self.links[ifname][0]] if ifname in self.links else [])
        kinds = {i: k for i, k in self.links.values()}
        self.ipr.link.side_effect = lambda cmd, **kw: (
            [link(kinds[kw['index']])] if cmd == 'get' else None)
        self.IPRoute = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.netdev.IPRoute',
            return_value=self.ipr)).mock
        self.ethtool = self.useFixture(fixtures.MockPatch(
            'novalxcdriver.privsep.netdev.ethtool')).mock

    def changes(self):
        """The netlink requests that change something."""
        return [c for c in self.ipr.link.call_args_list
                if c.args[0] != 'get']


class RefusalTest(_InProcess):
    """Every entry point refuses what it must, before any netlink."""

    BAD_NAMES = ('', 'x' * 16, 'tap1;reboot', 'a/b', 'a b', '..', 'tap\n',
                 7, None, b'tap1')
    BAD_MACS = ('FA:16:3E:12:34:56', '01:16:3e:12:34:56', 'fa:16:3e:12:34',
                'fa-16-3e-12-34-56', 7)
    BAD_MTUS = (True, 67, 65536, '1500', 1500.0, -1)
    GOOD = {'add_veth': ('tap9', 'nlx9', MAC, 1500),
            'delete_veth': ('tap1',),
            'set_master': ('tap1', 'br0'),
            'set_up': ('tap1',),
            'disable_tx_checksum': ('nlx1',),
            'move_into': ('nlx1', 4242, 'eth1', MAC, 1500)}

    def setUp(self):
        super().setUp()
        # pid 4242 lives in another network namespace.
        real_stat = os.stat
        self.useFixture(fixtures.MockPatch(
            'os.stat', side_effect=lambda p: (
                mock.Mock(st_ino=1) if p == '/proc/4242/ns/net' else
                real_stat(p))))

    def refused(self, name, *args):
        self.IPRoute.reset_mock()
        self.ipr.reset_mock()
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              getattr(netdev, name), *args)
        self.assertIn(name, str(e))
        self.assertEqual([], self.changes())
        self.ethtool.Ethtool.assert_not_called()
        return e

    def test_every_entry_point_is_covered(self):
        names = {n for n, f in vars(netdev).items()
                 if privsep.net_admin.is_entrypoint(f)}
        self.assertEqual(set(self.GOOD), names)

    def test_bad_names(self):
        for name, good in self.GOOD.items():
            for i, arg in enumerate(good):
                if isinstance(arg, str) and arg != MAC:
                    for bad in self.BAD_NAMES:
                        args = list(good)
                        args[i] = bad
                        self.refused(name, *args)

    def test_bad_macs_and_mtus(self):
        for name in ('add_veth', 'move_into'):
            good = self.GOOD[name]
            for bad in self.BAD_MACS:
                self.refused(name, *good[:-2], bad, good[-1])
            for bad in self.BAD_MTUS:
                self.refused(name, *good[:-1], bad)

    def test_only_veths_are_changed(self):
        for dev in ('eth0', 'br0', 'br-int', 'missing'):
            self.refused('delete_veth', dev)
            self.refused('set_up', dev)
            self.refused('disable_tx_checksum', dev)
            self.refused('set_master', dev, 'br0')
            self.refused('move_into', dev, 4242, 'eth1', MAC, 1500)

    def test_master_must_be_a_linux_bridge(self):
        for master in ('br-int', 'tap1', 'eth0', 'missing'):
            self.refused('set_master', 'tap1', master)

    def test_container_side(self):
        for pid in (0, 1, -5, '4242', True, 4242.0, os.getpid(), 99999999):
            self.refused('move_into', 'nlx1', pid, 'eth1', MAC, 1500)
        for name in ('lo', 'tap1', 'eth', 'eth1x', 'eth12345'):
            self.refused('move_into', 'nlx1', 4242, name, MAC, 1500)

    def test_good_arguments_pass(self):
        self.links['eth1'] = (3, 'veth')  # in the container, once moved
        with mock.patch('os.open', return_value=55), mock.patch('os.close'):
            for name, args in self.GOOD.items():
                getattr(netdev, name)(*args)


class NetlinkRequestsTest(_InProcess):

    def test_add_veth(self):
        netdev.add_veth('tap9', 'nlx9', MAC, 1442)
        self.assertEqual([mock.call(
            'add', ifname='tap9', kind='veth', mtu=1442,
            peer={'ifname': 'nlx9', 'address': MAC, 'mtu': 1442})],
            self.changes())

    def test_delete_set_master_up(self):
        netdev.delete_veth('tap1')
        netdev.set_master('tap1', 'br0')
        netdev.set_up('tap1')
        self.assertEqual([mock.call('del', index=7),
                          mock.call('set', index=7, master=9),
                          mock.call('set', index=7, state='up')],
                         self.changes())

    def test_tx_checksum_features_off_only(self):
        eth = self.ethtool.Ethtool.return_value.__enter__.return_value
        features = {n: mock.Mock(enable=True) for n in (
            'tx-checksum-ipv4', 'tx-checksum-ip-generic', 'rx-checksum',
            'tx-tcp-segmentation')}
        eth.get_features.return_value.features = features
        netdev.disable_tx_checksum('nlx1')
        eth.set_features.assert_called_once_with(
            'nlx1', eth.get_features.return_value)
        self.assertEqual({'tx-checksum-ipv4': False,
                          'tx-checksum-ip-generic': False,
                          'rx-checksum': True,
                          'tx-tcp-segmentation': True},
                         {n: f.enable for n, f in features.items()})

    def test_move_into(self):
        inside = mock.MagicMock()
        inside.__enter__.return_value = inside
        inside.link_lookup.return_value = [3]
        self.IPRoute.side_effect = [self.ipr, inside]
        with mock.patch.object(netdev, 'check_pid') as check_pid, \
                mock.patch('os.open', return_value=55) as os_open, \
                mock.patch('os.close') as os_close:
            netdev.move_into('nlx1', 4242, 'eth1', MAC, 1442)
        check_pid.assert_called_once_with('move_into', 4242)
        # An fd: pyroute2 would list the container's 0500 /proc/PID/ns.
        self.assertEqual('/proc/4242/ns/net', os_open.call_args.args[0])
        self.assertEqual([mock.call(), mock.call(netns=55)],
                         self.IPRoute.call_args_list)
        os_close.assert_called_once_with(55)
        self.assertEqual([mock.call('set', index=8, net_ns_pid=4242,
                                    ifname='eth1')], self.changes())
        inside.link_lookup.assert_called_once_with(ifname='eth1')
        inside.link.assert_called_once_with(
            'set', index=3, address=MAC, mtu=1442, state='up')


class RootwrapFiltersTest(unit_base.TestCase):

    DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'etc',
                       'rootwrap.d')
    SOCK = '/tmp/tmpk2_9xq0a/privsep.sock'

    def test_a_filter_per_context(self):
        with open(os.path.join(self.DIR, 'novalxcdriver.filters')) as f:
            text = f.read()
        for ctx in privsep.CONTEXTS:
            self.assertIn('--privsep_context, %s,' % re.escape(ctx.pypath),
                          text)

    def allowed(self, *argv):
        """Whether the filters of etc/ let argv through.

        oslo.rootwrap's load_filters adds its own "privsep-helper"
        CommandFilter, any arguments, to every list: left out here, it is
        why the README has operators use sudo rules instead.
        """
        filters = [f for f in rootwrap_wrapper.load_filters([self.DIR])
                   if f.name != 'privsep-helper']
        self.assertEqual(4, len(filters))
        return any(f.match(list(argv)) for f in filters)

    def helper(self, conf='/etc/nova/nova.conf',
               context='novalxcdriver.privsep.lxc_admin', sock=SOCK):
        return ['privsep-helper', '--config-file', conf,
                '--privsep_context', context, '--privsep_sock_path', sock]

    def test_what_oslo_privsep_runs_passes(self):
        for ctx in privsep.CONTEXTS:
            self.assertTrue(self.allowed(*self.helper(context=ctx.pypath)),
                            ctx.pypath)
        self.assertTrue(self.allowed(*self.helper(
            context='vif_plug_ovs.privsep.vif_plug')))

    def test_nothing_else_passes(self):
        refused = [
            # A file outside /etc, or reached through "..".
            self.helper(conf='/tmp/nova.conf'),
            self.helper(conf='/etc/nova/../../tmp/evil.conf'),
            self.helper(conf='/etc/../tmp/evil.conf'),
            # Another context, or a look-alike.
            self.helper(context='neutron.privileged.default'),
            self.helper(context='novalxcdriverXprivsep.lxc_admin'),
            # A socket elsewhere.
            self.helper(sock='/var/lib/nova/privsep.sock'),
            self.helper(sock='/tmp/tmpab/../../x/privsep.sock'),
            # Options of the caller's own, read by the helper as root.
            self.helper() + ['--log-config-append', '/tmp/log.conf'],
            self.helper()[:3] + ['--config-file', '/etc/evil.conf'] +
            self.helper()[3:],
            ['privsep-helper', '--privsep_context',
             'novalxcdriver.privsep.lxc_admin'],
        ]
        for argv in refused:
            self.assertFalse(self.allowed(*argv), argv)
