"""External commands' argv: lxc-*, unshare, qemu-img, ovs-vsctl.

The commands that act on a container (lxc-start, lxc-stop, lxc-info,
lxc-ls, lxc-freeze, lxc-unfreeze) run in a privsep daemon, through
:mod:`novalxcdriver.privsep.lxctools`; the functions here are their
callers' names for them. The rest (the ``unshare`` that holds a user
namespace open for an idmapped mount or runs a snapshot's find and tar as
the container's root, ovs-vsctl, mkfs, cp and qemu-img) still run here,
through :func:`novalxcdriver.command.execute`: an argv list, never a
shell, with a timeout (qemu-img also under resource limits). Option
meanings follow the LXC 5 man pages (lxc-start(1), lxc-stop(1),
lxc-info(1), lxc-ls(1), lxc-freeze(1)).
"""

import contextlib
import os
import subprocess
import time

from oslo_concurrency import processutils
from oslo_log import log as logging

from novalxcdriver import command
from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver.privsep import lxctools

CONF = conf.CONF
LOG = logging.getLogger(__name__)

# Modules that run a command call lxc.execute (one name to mock in tests).
execute = command.execute
# lxc-info -s prints these; see lxc_state_t in LXC's lxccontainer.h.
STATES = ('STOPPED', 'STARTING', 'RUNNING', 'STOPPING', 'ABORTING',
          'FREEZING', 'FROZEN', 'THAWED')


def write_config(name, lxc_path, text):
    """Replace the container's config; see lxctools.write_config."""
    lxctools.write_config(name, lxc_path, text)


def start(name, lxc_path):
    """lxc-start -d; see :func:`novalxcdriver.privsep.lxctools.start`."""
    lxctools.start(name, lxc_path)


def stop(name, lxc_path, timeout):
    """Clean halt (lxc.signal.halt) then, after ``timeout`` seconds, kill."""
    lxctools.stop(name, lxc_path, timeout)


def request_halt(name, lxc_path, timeout):
    """Ask for a clean halt and wait up to ``timeout`` seconds; never kill.

    :returns: True if the container stopped within the timeout.
    """
    return lxctools.request_halt(name, lxc_path, timeout)


def kill(name, lxc_path):
    """lxc-stop -k: SIGKILL init at once."""
    lxctools.kill(name, lxc_path)


def reboot(name, lxc_path, timeout):
    """Request a clean reboot (lxc.signal.reboot) and wait for it.

    :returns: True if the container rebooted within ``timeout`` seconds.
    """
    return lxctools.reboot(name, lxc_path, timeout)


def freeze(name, lxc_path):
    lxctools.freeze(name, lxc_path)


def unfreeze(name, lxc_path):
    lxctools.unfreeze(name, lxc_path)


def info(name, lxc_path):
    """State and init PID of one container.

    :returns: (state, pid): state is one of STATES, pid an int or
        None.
    :raises ContainerNotFound: LXC does not know the container.
    """
    state, pid = lxctools.info(name, lxc_path)
    return state, pid


def states(lxc_path):
    """State and init pid of every container under lxc_path (one lxc-ls).

    :returns: dict of container name to (state, pid): state one of
        STATES, pid an int or None.
    """
    # Through privsep's channel the pairs arrive as lists.
    return {name: tuple(pair)
            for name, pair in lxctools.states(lxc_path).items()}


def console_argv(name, lxc_path):
    """lxc-console on the container's /dev/console (tty 0), escapes off.

    With no escape key every byte reaches the container (lxc-console(1));
    its stdin and stdout are the client's.
    """
    return ['lxc-console', '-n', name, '-P', lxc_path, '-t', '0',
            '-e', '-1']


def monitor_pid(init_pid):
    """The pid of the LXC monitor of the container whose init is init_pid.

    The monitor (``[lxc monitor] PATH NAME``) is init's parent and lives
    while the container runs, across reboots from inside, which start a
    new init under the same monitor.

    :returns: int, or None when init is gone or its parent is not a
        monitor.
    """
    try:
        with open('/proc/%d/stat' % init_pid) as f:
            # Field 4 follows "(comm)", which may hold spaces.
            ppid = int(f.read().rpartition(')')[2].split()[1])
        with open('/proc/%d/cmdline' % ppid, 'rb') as f:
            parent = f.read()
    except (OSError, ValueError, IndexError):
        return None
    return ppid if parent.startswith(b'[lxc monitor]') else None


