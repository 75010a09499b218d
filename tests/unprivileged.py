"""The driver as an unprivileged user inside a test process run as root.

``NOVALXC_TEST_USER=<user>`` (tox -e functional-unprivileged): every call
into the driver runs with that user's uid and gid as effective ids, no
supplementary group and an empty effective capability set, as
nova-compute running as that user would (issue 14); its privsep daemons
start through ``sudo privsep-helper --config-file <CONFIG>``, which reads
the driver roots from a file this module writes, as an operator's
nova.conf gives them. The test's own checks keep running as root.

Credentials are per thread in the kernel; glibc's setresuid(3) changes
every thread's, so the raw system calls change only the calling one
(credentials(7), "per-thread" note). Threads the driver starts inherit
its credentials: the state watcher and the privsep clients' readers run
as the user too. The real and saved uids stay 0, so the thread can take
root back after the call; the kernel clears the effective capabilities
when the effective uid leaves 0 and restores them from the permitted set
when it returns (capabilities(7), "Effect of user ID changes on
capabilities").
"""

import atexit
import contextlib
import ctypes
import functools
import os
import platform
import pwd
import subprocess
import sys
import tempfile
import threading

# Its context registers the section configure sets.
import vif_plug_ovs.privsep  # noqa: F401

from novalxcdriver import conf as conf_mod
from novalxcdriver import host
from novalxcdriver import hostdirs
from novalxcdriver import privsep

CONF = conf_mod.CONF
ENV = 'NOVALXC_TEST_USER'

# x86_64's numbers (asm/unistd_64.h); aarch64 uses the generic ones.
_SYSCALLS = {'x86_64': {'setgroups': 116, 'setresuid': 117,
                        'setresgid': 119},
             'aarch64': {'setgroups': 159, 'setresuid': 147,
                         'setresgid': 149}}
_libc = ctypes.CDLL(None, use_errno=True)
_state = threading.local()
_lock = threading.RLock()
_config = {'path': None, 'text': None}
# Contexts whose daemons read CONFIG: the driver's, and os-vif's (its
# Linux bridge plugin is gone from the os-vif this driver uses).
OS_VIF_SECTIONS = ('vif_plug_ovs_privileged',)


def user():
    """The user's pwd entry, or None when the suite runs as root."""
    name = os.environ.get(ENV)
    return pwd.getpwnam(name) if name else None


def _syscall(name, *args):
    number = _SYSCALLS[platform.machine()][name]
    if _libc.syscall(number, *[ctypes.c_long(a) for a in args]) != 0:
        e = ctypes.get_errno()
        raise OSError(e, '%s%r: %s' % (name, args, os.strerror(e)))


def _setgroups(groups):
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    number = _SYSCALLS[platform.machine()]['setgroups']
    if _libc.syscall(number, ctypes.c_long(len(groups)), array) != 0:
        e = ctypes.get_errno()
        raise OSError(e, 'setgroups: %s' % os.strerror(e))


def _drop(account):
    """This thread only: the account's effective ids, no group, no cap."""
    _setgroups([])
    _syscall('setresgid', -1, account.pw_gid, -1)
    _syscall('setresuid', -1, account.pw_uid, -1)


def _regain(groups):
    _syscall('setresuid', -1, 0, -1)
    _syscall('setresgid', -1, 0, -1)
    _setgroups(groups)


def call_as(account, fn, *args, **kwargs):
    """fn(*args, **kwargs) in this thread with account's credentials.

    A thread started by one that runs as account already does.
    """
    if getattr(_state, 'dropped', False) or os.geteuid() != 0:
        return fn(*args, **kwargs)
    _state.groups = os.getgroups()
    _state.account = account
    _drop(account)
    _state.dropped = True
    try:
        return fn(*args, **kwargs)
    finally:
        _state.dropped = False
        _regain(_state.groups)


@contextlib.contextmanager
def as_root():
    """Root again in this thread, inside a call_as.

    For what stands in for another service there: Glance's download of
    a test's file.
    """
    was = getattr(_state, 'dropped', False)
    if was:
        groups, account = _state.groups, _state.account
    elif os.geteuid() != 0:
        # Started by a thread that ran as the user: it inherited that.
        groups, account = [], pwd.getpwuid(os.geteuid())
    else:
        yield
        return
    _regain(groups)
    _state.dropped = False
    try:
        yield
    finally:
        _drop(account)
        _state.dropped = was


