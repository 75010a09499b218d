"""What a flavor sells, as cgroup limits: one small pure function a concern.

``for_instance`` turns a Nova flavor (memory_mb, swap, vcpus, extra specs)
and, for dedicated-CPU instances, Nova's CPU pinning into a frozen
``Limits``; ``render`` turns that into lxc.cgroup.* (cgroup v1) or
lxc.cgroup2.* keys (cgroup v2). Disk I/O throttles name block devices that
change whenever the disks are attached again, so ``render_io`` renders them
apart, before each start (container.Container.start). Sources: the
kernel's cgroup docs
(Documentation/admin-guide/cgroup-v1/{memory,cpusets,pids,blkio-controller}
.rst, sched-bwc.rst for CFS bandwidth, cgroup-v2.rst), Nova's flavor
extra-spec reference for the ``quota:`` keys.
"""

import dataclasses

from oslo_utils import units

from novalxcdriver import exception

# CFS bandwidth period when the flavor names none (kernel default, µs).
DEFAULT_CPU_PERIOD_US = 100000
PIDS_MAX_SPEC = 'lxc:pids_max'
# Lowest value of lxc:pids_max (as of the [lxc] pids_max option).
PIDS_MAX_MIN = 16
# Nova's quota:disk_* flavor extra specs a flavor may throttle disks with.
IO_KINDS = ('disk_read_bytes_sec', 'disk_write_bytes_sec',
            'disk_read_iops_sec', 'disk_write_iops_sec')


@dataclasses.dataclass(frozen=True)
class Limits:
    """cgroup limits of one container.

    :ivar memory_bytes: hard memory limit, bytes.
    :ivar memsw_bytes: memory + swap limit, bytes.
    :ivar cpus: host CPUs the container may run on (tuple of int).
    :ivar cpu_period_us: CFS period, µs.
    :ivar cpu_quota_us: CFS quota per period, µs (-1: unlimited).
    :ivar cpu_shares: relative weight (cgroup v1 cpu.shares), or None.
    :ivar pids_max: most tasks at once.
    :ivar io: tuple of (kind, value) with kind one of IO_KINDS (bytes or
        operations per second), for each of the instance's own disks.
    """

    memory_bytes: int
    memsw_bytes: int
    cpus: tuple
    cpu_period_us: int
    cpu_quota_us: int
    cpu_shares: object
    pids_max: int
    io: tuple = ()


def _int_spec(extra_specs, key, minimum, maximum=None):
    value = extra_specs.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum or (
            maximum is not None and number > maximum):
        raise exception.InvalidFlavor(
            reason='extra spec %s=%r must be an integer from %d%s' % (
                key, value, minimum,
                '' if maximum is None else ' to %d' % maximum))
    return number


def memory(flavor):
    """(memory, memory+swap) limits in bytes from memory_mb and swap (MiB)."""
    mem = flavor.memory_mb * units.Mi
    return mem, mem + (flavor.swap or 0) * units.Mi


def cpus(vcpus, host_cpus, cid, pinning=None):
    """The host CPUs a container runs on.

    Dedicated instances get the CPUs Nova pinned them to. Others get
    ``vcpus`` CPUs of the shared set, placed round-robin by container ID
    so that containers spread over the host; the container then sees
    exactly ``vcpus`` CPUs (nproc, lxcfs's /proc/cpuinfo).

    :param host_cpus: sorted host CPU ids usable by shared instances.
    :param pinning: set of host CPU ids from Nova's NUMA claim, or None.
    :raises InvalidFlavor: more vCPUs than the host offers.
    """
    if pinning:
        return tuple(sorted(pinning))
    if vcpus > len(host_cpus):
        raise exception.InvalidFlavor(
            reason='%d vCPUs asked, this host offers %d CPUs to shared '
                   'instances' % (vcpus, len(host_cpus)))
    start = (cid * vcpus) % len(host_cpus)
    return tuple(sorted(host_cpus[(start + i) % len(host_cpus)]
                        for i in range(vcpus)))