# -- disk images: qemu-img(1) --

def qemu_img_info(path, fmt, cpu_time, address_space):
    """``qemu-img info --output=json`` of path read as fmt (never probed).

    :param cpu_time: seconds of CPU the command may use (prlimit).
    :param address_space: bytes of address space it may map (prlimit).
    :returns: the JSON text.
    """
    out, _err = execute(
        'env', 'LC_ALL=C', 'LANG=C', 'qemu-img', 'info', '-f', fmt,
        '--output=json', path,
        prlimit=processutils.ProcessLimits(cpu_time=cpu_time,
                                           address_space=address_space))
    return out


def qemu_img_convert(source, dest, in_fmt, out_fmt, timeout, cpu_time,
                     address_space):
    """``qemu-img convert -f in_fmt -O out_fmt source dest``.

    A raw dest is sparse where the source has no data.

    :param timeout: seconds of wall time.
    :param cpu_time: seconds of CPU the command may use (prlimit).
    :param address_space: bytes of address space it may map (prlimit).
    """
    execute('env', 'LC_ALL=C', 'LANG=C', 'qemu-img', 'convert', '-f',
            in_fmt, '-O', out_fmt, source, dest, timeout=timeout,
            prlimit=processutils.ProcessLimits(cpu_time=cpu_time,
                                               address_space=address_space))


def start_daemon(argv, log_path, pass_fds=()):
    """Start argv in a session of its own, outliving this process.

    Its output goes to log_path. Returns at once; the caller checks that
    the daemon does its job.

    :param pass_fds: file descriptors it inherits (others are closed).
    :returns: its pid.
    """
    with open(log_path, 'ab') as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, close_fds=True,
                                pass_fds=pass_fds,
                                start_new_session=True).pid


def version():
    """The installed LXC version as a string, e.g. '5.0.2'."""
    out, _err = execute('lxc-start', '--version')
    return out.strip()


def user_namespace(idmap):
    """Yield an open fd of a user namespace mapping idmap's range to 0.

    The namespace is held by a short-lived ``unshare --user cat``
    (util-linux), which subprocess starts with vfork; this process, root
    in the parent namespace, writes its uid_map and gid_map
    (user_namespaces(7), "Defining user and group ID mappings"). idmap is
    one of ids.py's, carved from root's /etc/subuid and /etc/subgid
    ranges. Not a fork of this process: on these machines forking a
    nova-compute-sized process (150 MB) costs 13 ms, twice the whole
    unshare. The fd alone keeps the namespace alive once the process is
    gone.

    :param idmap: an ids.Idmap (uid_start, gid_start, size).
    :raises CommandFailed: unshare exited first, or a map was refused.
    :raises CommandTimedOut: unshare did not unshare in time.
    """
    def write_maps(pid):
        for name, start in (('uid_map', idmap.uid_start),
                            ('gid_map', idmap.gid_start)):
            try:
                with open('/proc/%d/%s' % (pid, name), 'w') as f:
                    f.write('0 %d %d\n' % (start, idmap.size))
            except OSError as e:
                raise exception.CommandFailed(
                    cmd='writing /proc/%d/%s' % (pid, name),
                    exit_code=e.errno, stderr=str(e))
    return _held_namespace(['unshare', '--user', 'cat'], _unshared(),
                           write_maps)


def _unshared():
    """callable(pid): whether pid has left this process's user namespace."""
    own = os.stat('/proc/self/ns/user').st_ino

    def unshared(pid):
        try:
            return os.stat('/proc/%d/ns/user' % pid).st_ino != own
        except FileNotFoundError:
            return False
    return unshared


