"""Shared set-up of the hardening suite: roots, driver workers, leak scans.

Every test works in a root of its own under ROOT (its lxc_path, state_path,
worker logs), far from an operator's /var/lib/novalxc and from the
functional suite's directory; a cleanup stops, unmounts and removes
whatever the test left there, even when it failed. Container names carry
this process's pid (``instance_name_template``) so the host-wide cgroups,
monitor processes and mounts of concurrent test runs are never mistaken
for ours.
"""

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base as oslo_base

from novalxcdriver import conf
from novalxcdriver import ids
from novalxcdriver import mount
from novalxcdriver.privsep import storage
from novalxcdriver import spec as spec_mod
from tests.functional import base as func_base
from tests.hardening import images
from tests.hardening import summary
from tests import host_cleanup

CONF = conf.CONF
ROOT = summary.ROOT
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, 'cache')
CGROUP = '/sys/fs/cgroup'
# Names of our containers: unique to this test process on the host.
NAME_PREFIX = 'hd%d-' % os.getpid()
NAME_TEMPLATE = NAME_PREFIX + '%08x'


def test_root(testcase):
    """A fresh directory for one test, cleaned (forcibly) afterwards."""
    short = testcase.id().split('.')[-1][:40]
    root = os.path.join(ROOT, '%s-%d' % (short, os.getpid()))
    force_clean(root)
    os.makedirs(root)
    testcase.addCleanup(force_clean, root)
    return root


# Test tooling shared with the functional suite's private roots.
force_clean = host_cleanup.force_clean
unmount_all = host_cleanup.unmount_all
mounts_under = host_cleanup.mounts_under
loop_devices = host_cleanup.loop_devices


cgroups_of = host_cleanup.cgroups_of


def processes_mentioning(text, exclude=()):
    """(pid, cmdline) of processes whose command line contains text."""
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) in exclude:
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(
                    errors='replace')
        except OSError:
            continue
        if text in cmdline:
            found.append((int(pid), cmdline.strip()))
    return found


def lasting_processes_mentioning(text, exclude=(), wait=1.0):
    """processes_mentioning text, now and still wait seconds later.

    A live driver's state watcher runs lxc-ls on lxc_path every scan: a
    query caught in flight is no leak; a leaked LXC monitor stays.
    """
    first = processes_mentioning(text, exclude)
    if not first:
        return first
    time.sleep(wait)
    return sorted(set(first) & set(processes_mentioning(text, exclude)))


def lock_holders(lock_dir, exclude=()):
    """(pid, lock file) of every process holding a lock on lock_dir's files.

    From /proc/locks (proc(5)): POSIX, flock and OFD locks.
    """
    inodes = {}
    try:
        for name in os.listdir(lock_dir):
            st = os.stat(os.path.join(lock_dir, name))
            inodes[(os.major(st.st_dev), os.minor(st.st_dev),
                    st.st_ino)] = name
    except FileNotFoundError:
        return []
    found = []
    with open('/proc/locks') as f:
        for line in f:
            fields = line.split()
            if '->' in fields:
                continue  # a waiter, listed under its lock
            pid, dev = int(fields[4]), fields[5]
            major, minor, ino = dev.split(':')
            key = (int(major, 16), int(minor, 16), int(ino))
            if key in inodes and pid not in exclude:
                found.append((pid, inodes[key]))
    return found


def veths(names):
    return [n for n in names if os.path.exists('/sys/class/net/' + n)]


def config_keys(config_text):
    """(key, value) of every lxc.conf line, records and comments left out."""
    pairs = []
    for line in config_text.splitlines():
        if not line.strip() or line.startswith('#'):
            continue
        key, sep, value = line.partition('=')
        pairs.append((key.strip(), value.strip()) if sep else (line, None))
    return pairs


def veth_pairs(lxc_path):
    """Host-side veth names the containers' configs ask for."""
    names = []
    for name in os.listdir(lxc_path) if os.path.isdir(lxc_path) else []:
        try:
            with open(os.path.join(lxc_path, name, 'config')) as f:
                text = f.read()
        except FileNotFoundError:
            continue
        names += [v for k, v in config_keys(text)
                  if re.match(r'^lxc\.net\.\d+\.veth\.pair$', k)]
    return names


