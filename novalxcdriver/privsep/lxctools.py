"""Privileged entry points for the lxc-* tools (``lxc_admin`` context).

One per action on a container: write_config (the one way a config is
written: only one that passes privsep.lxcconf's policy), make_dir and
remove_dir (the container's directory, removed only when the daemon
finds it the instance's), set_marker and clear_marker (the state files
of MARKERS), start, stop
(clean halt, then kill), request_halt (never kill), kill, reboot, freeze,
unfreeze, info, and states for every container of an lxc_path. Each runs
its tool in the daemon with an argv it builds itself (never a shell),
after checking in the daemon that:

- lxc_path is a driver root of the daemon's configuration
  (:func:`novalxcdriver.privsep.driver_roots`), given as an absolute,
  normalized path;
- name is a container name (NAME_RE: a plain word, so that
  ``<lxc_path>/<name>`` stays one level below the root);
- if ``<lxc_path>/<name>`` exists, it is a directory (not a symlink)
  owned by root and writable by no one else, and so is its ``config``
  file when there is one: LXC runs a config's hooks as root, so a config
  anyone else could have written is code run as root;
- a timeout is an int of seconds from 0 to MAX_TIMEOUT.

A refusal raises PrivilegedCallRefused and runs nothing. A tool's failure
comes back as CommandFailed or CommandTimedOut, and lxc-info's "doesn't
exist" as ContainerNotFound. Option meanings follow the LXC 5 man pages
(lxc-start(1), lxc-stop(1), lxc-info(1), lxc-ls(1), lxc-freeze(1)).

The daemon's umask is 0 (oslo.privsep sets it); every tool runs with
022, as from a shell, so that what LXC creates (its log, the container's
console log, cgroup directories it makes) is not world-writable.
"""

import os
import re
import shutil
import stat

from oslo_utils import uuidutils

from novalxcdriver import command
from novalxcdriver import conf
from novalxcdriver import durable
from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import privsep
from novalxcdriver.privsep import lxcconf

CONF = conf.CONF

# A container name: LXC makes it a directory under the lxc_path, so a
# plain word (no '/', no leading dot, no shell or control characters).
# \Z, not $: $ also matches before a trailing newline. spec checks names
# with it too.
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z')
MAX_TIMEOUT = 86400  # seconds; a day is beyond any shutdown timeout.
MAX_CONFIG = 1 << 20  # bytes; the driver's configs are a few KiB.
UMASK = 0o022
# Files in a container's directory that keep a state across the driver's
# own restarts: Nova's suspend (a freeze that a start undoes) and a
# snapshot's cgroup freeze (snapshot.recover undoes it).
MARKERS = ('suspended', 'snapshot-frozen')
MAX_MARKER = 256  # bytes of a marker's text (an image ID)
# Bytes of the console log's tail Nova gets, as libvirt's.
MAX_CONSOLE_OUTPUT = 100 * 1024
CONSOLE_LOGS = ('console.log.1', 'console.log')  # oldest first
# What LXC and the driver put in a container's directory, besides
# durable.write's temporary files (.<name>.<random>.tmp): a directory
# holding anything else is not only the driver's.
OWN_FILES = frozenset(('config', 'console.log', 'console.log.1', 'lxc.log',
                       'serial-console.json', 'serial-console.log') +
                      MARKERS)
_TEMPORARY_RE = re.compile(r'^\.(config|serial-console\.json|%s)\.'
                           r'[A-Za-z0-9_]+\.tmp\Z'
                           % '|'.join(re.escape(m) for m in MARKERS))


def check_lxc_path(call, lxc_path):
    """Refuse lxc_path unless it is one of the daemon's driver roots."""
    if not isinstance(lxc_path, str) or not os.path.isabs(lxc_path) or \
            os.path.normpath(lxc_path) != lxc_path:
        privsep.refuse(call, '%r is not an absolute normalized path'
                       % (lxc_path,))
    if lxc_path not in privsep.driver_roots():
        privsep.refuse(call, '%s is not a driver root of this daemon\'s '
                       'configuration' % lxc_path)


def _check_root_owned(call, path, want):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not want(st.st_mode):
        privsep.refuse(call, '%s is a symlink or of an unexpected type'
                       % path)
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        privsep.refuse(call, '%s is not root\'s alone (uid %d, mode %o)'
                       % (path, st.st_uid, stat.S_IMODE(st.st_mode)))


