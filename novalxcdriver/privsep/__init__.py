"""The driver's privileged contexts (oslo.privsep); starting their daemons.

nova-compute is meant to run unprivileged; what needs a capability runs in
a privsep daemon, reached through the entry points of this package's
modules (the prefix every context below requires). An entry point takes
plain values (device names, a pid, a MAC) and checks them in the daemon
before doing anything: it never takes a command line, and a refusal is
:class:`novalxcdriver.exception.PrivilegedCallRefused`.

Contexts, one per set of capabilities (capabilities(7)):

- ``lxc_admin`` (``[novalxc_lxc_admin]``): the lxc-* tools that act on
  one container (lxctools.py). They need all of root (lxc-start makes
  namespaces, mounts and cgroups), and an exec'd program run as uid 0
  gets the bounding set whatever the daemon kept (execve(2),
  capabilities(7) "Capabilities and execution of programs by root"), so
  the context keeps no capability of its own: what it restricts is the
  call, by name, on a container of a driver root, whose directory and
  config must be root's (a config is code: its hooks run as root).
- ``net_admin`` (``[novalxc_net_admin]``): the NICs' veth pairs, through
  netlink in the daemon itself (pyroute2), never an exec'd command, so
  that the capability set is all the daemon can use. CAP_NET_ADMIN for
  links; CAP_SYS_ADMIN and CAP_SYS_PTRACE to enter a running container's
  network namespace (setns(2) needs the first, opening another uid's
  /proc/PID/ns/net the second, ptrace(2) "access mode checking").

- ``storage_admin`` (``[novalxc_storage_admin]``): mounts and loop
  devices, through syscalls in the daemon (storage.py): CAP_SYS_ADMIN
  for them, and what overlayfs needs of its mounter (see below); the
  disks' images, their tools and ioctls (disks.py); the files given
  to a container's root (ownership.py), with CAP_CHOWN; a
  snapshot's stage and readers (snapshots.py); the image cache's
  directories and a disk image's unpack (imagecache.py), its tarball's
  confined unpacker (unpack.py) and qemu-img (qemuimg.py).

Driver roots: an entry point acts only under a driver root, an ``[lxc]``
``lxc_path`` or ``state_path`` (or ``extra_driver_roots``) of the
daemon's own configuration, never under a path the caller made up.

Starting a daemon: as oslo.privsep does by default (``sudo privsep-helper``
with nova-compute's config files, or ``[<section>] helper_command``),
except when nova-compute runs as root with no helper_command configured:
root needs no sudo, so the daemon is this Python running
``oslo_privsep.daemon`` directly (helper_command below). A fresh
interpreter rather than oslo.privsep's fork method: a fork would carry
nova-compute's open sockets and threads into the daemon. Root trusts
itself, so such a daemon also reads a config file written for it: the
driver roots of this process (add_roots) and its migration SSH options,
which may differ from the config files' when a process runs several
drivers (the functional tests) or sets its options in memory (tests,
bench; refresh_root_daemons).
"""

import copy
import os
import shlex
import sys
import tempfile

from oslo_config import cfg
from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

from novalxcdriver import conf as conf_mod
from novalxcdriver import exception

# What root runs instead of "[sudo] privsep-helper": the same daemon.
ROOT_DAEMON = [sys.executable, '-m', 'oslo_privsep.daemon']


def refuse(call, reason):
    """Raise PrivilegedCallRefused: entry point call refused, and why."""
    raise exception.PrivilegedCallRefused(call=call, reason=reason)


def check_positive_ints(call, **values):
    """Refuse unless each value is an int above 0 (a bool is not one).

    :param values: name=value, named in the refusal (the first wrong
        one, in the order given).
    """
    for name, value in values.items():
        if type(value) is not int or value <= 0:
            refuse(call, '%s %r is not a positive int' % (name, value))


def helper_command(context_command, helper_command_opt):
    """The command that starts a privsep daemon, as a list.

    :param context_command: what oslo.privsep would run (its
        PrivContext.helper_command), ending in ``--privsep_context X
        --privsep_sock_path Y``.
    :param helper_command_opt: the context's ``helper_command`` option.
    :returns: context_command, unless this process is root and no
        helper_command is configured; then the same with its
        ``[sudo|rootwrap] privsep-helper`` replaced by this interpreter
        running oslo_privsep.daemon.
    """
    if os.geteuid() != 0 or helper_command_opt:
        return context_command
    i = context_command.index('privsep-helper')
    return ROOT_DAEMON + context_command[i + 1:]


