"""Every place the driver runs a command or a privileged syscall, listed.

Issue 14 moves root's work behind novalxcdriver.privsep, context by
context. This test reads the driver's source (ast) and finds each call
that runs a command (the runners of lxc.py and command.py, wherever
called, subprocess, processutils, exec, fork), makes a privileged
syscall through ctypes or an ioctl, changes ownership, or writes a user
namespace's uid_map/gid_map. Outside the privsep package each must be
in NOT_YET_PRIVSEP, the sites still run in nova-compute, in
RUNNER_ITSELF, the runner whose callers are the sites, in UNPRIVILEGED,
the commands any user may run, in DAEMON_CHILDREN, what only a privsep
daemon's child runs, or in OPERATOR_TOOLS, what the operator runs as
root at install: a new one fails the test (route it through an entry
point, or list it here and say why), and so does a listed one that is
gone (take it off, so that the lists show what is left to move).

Not seen: plain file writes into root-only directories (DAC) and cgroup
files; the inventory (docs/design/issue-14-privsep-inventory.md) lists
them.
"""

import ast
import os

import fixtures
from oslotest import base

import novalxcdriver

PACKAGE = os.path.dirname(novalxcdriver.__file__)
PRIVSEP = os.path.join(PACKAGE, 'privsep')

PRIMITIVES = {
    'subprocess': {'run', 'Popen', 'call', 'check_call', 'check_output'},
    'processutils': {'execute', 'trycmd', 'ssh_execute'},
    'os': {'system', 'execv', 'execve', 'execvp', 'execvpe', 'execl',
           'spawnv', 'spawnve', 'posix_spawn', 'posix_spawnp', 'fork',
           'forkpty', 'chown', 'fchown', 'lchown', 'mknod', 'unshare',
           'setns', 'chroot', 'setuid', 'setgid', 'setgroups'},
    'fcntl': {'ioctl'},
    'ctypes': {'CDLL'},
    'shutil': {'chown'},
}
# The command runners: called by name inside lxc.py, through their
# module (lxc.execute, command.execute) anywhere else.
RUNNERS = {'execute', '_lxc', '_lxc_waits'}
RUNNER_MODULES = {'lxc', 'command'}
NAMESPACE_MAPS = ('uid_map', 'gid_map')

# (module, function, what) still run in nova-compute, by issue 14's steps.
# Empty since the migration's copy went to privsep.migrationcopy (design
# 5.12); the set stays for what a change would add.
NOT_YET_PRIVSEP = set()

# The runner itself: every command it runs is found where it is called
# (lxc.execute, command.execute), and listed there.
RUNNER_ITSELF = {
    ('command.py', 'execute', 'subprocess.run'),
}

# (module, function, what) that run a command needing no privilege, with
# nothing from an image, a user or the network in its argv: they stay in
# nova-compute, unprivileged.
UNPRIVILEGED = {
    # lxc-start --version prints LXC's version, for any user.
    ('lxc.py', 'version', 'execute'),
    # uptime(1) prints the host's load and uptime, for any user.
    ('diagnostics.py', 'host_uptime', 'lxc.execute'),
}
# (module, function, what) of programs only a privsep daemon starts, never
# nova-compute: the serial console relay (consolerelay.py, as root,
# started by privsep.daemons.start_daemon from serialconsole.ensure in
# the lxc_admin daemon, privsep.console) runs one lxc-console per client.
DAEMON_CHILDREN = {
    ('consolerelay.py', 'serve', 'subprocess.Popen'),
    # A disk image's files copied with their owners by the confined
    # unpacker (unpackchild.py --mode tree, started by
    # privsep.unpack.copy_partition), root only of its user namespace.
    ('treecopy.py', '_Copier.metadata', 'os.chown'),
    # That child's own confinement: the user namespace it enters, its
    # ids dropped, its prctl(2) flags (unpackchild.confine).
    ('unpackchild.py', '_libc', 'ctypes.CDLL'),
    ('unpackchild.py', 'confine', 'libc.prctl'),
    ('unpackchild.py', 'confine', 'libc.unshare'),
    ('unpackchild.py', 'confine', 'os.setgroups'),
    # A spare child's death with the daemon while it waits for its job
    # (unpackchild.await_job), before it confines itself.
    ('unpackchild.py', 'await_job', 'libc.prctl'),
    # And its syncfs(2) of the tree it writes, as it writes it
    # (unpackchild.Writeback): no privilege needed, libc loaded before
    # the child confines itself.
    ('unpackchild.py', '<module>', 'ctypes.CDLL'),
    ('unpackchild.py', 'syncfs', '_LIBC.syncfs'),
}
# (module, function, what) of the operator's tools, run as root at
# install, never by nova-compute.
OPERATOR_TOOLS = {
    # novalxc-prepare-host gives the bookkeeping to nova-compute's user.
    ('hostdirs.py', '_give', 'os.lchown'),
}


