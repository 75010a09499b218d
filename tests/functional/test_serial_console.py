"""Serial console of real containers: relay, lxc-console, restarts."""

import os
import signal
import socket
import time

from nova import exception as nova_exc
from nova.virt import fake as fake_virt
from oslo_config import fixture as config_fixture

from novalxcdriver import consolerelay
from novalxcdriver import host
from novalxcdriver import serialconsole
from tests.functional import base
from tests.functional import rootfs_images

CONF = base.CONF
ADDRESS = '127.0.0.1'


class Client:
    """A raw TCP client of a relay, as nova-serialproxy is."""

    def __init__(self, console):
        self.sock = socket.create_connection((console.host, console.port),
                                             timeout=1)
        self.seen = b''

    def send(self, data):
        self.sock.sendall(data)

    def read_until(self, needle, timeout=30):
        """Everything read until needle shows up (bytes), or fail."""
        deadline = time.monotonic() + timeout
        while needle not in self.seen and time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                break
            self.seen += chunk
        if needle not in self.seen:
            raise AssertionError('%r not in the console within %ss: %r'
                                 % (needle, timeout, self.seen[-500:]))
        return self.seen

    def run(self, command, expect):
        self.send(command + b'\n')
        return self.read_until(expect)

    def close(self):
        self.sock.close()


class SerialConsoleTest(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(CONF)).config(
            group='serial_console', enabled=True,
            proxyclient_address=ADDRESS, port_range='31000:31999')

    def console(self, instance):
        console = self.driver.get_serial_console(self.ctxt, instance)
        self.assertEqual(ADDRESS, console.host)
        self.assertTrue(31000 <= console.port <= 31999, console.port)
        return console

    def connect(self, console):
        client = Client(console)
        self.addCleanup(client.close)
        return client

    def relay_of(self, instance):
        path = os.path.join(CONF.lxc.lxc_path, instance.name)
        return serialconsole.current(
            path, ['lxc-console', '-n', instance.name, '-P',
                   CONF.lxc.lxc_path, '-t', '0', '-e', '-1'])

    def restart_driver(self):
        """A new driver on the same state, as after a nova-compute restart.

        The old one's state watcher is stopped by its fixture's cleanup.
        """
        drv = base.new_driver(fake_virt.FakeVirtAPI())
        drv.init_host(self.fx.host)
        self.addCleanup(drv.cleanup_host, self.fx.host)
        return drv

    def boot_busybox(self):
        instance = self.make_instance()
        self.spawn(instance, self.busybox_image())
        self.wait_for(lambda: b'busybox booted' in
                      self.driver.get_console_output(self.ctxt, instance))
        return instance

    def test_busybox_shell_through_restarts_and_stops(self):
        instance = self.boot_busybox()
        console = self.console(instance)
        client = self.connect(console)
        # Arithmetic: the answer is the shell's, not the echo of the line.
        client.run(b'echo con""sole-$((6*7))', b'console-42')
        # The console log keeps recording while a client is attached.
        self.wait_for(lambda: b'console-42' in
                      self.driver.get_console_output(self.ctxt, instance))
        # One client at a time; asked again, the same port.
        self.assertEqual(consolerelay.BUSY,
                         self.connect(console).read_until(consolerelay.BUSY))
        self.assertEqual(console.port, self.console(instance).port)

        relay = self.relay_of(instance)
        self.assertIsNotNone(relay)
        # nova-compute restarts: the relay and its client carry on.
        drv = self.restart_driver()
        self.assertEqual(relay, self.relay_of(instance))
        client.run(b'echo still-$((1+1))', b'still-2')
        client.close()

        # A relay killed (with nova-compute's cgroup, say) comes back on
        # its port at the next init_host.
        os.kill(relay.pid, signal.SIGKILL)
        self.assertTrue(host.wait_gone(relay.pid, timeout=10))
        drv = self.restart_driver()
        again = self.relay_of(instance)
        self.assertIsNotNone(again)
        self.assertNotEqual(relay.pid, again.pid)
        self.assertEqual(relay.port, again.port)
        self.connect(console).run(b'echo back-$((2+1))', b'back-3')

        # Stopped: the relay goes with the container's monitor.
        drv.power_off(instance)
        self.assertTrue(host.wait_gone(again.pid, timeout=10))
        self.assertRaises(nova_exc.InstanceNotReady,
                          drv.get_serial_console, self.ctxt, instance)
        drv.power_on(self.ctxt, instance, [])
        self.assertEqual(console.port,
                         drv.get_serial_console(self.ctxt, instance).port)
        self.connect(console).run(b'echo on-$((3+1))', b'on-4')

        last = self.relay_of(instance)
        drv.destroy(self.ctxt, instance, [])
        self.assertTrue(host.wait_gone(last.pid, timeout=10))
        self.assertEqual([], [pid for pid in _pids()
                              if instance.name in host.cmdline(pid) and
                              'lxc-console' in host.cmdline(pid)])
        # Its port is free again.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((ADDRESS, console.port))

    def test_soft_reboot_keeps_the_relay(self):
        instance = self.boot_busybox()
        self.console(instance)
        relay = self.relay_of(instance)
        self.driver.reboot(self.ctxt, instance, [], 'SOFT')
        self.assertEqual(relay, self.relay_of(instance))
        self.connect(self.console(instance)).run(b'echo re-$((4+1))',
                                                 b're-5')

    def test_debian_login_prompt(self):
        instance = self.make_instance()
        self.spawn(instance, self.add_image(rootfs_images.debian_tarball()))
        client = self.connect(self.console(instance))
        deadline = time.monotonic() + 60
        # getty starts once systemd reaches it: knock until it answers.
        while time.monotonic() < deadline:
            client.send(b'\r')
            try:
                client.read_until(b'login: ', timeout=2)
                break
            except AssertionError:
                continue
        client.read_until(b'login: ', timeout=1)
        self.assertIn(instance.hostname.encode(), client.seen)


def _pids():
    return [int(p) for p in os.listdir('/proc') if p.isdigit()]