def root_helper_command_opt(conf):
    """helper_command for another library's context when run as root.

    For os-vif's contexts, which are plain PrivContexts: the value to give
    their ``helper_command`` option (it is a string, split by shlex; the
    daemon's --privsep_context and --privsep_sock_path are appended to
    it). With conf's config files, as privsep-helper would get them.
    """
    cmd = list(ROOT_DAEMON)
    for opt, arg in (('config_file', '--config-file'),
                     ('config_dir', '--config-dir')):
        try:
            paths = conf[opt] or ()
        except cfg.NoSuchOptError:  # conf was never parsed (tests)
            paths = ()
        for path in paths:
            cmd += [arg, path]
    return ' '.join(shlex.quote(arg) for arg in cmd)


# Driver roots this process asked for (add_roots); only this process's
# own daemons and in-process contexts see them.
_added_roots = set()
# driver_roots' results: {(lxc_path, state_path, extra roots, added): roots}
_roots_of = {}


def _normalized(path):
    return os.path.normpath(os.path.abspath(path))


def driver_roots(conf=conf_mod.CONF):
    """Directories in which entry points may act, normalized.

    :returns: frozenset of str: ``[lxc] lxc_path``, ``state_path`` and
        ``extra_driver_roots`` of conf, and in this process also the
        roots given to add_roots.
    """
    lxc = conf.lxc
    key = (lxc.lxc_path, lxc.state_path, tuple(lxc.extra_driver_roots),
           frozenset(_added_roots))
    roots = _roots_of.get(key)
    if roots is None:
        # Every path check asks (about 20 per spawn): normalizing is most
        # of the cost. The options are read each time (tests and a
        # reload may change them); few distinct values ever occur.
        roots = _roots_of[key] = frozenset(
            _normalized(p) for p in key[:2] + key[2] + tuple(key[3]))
    return roots


def add_roots(*paths):
    """Ask this process's daemons to accept paths as driver roots.

    For a process that runs a driver whose roots its config files do not
    give (tests, bench). Only a daemon this process starts as root with
    no helper_command gets them (root trusts root); a daemon started
    through sudo or rootwrap keeps its config files' roots. A daemon
    started before, which lacks one, is stopped: its next call starts it
    again with them.

    :param paths: absolute paths, without commas or line breaks (they
        go into a config file's list option).
    :raises ValueError: a path is relative or holds such a character.
    """
    new = set()
    for path in paths:
        if not os.path.isabs(path) or any(c in path for c in ',\n\r'):
            raise ValueError('not a usable driver root: %r' % (path,))
        new.add(_normalized(path))
    new -= _added_roots
    if not new:
        return
    _added_roots.update(new)
    for context in CONTEXTS:
        if context.uses_roots and context.channel is not None and \
                context.root_mode():
            context.stop()


def _roots_config(conf):
    """The config file root gives the daemons it starts itself.

    The driver roots of this process, and the migration's SSH options
    (privsep.migrationcopy reads them in the daemon) as this process has
    them, which may be set in memory (tests, bench). A value a config
    file cannot hold as it is (a line break, a '$') is left to the
    config files.
    """
    roots = sorted(driver_roots(conf))
    text = ('[lxc]\nlxc_path = %s\nstate_path = %s\n'
            'extra_driver_roots = %s\n' % (
                _normalized(conf.lxc.lxc_path),
                _normalized(conf.lxc.state_path), ','.join(roots)))
    options = conf.lxc.migration_ssh_options
    for name, value, ok in (
            ('migration_ssh_user', conf.lxc.migration_ssh_user, True),
            ('migration_ssh_port', conf.lxc.migration_ssh_port, True),
            ('migration_ssh_options', ','.join(options),
             not any(',' in o for o in options))):
        value = str(value)
        # oslo.config substitutes $name (and a list's items once more,
        # so even $$ does not hold).
        if ok and not any(c in value for c in '\n\r$') and \
                value == value.strip():
            text += '%s = %s\n' % (name, value)
    return text


def refresh_root_daemons():
    """Stop the daemons root started with another config than now's.

    For a process that changes the options _roots_config writes in
    memory (tests, bench): their next call starts them again with the
    new values. A daemon started through sudo or rootwrap is left: it
    reads only its config files.
    """
    text = _roots_config(conf_mod.CONF)
    for context in CONTEXTS:
        if context.uses_roots and context.channel is not None and \
                context.root_mode() and context.started_config != text:
            context.stop()


