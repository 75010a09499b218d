"""Tests for novalxcdriver.serialconsole and its relay (consolerelay).

The relay runs for real, as a process, with ``cat`` as its console
command and a ``sleep`` standing for the container's LXC monitor: what
lxc-console adds is covered by the functional tests.
"""

import json
import os
import socket
import subprocess

import fixtures
from oslotest import base

from novalxcdriver import consolerelay
from novalxcdriver import exception
from novalxcdriver import host
from novalxcdriver import serialconsole

CONSOLE = ['cat']
ADDRESS = '127.0.0.1'


def _free_range(n):
    """A "START:STOP" of n ports nobody listens on (bound and released)."""
    socks = []
    try:
        while True:
            with socket.socket() as probe:
                probe.bind((ADDRESS, 0))
                start = probe.getsockname()[1]
            if start + n > 65535:
                continue
            socks = []
            try:
                for port in range(start, start + n):
                    s = socket.socket()
                    socks.append(s)
                    s.bind((ADDRESS, port))
            except OSError:
                continue
            return '%d:%d' % (start, start + n - 1)
    finally:
        for s in socks:
            s.close()


class PortRangeTest(base.BaseTestCase):

    def test_parse(self):
        self.assertEqual((10000, 20000),
                         serialconsole.parse_port_range('10000:20000'))

    def test_parse_refuses(self):
        for text in ('', '10000', '20000:10000', '5:5', 'a:b', '1:70000',
                     '0:10', '1:2:3'):
            self.assertRaises(exception.InvalidPortRange,
                              serialconsole.parse_port_range, text)

    def test_candidates_preferred_first(self):
        self.assertEqual([12, 10, 11, 13],
                         list(serialconsole.candidate_ports(12, 10, 13)))
        self.assertEqual([10, 11],
                         list(serialconsole.candidate_ports(99, 10, 11)))
        self.assertEqual([10, 11],
                         list(serialconsole.candidate_ports(None, 10, 11)))


class RelayTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.monitor = self._sleeper()
        self.range = _free_range(3)
        self.first = int(self.range.split(':')[0])
        self.addCleanup(serialconsole.stop, self.dir, CONSOLE)

    def _sleeper(self):
        proc = subprocess.Popen(['sleep', '600'])
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        return proc

    def ensure(self):
        return serialconsole.ensure(self.dir, CONSOLE, self.monitor.pid,
                                    ADDRESS, self.range)

    def connect(self, relay):
        conn = socket.create_connection((relay.address, relay.port),
                                        timeout=10)
        self.addCleanup(conn.close)
        return conn

    @staticmethod
    def read_line(conn):
        data = b''
        while not data.endswith(b'\n'):
            chunk = conn.recv(100)
            if not chunk:
                break
            data += chunk
        return data

    def test_relays_to_the_console_and_stays_put(self):
        relay = self.ensure()
        self.assertEqual(ADDRESS, relay.address)
        self.assertEqual(self.first, relay.port)
        with open(os.path.join(self.dir, serialconsole.STATE_FILE)) as f:
            self.assertEqual({'pid': relay.pid, 'address': ADDRESS,
                              'port': relay.port}, json.load(f))
        conn = self.connect(relay)
        conn.sendall(b'hello\n')
        self.assertEqual(b'hello\n', self.read_line(conn))
        # Asked again (Nova validating a token): the same relay.
        self.assertEqual(relay, self.ensure())

    def test_one_client_at_a_time(self):
        relay = self.ensure()
        first = self.connect(relay)
        first.sendall(b'one\n')
        self.assertEqual(b'one\n', self.read_line(first))
        second = self.connect(relay)
        self.assertEqual(consolerelay.BUSY, self.read_line(second))
        first.close()
        # Once the first has gone, the next client is served.
        for _attempt in range(50):
            third = self.connect(relay)
            third.sendall(b'three\n')
            line = self.read_line(third)
            if line != consolerelay.BUSY:
                break
        self.assertEqual(b'three\n', line)

    def test_exits_with_the_watched_process(self):
        relay = self.ensure()
        self.monitor.kill()
        self.monitor.wait()
        self.assertTrue(host.wait_gone(relay.pid, timeout=10))
        self.assertIsNone(serialconsole.current(self.dir, CONSOLE))

    def test_restarted_on_its_port(self):
        relay = self.ensure()
        os.kill(relay.pid, 9)
        self.assertTrue(host.wait_gone(relay.pid, timeout=10))
        again = self.ensure()
        self.assertNotEqual(relay.pid, again.pid)
        self.assertEqual(relay.port, again.port)

    def test_port_taken_by_another_is_skipped(self):
        with socket.socket() as squatter:
            squatter.bind((ADDRESS, self.first))
            squatter.listen(1)
            relay = self.ensure()
        self.assertEqual(self.first + 1, relay.port)

    def test_range_exhausted(self):
        squatters = []
        for port in range(self.first, self.first + 3):
            s = socket.socket()
            self.addCleanup(s.close)
            s.bind((ADDRESS, port))
            s.listen(1)
            squatters.append(s)
        self.assertRaises(exception.ConsolePortsExhausted, self.ensure)
        self.assertFalse(os.path.exists(
            os.path.join(self.dir, serialconsole.STATE_FILE)))

    def test_stop_kills_it_and_forgets(self):
        relay = self.ensure()
        conn = self.connect(relay)
        conn.sendall(b'x\n')
        self.read_line(conn)
        serialconsole.stop(self.dir, CONSOLE)
        self.assertEqual([], host.cmdline(relay.pid))
        self.assertEqual([], os.listdir(self.dir))
        # Its console client went with it: the client sees the end.
        self.assertEqual(b'', conn.recv(100))

    def test_a_pid_that_is_not_the_relay_is_not_taken_for_it(self):
        with open(os.path.join(self.dir, serialconsole.STATE_FILE),
                  'w') as f:
            json.dump({'pid': self.monitor.pid, 'address': ADDRESS,
                       'port': self.first}, f)
        self.assertIsNone(serialconsole.current(self.dir, CONSOLE))
        serialconsole.stop(self.dir, CONSOLE)
        self.assertIsNone(self.monitor.poll())

    def test_torn_state_file(self):
        with open(os.path.join(self.dir, serialconsole.STATE_FILE),
                  'w') as f:
            f.write('{"pid": 1')
        self.assertIsNone(serialconsole.current(self.dir, CONSOLE))
        self.assertEqual(self.first, self.ensure().port)
