"""The privsep daemons for real: how they start, what they may do.

Run as root with no helper_command, as the functional suite does, the
daemon is started without sudo (novalxcdriver.privsep). Its entry points
are reached over its socket, as nova-compute reaches them.
"""

import errno
import os
import shutil
import subprocess
import uuid

import fixtures
from oslotest import base
from pyroute2 import NetlinkError

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import lxc
from novalxcdriver import mount
from novalxcdriver import privsep
from novalxcdriver.privsep import netdev
from tests.functional import base as func_base

CONF = conf.CONF
MAC = 'fa:16:3e:0a:0b:0c'
FUNC_ROOT_PARENT = os.path.dirname(func_base.FUNC_ROOT)
# capabilities(7) bit numbers.
CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_ADMIN = 12, 19, 21
# storage_admin's: CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID,
# KILL, SETGID, SETUID, MKNOD, SETFCAP with SYS_PTRACE and SYS_ADMIN.
STORAGE_CAPS = (0, 1, 2, 3, 4, 5, 6, 7, 27, 31, CAP_SYS_PTRACE,
                CAP_SYS_ADMIN)


def daemons(context):
    """pid -> /proc/PID/status fields of context's daemons on the host."""
    found = {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
            if context.pypath.encode() not in argv:
                continue
            with open('/proc/%s/status' % pid) as f:
                found[int(pid)] = dict(line.rstrip('\n').split(':\t', 1)
                                       for line in f if ':\t' in line)
        except OSError:
            continue
    return found


def settled_daemons(context, caps):
    """daemons(context), once each has dropped to exactly caps (a mask).

    Other test workers start daemons of the same contexts: one just
    started still has all of root's capabilities for a moment. What
    never settles within 10 s is returned as it is, for the caller's
    assertions to name.
    """
    def settled():
        found = daemons(context)
        return found and all(int(s['CapEff'], 16) == caps and
                             int(s['CapPrm'], 16) == caps
                             for s in found.values())
    func_base.poll(settled, timeout=10)
    return daemons(context)


class NetAdminDaemonTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        func_base.require_root(self)
        suffix = uuid.uuid4().hex[:8]
        self.host_dev, self.peer_dev = 'tpt' + suffix, 'npt' + suffix
        self.addCleanup(self.remove, self.host_dev)

    @staticmethod
    def remove(dev):
        if os.path.exists('/sys/class/net/' + dev):
            subprocess.run(['ip', 'link', 'delete', 'dev', dev], check=True)

    def test_veth_made_and_deleted_by_the_daemon(self):
        netdev.add_veth(self.host_dev, self.peer_dev, MAC, 1400)
        with open('/sys/class/net/%s/address' % self.peer_dev) as f:
            self.assertEqual(MAC, f.read().strip())
        with open('/sys/class/net/%s/mtu' % self.host_dev) as f:
            self.assertEqual('1400', f.read().strip())
        netdev.set_up(self.host_dev)
        netdev.delete_veth(self.host_dev)
        self.assertFalse(os.path.exists('/sys/class/net/' + self.peer_dev))

    def test_daemon_is_root_with_only_its_capabilities(self):
        netdev.add_veth(self.host_dev, self.peer_dev, MAC, 1500)
        want = (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN) | \
            (1 << CAP_SYS_PTRACE)
        found = settled_daemons(privsep.net_admin, want)
        self.assertTrue(found)
        for pid, status in found.items():
            self.assertEqual('0', status['Uid'].split()[1], pid)
            self.assertEqual(want, int(status['CapEff'], 16), pid)
            self.assertEqual(want, int(status['CapPrm'], 16), pid)
        # Not this process's child: oslo.privsep's helper daemonizes.
        self.assertNotIn(os.getpid(),
                         {int(s['PPid']) for s in found.values()})

    def test_refusal_crosses_with_its_class_and_kwargs(self):
        e = self.assertRaises(exception.PrivilegedCallRefused,
                              netdev.delete_veth, 'lo')
        self.assertEqual('delete_veth', e.kwargs['call'])
        self.assertIn('lo is not a veth device', str(e))
        self.assertTrue(os.path.exists('/sys/class/net/lo'))

    def test_netlink_error_crosses(self):
        netdev.add_veth(self.host_dev, self.peer_dev, MAC, 1500)
        e = self.assertRaises(NetlinkError, netdev.add_veth,
                              self.host_dev, 'npx' + self.peer_dev[3:],
                              MAC, 1500)
        self.assertEqual(errno.EEXIST, e.code)

    def test_move_into_a_user_namespace_s_network_namespace(self):
        # As a container's init: another uid, its own user namespace, so
        # its /proc/PID/ns is a 0500 directory the daemon cannot list.
        holder = subprocess.Popen(
            ['setpriv', '--reuid', '165536', '--regid', '165536',
             '--clear-groups', 'unshare', '--user', '--map-root-user',
             '--net', 'sleep', '60'])
        self.addCleanup(holder.wait)
        self.addCleanup(holder.kill)
        func_base.poll(lambda: os.stat('/proc/%d/ns/net' % holder.pid)
                       .st_ino != os.stat('/proc/self/ns/net').st_ino)
        netdev.add_veth(self.host_dev, self.peer_dev, MAC, 1500)
        netdev.move_into(self.peer_dev, holder.pid, 'eth3',
                         'fa:16:3e:0a:0b:0d', 1300)
        self.assertFalse(os.path.exists('/sys/class/net/' + self.peer_dev))
        out = subprocess.run(
            ['nsenter', '--target', str(holder.pid), '--net', '--', 'ip',
             '-o', 'link', 'show', 'dev', 'eth3'],
            check=True, capture_output=True, text=True).stdout
        self.assertIn('mtu 1300', out)
        self.assertIn('fa:16:3e:0a:0b:0d', out)
        self.assertIn(',UP', out)


class LxcAdminDaemonTest(func_base.FunctionalTestCase):
    """lxc-* tools through the lxc_admin daemon, as the driver runs them."""

    def setUp(self):
        super().setUp()
        self.image_id = self.busybox_image()
        self.marker = os.path.join(self.useFixture(
            fixtures.TempDir()).path, 'hook-ran')

    def plant(self, config_mode=0o600, dir_uid=0):
        """A container dir whose config has a hook, as an attacker's."""
        name = 'planted-' + uuid.uuid4().hex[:8]
        path = os.path.join(CONF.lxc.lxc_path, name)
        os.mkdir(path, 0o700)
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        config = os.path.join(path, 'config')
        with open(config, 'w') as f:
            f.write('lxc.rootfs.path = dir:/\n'
                    'lxc.hook.pre-start = /usr/bin/touch %s\n' % self.marker)
        os.chmod(config, config_mode)
        os.chown(path, dir_uid, 0)
        return name

    def test_daemon_is_root_with_no_capability_and_starts_containers(self):
        instance = self.make_instance()
        self.spawn(instance, self.image_id)
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        found = settled_daemons(privsep.lxc_admin, 0)
        self.assertTrue(found)
        for pid, status in found.items():
            self.assertEqual('0', status['Uid'].split()[1], pid)
            self.assertEqual(0, int(status['CapEff'], 16), pid)
            self.assertEqual(0, int(status['CapPrm'], 16), pid)
        # The daemon runs with umask 0; what LXC made for the container is
        # still nobody else's to write.
        container_dir = os.path.join(CONF.lxc.lxc_path, instance.name)
        for name in ('lxc.log', 'console.log'):
            mode = os.stat(os.path.join(container_dir, name)).st_mode
            self.assertEqual(0, mode & 0o022, '%s %o' % (name, mode))

    def test_a_container_dir_it_may_not_read_does_not_stop_a_spawn(self):
        # Someone else's directory in lxc_path, 0700: run unprivileged,
        # the driver cannot read its config. Every spawn's ID allocation
        # scans the configs there; it skips this one (it raised
        # PermissionError, out of a parallel test's init_host in CI).
        self.plant()
        instance = self.make_instance()
        self.spawn(instance, self.image_id)
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.driver.init_host(self.host)
        self.assertFalse(os.path.exists(self.marker))

    def test_a_config_others_may_write_is_refused_and_its_hook_never_runs(
            self):
        name = self.plant(config_mode=0o666)
        e = self.assertRaises(exception.PrivilegedCallRefused, lxc.start,
                              name, CONF.lxc.lxc_path)
        self.assertEqual('start', e.kwargs['call'])
        self.assertIn('not root\'s alone', str(e))
        self.assertFalse(os.path.exists(self.marker))

    def test_a_container_dir_of_another_uid_is_refused(self):
        name = self.plant(dir_uid=165536)
        self.assertRaises(exception.PrivilegedCallRefused, lxc.start,
                          name, CONF.lxc.lxc_path)
        self.assertFalse(os.path.exists(self.marker))

    def test_paths_outside_the_daemon_s_roots_refused(self):
        for name, path in (('etc', '/'), ('lxc', FUNC_ROOT_PARENT),
                           ('x', CONF.lxc.lxc_path + '/..')):
            e = self.assertRaises(exception.PrivilegedCallRefused,
                                  lxc.info, name, path)
            self.assertEqual('info', e.kwargs['call'])

    def test_lxc_failures_cross_with_their_class(self):
        self.assertRaises(exception.ContainerNotFound, lxc.info,
                          'no-such-container', CONF.lxc.lxc_path)
        e = self.assertRaises(exception.CommandFailed, lxc.freeze,
                              'no-such-container', CONF.lxc.lxc_path)
        self.assertIn('lxc-freeze', e.kwargs['cmd'])

    def test_the_daemon_writes_only_configs_its_policy_passes(self):
        instance = self.make_instance()
        self.spawn(instance, self.image_id, power_on=False)
        config = os.path.join(CONF.lxc.lxc_path, instance.name, 'config')
        with open(config) as f:
            original = f.read()
        for extra in ('lxc.hook.pre-start = /usr/bin/touch %s\n'
                      % self.marker,
                      'lxc.mount.entry = /etc etc none bind 0 0\n',
                      'lxc.cgroup2.devices.allow = a\n'):
            self.assertRaises(exception.PrivilegedCallRefused,
                              lxc.write_config, instance.name,
                              CONF.lxc.lxc_path, original + extra)
        with open(config) as f:
            self.assertEqual(original, f.read())
        # What the driver wrote is written again, and starts.
        lxc.write_config(instance.name, CONF.lxc.lxc_path, original)
        self.driver.power_on(self.ctxt, instance, [])
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        self.assertFalse(os.path.exists(self.marker))


class StorageAdminDaemonTest(func_base.FunctionalTestCase):
    """Mounts through the storage_admin daemon, as the driver makes them."""

    def test_daemon_has_its_capabilities_and_containers_own_their_root(self):
        instance = self.make_instance()
        self.spawn(instance, self.busybox_image())
        want = sum(1 << n for n in STORAGE_CAPS)
        found = settled_daemons(privsep.storage_admin, want)
        self.assertTrue(found)
        for pid, status in found.items():
            self.assertEqual('0', status['Uid'].split()[1], pid)
            self.assertEqual(want, int(status['CapEff'], 16), pid)
        # Overlayfs checks the layers against its mounter's credentials:
        # what a container's root does to its files works with the
        # daemon's. A copy-up with a chown, a setuid bit, a whiteout.
        script = ('set -e; touch /f; busybox chown 1000:1000 /f; '
                  'chmod 4755 /f; busybox chown 1000 /etc/group; '
                  'rm /etc/passwd; mkdir -p /d/e; rm -r /d; '
                  'stat -c "%u %g %a" /f /etc/group; '
                  'test ! -e /etc/passwd && echo whiteout')
        out = self.attach(instance.name, 'sh', '-c', script).stdout
        self.assertEqual(['1000 1000 4755', '1000 0 644', 'whiteout'],
                         out.split('\n')[:3])

    def test_paths_outside_the_daemon_s_roots_refused(self):
        for call, args in ((mount.unmount, ('/proc',)),
                           (mount.overlay, ('/etc', '/tmp/u', '/tmp/w',
                                            '/mnt')),
                           (mount.disk_image, ('/dev/sda', '/mnt')),
                           (mount.unmount, (CONF.lxc.state_path +
                                            '/../../etc',))):
            e = self.assertRaises(exception.PrivilegedCallRefused, call,
                                  *args)
            self.assertIn('refused', str(e))
        self.assertIn('/proc', mount.mountpoints())

    def test_unmount_of_a_busy_mount_crosses_with_its_holders(self):
        instance = self.make_instance()
        self.spawn(instance, self.busybox_image())
        config = os.path.join(CONF.lxc.lxc_path, instance.name, 'config')
        with open(config) as f:
            merged = [line.split('= dir:', 1)[1].strip() for line in f
                      if line.startswith('lxc.rootfs.path')]
        self.assertIn(merged[0], mount.mountpoints())
        # A host process in it: the daemon sees it (CAP_SYS_PTRACE).
        proc = subprocess.Popen(['sleep', '60'], cwd=merged[0])
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        e = self.assertRaises(exception.MountBusy, mount.unmount, merged[0])
        self.assertIn(merged[0], str(e))
        self.assertIn('pid %d (sleep)' % proc.pid, str(e))
        self.assertIn(merged[0], mount.mountpoints())