def check_container(call, name, lxc_path):
    """Refuse unless name is a container of lxc_path that root alone owns.

    :returns: the container's directory, ``<lxc_path>/<name>``.
    """
    check_lxc_path(call, lxc_path)
    if not isinstance(name, str) or not NAME_RE.match(name):
        privsep.refuse(call, '%r is not a container name' % (name,))
    container_dir = os.path.join(lxc_path, name)
    _check_root_owned(call, container_dir, stat.S_ISDIR)
    _check_root_owned(call, os.path.join(container_dir, 'config'),
                      stat.S_ISREG)
    return container_dir


def check_timeout(call, timeout):
    """Refuse timeout unless it is an int from 0 to MAX_TIMEOUT seconds."""
    if type(timeout) is not int or not 0 <= timeout <= MAX_TIMEOUT:
        privsep.refuse(call, 'timeout %r is not an integer from 0 to %d '
                       'seconds' % (timeout, MAX_TIMEOUT))


def _run(tool, name, lxc_path, *args, **kwargs):
    os.umask(UMASK)
    return command.execute(tool, '-n', name, '-P', lxc_path, *args,
                           **kwargs)


def _runs_until(tool, name, lxc_path, flag, timeout):
    # lxc-stop exits non-zero when what it waits for does not happen.
    try:
        _run(tool, name, lxc_path, flag, '-t', str(timeout),
             timeout=timeout + CONF.lxc.command_timeout)
    except exception.CommandFailed:
        return False
    return True


@privsep.lxc_admin.entrypoint
def write_config(name, lxc_path, text):
    """Replace the container's config with text (atomically, mode 0644).

    :param text: str, the whole config; checked by lxcconf.check against
        this daemon's driver roots, root's subordinate ids and its
        ``[lxc] cgroup_parent``.
    :raises PrivilegedCallRefused: the checks above, a text over
        MAX_CONFIG bytes, the policy's refusal, or no container directory.
    :raises IdmapUnavailable: root's subuid or subgid range is unreadable.
    :raises OSError: nothing was replaced (e.g. ENOSPC).
    """
    call = 'write_config'
    container_dir = check_container(call, name, lxc_path)
    if not isinstance(text, str) or len(text.encode()) > MAX_CONFIG:
        privsep.refuse(call, 'a config is a str of at most %d bytes'
                       % MAX_CONFIG)
    subuids, subgids = ids.read_subordinate_ranges()
    try:
        lxcconf.check(text, container_dir, privsep.driver_roots(),
                      [subuids], [subgids], lxcconf.LXCFS_MOUNT,
                      cgroup_parent=CONF.lxc.cgroup_parent)
    except lxcconf.Refused as e:
        privsep.refuse(call, str(e))
    if not os.path.isdir(container_dir):
        privsep.refuse(call, 'no container directory %s' % container_dir)
    os.umask(UMASK)
    durable.write(os.path.join(container_dir, 'config'), text, mode=0o644)


def _check_marker(call, marker):
    if marker not in MARKERS:
        privsep.refuse(call, '%r is not one of the markers %s'
                       % (marker, ', '.join(MARKERS)))


@privsep.lxc_admin.entrypoint
def set_marker(name, lxc_path, marker, text=''):
    """Write the marker file ``<lxc_path>/<name>/<marker>`` (0644).

    :param marker: one of MARKERS.
    :param text: str of at most MAX_MARKER bytes, without NUL.
    :raises PrivilegedCallRefused: the container checks, another marker
        or text, or no container directory.
    :raises OSError: nothing was written (e.g. ENOSPC).
    """
    call = 'set_marker'
    container_dir = check_container(call, name, lxc_path)
    _check_marker(call, marker)
    if not isinstance(text, str) or '\0' in text or \
            len(text.encode()) > MAX_MARKER:
        privsep.refuse(call, 'a marker\'s text is a str of at most %d '
                       'bytes, without NUL' % MAX_MARKER)
    if not os.path.isdir(container_dir):
        privsep.refuse(call, 'no container directory %s' % container_dir)
    os.umask(UMASK)
    durable.write(os.path.join(container_dir, marker), text, mode=0o644)