def cpu_bandwidth(vcpus, extra_specs):
    """(period, quota) in µs: vcpus x 100% unless quota:cpu_* says else.

    As Nova documents these keys: quota:cpu_period 0 means the default
    period, a negative quota:cpu_quota means unlimited. The kernel takes
    periods of 1 ms to 1 s and quotas of at least 1 ms (sched-bwc.rst).
    """
    period = _int_spec(extra_specs, 'quota:cpu_period', 0, 1000000)
    if period and period < 1000:
        raise exception.InvalidFlavor(
            reason='quota:cpu_period=%d: the kernel takes 0 (default) or '
                   '1000 to 1000000 µs' % period)
    period = period or DEFAULT_CPU_PERIOD_US
    quota = _int_spec(extra_specs, 'quota:cpu_quota', -(2 ** 63))
    if quota is None:
        quota = vcpus * period
    elif quota <= 0:
        quota = -1
    elif quota < 1000:
        raise exception.InvalidFlavor(
            reason='quota:cpu_quota=%d: the kernel takes a negative value '
                   '(unlimited) or at least 1000 µs' % quota)
    return period, quota


def cpu_shares(extra_specs):
    """quota:cpu_shares as a cgroup weight, or None (0 means unset)."""
    shares = _int_spec(extra_specs, 'quota:cpu_shares', 0, 262144)
    if shares == 1:
        raise exception.InvalidFlavor(
            reason='quota:cpu_shares=1: the kernel takes 2 to 262144')
    return shares or None


def pids_max(extra_specs, default):
    """Most tasks in the container: lxc:pids_max, else the [lxc] default."""
    value = _int_spec(extra_specs, PIDS_MAX_SPEC, PIDS_MAX_MIN)
    return default if value is None else value


def io(extra_specs):
    """Disk I/O throttles from quota:disk_* (bytes or ops per second).

    :raises InvalidFlavor: quota:disk_total_*: cgroups throttle reads and
        writes apart, never their sum.
    """
    for kind in ('disk_total_bytes_sec', 'disk_total_iops_sec'):
        if extra_specs.get('quota:' + kind):
            raise exception.InvalidFlavor(
                reason='quota:%s cannot be enforced on containers; use the '
                       'read and write limits' % kind)
    result = []
    for kind in IO_KINDS:
        value = _int_spec(extra_specs, 'quota:' + kind, 0)
        if value:
            result.append((kind, value))
    return tuple(result)


def for_instance(flavor, cid, host_cpus, pids_default, pinning=None):
    """Limits of an instance's container.

    :param flavor: nova.objects.Flavor.
    :param host_cpus: sorted host CPU ids for shared instances.
    :param pinning: host CPU ids of a dedicated instance, or None.
    :raises InvalidFlavor: the flavor asks what the host cannot give, an
        extra spec has a bad value, or disk I/O throttles come without a
        root disk to hold them (root_gb 0: the root is the host's disk).
    """
    specs = dict(flavor.extra_specs or {})
    io_throttles = io(specs)
    if io_throttles and not flavor.root_gb:
        raise exception.InvalidFlavor(
            reason='quota:disk_* throttle the instance\'s own disks; a '
                   'flavor with root_gb 0 has none')
    mem, memsw = memory(flavor)
    period, quota = cpu_bandwidth(flavor.vcpus, specs)
    return Limits(
        memory_bytes=mem,
        memsw_bytes=memsw,
        cpus=cpus(flavor.vcpus, host_cpus, cid, pinning),
        cpu_period_us=period,
        cpu_quota_us=quota,
        cpu_shares=cpu_shares(specs),
        pids_max=pids_max(specs, pids_default),
        io=io_throttles,
    )


def _cpu_list(cpu_ids):
    return ','.join(str(c) for c in cpu_ids)


_V1_IO_FILES = {
    'disk_read_bytes_sec': 'blkio.throttle.read_bps_device',
    'disk_write_bytes_sec': 'blkio.throttle.write_bps_device',
    'disk_read_iops_sec': 'blkio.throttle.read_iops_device',
    'disk_write_iops_sec': 'blkio.throttle.write_iops_device',
}
_V2_IO_KEYS = {
    'disk_read_bytes_sec': 'rbps',
    'disk_write_bytes_sec': 'wbps',
    'disk_read_iops_sec': 'riops',
    'disk_write_iops_sec': 'wiops',
}


