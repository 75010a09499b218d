"""Diagnostics of a container and CPU figures of the host.

What Nova asks for:

- ``get_instance_diagnostics``: GET /servers/{id}/diagnostics from
  microversion 2.48, a nova.objects.Diagnostics (``to_diagnostics``);
- ``get_diagnostics``: the same call before 2.48, a free-form dict in
  libvirt's key style (``to_dict``);
- ``get_host_cpu_stats``: Nova's CPU monitor (``[DEFAULT]
  compute_monitors = cpu.virt_driver``), cumulative host CPU times
  (``host_cpu_stats``);
- ``get_host_uptime``: os-hypervisors uptime, and hypervisor details
  from 2.88 (``host_uptime``).

``sample`` reads one container's figures once into a frozen ``Sample``;
the two renderers above turn that into Nova's two forms, so each figure is
read and parsed in one place. Sources:

- cgroups of the container, found through /proc/<init pid>/cgroup (LXC
  names them lxc.payload.<name>, with a suffix when that is taken): CPU
  time (cpuacct.usage, cpuacct.usage_percpu with cpuset.cpus; v2
  cpu.stat), memory use and limit (memory.usage_in_bytes,
  memory.limit_in_bytes, memory.stat; v2 memory.current, memory.max,
  memory.stat). Kernel docs:
  Documentation/admin-guide/cgroup-v1/{cpuacct,memory,cpusets}.rst,
  cgroup-v2.rst.
- /proc/<init pid>/net/dev, read from the host, which shows the network
  namespace of that process: the container's NICs (proc(5)).
- /proc/<init pid>/stat and /proc/uptime: how long the container's init
  has run (proc(5)).
- /sys/dev/block/<MAJ:MIN>/stat of the container's own disks (its root and
  ephemeral loop devices) against the counters saved when the disk was
  attached (disk.Disk.io_baseline_path): Documentation/block/stat.rst.
  The container's blkio cgroup is not used: on cgroup v1 the kernel
  charges writeback to the root cgroup (cgroup writeback is v2 only), the
  container writes to loop devices whose own I/O to the host disk is
  mostly the kernel's, and on Linux 6.18 blk-throttle counted nothing on
  a device until some throttle rule had been set on it. On this
  project's hosts blkio.throttle.io_service_bytes of a container that
  wrote 20 MiB showed 0 bytes, or under 200 KiB.

Every reader takes its root (cgroup_root, proc_root, sys_root) as a
parameter so that tests point it at a directory tree of their own. A figure
that cannot be read (the container stopped meanwhile, a file the kernel
lacks) is None, never a guess.
"""

import dataclasses
import math
import os
import re

from nova.compute import power_state
from nova.objects import diagnostics as diagnostics_obj
from oslo_utils import units

from novalxcdriver import lxc

CGROUP_ROOT = '/sys/fs/cgroup'
PROC_ROOT = '/proc'
SYS_ROOT = '/sys'
# LXC 5 puts a container's processes in lxc.payload.<name> (lxc.cgroup.dir
# unset); lxc.monitor.<name> holds its monitor.
PAYLOAD_PREFIX = 'lxc.payload.'
# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX pages: about 2**63 bytes.
UNLIMITED_BYTES = 1 << 62
# /sys/block/*/stat counts 512-byte sectors whatever the device's sector
# size (Documentation/block/stat.rst).
SECTOR_BYTES = 512
# Nova's Diagnostics.driver is an enum (nova.objects.fields.
# HypervisorDriver) and the API's 2.48 response schema takes only ironic,
# libvirt, vmwareapi or xenapi: 'lxc' is refused by both. 'libvirt' is what
# Nova's own LXC containers (libvirt virt_type=lxc) report, with the field
# layout used below; hypervisor='lxc' says what runs the instance.
DRIVER = 'libvirt'
HYPERVISOR = 'lxc'
HYPERVISOR_OS = 'linux'