@privsep.lxc_admin.entrypoint
def clear_marker(name, lxc_path, marker):
    """Remove the marker file ``<lxc_path>/<name>/<marker>``.

    :param marker: one of MARKERS.
    :returns: True if it existed.
    :raises PrivilegedCallRefused: the container checks, another marker.
    """
    container_dir = check_container('clear_marker', name, lxc_path)
    _check_marker('clear_marker', marker)
    try:
        os.unlink(os.path.join(container_dir, marker))
    except FileNotFoundError:
        return False
    return True


def only_own_files(entries):
    """Whether a container directory's entries are all LXC's or ours.

    :param entries: names in the directory.
    :returns: True if each is in OWN_FILES or a durable.write temporary.
    """
    return all(e in OWN_FILES or _TEMPORARY_RE.match(e) for e in entries)


@privsep.lxc_admin.entrypoint
def make_dir(name, lxc_path):
    """Make the container's directory ``<lxc_path>/<name>``, root's.

    0700, or 2750 when lxc_path is setgid: novalxc-prepare-host makes it
    so, with nova-compute's group, which then reads the config (the
    directory inherits the group, mkdir(2)); only root writes.

    :raises PrivilegedCallRefused: the container checks.
    :raises FileExistsError: it exists (whoever's it is, it is left).
    """
    container_dir = check_container('make_dir', name, lxc_path)
    os.umask(UMASK)
    os.makedirs(lxc_path, mode=0o711, exist_ok=True)
    shared = os.stat(lxc_path).st_mode & stat.S_ISGID
    os.mkdir(container_dir, 0o750 if shared else 0o700)


# lxc_path as novalxc-prepare-host makes it for nova-compute's group
# (hostdirs.SHARED): the containers' directories inherit the group.
SHARED_MODE = 0o2751


@privsep.lxc_admin.entrypoint
def remove_dir(name, lxc_path, instance_uuid):
    """Remove the container's directory, when it is instance_uuid's.

    The daemon's own reading of whose it is, whatever the caller says:
    its config's record (lxcconf.parse_record) names instance_uuid, or,
    with a config naming
    no one (missing, empty, torn), it holds only what LXC and the driver
    make (only_own_files). A config naming another instance, or LXC keys
    without a record, is someone else's.

    :returns: True if it was removed, False if it did not exist.
    :raises PrivilegedCallRefused: the container checks, instance_uuid
        is not a UUID, or the directory is not (only) the instance's.
    """
    call = 'remove_dir'
    container_dir = check_container(call, name, lxc_path)
    if not isinstance(instance_uuid, str) or \
            not uuidutils.is_uuid_like(instance_uuid):
        privsep.refuse(call, '%r is not an instance UUID' % (instance_uuid,))
    try:
        entries = os.listdir(container_dir)
    except FileNotFoundError:
        return False
    text = ''
    if 'config' in entries:
        with open(os.path.join(container_dir, 'config'), 'rb') as f:
            text = f.read(MAX_CONFIG).decode('utf-8', 'replace')
    owner = lxcconf.parse_record(text).get('instance_uuid')
    if owner != instance_uuid:
        if uuidutils.is_uuid_like(owner) or any(
                line.startswith('lxc.') for line in text.splitlines()):
            privsep.refuse(call, '%s is the container of %s, not of %s'
                           % (container_dir, owner or 'someone else',
                              instance_uuid))
        if not only_own_files(entries):
            privsep.refuse(call, '%s holds what neither LXC nor the driver '
                           'makes' % container_dir)
    shutil.rmtree(container_dir)
    return True


@privsep.lxc_admin.entrypoint
def start(name, lxc_path):
    """lxc-start -d: returns once the container's init has been started.

    LXC's log of the container goes to <lxc_path>/<name>/lxc.log from here
    rather than from an lxc.log.file key: every lxc-* tool that loads a
    config holding that key creates the file and its directory (LXC's
    log.c, build_dir), so an lxc-ls or lxc-info racing a destroy brought
    the removed container directory back.
    """
    container_dir = check_container('start', name, lxc_path)
    _run('lxc-start', name, lxc_path, '-d',
         '-o', os.path.join(container_dir, 'lxc.log'), '-l', 'WARN')


@privsep.lxc_admin.entrypoint
def stop(name, lxc_path, timeout):
    """Clean halt (lxc.signal.halt) then, after ``timeout`` seconds, kill."""
    check_container('stop', name, lxc_path)
    check_timeout('stop', timeout)
    _run('lxc-stop', name, lxc_path, '-t', str(timeout),
         timeout=timeout + CONF.lxc.command_timeout)