def shifting_namespace(disk_idmap, idmap):
    """Yield an open fd of a user namespace shifting disk_idmap to idmap.

    For an idmapped mount (mount_setattr(2)) of disks a migration brought:
    a file owned by ``disk_idmap.uid_start + n`` shows as owned by
    ``idmap.uid_start + n`` (gids alike), and what the container writes
    through it lands on disk in disk_idmap's range, so the disks move on
    unchanged. On-disk uid and gid 0 stay 0: overlayfs makes its work
    directories as the mounter's root, which must be mapped (design.md).

    unshare(1) of util-linux 2.38 keeps only the last of several
    ``--map-users``, so the maps are written with newuidmap(1) and
    newgidmap(1), which check them against root's /etc/subuid and
    /etc/subgid.

    :param disk_idmap, idmap: ids.Idmap of equal size.
    :raises CommandFailed, CommandTimedOut: as user_namespace.
    """
    if disk_idmap.size != idmap.size:
        raise ValueError('idmaps of %d and %d ids' % (disk_idmap.size,
                                                      idmap.size))
    uid_map = ['%d' % disk_idmap.uid_start, '%d' % idmap.uid_start,
               '%d' % idmap.size, '0', '0', '1']
    gid_map = ['%d' % disk_idmap.gid_start, '%d' % idmap.gid_start,
               '%d' % idmap.size, '0', '0', '1']

    def write_maps(pid):
        execute('newuidmap', str(pid), *uid_map)
        execute('newgidmap', str(pid), *gid_map)
    return _held_namespace(['unshare', '--user', 'cat'], _unshared(),
                           write_maps)


@contextlib.contextmanager
def _held_namespace(argv, ready, setup=None):
    """Yield an open fd of the user namespace an ``unshare ... cat`` makes.

    :param ready: callable(pid) true once the namespace is there.
    :param setup: callable(pid) run then (e.g. writing its maps).
    :raises CommandFailed: unshare exited first.
    :raises CommandTimedOut: not ready within [lxc] command_timeout.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, close_fds=True)
    fd = None
    try:
        deadline = time.monotonic() + CONF.lxc.command_timeout
        while True:
            if proc.poll() is not None:
                raise exception.CommandFailed(
                    cmd=' '.join(argv), exit_code=proc.returncode,
                    stderr=proc.stderr.read().decode(errors='replace'))
            if ready(proc.pid):
                break
            if time.monotonic() > deadline:
                raise exception.CommandTimedOut(
                    cmd=' '.join(argv), timeout=CONF.lxc.command_timeout)
            time.sleep(0.001)
        if setup is not None:
            setup(proc.pid)
        fd = os.open('/proc/%d/ns/user' % proc.pid,
                     os.O_RDONLY | os.O_CLOEXEC)
    finally:
        proc.stdin.close()
        if fd is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    try:
        yield fd
    finally:
        os.close(fd)


# A snapshot's readers and compressor yield to the containers' own work:
# nice(1) and ionice(1) best-effort, lowest priority.
_BACKGROUND = ['nice', '-n', '10', 'ionice', '-c', '2', '-n', '7']


def userns_popen(idmap, argv, cwd, stdin=None, stdout=None, stderr=None,
                 background=False):
    """Start argv as root of a new user namespace mapping idmap's range.

    The process sees the container's owners (host uid start + n as n)
    with only the rights the container's root has over them: a
    container's files read as the container sees them, and nothing of
    the host's beyond what "other" may read. Not the container's own
    namespace: its processes could ptrace ours there. Supplementary
    groups are dropped before the exec.

    :param idmap: an ids.Idmap.
    :param argv: list of str; run with no shell.
    :param cwd: directory to start in (entered as host root, before the
        namespace exists, so its ancestors need not be searchable).
    :param background: at low CPU and I/O priority (_BACKGROUND).
    :returns: the subprocess.Popen; the caller waits for it.
    """
    full = (_BACKGROUND if background else []) + [
        'unshare', '--user',
        '--map-users=%d,0,%d' % (idmap.uid_start, idmap.size),
        '--map-groups=%d,0,%d' % (idmap.gid_start, idmap.size),
        '--setuid', '0', '--setgid', '0', '--'] + list(argv)
    return subprocess.Popen(full, cwd=cwd, stdin=stdin, stdout=stdout,
                            stderr=stderr, close_fds=True, extra_groups=[],
                            start_new_session=True)


# -- Open vSwitch: ovs-vsctl(8) --

def ovs_del_port(db, dev):
    """Remove port dev from whichever Open vSwitch bridge holds it.

    :param db: the OVSDB to talk to, as ovs-vsctl --db takes it
        (e.g. unix:/run/openvswitch/db.sock).
    """
    execute('ovs-vsctl', '--db=' + db,
            '--timeout=%d' % CONF.lxc.command_timeout,
            '--if-exists', 'del-port', dev)