@dataclasses.dataclass(frozen=True)
class NicIO:
    """Counters of one network interface, as /proc/net/dev shows them."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_drop: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_drop: int


@dataclasses.dataclass(frozen=True)
class DiskIO:
    """I/O of one disk of the container since the disk was attached.

    :ivar name: 'root' or 'ephemeral'.
    """

    name: str
    read_requests: int
    read_bytes: int
    write_requests: int
    write_bytes: int


@dataclasses.dataclass(frozen=True)
class Sample:
    """One reading of a container's figures; None where unknown.

    :ivar cpu_ns: CPU time of all its tasks, ns.
    :ivar vcpu_ns: CPU time per vCPU, ns: vCPU i is the i-th host CPU of
        the container's cpuset, as lxcfs numbers them in the container's
        /proc/stat. Empty when per-CPU figures are unknown (cgroup v2).
    :ivar memory_used: bytes charged to the container, page cache included
        (it counts toward the limit).
    :ivar memory_limit: bytes, or None when unlimited.
    :ivar memory_stat: dict with 'rss' and 'cache' (bytes), 'pgfault' and
        'pgmajfault' (counts), those known.
    :ivar uptime: seconds since the container's init started.
    :ivar nics: tuple of NicIO, loopback excluded.
    :ivar disks: tuple of DiskIO.
    """

    cpu_ns: object = None
    vcpu_ns: tuple = ()
    memory_used: object = None
    memory_limit: object = None
    memory_stat: dict = dataclasses.field(default_factory=dict)
    uptime: object = None
    nics: tuple = ()
    disks: tuple = ()


# -- parsers: file contents in, numbers out -------------------------------

def parse_int(text):
    """An integer file (cpuacct.usage, memory.usage_in_bytes, ...)."""
    return int(text.strip())


def parse_limit(text):
    """A memory limit in bytes; None for v2 'max' or v1's huge no-limit."""
    text = text.strip()
    if text == 'max':
        return None
    value = int(text)
    return None if value >= UNLIMITED_BYTES else value


def parse_ints(text):
    """Whitespace-separated integers (cpuacct.usage_percpu) as a tuple."""
    return tuple(int(v) for v in text.split())


def parse_cpu_list(text):
    """A cpuset list such as '0-2,5' as a sorted tuple of CPU ids."""
    cpus = set()
    for part in text.strip().split(','):
        if not part:
            continue
        first, _sep, last = part.partition('-')
        cpus.update(range(int(first), int(last or first) + 1))
    return tuple(sorted(cpus))


def parse_proc_cgroup(text):
    """/proc/<pid>/cgroup as a dict of controller to cgroup path.

    Lines are ``ID:controllers:path`` (cgroups(7)); the cgroup v2 line has
    no controllers and is keyed ''.
    """
    paths = {}
    for line in text.splitlines():
        parts = line.split(':', 2)
        if len(parts) == 3:
            for controller in parts[1].split(','):
                paths[controller] = parts[2]
    return paths


def payload_cgroup(path, name):
    """The container's own cgroup in a path of one of its processes.

    LXC names it lxc.payload.<name>, or lxc.payload.<name>-<n> when that
    name is taken (another container of the same name in another
    lxcpath); a process inside may be in a cgroup below it (systemd's
    init.scope). The first such component counts: the container can name
    its own cgroups as it likes.

    :returns: the path up to that component, or None if it has none.
    """
    parts = path.strip('/').split('/')
    pattern = re.compile(re.escape(PAYLOAD_PREFIX + name) + r'(-\d+)?')
    for i, part in enumerate(parts):
        if part.startswith(PAYLOAD_PREFIX):
            return ('/'.join(parts[:i + 1])
                    if pattern.fullmatch(part) else None)
    return None


def parse_flat_keyed(text):
    """'key value' lines (memory.stat, cpu.stat) as a dict of int."""
    result = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            try:
                result[fields[0]] = int(fields[1])
            except ValueError:
                continue
    return result