@privsep.lxc_admin.entrypoint
def request_halt(name, lxc_path, timeout):
    """Ask for a clean halt and wait up to ``timeout`` seconds; never kill.

    :returns: True if the container stopped within the timeout.
    """
    check_container('request_halt', name, lxc_path)
    check_timeout('request_halt', timeout)
    return _runs_until('lxc-stop', name, lxc_path, '--nokill', timeout)


@privsep.lxc_admin.entrypoint
def kill(name, lxc_path):
    """lxc-stop -k: SIGKILL init at once."""
    check_container('kill', name, lxc_path)
    _run('lxc-stop', name, lxc_path, '-k')


@privsep.lxc_admin.entrypoint
def reboot(name, lxc_path, timeout):
    """Request a clean reboot (lxc.signal.reboot) and wait for it.

    :returns: True if the container rebooted within ``timeout`` seconds.
    """
    check_container('reboot', name, lxc_path)
    check_timeout('reboot', timeout)
    return _runs_until('lxc-stop', name, lxc_path, '-r', timeout)


@privsep.lxc_admin.entrypoint
def freeze(name, lxc_path):
    check_container('freeze', name, lxc_path)
    _run('lxc-freeze', name, lxc_path)


@privsep.lxc_admin.entrypoint
def unfreeze(name, lxc_path):
    check_container('unfreeze', name, lxc_path)
    _run('lxc-unfreeze', name, lxc_path)


@privsep.lxc_admin.entrypoint
def info(name, lxc_path):
    """State and init PID of one container.

    :returns: [state, pid]: state is one of lxc.STATES, pid an int or None (a
        list: privsep's channel turns tuples into lists).
    :raises ContainerNotFound: LXC does not know the container.
    """
    check_container('info', name, lxc_path)
    try:
        out, _err = _run('lxc-info', name, lxc_path, '-s', '-p')
    except exception.CommandFailed as e:
        if 'doesn\'t exist' in e.kwargs['stderr']:
            raise exception.ContainerNotFound(name=name)
        raise
    fields = {}
    for line in out.splitlines():
        key, _sep, value = line.partition(':')
        fields[key.strip()] = value.strip()
    state = fields.get('State', 'STOPPED')
    pid = int(fields['PID']) if fields.get('PID', '').isdigit() else None
    return [state, pid]


@privsep.lxc_admin.entrypoint
def console_output(name, lxc_path, max_bytes):
    """The last max_bytes of the container's console log, rotation first.

    LXC writes it root's 0600 (lxc.console.logfile, lxc.console.rotate,
    lxc.container.conf(5)), so it is read here; a link or anything but a
    regular file in its place is not read.

    :param max_bytes: int, 1 to MAX_CONSOLE_OUTPUT.
    :returns: bytes (empty before the container first started).
    :raises PrivilegedCallRefused: the container checks, or max_bytes.
    """
    call = 'console_output'
    container_dir = check_container(call, name, lxc_path)
    if type(max_bytes) is not int or \
            not 0 < max_bytes <= MAX_CONSOLE_OUTPUT:
        privsep.refuse(call, 'max_bytes %r is not an integer from 1 to %d'
                       % (max_bytes, MAX_CONSOLE_OUTPUT))
    data = b''
    for log in CONSOLE_LOGS:
        try:
            fd = os.open(os.path.join(container_dir, log),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                         os.O_CLOEXEC)
        except OSError:
            # Missing, or a link (ELOOP).
            continue
        with os.fdopen(fd, 'rb') as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            f.seek(max(0, st.st_size - max_bytes))
            data += f.read(max_bytes)
    return data[-max_bytes:]


@privsep.lxc_admin.entrypoint
def states(lxc_path):
    """State and init pid of every container under lxc_path (one lxc-ls).

    :returns: dict of container name to [state, pid]: state one of
        lxc.STATES, pid an int, or None when lxc-ls shows none ('-').
    """
    check_lxc_path('states', lxc_path)
    os.umask(UMASK)
    out, _err = command.execute('lxc-ls', '-P', lxc_path, '-f', '-F',
                                'NAME,STATE,PID')
    result = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            pid = fields[2] if len(fields) > 2 else ''
            result[fields[0]] = [fields[1],
                                 int(pid) if pid.isdigit() else None]
    return result
