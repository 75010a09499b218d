"""Facts about the machine a benchmark ran on, recorded with its figures."""

import datetime
import glob
import os
import platform
import socket
import subprocess


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ''


def _run(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ''


def meminfo_kib(field):
    """One /proc/meminfo field in KiB (int), e.g. 'MemAvailable'."""
    for line in _read('/proc/meminfo').splitlines():
        name, _sep, rest = line.partition(':')
        if name == field:
            return int(rest.split()[0])
    return None


def loadavg():
    """The 1, 5 and 15 minute load averages (list of float)."""
    return [float(x) for x in _read('/proc/loadavg').split()[:3]]


def os_release():
    fields = {}
    for line in _read('/etc/os-release').splitlines():
        key, _sep, value = line.partition('=')
        fields[key] = value.strip('"')
    return fields


def lxc_hooks():
    """lxc.hook.* lines every container gets from common.conf.d.

    Debian's lxcfs adds a mount hook (a shell script) and a post-stop
    hook (a 0.5 s sleep); the driver's config clears both, which is worth
    knowing when comparing start and stop times with other setups.
    """
    hooks = []
    for path in sorted(glob.glob('/usr/share/lxc/config/common.conf.d/'
                                 '*.conf')):
        hooks += [line.strip() for line in _read(path).splitlines()
                  if line.strip().startswith('lxc.hook.')]
    return hooks


# Host limits that decide how many containers can run at once: systemd
# needs inotify instances, and a container's are charged to host root too.
SYSCTLS = ('fs/inotify/max_user_instances', 'fs/inotify/max_user_watches',
           'kernel/keys/maxkeys', 'kernel/pid_max', 'vm/max_map_count')


def sysctls():
    """SYSCTLS as a dict of dotted name -> value (text)."""
    return {name.replace('/', '.'): _read('/proc/sys/' + name).strip()
            for name in SYSCTLS}


def facts(repo_dir):
    """What a reader needs to compare a run with another one.

    :returns: dict with date (UTC, ISO 8601), host, cpu_model, cores,
        memory_mib, kernel, lxc_version, os (PRETTY_NAME), debian_version,
        python, nova version, the repository's commit and load averages.
    """
    cpu_model = ''
    for line in _read('/proc/cpuinfo').splitlines():
        if line.startswith('model name'):
            cpu_model = line.partition(':')[2].strip()
            break
    try:
        from importlib import metadata
        nova_version = metadata.version('nova')
    except Exception:  # only a fact for the record
        nova_version = ''
    cgroup = ('v2' if os.path.exists('/sys/fs/cgroup/cgroup.controllers')
              else 'v1')
    return {
        'date': datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec='seconds'),
        'host': socket.gethostname(),
        'cpu_model': cpu_model,
        'cores': os.cpu_count(),
        'memory_mib': (meminfo_kib('MemTotal') or 0) // 1024,
        'kernel': platform.release(),
        'lxc_version': _run('lxc-start', '--version'),
        'os': os_release().get('PRETTY_NAME', ''),
        'debian_version': _read('/etc/debian_version').strip(),
        'cgroup': cgroup,
        'python': platform.python_version(),
        'nova': nova_version,
        'commit': _run('git', '-C', repo_dir, 'rev-parse', '--short',
                       'HEAD'),
        'loadavg_start': loadavg(),
        'lxc_hooks': lxc_hooks(),
        'sysctls': sysctls(),
    }