def parse_net_dev(text):
    """/proc/<pid>/net/dev as a dict of interface name to NicIO.

    After two header lines, each line is ``name: `` then 8 receive and 8
    transmit counters: bytes packets errs drop fifo frame/colls ...
    """
    nics = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(':')
        fields = rest.split()
        if not sep or len(fields) < 16:
            continue
        v = [int(f) for f in fields]
        name = name.strip()
        nics[name] = NicIO(name=name, rx_bytes=v[0], rx_packets=v[1],
                           rx_errors=v[2], rx_drop=v[3], tx_bytes=v[8],
                           tx_packets=v[9], tx_errors=v[10], tx_drop=v[11])
    return nics


def parse_start_ticks(text):
    """Field 22 of /proc/<pid>/stat: start time, clock ticks after boot.

    The command name (field 2) is in parentheses and may hold spaces and
    parentheses itself, so fields are counted after the last ')'.
    """
    after_comm = text[text.rindex(')') + 1:].split()
    return int(after_comm[22 - 3])


def parse_uptime(text):
    """/proc/uptime: seconds since boot (float)."""
    return float(text.split()[0])


def parse_block_stat(text):
    """/sys/block/<dev>/stat: (read I/Os, read bytes, write I/Os, bytes).

    Fields 1, 3, 5 and 7 of Documentation/block/stat.rst: completed reads,
    sectors read, completed writes, sectors written.
    """
    v = [int(f) for f in text.split()]
    return v[0], v[2] * SECTOR_BYTES, v[4], v[6] * SECTOR_BYTES


def parse_io_baseline(text):
    """A disk's saved baseline: ('MAJ:MIN', parse_block_stat of it).

    disk.Disk writes the loop device's number, a space, then the text of
    its /sys/block stat file as it was at attach time.
    """
    device, _sep, counters = text.strip().partition(' ')
    return device, parse_block_stat(counters)


def parse_host_cpu_times(text, clock_ticks):
    """The 'cpu' line of /proc/stat as Nova's times in ns.

    Grouped as libvirt's virHostCPUGetStats groups them: kernel = system +
    irq + softirq, user = user + nice (USER_HZ ticks in /proc/stat).

    :returns: dict with 'kernel', 'idle', 'user', 'iowait'.
    """
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == 'cpu':
            user, nice, system, idle, iowait, irq, softirq = (
                int(f) for f in fields[1:8])
            ns = units.G // clock_ticks
            return {'kernel': (system + irq + softirq) * ns,
                    'idle': idle * ns,
                    'user': (user + nice) * ns,
                    'iowait': iowait * ns}
    raise ValueError('no cpu line in /proc/stat')


def parse_cpuinfo_mhz(text):
    """Mean 'cpu MHz' of /proc/cpuinfo, rounded; None if it has none."""
    values = []
    for line in text.splitlines():
        key, sep, value = line.partition(':')
        if sep and key.strip() == 'cpu MHz':
            values.append(float(value))
    return round(sum(values) / len(values)) if values else None


# -- readers -------------------------------------------------------------

def _read(path):
    """A file's text, or None if it (or its cgroup) is gone."""
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


def _parsed(parser, path, *args):
    text = _read(path)
    return None if text is None else parser(text, *args)


