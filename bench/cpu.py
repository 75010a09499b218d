"""Where the host's CPU time goes while a measurement runs.

For the Nova API item: at concurrency 10 a 2-core host is busy, and the
question is whose work fills it. Each service of the all-in-one cloud is
found through the PID that ``aio/novalxc-aio up`` recorded for it
(``/run/novalxc-aio/pids/<service>.pid``) and counted with its descendants
(gunicorn and oslo.service workers), including the children they have
already reaped: nova-compute's count holds the commands the driver ran
(lxc-start, losetup, mkfs.ext4, ...). What no service accounts for is the
containers' own processes, LXC monitors, the kernel and the benchmark
client; the client is counted apart (this process and its children).

CPU seconds are user plus system time (proc(5): utime, stime, cutime,
cstime), read with psutil.
"""

import glob
import os
import time

import psutil

PID_DIR = '/run/novalxc-aio/pids'


def _tree_seconds(proc):
    """CPU seconds of proc, its reaped children and its live descendants."""
    total = 0.0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:  # exited meanwhile: its parent reaps it
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _services(pid_dir):
    """{service name: psutil.Process} of the recorded, living PIDs."""
    found = {}
    for path in sorted(glob.glob(os.path.join(pid_dir, '*.pid'))):
        name = os.path.basename(path)[:-len('.pid')]
        try:
            with open(path) as f:
                pid = int(f.read().split()[0])
            found[name] = psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.Error):
            continue
    return found


def _host_busy_seconds():
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(
        t, 'steal', 0.0)


class Meter:
    """CPU seconds per service between start() and stop().

    A service that starts during the interval is counted from zero, one
    that exits is left out; the aio's services run throughout.
    """

    def __init__(self, pid_dir=PID_DIR):
        self._pid_dir = pid_dir
        self._start = None

    def _snapshot(self):
        services = _services(self._pid_dir)
        return {
            'wall': time.monotonic(),
            'host': _host_busy_seconds(),
            'client': _tree_seconds(psutil.Process()),
            'services': {n: (p.pid, _tree_seconds(p))
                         for n, p in services.items()},
        }

    def start(self):
        self._start = self._snapshot()

    def stop(self):
        """The interval's figures (seconds).

        :returns: {'wall', 'cores', 'host_busy', 'client', 'services':
            {name: seconds}, 'other'}: ``other`` is host_busy less the
            services and the client (containers, monitors, kernel).
        """
        end = self._snapshot()
        begin = self._start
        services = {}
        for name, (pid, seconds) in end['services'].items():
            before = begin['services'].get(name)
            same = before is not None and before[0] == pid
            services[name] = round(seconds - (before[1] if same else 0), 3)
        host = end['host'] - begin['host']
        client = end['client'] - begin['client']
        return {
            'wall': round(end['wall'] - begin['wall'], 3),
            'cores': psutil.cpu_count(),
            'host_busy': round(host, 3),
            'client': round(client, 3),
            'services': services,
            'other': round(max(0.0, host - client - sum(services.values())),
                           3),
        }