class Driver(object):
    """A driver whose methods run as account (call_as); the rest as is."""

    def __init__(self, driver, account):
        object.__setattr__(self, '_driver', driver)
        object.__setattr__(self, '_account', account)

    def __getattr__(self, name):
        value = getattr(self._driver, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def as_user(*args, **kwargs):
            return call_as(self._account, value, *args, **kwargs)
        return as_user

    def __setattr__(self, name, value):
        setattr(self._driver, name, value)

    def __delattr__(self, name):
        delattr(self._driver, name)


def helper_command(path):
    """[<context>] helper_command for daemons reading the file at path.

    privsep-helper's module run as privsep.ROOT_DAEMON runs it: from the
    working directory, so that the daemons run the code under test (the
    checkout), not what tox installed last.
    """
    return 'sudo -n %s -m oslo_privsep.daemon --config-file %s' % (
        sys.executable, path)


def configure(set_option):
    """helper_command of each context, reading CONFIG.

    :param set_option: callable(group, name, value) that sets an option
        (a config fixture's, or CONF.set_override).
    """
    command = helper_command(_config_path())
    for section in [c.cfg_section for c in privsep.CONTEXTS] + list(
            OS_VIF_SECTIONS):
        set_option(section, 'helper_command', command)


def user_tempdir(account, parent='/tmp'):
    """A new directory of account's in parent, made tempfile's default.

    The privsep clients make their sockets' directories there; a test
    runner's TMPDIR is root's 0700. parent must be searchable by all.
    :returns: its path (the caller removes it).
    """
    path = tempfile.mkdtemp(prefix='novalxc-test-', dir=parent)
    os.chown(path, account.pw_uid, account.pw_gid)
    tempfile.tempdir = path
    return path


def _config_path():
    with _lock:
        if _config['path'] is None:
            # Not in a test's TMPDIR: it outlives the test.
            fd, path = tempfile.mkstemp(prefix='novalxc-test-privsep-',
                                        suffix='.conf', dir='/tmp')
            os.close(fd)
            atexit.register(_unlink, path)
            _config['path'] = path
        return _config['path']


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def refresh():
    """Write CONFIG with this process's roots; restart daemons if new.

    The daemons read their roots once, at start (privsep._roots_config
    gives a root-mode daemon the same text): a daemon started before a
    root was added is stopped, and its next call starts it again.
    """
    text = privsep._roots_config(CONF)
    with _lock:
        if text == _config['text']:
            return
        path = _config_path()
        with open(path + '.tmp', 'w') as f:
            f.write(text)
        os.chmod(path + '.tmp', 0o644)
        os.rename(path + '.tmp', path)
        _config['text'] = text
    for context in privsep.CONTEXTS:
        if context.channel is not None:
            context.stop()


def grant_code(account):
    """Let account cross every directory down to the code it runs.

    The driver imports lazily (os-vif's objects, stevedore's entry
    points), as the user: the interpreter's library, the test
    environment and the checkout must be reachable, and a test runner's
    may sit below 0700 directories (pyenv in root's home, tox's .tox, a
    CI clone made by mktemp). Each directory on the way that others
    cannot search gets a POSIX ACL entry (acl(5)) giving account search
    alone: nothing is listed or read that the files' own modes do not
    allow. Idempotent.

    :raises subprocess.CalledProcessError: setfacl failed (package acl).
    """
    tops = {os.path.realpath(p) for p in sys.path if os.path.isdir(p)}
    tops |= {os.getcwd(), os.path.realpath(sys.prefix),
             os.path.dirname(os.path.realpath(sys.executable))}
    needed = {path for path, _mode in host.unsearchable(tops)}
    for path in sorted(needed):
        subprocess.run(['setfacl', '-m', 'u:%s:x' % account.pw_name, path],
                       check=True)


def prepare(account, lxc_path, state_path, ids_path):
    """novalxc-prepare-host for the driver's directories (as root).

    And the test's Open vSwitch socket (NOVALXC_TEST_OVSDB) the user's
    group's, as the all-in-one makes its own: os-vif's and the driver's
    OVSDB calls run in nova-compute.
    """
    grant_code(account)
    hostdirs.prepare(account.pw_uid, account.pw_gid, lxc_path, state_path,
                     ids_path, log=lambda line: None)
    ovsdb = os.environ.get('NOVALXC_TEST_OVSDB', '')
    if ovsdb.startswith('unix:') and os.path.exists(ovsdb[5:]):
        os.chown(ovsdb[5:], 0, account.pw_gid)
        os.chmod(ovsdb[5:], 0o660)


_add_roots = privsep.add_roots
_refresh_root_daemons = privsep.refresh_root_daemons


def _add_roots_and_refresh(*paths):
    _add_roots(*paths)
    refresh()


def _refresh_all():
    _refresh_root_daemons()
    refresh()


def install():
    """Make privsep's root changes reach the sudo-started daemons.

    add_roots and refresh_root_daemons restart only the daemons root
    starts itself; in this mode CONFIG must follow, and the daemons too.
    Called once per process (idempotent).
    """
    privsep.add_roots = _add_roots_and_refresh
    privsep.refresh_root_daemons = _refresh_all