def cgroup_figures(name, pid, cgroup_version, cgroup_root=CGROUP_ROOT,
                   proc_root=PROC_ROOT):
    """CPU and memory figures of container ``name`` from its cgroups.

    Its cgroups are found from its init's /proc/<pid>/cgroup, not from its
    name: LXC adds a suffix when the name is taken.

    :returns: dict of the Sample fields cpu_ns, vcpu_ns, memory_used,
        memory_limit and memory_stat ({} when init is gone or is not in
        the container's cgroup).
    """
    paths = _parsed(parse_proc_cgroup,
                    os.path.join(proc_root, str(pid), 'cgroup')) or {}
    if cgroup_version == 2:
        group = payload_cgroup(paths.get('', ''), name)
        if group is None:
            return {}

        def v2_path(key):
            return os.path.join(cgroup_root, group, key)
        cpu = _parsed(parse_flat_keyed, v2_path('cpu.stat')) or {}
        usec = cpu.get('usage_usec')
        stat = _parsed(parse_flat_keyed, v2_path('memory.stat')) or {}
        return {
            'cpu_ns': None if usec is None else usec * 1000,
            # cgroup v2 keeps no per-CPU time.
            'vcpu_ns': (),
            'memory_used': _parsed(parse_int, v2_path('memory.current')),
            'memory_limit': _parsed(parse_limit, v2_path('memory.max')),
            'memory_stat': _memory_stat(stat, 'anon', 'file', ''),
        }

    groups = {c: payload_cgroup(paths.get(c, ''), name)
              for c in ('cpuacct', 'cpuset', 'memory')}
    if None in groups.values():
        return {}

    def path(controller, key):
        return os.path.join(cgroup_root, controller, groups[controller], key)
    percpu = _parsed(parse_ints, path('cpuacct', 'cpuacct.usage_percpu'))
    cpus = _parsed(parse_cpu_list, path('cpuset', 'cpuset.cpus'))
    vcpu_ns = ()
    if percpu is not None and cpus:
        vcpu_ns = tuple(percpu[c] for c in cpus if c < len(percpu))
    stat = _parsed(parse_flat_keyed, path('memory', 'memory.stat')) or {}
    return {
        'cpu_ns': _parsed(parse_int, path('cpuacct', 'cpuacct.usage')),
        'vcpu_ns': vcpu_ns,
        'memory_used': _parsed(parse_int, path('memory',
                                               'memory.usage_in_bytes')),
        'memory_limit': _parsed(parse_limit, path('memory',
                                                  'memory.limit_in_bytes')),
        # total_*: the container's cgroup and those made inside it.
        'memory_stat': _memory_stat(stat, 'total_rss', 'total_cache',
                                    'total_'),
    }


def _memory_stat(stat, rss, cache, prefix):
    names = {'rss': rss, 'cache': cache, 'pgfault': prefix + 'pgfault',
             'pgmajfault': prefix + 'pgmajfault'}
    return {ours: stat[theirs] for ours, theirs in names.items()
            if theirs in stat}


def nics(pid, proc_root=PROC_ROOT):
    """NICs of the network namespace of process pid, loopback excluded.

    :returns: tuple of NicIO sorted by name ((): the process is gone).
    """
    found = _parsed(parse_net_dev, os.path.join(proc_root, str(pid), 'net',
                                                'dev')) or {}
    return tuple(nic for name, nic in sorted(found.items()) if name != 'lo')


def process_uptime(pid, proc_root=PROC_ROOT):
    """Whole seconds since process pid started, or None if it is gone."""
    start = _parsed(parse_start_ticks,
                    os.path.join(proc_root, str(pid), 'stat'))
    now = _parsed(parse_uptime, os.path.join(proc_root, 'uptime'))
    if start is None or now is None:
        return None
    return max(0, int(now - start / os.sysconf('SC_CLK_TCK')))


def disk_io(name, disk, sys_root=SYS_ROOT):
    """DiskIO of a mounted disk.Disk since it was attached, or None.

    A loop device's counters outlive each attachment (they belong to
    /dev/loopN, which other disks reuse), so the counters saved at attach
    time are subtracted. None without them (a disk attached before the
    driver saved them) or when the disk is not mounted.
    """
    baseline = _parsed(parse_io_baseline, disk.io_baseline_path)
    if baseline is None or not disk.is_mounted():
        return None
    device, before = baseline
    if device != disk.device():
        return None
    now = _parsed(parse_block_stat, os.path.join(
        sys_root, 'dev', 'block', device, 'stat'))
    if now is None:
        return None
    rd_req, rd_bytes, wr_req, wr_bytes = (n - b for n, b in zip(now, before))
    return DiskIO(name=name, read_requests=rd_req, read_bytes=rd_bytes,
                  write_requests=wr_req, write_bytes=wr_bytes)


