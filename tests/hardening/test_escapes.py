"""Escape attempts as root inside an unprivileged container: all refused.

The container runs busybox plus /hh, a static helper built from hh.c
that makes each attempt with the raw system call and prints one
``ATTEMPT <name> REFUSED|ALLOWED|SKIPPED`` line; attempts that would be
allowed write back what they read, so even a failing run changes nothing
on the host. Each test also checks the host side: release agents, the
container's own limits, the LXC binaries and the neighbour's files are
as they were.
"""

import hashlib
import os
import re
import subprocess
import time
import uuid

from tests.hardening import base
from tests.hardening import images
from tests.hardening import summary
from tests import host_cleanup

CGROUP = '/sys/fs/cgroup'
LXC_BINARIES = ('/usr/bin/lxc-attach', '/usr/bin/lxc-start',
                '/usr/bin/lxc-stop', '/usr/bin/lxc-info')
_ATTEMPT = re.compile(r'^ATTEMPT (\S+) (REFUSED|ALLOWED|SKIPPED) ?(.*)$')


def attempts(output):
    """[(name, verdict, detail)] from hh's output."""
    return [m.groups() for m in map(_ATTEMPT.match, output.splitlines())
            if m]


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


class EscapeTest(base.HardeningTestCase):

    def setUp(self):
        super().setUp()
        tarball = images.helper_image(
            os.path.join(self.root, 'escape.tar.gz'), base.CACHE)
        self.image_id = self.add_image(tarball)
        self.instance = self.make_instance()
        self.spawn(self.instance, self.image_id)
        self.name = self.instance.name

    def hh(self, *args, name=None, timeout=120):
        out = self.attach(name or self.name, '/hh', *args, timeout=timeout)
        return out.stdout + out.stderr

    def check(self, figure, outputs, extra=()):
        """Record and assert: no ALLOWED attempt, at least one made.

        :param extra: more (name, verdict, detail) checked by the test.
        """
        found = [a for out in outputs for a in attempts(out)] + list(extra)
        made = [a for a in found if a[1] != 'SKIPPED']
        refused = [a for a in made if a[1] == 'REFUSED']
        allowed = [a for a in made if a[1] == 'ALLOWED']
        summary.record(
            'escapes.' + figure, '%d attempts, %d refused, %d allowed%s' % (
                len(made), len(refused), len(allowed), ''.join(
                    '; ALLOWED %s %s' % (n, d) for n, _v, d in allowed)),
            attempts=len(made), refused=len(refused),
            allowed=len(allowed))
        for name, verdict, detail in found:
            print('    %-45s %s %s' % (name, verdict, detail))
        self.assertEqual([], allowed)
        self.assertGreater(len(made), 0)
        return found

    # -- cgroups -------------------------------------------------------------

    def _release_agents(self):
        agents = {}
        for controller in sorted(os.listdir(CGROUP)):
            path = os.path.join(CGROUP, controller, 'release_agent')
            if os.path.exists(path):
                with open(path) as f:
                    agents[controller] = f.read()
        return agents

    def test_cgroup_release_agent_cve_2022_0492(self):
        before = self._release_agents()
        out = self.hh('cgroup')
        self.assertEqual(before, self._release_agents())
        self.check('cve-2022-0492', [out])

    def _limits(self):
        values = {}
        for controller, key in (('memory', 'memory.limit_in_bytes'),
                                ('pids', 'pids.max'),
                                ('cpuset', 'cpuset.cpus'),
                                ('cpu', 'cpu.cfs_quota_us'),
                                ('devices', 'devices.list')):
            with open(os.path.join(host_cleanup.payload_cgroup(
                    controller, self.name), key)) as f:
                values[key] = f.read()
        with open('/proc/sys/kernel/core_pattern') as f:
            values['core_pattern'] = f.read()
        return values

    def test_host_cgroup_and_kernel_files(self):
        before = self._limits()
        out = self.hh('hostfiles')
        # Its own limits, seen from the host, untouched; and none of the
        # host's cgroups is in its view (cgroup namespace).
        self.assertEqual(before, self._limits())
        listing = self.attach(self.name, 'ls', '/sys/fs/cgroup/memory').stdout
        self.assertNotIn('lxc.payload', listing)
        self.assertNotIn('novalxc', listing)
        self.check('host-files', [out])

    # -- devices, modules, kexec ---------------------------------------------

    def test_mknod_block_and_char_devices(self):
        disk = os.stat('/').st_dev
        outs = [self.hh('mknod', 'b', str(os.major(disk)),
                        str(os.minor(disk))),
                self.hh('mknod', 'b', '7', '0'),      # a loop device
                self.hh('mknod', 'c', '1', '1'),      # /dev/mem
                self.hh('mknod', 'c', '10', '237')]   # /dev/loop-control
        busybox = self.attach(self.name, 'mknod', '/tmp/bb-sda', 'b', '8',
                              '0')
        extra = [('busybox-mknod-b-8:0',
                  'REFUSED' if busybox.returncode else 'ALLOWED',
                  busybox.stderr.strip())]
        self.check('mknod', outs, extra)

    def test_mount_host_block_device(self):
        disk = os.stat('/').st_dev
        source = subprocess.run(['findmnt', '-n', '-o', 'SOURCE', '/'],
                                capture_output=True, text=True).stdout
        out = self.hh('blockdev', str(os.major(disk)), str(os.minor(disk)),
                      source.strip() or '/dev/vda')
        self.assertIn('BLOCKDEVS 0', out)
        self.check('mount-host-disk', [out])

    def test_kernel_module_and_kexec(self):
        def modules():
            # No /proc/modules on a kernel built without module support.
            try:
                with open('/proc/modules') as f:
                    return f.read()
            except FileNotFoundError:
                return None

        before = modules()
        outs = [self.hh('module'), self.hh('kexec')]
        insmod = self.attach(self.name, 'insmod', '/bin/busybox')
        self.assertEqual(before, modules())
        self.check('module-kexec', outs, [(
            'busybox-insmod', 'REFUSED' if insmod.returncode else 'ALLOWED',
            insmod.stderr.strip())])

    # -- the runtime ---------------------------------------------------------

    def test_runtime_overwrite_cve_2019_5736(self):
        binaries = [p for p in LXC_BINARIES if os.path.exists(p)]
        liblxc = os.path.realpath('/usr/lib/x86_64-linux-gnu/liblxc.so.1')
        if os.path.exists(liblxc):
            binaries.append(liblxc)
        before = {p: sha256(p) for p in binaries}
        watcher = subprocess.Popen(
            ['lxc-attach', '-n', self.name, '-P', self.lxc_path, '--',
             '/hh', 'exe-watch', '8'], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.addCleanup(watcher.kill)
        time.sleep(0.5)
        # The runtime enters the container again and again, as itself and
        # through a '#!/proc/self/exe' script (the published exploit).
        deadline = time.monotonic() + 6
        runs = 0
        while time.monotonic() < deadline:
            self.attach(self.name, '/bin/true')
            self.attach(self.name, '/hh-selfexe')
            runs += 2
        out, _err = watcher.communicate(timeout=60)
        after = {p: sha256(p) for p in binaries}
        self.assertEqual(before, after)
        seen = re.search(r'EXE_SEEN (\d+) HELD (\d+)', out)
        print('    %d lxc-attach runs; the container saw the runtime %s '
              'times' % (runs, seen.group(1) if seen else '?'))
        for line in out.splitlines():
            if line.startswith(('EXE ', 'REOPEN ')):
                print('    ' + line)
        self.check('cve-2019-5736', [out], [(
            'lxc-binaries-unchanged', 'REFUSED', '%d files' % len(after))])

    # -- other containers and the host's files ---------------------------

    def test_other_container_files_unreachable(self):
        neighbour = self.make_instance()
        self.spawn(neighbour, self.image_id)
        token = uuid.uuid4().hex
        self.attach(neighbour.name, 'sh', '-c',
                    'echo %s > /root/secret && chmod 600 /root/secret'
                    % token, check=True)
        cid = self.driver._ids.find(neighbour.uuid)
        upper = os.path.join(self.state_path, 'rootfs', str(cid), 'root',
                             'upper', 'root', 'secret')
        # On the host the file belongs to the neighbour's own root.
        neighbour_uid = base.idmap_of(self.lxc_path, neighbour.name)[0]
        self.assertEqual(neighbour_uid, os.stat(upper).st_uid)
        _state, neighbour_pid = base.lxc_info(neighbour.name, self.lxc_path)

        paths = [upper, os.path.join(self.lxc_path, neighbour.name, 'config'),
                 '/proc/%d/root/root/secret' % neighbour_pid,
                 '/proc/%d/environ' % neighbour_pid,
                 os.path.join(self.state_path, 'images'),
                 '/etc/shadow', '/var/lib/lxcfs/proc/meminfo/../../../../'
                 'root']
        found = []
        for path in paths:
            out = self.attach(self.name, 'cat', path)
            found.append(('read-' + path,
                          'ALLOWED' if out.returncode == 0 else 'REFUSED',
                          (out.stdout + out.stderr).strip()[:80]))
        search = self.attach(self.name, 'sh', '-c',
                             'grep -rs %s / --exclude-dir=proc '
                             '--exclude-dir=sys; find / -xdev -name secret'
                             % token, timeout=300)
        found.append(('search-own-tree', 'ALLOWED' if token in search.stdout
                      or search.stdout.strip() else 'REFUSED',
                      search.stdout.strip()[:80]))
        # Its processes are not in the neighbour's view, nor the host's.
        pids = self.attach(self.name, 'ls', '/proc').stdout.split()
        visible = [p for p in pids if p.isdigit()]
        found.append(('see-other-processes',
                      'ALLOWED' if str(neighbour_pid) in visible and
                      len(visible) > 20 else 'REFUSED',
                      '%d pids visible' % len(visible)))
        handle = self.hh('handle')
        self.check('other-container', [handle], found)
        self.assertNotIn(token, ''.join(d for _n, _v, d in found))

    def test_container_root_is_not_host_root(self):
        _state, pid = base.lxc_info(self.name, self.lxc_path)
        uid_start, gid_start, size = base.idmap_of(self.lxc_path, self.name)
        uid_base, gid_base = base.subordinate_ranges()
        self.assertGreaterEqual(uid_start, uid_base)
        self.assertGreater(uid_start, 0)
        self.assertEqual([['0', str(uid_start), str(size)]],
                         base.proc_map(pid, 'uid_map'))
        self.assertEqual([['0', str(gid_start), str(size)]],
                         base.proc_map(pid, 'gid_map'))
        with open('/proc/%d/status' % pid) as f:
            status = dict(line.split(':', 1) for line in f)
        self.assertEqual([str(uid_start)] * 4, status['Uid'].split())
        inside = self.attach(self.name, 'sh', '-c',
                             'id -u; cat /proc/self/uid_map').stdout.split()
        self.assertEqual(['0', '0', str(uid_start), str(size)], inside)
        # A file its root makes belongs to that host uid, not to root.
        self.attach(self.name, 'touch', '/root/mine', check=True)
        cid = self.driver._ids.find(self.instance.uuid)
        made = os.path.join(self.state_path, 'rootfs', str(cid), 'root',
                            'upper', 'root', 'mine')
        self.assertEqual((uid_start, gid_start),
                         (os.stat(made).st_uid, os.stat(made).st_gid))
        summary.record(
            'uid-map', 'container root is host uid %d (uid_map "0 %d %d"), '
            'not host root' % (uid_start, uid_start, size),
            uid=uid_start)
