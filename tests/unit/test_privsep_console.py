"""privsep.console: the relay entry points' checks and restart rule.

In-process (client mode off), serialconsole's work mocked: what is
asserted is what each entry point refuses before starting anything, and
when it asks serialconsole for a relay.
"""

import io
import os

from novalxcdriver import exception
from novalxcdriver import lxc
from novalxcdriver import privsep
from novalxcdriver.privsep import console
from novalxcdriver import serialconsole
from tests.unit import test_privsep_lxctools

NAME = 'instance-0000001a'


class RelayTest(test_privsep_lxctools._Roots):

    def setUp(self):
        super().setUp()
        privsep.lxc_admin.set_client_mode(False)
        self.addCleanup(privsep.lxc_admin.set_client_mode, True)
        if os.geteuid() != 0:
            self.skipTest('the daemon trusts root\'s containers only')
        self.dir = os.path.join(self.lxc_path, NAME)
        os.mkdir(self.dir, 0o700)
        self.ensure = self.patch(
            'novalxcdriver.serialconsole.ensure',
            return_value=serialconsole.Relay(77, '192.0.2.7', 10003))
        self.current = self.patch('novalxcdriver.serialconsole.current',
                                  return_value=None)
        # pid 4241 is this container's monitor.
        self.cmdlines = {4241: ('[lxc monitor] %s %s' % (
            self.lxc_path, NAME)).encode() + b'\0'}
        real_open = open

        def fake_open(path, mode='r', *args, **kwargs):
            if isinstance(path, str) and path.startswith('/proc/') and \
                    path.endswith('/cmdline'):
                pid = int(path.split('/')[2])
                if pid not in self.cmdlines:
                    raise FileNotFoundError(path)
                return io.BytesIO(self.cmdlines[pid])
            return real_open(path, mode, *args, **kwargs)
        self.patch('builtins.open', side_effect=fake_open)

    def ensure_relay(self, pid=4241, address='192.0.2.7',
                     port_range='10000:10009', **kwargs):
        return console.ensure_relay(NAME, self.lxc_path, pid, address,
                                    port_range, **kwargs)

    def test_started_for_the_container_s_monitor(self):
        self.assertEqual([77, '192.0.2.7', 10003], self.ensure_relay())
        self.ensure.assert_called_once_with(
            self.dir, lxc.console_argv(NAME, self.lxc_path), 4241,
            '192.0.2.7', '10000:10009')

    def test_another_process_as_the_monitor_refused(self):
        self.cmdlines[4000] = b'[lxc monitor] /elsewhere ' + NAME.encode()
        self.cmdlines[4001] = b'sshd: root\0'
        for pid in (4000, 4001, 4999, 1, '4241', True):
            e = self.assertRaises(exception.PrivilegedCallRefused,
                                  self.ensure_relay, pid=pid)
            self.assertIn('not the LXC monitor', str(e))
        self.ensure.assert_not_called()

    def test_addresses_and_privileged_ports_refused(self):
        for address in ('0.0.0.0; rm', 'localhost', '', None):
            self.assertRaises(exception.PrivilegedCallRefused,
                              self.ensure_relay, address=address)
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              self.ensure_relay, port_range='22:30')
        self.assertIn('starts below 1024', str(e))
        self.assertRaises(exception.InvalidPortRange, self.ensure_relay,
                          port_range='20:10')
        self.ensure.assert_not_called()

    def test_restart_only_for_a_relay_that_died(self):
        self.assertIsNone(self.ensure_relay(restart_only=True))
        with open(os.path.join(self.dir, serialconsole.STATE_FILE),
                  'w') as f:
            f.write('{}')
        self.current.return_value = serialconsole.Relay(77, 'a', 1)
        self.assertIsNone(self.ensure_relay(restart_only=True))
        self.ensure.assert_not_called()
        self.current.return_value = None
        self.assertEqual([77, '192.0.2.7', 10003],
                         self.ensure_relay(restart_only=True))

    def test_stop_and_current_checked_too(self):
        stop = self.patch('novalxcdriver.serialconsole.stop')
        self.assertRaises(exception.PrivilegedCallRefused,
                          console.stop_relay, '../etc', self.lxc_path)
        self.assertRaises(exception.PrivilegedCallRefused,
                          console.current_relay, NAME, '/')
        console.stop_relay(NAME, self.lxc_path)
        stop.assert_called_once_with(self.dir,
                                     lxc.console_argv(NAME, self.lxc_path))
        self.assertIsNone(console.current_relay(NAME, self.lxc_path))