def disks_of(rootfs):
    """(name, disk.Disk) of the disks a rootfs.Rootfs has (none: None)."""
    if rootfs is None:
        return []
    return [(name, d) for name, d in (('root', rootfs.root_disk),
                                      ('ephemeral', rootfs.ephemeral_disk))
            if os.path.exists(d.image_path)]


def sample(name, pid, cgroup_version, disks=(), cgroup_root=CGROUP_ROOT,
           proc_root=PROC_ROOT, sys_root=SYS_ROOT):
    """Read the figures of container ``name`` once.

    :param pid: host pid of its init, or None when it is not running:
        only disk figures are known then, as when that process turns out
        to be in no cgroup of the container (it ended meanwhile).
    :param cgroup_version: 1 or 2, the host's cgroup layout.
    :param disks: (name, disk.Disk) pairs of its own disks (disks_of).
    :returns: Sample.
    """
    figures = {}
    if pid is not None:
        figures = cgroup_figures(name, pid, cgroup_version, cgroup_root,
                                 proc_root)
        if figures:
            figures['nics'] = nics(pid, proc_root)
            figures['uptime'] = process_uptime(pid, proc_root)
    io = (disk_io(disk_name, d, sys_root) for disk_name, d in disks)
    figures['disks'] = tuple(d for d in io if d is not None)
    return Sample(**figures)


# -- renderers -----------------------------------------------------------

def _mib(value, rounding=math.floor):
    return None if value is None else int(rounding(value / units.Mi))


def to_diagnostics(sample, state):
    """Nova's Diagnostics (API microversion 2.48 and later) of a sample.

    cpu_details holds one entry per vCPU (Sample.vcpu_ns), or one entry
    with id None and the container's whole CPU time when per-CPU figures
    are unknown. memory_details are MiB: maximum is the limit, used the
    usage rounded up (any use shows). disk_details hold the root disk
    then the ephemeral one (a root without a disk of its own, root_gb 0,
    writes to the host's filesystem and has no entry). NICs, sorted by
    their name inside the container, carry no MAC address (/proc/net/dev
    has none). Rates and utilisation, which need two readings, are None.

    :param state: Nova power state (nova.compute.power_state constant).
    """
    diags = diagnostics_obj.Diagnostics(
        state=power_state.STATE_MAP[state], driver=DRIVER,
        hypervisor=HYPERVISOR, hypervisor_os=HYPERVISOR_OS,
        uptime=sample.uptime, config_drive=False)
    if sample.vcpu_ns:
        for vcpu, ns in enumerate(sample.vcpu_ns):
            diags.add_cpu(id=vcpu, time=ns)
    elif sample.cpu_ns is not None:
        diags.add_cpu(time=sample.cpu_ns)
    for nic in sample.nics:
        diags.add_nic(rx_octets=nic.rx_bytes, rx_errors=nic.rx_errors,
                      rx_drop=nic.rx_drop, rx_packets=nic.rx_packets,
                      tx_octets=nic.tx_bytes, tx_errors=nic.tx_errors,
                      tx_drop=nic.tx_drop, tx_packets=nic.tx_packets)
    for disk in sample.disks:
        diags.add_disk(read_bytes=disk.read_bytes,
                       read_requests=disk.read_requests,
                       write_bytes=disk.write_bytes,
                       write_requests=disk.write_requests)
    diags.memory_details = diagnostics_obj.MemoryDiagnostics(
        maximum=_mib(sample.memory_limit),
        used=_mib(sample.memory_used, math.ceil))
    return diags


