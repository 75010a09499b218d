"""Background processes started by the aio, tracked by PID file.

There is no systemd here: every service is a child started in its own
session (so its workers and helpers form one process group), with its
output in /var/log/novalxc-aio/<name>.log and a PID file
/run/novalxc-aio/pids/<name>.pid holding "PID STARTTIME". The start time
(field 22 of /proc/PID/stat) makes a recycled PID harmless: a process is
ours only if both match, and only ours are ever signalled.
"""

import dataclasses
import json
import os
import pwd
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from novalxc_aio import layout
from novalxc_aio import util


@dataclasses.dataclass(frozen=True)
class Service:
    """One long-running process of the cloud.

    :ivar name: short name; also names its log and PID files.
    :ivar argv: command line (a tuple, run without a shell).
    :ivar probe: callable returning True when the service answers.
    :ivar where: what it answers on, for ``status``.
    :ivar env: extra environment on top of util.clean_env().
    :ivar cwd: working directory (gunicorn reads ./gunicorn.conf.py).
    :ivar user: user to run as (None: root).
    :ivar start_timeout: seconds it may take to answer after starting.
    :ivar port: TCP port on 127.0.0.1 it listens on, checked to be free
        before it starts (another instance there would be mistaken for
        ours).
    """

    name: str
    argv: tuple
    probe: object
    where: str = ''
    env: dict = dataclasses.field(default_factory=dict)
    cwd: str = '/'
    user: str = None
    start_timeout: int = 120
    port: int = None


def stat_fields(pid):
    """/proc/PID/stat's fields after the command name, or None if gone.

    Field 3 of proc(5) (state) is [0], the parent's pid [1], the start
    time [19].
    """
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces: split after its ')'.
    return stat.rsplit(')', 1)[1].split()


def _start_time(pid):
    fields = stat_fields(pid)
    return fields[19] if fields else None


def recorded_pid(name):
    """PID of the aio's process name if it still runs, else None."""
    try:
        with open(layout.pid_file(name)) as f:
            pid_text, start = f.read().split()
        pid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return None
    return pid if _start_time(pid) == start else None


def recorded_names():
    try:
        return sorted(f[:-4] for f in os.listdir(layout.PIDS)
                      if f.endswith('.pid'))
    except FileNotFoundError:
        return []


def start(service):
    """Start service unless the aio's instance of it already runs.

    :returns: (pid, started) where started is False if it was running.
    """
    pid = recorded_pid(service.name)
    if pid:
        return pid, False
    if service.port and port_owner(service.port):
        raise util.AioError(
            'port %d, where the aio runs %s, is taken by a process the aio '
            'did not start (see "ss -ltnp"); stop it and run up again' % (
                service.port, service.name))
    util.makedirs(layout.PIDS, 0o755)
    util.makedirs(layout.LOGS, 0o755)
    with open(layout.log_file(service.name), 'a') as log:
        log.write('\n=== %s: starting %s\n' % (
            time.strftime('%Y-%m-%d %H:%M:%S'), ' '.join(service.argv)))
        log.flush()
        env = dict(service.env)
        if service.user:
            # Its own group only, and a home it may write (not root's).
            account = pwd.getpwnam(service.user)
            env.setdefault('HOME', account.pw_dir)
            ids = {'user': account.pw_uid, 'group': account.pw_gid,
                   'extra_groups': []}
        else:
            ids = {}
        proc = subprocess.Popen(
            list(service.argv), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, cwd=service.cwd,
            env=util.clean_env(env), start_new_session=True, **ids)
    start_time = _start_time(proc.pid)
    util.write_file(layout.pid_file(service.name),
                    '%d %s\n' % (proc.pid, start_time))
    util.write_file(_spec_file(service.name), _spec_text(service))
    return proc.pid, True


def _spec_file(name):
    return os.path.join(layout.PIDS, name + '.spec')


def _spec_text(service):
    return json.dumps([service.argv, service.env, service.cwd,
                       service.user], sort_keys=True)


def spec_changed(service):
    """True if service's command, env, cwd or user changed since start."""
    try:
        with open(_spec_file(service.name)) as f:
            return f.read() != _spec_text(service)
    except FileNotFoundError:
        return True


def stop(*names, timeout=30):
    """Stop the aio's processes names (with their process groups) together.

    SIGTERM to all first (services shut down cleanly, in parallel), SIGKILL
    to what still runs after timeout seconds. PID files are removed.
    :returns: {name: pid} of the processes that were running.
    """
    running = {n: recorded_pid(n) for n in names}
    running = {n: pid for n, pid in running.items() if pid}
    for pid in running.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_group_alive(p) for p in running.values()) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    for name, pid in running.items():
        if _group_alive(pid):
            util.warn('%s (pid %d) ignored SIGTERM for %ds: killing it',
                      name, pid, timeout)
            _signal_group(pid, signal.SIGKILL)
    for name in names:
        for path in (layout.pid_file(name), _spec_file(name)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return running


def _signal_group(pid, sig):
    # start() made pid a session (and group) leader: its group is ours.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def alive(pid):
    """True if process pid exists and is not a zombie."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (FileNotFoundError, ProcessLookupError):
        return False


def _group_alive(pgid):
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # fields[0] is the state, fields[2] the process group.
        if int(fields[2]) == pgid and fields[0] != 'Z':
            return True
    return False


class Exited(util.AioError):
    """A service's process ended while we waited for it to answer."""


def wait(service):
    """Wait until service answers.

    :raises Exited: its process died meanwhile (checked on every poll).
    :raises AioError: it did not answer within its start_timeout.
    """
    deadline = time.monotonic() + service.start_timeout
    while True:
        if not recorded_pid(service.name):
            raise Exited('%s exited while starting; last lines of %s:\n%s'
                         % (service.name, layout.log_file(service.name),
                            tail(layout.log_file(service.name))))
        try:
            if service.probe():
                return
        except Exception:  # not answering yet
            pass
        if time.monotonic() > deadline:
            raise util.AioError(
                '%s did not answer within %ds; last lines of %s:\n%s' % (
                    service.name, service.start_timeout,
                    layout.log_file(service.name),
                    tail(layout.log_file(service.name))))
        time.sleep(0.5)


def tail(path, lines=15):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except FileNotFoundError:
        return '(no log)'


# -- probes: does a service answer? -------------------------------------------

def tcp_probe(port, host=layout.HOST):
    def probe():
        with socket.create_connection((host, port), timeout=2):
            return True
    return probe


def http_probe(url):
    """Any HTTP answer below 500 counts: 401 or 300 mean it is serving."""
    def probe():
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500
    return probe


def command_probe(argv):
    def probe():
        return util.run(argv, check=False, capture=True,
                        timeout=20).returncode == 0
    return probe


def unix_socket_answers(path):
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(path)
            return True
    except OSError:
        return False


def unix_socket_listening(path):
    """True if a process of this network namespace listens on path.

    Read from /proc/net/unix (flag __SO_ACCEPTCON), without connecting: a
    server that logs every connection that sends nothing stays quiet.
    """
    with open('/proc/net/unix') as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if len(fields) == 8 and fields[7] == path and \
                    int(fields[3], 16) & 0x10000:
                return True
    return False


def port_owner(port):
    """True if something listens on 127.0.0.1:port (or the wildcard)."""
    try:
        with socket.create_connection((layout.HOST, port), timeout=1):
            return True
    except OSError:
        return False
