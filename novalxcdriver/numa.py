"""The host's NUMA topology as Nova wants it, and its CPU sets.

Nova fits instances with ``hw:cpu_policy=dedicated`` onto the host's NUMA
cells (nova.virt.hardware.numa_fit_instance_to_host) and records which host
CPU each guest CPU is pinned to; the driver then gives the container that
cpuset. Cells, CPUs and thread siblings come from sysfs
(Documentation/ABI/stable/sysfs-devices-node, sysfs-devices-system-cpu);
a host without /sys/devices/system/node is one cell. Which CPUs serve
shared (VCPU) and dedicated (PCPU) instances follows ``[compute]
cpu_shared_set`` and ``cpu_dedicated_set`` as Nova's libvirt driver reads
them.
"""

import glob
import os

from nova import exception as nova_exc
from nova import objects
from nova.virt import hardware

from novalxcdriver import host

_NODE_DIR = '/sys/devices/system/node'
_CPU_DIR = '/sys/devices/system/cpu'


def _read(path):
    with open(path) as f:
        return f.read().strip()


def online_cpus():
    """Set of online host CPU ids."""
    return hardware.parse_cpu_spec(_read(os.path.join(_CPU_DIR, 'online')))


def dedicated_cpus():
    """Host CPUs for PCPU inventory: [compute] cpu_dedicated_set.

    :raises nova.exception.Invalid: a configured CPU is not online.
    """
    dedicated = hardware.get_cpu_dedicated_set() or set()
    if not dedicated <= online_cpus():
        raise nova_exc.Invalid(
            "Invalid '[compute] cpu_dedicated_set': CPUs %s are not online"
            % sorted(dedicated - online_cpus()))
    return dedicated


def shared_cpus():
    """Host CPUs for VCPU inventory and shared instances.

    [compute] cpu_shared_set when set; none when only cpu_dedicated_set
    is set; otherwise every online CPU.
    """
    shared = hardware.get_cpu_shared_set()
    if shared:
        return shared & online_cpus()
    if hardware.get_cpu_dedicated_set():
        return set()
    return online_cpus()


def _cells():
    """[(cell id, cpus, memory KiB)] from sysfs, or one cell for all."""
    nodes = sorted(glob.glob(os.path.join(_NODE_DIR, 'node[0-9]*')))
    if not nodes:
        return [(0, online_cpus(), host.meminfo()['MemTotal'])]
    cells = []
    for node in nodes:
        cpus = hardware.parse_cpu_spec(_read(os.path.join(node, 'cpulist'))
                                       or '')
        mem_kb = 0
        for line in _read(os.path.join(node, 'meminfo')).splitlines():
            # "Node 0 MemTotal:       24683756 kB"
            if 'MemTotal:' in line:
                mem_kb = int(line.split()[-2])
        cells.append((int(os.path.basename(node)[4:]), cpus, mem_kb))
    return cells


def _siblings(cpus):
    sets = set()
    for cpu in cpus:
        path = os.path.join(_CPU_DIR, 'cpu%d' % cpu, 'topology',
                            'thread_siblings_list')
        try:
            sets.add(frozenset(hardware.parse_cpu_spec(_read(path)) & cpus))
        except FileNotFoundError:
            sets.add(frozenset([cpu]))
    # Every CPU in a set, single-thread cores too: Nova's packing takes
    # the largest set as threads per core.
    return sorted((set(s) for s in sets if s), key=min)


def topology():
    """objects.NUMATopology of the host, CPU usage left to Nova.

    :raises nova.exception.Invalid: cpu_dedicated_set names offline CPUs.
    """
    shared, dedicated = shared_cpus(), dedicated_cpus()
    cells = []
    for cell_id, cpus, mem_kb in _cells():
        cells.append(objects.NUMACell(
            id=cell_id,
            socket=None,
            cpuset=cpus & shared,
            pcpuset=cpus & dedicated,
            memory=mem_kb // 1024,
            cpu_usage=0,
            memory_usage=0,
            pinned_cpus=set(),
            siblings=_siblings(cpus & (shared | dedicated)),
            mempages=[objects.NUMAPagesTopology(
                size_kb=4, total=mem_kb // 4, used=0, reserved=0)],
            network_metadata=objects.NetworkMetadata(
                physnets=set(), tunneled=False)))
    return objects.NUMATopology(cells=cells)