def to_dict(sample):
    """The pre-2.48 diagnostics dict of a sample, in libvirt's key style.

    Keys (those known): ``cpu<N>_time`` (ns per vCPU; ``cpu_time`` for the
    whole container when per-CPU figures are unknown); ``memory`` and
    ``memory-actual`` (the limit, KiB, as libvirt's maximum and balloon
    sizes), ``memory-unused`` (limit - usage), ``memory-rss``,
    ``memory-disk_caches`` (KiB), ``memory-major_fault``,
    ``memory-minor_fault``; ``<disk>_read``, ``_read_req``, ``_write``,
    ``_write_req`` for the disks 'root' and 'ephemeral' (bytes, requests);
    ``<nic>_rx``, ``_rx_packets``, ``_rx_errors``, ``_rx_drop`` and the
    same for ``_tx``, with the NIC's name inside the container.
    """
    out = {}
    if sample.vcpu_ns:
        for vcpu, ns in enumerate(sample.vcpu_ns):
            out['cpu%d_time' % vcpu] = ns
    elif sample.cpu_ns is not None:
        out['cpu_time'] = sample.cpu_ns
    for disk in sample.disks:
        out[disk.name + '_read'] = disk.read_bytes
        out[disk.name + '_read_req'] = disk.read_requests
        out[disk.name + '_write'] = disk.write_bytes
        out[disk.name + '_write_req'] = disk.write_requests
    for nic in sample.nics:
        for key in ('rx', 'tx'):
            out['%s_%s' % (nic.name, key)] = getattr(nic, key + '_bytes')
            for what in ('packets', 'errors', 'drop'):
                out['%s_%s_%s' % (nic.name, key, what)] = getattr(
                    nic, '%s_%s' % (key, what))
    if sample.memory_limit is not None:
        out['memory'] = out['memory-actual'] = sample.memory_limit // units.Ki
        if sample.memory_used is not None:
            out['memory-unused'] = max(
                0, sample.memory_limit - sample.memory_used) // units.Ki
    stat = sample.memory_stat
    if 'rss' in stat:
        out['memory-rss'] = stat['rss'] // units.Ki
    if 'cache' in stat:
        out['memory-disk_caches'] = stat['cache'] // units.Ki
    if 'pgmajfault' in stat:
        out['memory-major_fault'] = stat['pgmajfault']
        if 'pgfault' in stat:
            out['memory-minor_fault'] = stat['pgfault'] - stat['pgmajfault']
    return out


# -- the host ------------------------------------------------------------

def host_cpu_stats(proc_root=PROC_ROOT, sys_root=SYS_ROOT):
    """Cumulative host CPU times (ns) and frequency (MHz), Nova's dict.

    As ComputeDriver.get_host_cpu_stats documents: 'kernel', 'idle',
    'user', 'iowait' since boot, ns, and 'frequency', MHz: the mean of
    /proc/cpuinfo's 'cpu MHz', else cpu0's current cpufreq, else 0 (not
    known; an int as the CPU monitor stores it).
    """
    with open(os.path.join(proc_root, 'stat')) as f:
        stats = parse_host_cpu_times(f.read(), os.sysconf('SC_CLK_TCK'))
    mhz = _parsed(parse_cpuinfo_mhz, os.path.join(proc_root, 'cpuinfo'))
    if mhz is None:
        khz = _parsed(parse_int, os.path.join(
            sys_root, 'devices', 'system', 'cpu', 'cpu0', 'cpufreq',
            'scaling_cur_freq'))
        mhz = 0 if khz is None else round(khz / 1000)
    stats['frequency'] = mhz
    return stats


def host_uptime():
    """uptime(1)'s line, as libvirt's driver returns it.

    python-openstackclient's ``hypervisor show`` splits this very line
    into host time, uptime, users and load average.
    """
    out, _err = lxc.execute('env', 'LANG=C', 'uptime')
    return out