def render(limits, cgroup_version, swap_accounting=True):
    """lxc.conf (key, value) pairs for limits, per lxc.container.conf(5).

    :param cgroup_version: 1 or 2 (the host's cgroup layout).
    :param swap_accounting: False when the kernel cannot limit swap
        (cgroup v1 without memory.memsw.*, swapaccount=0); the
        memory+swap limit is left out then.
    """
    if cgroup_version == 2:
        keys = [('memory.max', limits.memory_bytes)]
        if swap_accounting:
            keys.append(('memory.swap.max',
                         limits.memsw_bytes - limits.memory_bytes))
        keys += [
            ('cpuset.cpus', _cpu_list(limits.cpus)),
            ('cpu.max', '%s %d' % (
                'max' if limits.cpu_quota_us < 0 else limits.cpu_quota_us,
                limits.cpu_period_us)),
            ('pids.max', limits.pids_max),
        ]
        if limits.cpu_shares:
            # cpu.weight spans 1..10000 where shares span 2..262144.
            keys.append(('cpu.weight', 1 + (limits.cpu_shares - 2) * 9999
                         // 262142))
        return [('lxc.cgroup2.' + k, str(v)) for k, v in keys]
    keys = [('memory.limit_in_bytes', limits.memory_bytes)]
    if swap_accounting:
        # After the memory limit: the kernel wants memsw >= memory.
        keys.append(('memory.memsw.limit_in_bytes', limits.memsw_bytes))
    keys += [
        ('cpuset.cpus', _cpu_list(limits.cpus)),
        ('cpu.cfs_period_us', limits.cpu_period_us),
        ('cpu.cfs_quota_us', limits.cpu_quota_us),
        ('pids.max', limits.pids_max),
    ]
    if limits.cpu_shares:
        keys.append(('cpu.shares', limits.cpu_shares))
    return [('lxc.cgroup.' + k, str(v)) for k, v in keys]


def render_io(io_throttles, devices, cgroup_version):
    """lxc.conf keys throttling each device, per lxc.container.conf(5).

    Each disk gets the whole throttle, as Nova's libvirt driver gives each
    of an instance's disks its quota:disk_* values.

    :param io_throttles: Limits.io.
    :param devices: 'MAJ:MIN' of the instance's own disks.
    :param cgroup_version: 1 (blkio.throttle.*) or 2 (io.max).
    :returns: list of (key, value).
    """
    if cgroup_version == 2:
        return [('lxc.cgroup2.io.max', '%s %s' % (dev, ' '.join(
            '%s=%d' % (_V2_IO_KEYS[k], v) for k, v in io_throttles)))
            for dev in devices]
    return [('lxc.cgroup.' + _V1_IO_FILES[k], '%s %d' % (dev, v))
            for dev in devices for k, v in io_throttles]


def is_io_key(key):
    """True for the lxc.conf keys render_io writes."""
    return key == 'lxc.cgroup2.io.max' or key.startswith(
        'lxc.cgroup.blkio.throttle.')


def writeback_rules(io_throttles, device):
    """cgroup v1 root blkio rules for device: its write throttles.

    On cgroup v1 the kernel's flusher threads write dirty pages back from
    the root cgroup, not the writer's (cgroup-v1/blkio-controller.rst), so
    a container's buffered writes escape its own throttle. The device is
    the instance's alone, so a rule at the root binds those writes to the
    same rate. A container mixing both kinds of writes can reach twice it.

    :returns: list of (root blkio file name, line to write).
    """
    return [(_V1_IO_FILES[k], '%s %d' % (device, v))
            for k, v in io_throttles if k.startswith('disk_write')]


def clear_rules(device):
    """cgroup v1 root blkio (file, line) pairs removing device's rules."""
    return [(f, '%s 0' % device) for f in sorted(_V1_IO_FILES.values())]


def format_io(io_throttles):
    """One word for the driver's record: 'kind=value,kind=value'."""
    return ','.join('%s=%d' % (k, v) for k, v in io_throttles)


def parse_io(text):
    """format_io's inverse; unknown kinds or bad values are dropped."""
    result = []
    for item in (text or '').split(','):
        kind, _sep, value = item.partition('=')
        if kind in IO_KINDS and value.isdigit() and int(value) > 0:
            result.append((kind, int(value)))
    return tuple(result)