def leaks(lxc_path, state_path, names, exclude_pids=(), veth_names=()):
    """Everything the driver should have removed and did not (list of str).

    Images stay cached by design; everything else of an instance must go:
    container directories, rootfs directories, ID reservations, partial
    image unpacks, mounts, loop devices, cgroups, LXC monitor processes,
    lock holders and veths.
    """
    found = []
    for sub, path in (('container dir', lxc_path),
                      ('rootfs', os.path.join(state_path, 'rootfs')),
                      ('ID reservation', os.path.join(state_path, 'ids'))):
        if os.path.isdir(path):
            found += ['%s %s' % (sub, os.path.join(path, e))
                      for e in sorted(os.listdir(path))
                      if e != ids.INDEX_DIR]
    index = os.path.join(state_path, 'ids', ids.INDEX_DIR)
    if os.path.isdir(index):
        # Release removes the directory with its last entry.
        found += ['ID index entry %s -> %s' % (
            e, os.readlink(os.path.join(index, e))
            if os.path.islink(os.path.join(index, e)) else '(not a link)')
            for e in sorted(os.listdir(index))] or ['ID index %s' % index]
    images = os.path.join(state_path, 'images')
    if os.path.isdir(images):
        found += ['partial image %s' % e for e in os.listdir(images)
                  if e.startswith('.partial-')]
    found += ['mount %s' % p for p in mounts_under(state_path)]
    found += ['loop device %s' % d for d in loop_devices(state_path)]
    found += ['cgroup %s' % c for c in cgroups_of(names)]
    found += ['process %d %s' % p for p in
              lasting_processes_mentioning(lxc_path, exclude_pids)]
    found += ['lock %s held by %d' % (n, p) for p, n in lock_holders(
        os.path.join(state_path, 'locks'), exclude_pids)]
    found += ['veth %s' % n for n in veths(veth_names)]
    return found


def held_ids(lxc_path, state_path):
    """IDs some artifact still holds: reservation, rootfs dir or config."""
    held = set()
    for sub in ('ids', 'rootfs'):
        path = os.path.join(state_path, sub)
        if os.path.isdir(path):
            held.update(int(e) for e in os.listdir(path) if e.isdigit())
    if os.path.isdir(lxc_path):
        for name in os.listdir(lxc_path):
            try:
                with open(os.path.join(lxc_path, name, 'config')) as f:
                    record = spec_mod.parse_record(f.read())
            except FileNotFoundError:
                continue
            if 'id' in record:
                held.add(record['id'])
    return held


def idmap_of(lxc_path, name):
    """(uid_start, gid_start, size) from a container's lxc.idmap lines."""
    with open(os.path.join(lxc_path, name, 'config')) as f:
        pairs = config_keys(f.read())
    maps = {}
    for key, value in pairs:
        if key == 'lxc.idmap':
            kind, inside, start, size = value.split()
            assert inside == '0', value
            maps[kind] = (int(start), int(size))
    assert maps['u'][1] == maps['g'][1], maps
    return maps['u'][0], maps['g'][0], maps['u'][1]


def proc_map(pid, which='uid_map'):
    with open('/proc/%d/%s' % (pid, which)) as f:
        return [line.split() for line in f.read().splitlines()]


def lxc_info(name, lxc_path):
    """(state, init pid) as lxc-info reports them; (None, None) if unknown."""
    out = subprocess.run(['lxc-info', '-n', name, '-P', lxc_path, '-s', '-p'],
                         capture_output=True, text=True)
    fields = dict(line.split(':', 1) for line in out.stdout.splitlines()
                  if ':' in line)
    state = fields.get('State', '').strip() or None
    pid = fields.get('PID', '').strip()
    return state, int(pid) if pid.isdigit() else None


def attach(name, lxc_path, *argv, timeout=120, check=False):
    return subprocess.run(['lxc-attach', '-n', name, '-P', lxc_path, '--'] +
                          list(argv), capture_output=True, text=True,
                          timeout=timeout, check=check)


def file_in_disk(image, path):
    """Content of path inside the filesystem of a disk image.

    ext4: read with debugfs(8) in catastrophic (read-only) mode, so it
    works on an image that is not mounted, or mounted and synced. btrfs:
    through its mount point when the driver has it mounted (next to the
    image, as rootfs.py lays it out), else with btrfs-restore(8), which
    reads the unmounted image without writing it.

    :returns: the file's text, or None if it cannot be read.
    """
    # Its superblock, read here as the host: this process's daemons lack
    # the workers' roots.
    fs = storage.filesystem_of(image)
    if fs == 'btrfs':
        point = os.path.join(os.path.dirname(image), 'root')
        if point in mount.mountpoints():
            try:
                with open(point + path) as f:
                    return f.read()
            except OSError:
                return None
        with tempfile.TemporaryDirectory() as out_dir:
            parts = path.strip('/').split('/')
            # btrfs restore matches every directory on the way down.
            regex = '^' + ''.join('(|/%s' % re.escape(p)
                                  for p in parts) + ')' * len(parts) + '$'
            subprocess.run(['btrfs', 'restore', '--path-regex', regex,
                            image, out_dir], capture_output=True,
                           timeout=120)
            try:
                with open(os.path.join(out_dir, *parts)) as f:
                    return f.read()
            except OSError:
                return None
    out = subprocess.run(['debugfs', '-c', '-R', 'cat ' + path, image],
                         capture_output=True, text=True, timeout=120)
    if out.returncode or 'not found' in out.stderr:
        return None
    return out.stdout


def host_crash(worker, names):
    """Simulate a host crash: the worker and containers die, mounts go.

    The worker (nova-compute) is SIGKILLed, each named container killed
    (lxc-stop -k), and everything mounted under the state path undone,
    as after a power loss and a boot.

    :returns: mounts still under the state path (should be none).
    """
    worker.kill()
    for name in names:
        subprocess.run(['lxc-stop', '-k', '-n', name, '-P', worker.lxc_path],
                       check=True)
    unmount_all(worker.state_path)
    return mounts_under(worker.state_path)