def call_sites(path, rel):
    """{(rel, qualified function, what)} of path's privileged calls."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    stack = []

    def where():
        return '.'.join(stack) or '<module>'

    class Visitor(ast.NodeVisitor):

        def visit_scope(self, node):
            stack.append(node.name)
            self.generic_visit(node)
            stack.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = \
            visit_scope

        def visit_Call(self, node):
            func = node.func
            if (isinstance(func, ast.Attribute) and
                    isinstance(func.value, ast.Name)):
                owner, name = func.value.id, func.attr
                if (name in PRIMITIVES.get(owner, ()) or
                        'libc' in owner.lower()):
                    found.add((rel, where(), '%s.%s' % (owner, name)))
            elif (rel == 'lxc.py' and isinstance(func, ast.Name) and
                    func.id in RUNNERS):
                found.add((rel, where(), func.id))
            if (isinstance(func, ast.Attribute) and
                    isinstance(func.value, ast.Name) and
                    func.value.id in RUNNER_MODULES and
                    func.attr in RUNNERS):
                # Another module running a command through the runners.
                what = '%s.%s' % (func.value.id, func.attr)
                found.add((rel, where(), what))
            self.generic_visit(node)

        def visit_Expr(self, node):
            # A bare string statement (a docstring) does nothing.
            if not isinstance(node.value, ast.Constant):
                self.generic_visit(node)

        def visit_Constant(self, node):
            if isinstance(node.value, str) and any(
                    m in node.value for m in NAMESPACE_MAPS):
                found.add((rel, where(), 'uid_map/gid_map'))

    Visitor().visit(tree)
    return found


def all_sites(privsep_too=False):
    found = set()
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        if not privsep_too and dirpath.startswith(PRIVSEP):
            continue
        for name in filenames:
            if name.endswith('.py'):
                path = os.path.join(dirpath, name)
                found |= call_sites(path, os.path.relpath(path, PACKAGE))
    return found


def driver_sources():
    """(name, source) of the package's top-level modules but host.py.

    host.py names the tools only to check they are installed.
    """
    for name in sorted(os.listdir(PACKAGE)):
        if name.endswith('.py') and name != 'host.py':
            with open(os.path.join(PACKAGE, name)) as f:
                yield name, f.read()


class CallSitesTest(base.BaseTestCase):

    def test_no_site_bypasses_privsep_unlisted(self):
        found = all_sites()
        others = (RUNNER_ITSELF | UNPRIVILEGED | DAEMON_CHILDREN |
                  OPERATOR_TOOLS)
        self.assertEqual(set(), others - found,
                         'gone from the code: take these off RUNNER_ITSELF, '
                         'UNPRIVILEGED, DAEMON_CHILDREN or OPERATOR_TOOLS')
        found -= others
        self.assertEqual(
            set(), found - NOT_YET_PRIVSEP,
            'privileged work outside novalxcdriver.privsep: move it into '
            'an entry point, or list it in NOT_YET_PRIVSEP with its reason')
        self.assertEqual(
            set(), NOT_YET_PRIVSEP - found,
            'gone from the code: take these off NOT_YET_PRIVSEP')

    def test_network_devices_are_all_behind_privsep(self):
        # What issue 14's first step moved: no ip, ethtool or nsenter is
        # run and nothing opens a netlink socket outside privsep.
        for path in ('lxc.py', 'vif.py'):
            with open(os.path.join(PACKAGE, path)) as f:
                source = f.read()
            for needle in ("'ip'", "'ethtool'", "'nsenter'", 'IPRoute'):
                self.assertNotIn(needle, source, path)

    def test_container_lifecycle_tools_are_all_behind_privsep(self):
        # Issue 14's second step: the lxc-* tools that act on a container
        # run only in privsep.lxctools (lxc-start --version aside).
        tools = ("'lxc-stop'", "'lxc-info'", "'lxc-ls'", "'lxc-freeze'",
                 "'lxc-unfreeze'", "'lxc-attach'", "'lxc-destroy'")
        for name, source in driver_sources():
            for needle in tools:
                self.assertNotIn(needle, source, name)
            self.assertNotIn("'lxc-start', '-n'", source, name)

    def test_disk_tools_are_all_behind_privsep(self):
        # Issue 14's fourth step: disks are formatted, checked and grown,
        # filesystems synced and layers copied only in privsep.disks.
        tools = ("'mkfs.ext4'", "'mkfs.btrfs'", "'e2fsck'", "'resize2fs'",
                 "'btrfs', 'filesystem'", "'cp', '-a'")
        for name, source in driver_sources():
            for needle in tools:
                self.assertNotIn(needle, source, name)

    def test_snapshot_readers_are_all_behind_privsep(self):
        # Issue 14's fifth step: a snapshot's find | tar | zstd start, and
        # what a crash left reading a view is found and killed, only in
        # privsep.snapshots.
        needles = ("'unshare', '--user'", "'find', '.'", "'tar', '--create'",
                   "'zstd', '-q'", 'holders(', 'os.kill(')
        for name, source in driver_sources():
            for needle in needles:
                if name == 'mount.py' and needle == 'holders(':
                    continue   # its definition
                if needle in source:
                    self.fail('%s in %s' % (needle, name))

    def test_scanner_sees_what_it_must(self):
        # The scanner itself: each kind of site in a sample.
        sample = (
            'import subprocess, fcntl, os\n'
            'def a():\n    subprocess.run(["x"])\n'
            'def b():\n    fcntl.ioctl(0, 1)\n'
            'class C:\n    def d(self):\n        os.fchown(1, 2, 3)\n'
            'def e():\n    _libc.mount(None)\n'
            'def f():\n    open("/proc/1/uid_map", "w")\n')
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            's.py')
        with open(path, 'w') as f:
            f.write(sample)
        self.assertEqual({('s.py', 'a', 'subprocess.run'),
                          ('s.py', 'b', 'fcntl.ioctl'),
                          ('s.py', 'C.d', 'os.fchown'),
                          ('s.py', 'e', '_libc.mount'),
                          ('s.py', 'f', 'uid_map/gid_map')},
                         call_sites(path, 's.py'))