class _Context(priv_context.PrivContext):
    """A PrivContext that root starts without sudo (module docstring).

    :ivar uses_roots: its entry points act under driver roots, so its
        daemon needs this process's (add_roots).
    """

    def __init__(self, *args, uses_roots=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.uses_roots = uses_roots
        self._roots_file = None
        # What _roots_config gave its running daemon (root mode).
        self.started_config = None

    def root_mode(self):
        """Whether this process starts the daemon itself, as root."""
        return os.geteuid() == 0 and not self.conf.helper_command

    def helper_command(self, sockpath):
        cmd = helper_command(super().helper_command(sockpath),
                             self.conf.helper_command)
        if self._roots_file is not None:
            # Last, so that it overrides the config files' [lxc] roots.
            i = cmd.index('--privsep_context')
            cmd[i:i] = ['--config-file', self._roots_file]
        return cmd

    def start(self, method=priv_context.Method.ROOTWRAP):
        if not (self.uses_roots and self.root_mode()):
            return super().start(method)
        # The daemon reads its config files before it connects back, so
        # the file can go once start returns. mkstemp: mode 0600.
        with tempfile.NamedTemporaryFile(
                'w', prefix='novalxc-privsep-', suffix='.conf') as f:
            self.started_config = _roots_config(conf_mod.CONF)
            f.write(self.started_config)
            f.flush()
            self._roots_file = f.name
            try:
                return super().start(method)
            finally:
                self._roots_file = None


def start_daemons():
    """Start the driver's privsep daemons that are not running yet.

    Their first call would start them anyway, each taking 1.5 to 2 s (a
    Python that imports nova); started with the driver, the first boot
    does not wait for them, and one that cannot start (no sudo rule or
    rootwrap filter) stops nova-compute's start with the reason.

    :raises: what oslo.privsep's start raises (e.g. FailedToDropPrivileges,
        OSError).
    """
    for context in CONTEXTS:
        # Not in client mode, its entry points run in this process.
        if context.client_mode and context.channel is None:
            context.start()


lxc_admin = _Context(
    'novalxcdriver.privsep',
    cfg_section='novalxc_lxc_admin',
    pypath=__name__ + '.lxc_admin',
    capabilities=[],
    uses_roots=True,
)


net_admin = _Context(
    'novalxcdriver.privsep',
    cfg_section='novalxc_net_admin',
    pypath=__name__ + '.net_admin',
    capabilities=[caps.CAP_NET_ADMIN, caps.CAP_SYS_ADMIN,
                  caps.CAP_SYS_PTRACE],
)

# Overlayfs checks every access to its layers against its mounter's
# credentials as well (overlayfs.rst, "Permission model"): a container's
# root can do on its rootfs only what this daemon's capabilities allow,
# so the set covers what a container's root does to its own files
# (chown, setuid bits, file capabilities, reading and writing others'
# files) besides the mounts, loop devices and idmaps' user namespaces
# (SETUID and SETGID write their maps, SYS_PTRACE opens their
# /proc/PID/ns/user and finds a busy mount's users, KILL ends what a
# crash left reading a snapshot's view).
storage_admin = _Context(
    'novalxcdriver.privsep',
    cfg_section='novalxc_storage_admin',
    pypath=__name__ + '.storage_admin',
    capabilities=[caps.CAP_SYS_ADMIN, caps.CAP_CHOWN, caps.CAP_DAC_OVERRIDE,
                  caps.CAP_DAC_READ_SEARCH, caps.CAP_FOWNER,
                  caps.CAP_FSETID, caps.CAP_SETFCAP, caps.CAP_MKNOD,
                  caps.CAP_SETUID, caps.CAP_SETGID, caps.CAP_SYS_PTRACE,
                  caps.CAP_KILL],
    uses_roots=True,
)

CONTEXTS = (lxc_admin, net_admin, storage_admin)

# A call holds one of its daemon's threads for as long as its command
# runs, so pools are sized for the calls that wait, not for the CPUs
# (oslo.privsep's default): an lxc-stop waits up to a shutdown timeout
# (minutes); a disk's mkfs, e2fsck or resize2fs takes milliseconds to
# minutes, and spawns at concurrency 10 each make one or two disks.
THREAD_POOL_SIZES = {lxc_admin: 64, storage_admin: 16}
for _ctx, _size in THREAD_POOL_SIZES.items():
    cfg.CONF.set_default('thread_pool_size', _size, group=_ctx.cfg_section)


def list_opts():
    """Each context's section, for oslo-config-generator."""
    result = []
    for ctx in CONTEXTS:
        opts = priv_context.OPTS
        if ctx in THREAD_POOL_SIZES:
            opts = [copy.copy(opt) for opt in opts]
            pool = next(o for o in opts if o.name == 'thread_pool_size')
            pool.default = THREAD_POOL_SIZES[ctx]
            pool.sample_default = None
        result.append((ctx.cfg_section, opts))
    return result