def subordinate_ranges():
    (uid_start, uid_count), (gid_start, gid_count) = \
        ids.read_subordinate_ranges()
    return uid_start, gid_start


# -- driver processes --------------------------------------------------------

class WorkerError(Exception):
    pass


class WorkerDied(WorkerError):
    pass


class Worker:
    """A tests.hardening.worker process: one driver, as one nova-compute.

    :param root: the test's root (lxc/ and state/ below it are shared by
        every worker of the test, as on one node).
    :param host: this worker's CONF.host.
    """

    def __init__(self, testcase, root, host, images=None, fetch_delay=0,
                 init_host=True, **options):
        self.root = root
        self.host = host
        self.lxc_path = os.path.join(root, 'lxc')
        self.state_path = os.path.join(root, 'state')
        log_path = os.path.join(root, 'worker-%s.log' % host)
        env = dict(os.environ, PYTHONPATH=REPO,
                   OS_NOVA_DISABLE_EVENTLET_PATCHING='1')
        with open(log_path, 'ab') as log:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'tests.hardening.worker'], cwd=REPO,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=env)
        testcase.addCleanup(self.kill)
        self.pid = self.proc.pid
        self.call('configure', host=host, lxc_path=self.lxc_path,
                  state_path=self.state_path, images=images or {},
                  fetch_delay=fetch_delay, name_template=NAME_TEMPLATE,
                  **options)
        if init_host:
            self.call('init_host')

    def send(self, op, **kwargs):
        self.proc.stdin.write((json.dumps(dict(kwargs, op=op)) +
                               '\n').encode())
        self.proc.stdin.flush()

    def receive(self, timeout=900):
        """The next answer's result.

        :raises WorkerDied: the process ended before answering.
        :raises WorkerError: the operation raised (its class and message).
        """
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise WorkerError('worker %s: no answer within %ss'
                              % (self.host, timeout))
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerDied('worker %s ended (exit %s)' % (
                self.host, self.proc.wait(60)))
        answer = json.loads(line)
        if not answer['ok']:
            raise WorkerError('%s: %s\n%s' % (answer['error'],
                                              answer['message'],
                                              answer.get('traceback', '')))
        return answer['result']

    def call(self, op, timeout=900, **kwargs):
        self.send(op, **kwargs)
        return self.receive(timeout)

    def crash_during(self, op, timeout=900, **kwargs):
        """Run op, which must hit an armed crash point; reap the process.

        :returns: the process's exit status (-9 after SIGKILL).
        """
        self.send(op, **kwargs)
        try:
            result = self.receive(timeout)
        except WorkerDied:
            return self.proc.returncode
        raise WorkerError('worker %s finished %s (%r) without crashing'
                          % (self.host, op, result))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def quit(self):
        self.call('quit')
        self.proc.wait(60)
        self.kill()


class WorkerTestCase(oslo_base.BaseTestCase):
    """Driver processes (Worker) on a root of the test's own.

    :ivar tarball: a busybox image the workers can boot.
    :ivar host: a compute host name of this test process's own.
    """

    host_prefix = 'hardening'

    def setUp(self):
        super().setUp()
        func_base.require_root(self)
        self.root = test_root(self)
        self.tarball = images.busybox_plus(os.path.join(self.root,
                                                        'bb.tar.gz'))
        self.host = '%s-%d' % (self.host_prefix, os.getpid())


def instance_spec(inst_id, **flavor):
    """An instance as the worker builds it: id, uuid, flavor figures."""
    spec = {'id': inst_id, 'uuid': str(uuid.uuid4()), 'memory_mb': 64,
            'vcpus': 1, 'root_gb': 1, 'ephemeral_gb': 0}
    spec.update(flavor)
    return spec


def instance_name(spec):
    return NAME_TEMPLATE % spec['id']


# -- an in-process driver ------------------------------------------------

class HardeningTestCase(func_base.FunctionalTestCase):
    """The functional suite's in-process driver, in a root of this test.

    Its host name is this process's own, so init_host never touches the
    containers of another test run.
    """

    host = 'novalxc-hardening-%d' % os.getpid()

    def setUp(self):
        func_base.require_root(self)
        self.root = test_root(self)
        # DriverFixture reads FUNC_ROOT when it sets up.
        patcher = fixtures.MonkeyPatch(
            'tests.functional.base.FUNC_ROOT', self.root)
        patcher.setUp()
        self.addCleanup(patcher.cleanUp)
        super().setUp()
        self.useFixture(config_fixture.Config(CONF)).config(
            instance_name_template=NAME_TEMPLATE)
        self.lxc_path = CONF.lxc.lxc_path
        self.state_path = CONF.lxc.state_path

    def attach(self, name, *argv, check=False, timeout=120):
        return attach(name, self.lxc_path, *argv, check=check,
                      timeout=timeout)

    def leaks(self, names, veth_names=()):
        return leaks(self.lxc_path, self.state_path, names,
                     veth_names=veth_names)
