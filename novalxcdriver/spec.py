"""A pure description of one container, and its rendering to lxc.conf text.

Nothing here touches the host: ``ContainerSpec`` is built from Nova's
instance and the driver's choices (container ID, idmap, image), and
``render_config`` turns it into the text of ``<lxc_path>/<name>/config``
(keys from lxc.container.conf(5), LXC 5). The same text carries the
container's own record (Nova instance UUID, host, container ID, image), as
comment lines, so a crashed host can be reconciled from the files alone;
``parse_record`` is the one reader of that record, ``parse_nics`` the one
reader of the container's NICs.
"""

import dataclasses
import re

from novalxcdriver import exception
from novalxcdriver import host
from novalxcdriver import ids
from novalxcdriver import limits as limits_mod
from novalxcdriver.privsep import lxcconf
from novalxcdriver.privsep import lxctools

# RFC 1123 host name label(s), as lxc.uts.name goes to sethostname(2).
_HOSTNAME_RE = re.compile(
    r'^(?=.{1,63}\Z)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?'
    r'(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\Z')
_RECORD_PREFIX = lxcconf.RECORD_PREFIX

# What lxcfs serves per container (lxcfs(1)), bound over the container's own.
LXCFS_FILES = tuple('proc/' + f for f in (
    'cpuinfo', 'diskstats', 'loadavg', 'meminfo', 'slabinfo', 'stat',
    'swaps', 'uptime')) + ('sys/devices/system/cpu',)
_NIC_RECORD = lxcconf.NIC_RECORD_PREFIX
# The platform cloud images look for (see render_config).
PRODUCT_NAME = 'OpenStack Nova'
_NIC_KEY_RE = re.compile(r'^lxc\.net\.(\d+)\.([a-z.]+)\Z')
# Each NIC's own record, beside its lxc.net keys: what LXC does not know.
_NIC_RECORD_FIELDS = ('port_id', 'host_dev', 'kind', 'bridge')
NIC_KINDS = ('bridge', 'ovs')

# Signals that make each kind of init halt and reboot cleanly
# (lxc.signal.halt / lxc.signal.reboot): systemd(1) "Signals",
# busybox init.c, sysvinit's LXC defaults.
INIT_SIGNALS = {
    'systemd': ('SIGRTMIN+3', 'SIGINT'),
    'busybox': ('SIGUSR1', 'SIGTERM'),
    'sysvinit': ('SIGPWR', 'SIGINT'),
}


@dataclasses.dataclass(frozen=True)
class NicSpec:
    """One NIC of the container: a veth pair, one end on each side.

    The driver makes the pair and plugs the host end (vif.plug); LXC moves
    the container end in at each start as a ``phys`` NIC and hands it back
    to the host at each stop (lxc.container.conf(5), "NETWORK"), so the
    pair, its place on the bridge and its settings outlive restarts.

    :ivar index: the N of the lxc.net.N keys.
    :ivar name: its name inside the container (eth0, eth1, ...).
    :ivar mac: the Neutron port's MAC address (lower case).
    :ivar mtu: MTU of both ends, bytes.
    :ivar host_dev: the host end, named after the VIF (its devname).
    :ivar peer_dev: the container end's name while it is on the host
        (lxc.net.N.link).
    :ivar kind: 'bridge' (a Linux bridge) or 'ovs' (Open vSwitch).
    :ivar bridge: the bridge the host end is plugged into.
    :ivar port_id: the Neutron port, Nova's VIF id.
    """

    index: int
    name: str
    mac: str
    mtu: int
    host_dev: str
    peer_dev: str
    kind: str
    bridge: str
    port_id: str


@dataclasses.dataclass(frozen=True)
class RescueSpec:
    """What makes a container its server's rescue (rescue.py).

    :ivar image_id: the Glance image its root is built on.
    :ivar server_rootfs: host path of the server's own mounted root,
        bind-mounted read-write on /mnt.
    """

    image_id: str
    server_rootfs: str


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """Everything LXC needs to know about one container.

    :ivar name: LXC container name (Nova's instance.name).
    :ivar instance_uuid: Nova instance UUID.
    :ivar host: the compute host that owns it (Nova's CONF.host).
    :ivar cid: container ID (ids.IdAllocator).
    :ivar idmap: the container's ids.Idmap.
    :ivar hostname: the container's host name (lxc.uts.name).
    :ivar rootfs: absolute path of the mounted root filesystem.
    :ivar container_dir: <lxc_path>/<name>, where config and logs live.
    :ivar image_id: Glance image the rootfs is built on.
    :ivar init_system: 'systemd', 'busybox' or 'sysvinit' (INIT_SIGNALS).
    :ivar console_log_size: bytes before LXC rotates the console log.
    :ivar limits: limits.Limits of the container.
    :ivar cgroup_version: the host's cgroup layout, 1 or 2.
    :ivar cgroup_parent: cgroup under which LXC makes the container's
        (lxc.cgroup.dir, ``[lxc] cgroup_parent``), or '' for the root.
    :ivar swap_accounting: whether the host's memory cgroups limit swap.
    :ivar ephemeral: host directory bind-mounted on /mnt, or None.
    :ivar nics: tuple of NicSpec, in lxc.net index order.
    :ivar config_drive: host directory holding the config drive's files,
        bind-mounted read-only on /config-drive, or None.
    :ivar rescue: RescueSpec of a rescue container, else None; image_id
        stays the server's own image then.
    """

    name: str
    instance_uuid: str
    host: str
    cid: int
    idmap: ids.Idmap
    hostname: str
    rootfs: str
    container_dir: str
    image_id: str
    init_system: str
    console_log_size: int
    limits: limits_mod.Limits
    cgroup_version: int = 1
    ephemeral: object = None
    swap_accounting: bool = True
    nics: tuple = ()
    config_drive: object = None
    rescue: object = None
    cgroup_parent: str = ''

    @property
    def config_path(self):
        return self.container_dir + '/config'

    @property
    def console_log(self):
        return self.container_dir + '/console.log'


def check_name(name):
    """Return name if it is a safe LXC container name.

    :raises InvalidContainerName: anything else (shell characters, '/',
        newlines, a leading dot, over 128 characters).
    """
    if not isinstance(name, str) or not lxctools.NAME_RE.match(name):
        raise exception.InvalidContainerName(name=name)
    return name


def hostname_for(hostname, fallback):
    """The instance's hostname if it is a valid host name, else fallback.

    Nova sanitises instance.hostname already; this guards lxc.uts.name
    against anything else (RFC 1123, at most 63 characters).
    """
    if hostname and _HOSTNAME_RE.match(hostname):
        return hostname
    return fallback


def render_config(spec):
    """Render spec as lxc.conf text (lxc.container.conf(5)).

    :returns: the config file's text, ending with a newline.
    :raises ValueError: a value holds a newline (it would inject keys).
    """
    halt, reboot = INIT_SIGNALS[spec.init_system]
    record = [
        ('instance_uuid', spec.instance_uuid),
        ('host', spec.host),
        ('id', spec.cid),
        ('image_id', spec.image_id),
    ]
    if spec.limits.io:
        # Applied to the disks' devices at each start (with_io).
        record.append(('io', limits_mod.format_io(spec.limits.io)))
    if spec.rescue:
        record.append(('rescue_image_id', spec.rescue.image_id))
    keys = [
        # Debian's stock unprivileged setup: capabilities, devices cgroup,
        # seccomp, /proc and /sys, and the lxcfs hooks (common.conf.d).
        ('lxc.include', '/usr/share/lxc/config/common.conf'),
        ('lxc.include', '/usr/share/lxc/config/userns.conf'),
        # Debian's lxcfs hooks (common.conf.d/00-lxcfs.conf) run a shell
        # script of some 20 processes per start and sleep 0.5 s per stop;
        # plain bind mounts of lxcfs's files do the same job in no time.
        ('lxc.hook.mount', ''),
        ('lxc.hook.post-stop', ''),
    ] + [
        ('lxc.mount.entry', '%s/%s %s none bind,optional 0 0'
         % (host.LXCFS_MOUNT, path, path)) for path in LXCFS_FILES
    ] + [
        ('lxc.arch', 'linux64'),
        ('lxc.uts.name', spec.hostname),
        ('lxc.rootfs.path', 'dir:' + spec.rootfs),
        ('lxc.idmap', 'u 0 %d %d' % (spec.idmap.uid_start, spec.idmap.size)),
        ('lxc.idmap', 'g 0 %d %d' % (spec.idmap.gid_start, spec.idmap.size)),
        # No AppArmor on these kernels; isolation rests on the user
        # namespace, seccomp, dropped capabilities and cgroups.
        ('lxc.apparmor.profile', 'unconfined'),
        ('lxc.autodev', '1'),
        # All instances weigh as one group against the host's services
        # (conf.py, cgroup_parent); LXC makes lxc.payload.<name> inside.
        ('lxc.cgroup.dir', spec.cgroup_parent),
        # The NICs, or a loopback only (render_nics).
        ('lxc.net', None),
        ('lxc.signal.halt', halt),
        ('lxc.signal.reboot', reboot),
        ('lxc.console.logfile', spec.console_log),
        ('lxc.console.size', str(spec.console_log_size)),
        ('lxc.console.rotate', '1'),
        # What libvirt gives a VM as its SMBIOS product name. A container
        # has no DMI: cloud-init's ds-identify reads PID 1's environment
        # instead (product_name, as LXD sets it), so cloud images find
        # Nova's metadata service without a config drive.
        ('lxc.environment', 'product_name=' + PRODUCT_NAME),
    ]
    keys += limits_mod.render(spec.limits, spec.cgroup_version,
                              spec.swap_accounting)
    if spec.ephemeral:
        # Where cloud-init and Nova's other drivers put the ephemeral disk.
        keys.append(('lxc.mount.entry',
                     '%s mnt none bind,create=dir 0 0' % spec.ephemeral))
    if spec.rescue:
        # Read-write: rescue is for repairing it, and libvirt attaches
        # the server's disk to its rescue guest read-write too.
        keys.append(('lxc.mount.entry',
                     '%s mnt none bind,create=dir 0 0'
                     % spec.rescue.server_rootfs))
    if spec.config_drive:
        # Where cloud-init's ConfigDrive datasource looks in a container
        # (and nova-lxd put it); read-only, as a config drive is.
        keys.append(('lxc.mount.entry',
                     '%s config-drive none bind,ro,create=dir 0 0'
                     % spec.config_drive))
    lines = ['# Written by novalxcdriver; changes are lost on rebuild.']
    lines += ['%s%s = %s' % (_RECORD_PREFIX, k, v) for k, v in record]
    for k, v in keys:
        if k == 'lxc.net':
            lines += render_nics(spec.nics)
        elif k == 'lxc.cgroup.dir' and not v:
            continue
        else:
            lines.append('%s = %s' % (k, v))
    _check_lines(lines)
    return '\n'.join(lines) + '\n'


def _check_lines(lines):
    for line in lines:
        if '\n' in line or '\r' in line:
            raise ValueError('newline in lxc config line %r' % line)


def render_nics(nics):
    """The config lines of the container's NICs (lxc.container.conf(5)).

    Each NIC is a ``phys`` device: the container end of its veth pair,
    moved in by LXC with its name, MAC and MTU, and brought up. No NIC:
    ``lxc.net.0.type = empty``, a network namespace with a loopback only.

    :param nics: tuple of NicSpec.
    :returns: list of lines, without newlines.
    """
    if not nics:
        return ['lxc.net.0.type = empty']
    lines = []
    for i, nic in enumerate(nics):
        for value in dataclasses.astuple(nic):
            # One word each: the record and lxc.conf split on blanks.
            if (not str(value) or '=' in str(value) or
                    len(str(value).split()) != 1):
                raise ValueError('bad value %r in NIC %s' % (value, nic))
        if nic.index != i or nic.kind not in NIC_KINDS:
            raise ValueError('NIC %s at position %d: index %d, kind %s'
                             % (nic.name, i, nic.index, nic.kind))
        lines.append('%s%d = %s' % (_NIC_RECORD, i, ' '.join(
            '%s=%s' % (f, getattr(nic, f)) for f in _NIC_RECORD_FIELDS)))
        lines += ['lxc.net.%d.%s = %s' % (i, k, v) for k, v in (
            ('type', 'phys'),
            ('link', nic.peer_dev),
            ('name', nic.name),
            ('hwaddr', nic.mac),
            ('mtu', nic.mtu),
            ('flags', 'up'),
        )]
    return lines


def parse_nics(config_text):
    """The NICs of a rendered config, the one reader of render_nics' lines.

    :returns: tuple of NicSpec in index order (empty with no NIC).
    :raises ValueError: a NIC lacks a key or its record.
    """
    keys = {}
    for line in config_text.splitlines():
        if line.startswith(_NIC_RECORD):
            index, _sep, fields = line[len(_NIC_RECORD):].partition(' = ')
            keys.setdefault(int(index), {}).update(
                f.split('=', 1) for f in fields.split())
            continue
        key, sep, value = line.partition(' = ')
        match = _NIC_KEY_RE.match(key) if sep else None
        if match:
            keys.setdefault(int(match.group(1)), {})[match.group(2)] = value
    nics = []
    for index in sorted(keys):
        k = keys[index]
        if k.get('type') == 'empty':
            continue
        try:
            nics.append(NicSpec(
                index=index, name=k['name'], mac=k['hwaddr'],
                mtu=int(k['mtu']), host_dev=k['host_dev'],
                peer_dev=k['link'], kind=k['kind'], bridge=k['bridge'],
                port_id=k['port_id']))
        except (KeyError, ValueError) as e:
            raise ValueError('NIC %d of the config is incomplete: %s'
                             % (index, e))
    return tuple(nics)


def with_nics(config_text, nics):
    """config_text with its NIC lines replaced by those of nics.

    The new lines take the place of the old ones; every other line stays.
    The NICs are renumbered 0..n-1 in their order (their names stay).

    :param nics: iterable of NicSpec.
    :returns: the new config text.
    """
    new = render_nics(tuple(dataclasses.replace(nic, index=i)
                            for i, nic in enumerate(nics)))
    _check_lines(new)
    lines = []
    placed = False
    for line in config_text.splitlines():
        key = line.partition(' = ')[0]
        if line.startswith(_NIC_RECORD) or _NIC_KEY_RE.match(key):
            if not placed:
                lines += new
                placed = True
            continue
        lines.append(line)
    if not placed:
        lines += new
    return '\n'.join(lines) + '\n'


def with_io(config_text, keys):
    """config_text with its disk I/O throttle keys replaced by keys.

    :param keys: (key, value) pairs from limits.render_io.
    :returns: the new config text (the new keys at its end).
    """
    new = ['%s = %s' % kv for kv in keys]
    _check_lines(new)
    lines = [line for line in config_text.splitlines()
             if not limits_mod.is_io_key(line.partition(' = ')[0])]
    return '\n'.join(lines + new) + '\n'


def with_cgroup_parent(config_text, parent):
    """config_text with one lxc.cgroup.dir naming parent, or none if ''.

    For configs written before ``[lxc] cgroup_parent`` was set or changed:
    the lxc_admin daemon writes only configs naming its own parent. The
    key keeps its place when there; else it is added at the end.
    """
    new = 'lxc.cgroup.dir = %s' % parent
    _check_lines([new])
    lines = []
    for line in config_text.splitlines():
        if line.partition('=')[0].strip() == 'lxc.cgroup.dir':
            if parent and new not in lines:
                lines.append(new)
            continue
        lines.append(line)
    if parent and new not in lines:
        lines.append(new)
    return '\n'.join(lines) + '\n'


# The record's one reader, shared with the lxc_admin daemon.
parse_record = lxcconf.parse_record


def parse_idmap(config_text):
    """The idmap of a rendered config's lxc.idmap keys (render_config's).

    :returns: ids.Idmap, or None when the two keys are not both there
        as ``u 0 START SIZE`` and ``g 0 START SIZE`` of one size.
    """
    starts = {}
    sizes = set()
    for line in config_text.splitlines():
        key, _sep, value = line.partition('=')
        fields = value.split()
        if (key.strip() != 'lxc.idmap' or len(fields) != 4 or
                fields[0] not in 'ug' or fields[1] != '0' or
                not (fields[2].isdigit() and fields[3].isdigit())):
            continue
        starts[fields[0]] = int(fields[2])
        sizes.add(int(fields[3]))
    if set(starts) != {'u', 'g'} or len(sizes) != 1:
        return None
    return ids.Idmap(uid_start=starts['u'], gid_start=starts['g'],
                     size=sizes.pop())


def build(instance, host, cid, idmap, image, container_dir, rootfs,
          console_log_size, limits, cgroup_version=1, ephemeral=None,
          swap_accounting=True, nics=(), config_drive=None,
          cgroup_parent=''):
    """Describe the container of a Nova instance.

    :param instance: nova.objects.Instance (name, uuid, hostname are read).
    :param image: images.CachedImage the rootfs is built on.
    :param console_log_size: bytes; rounded down to a power of two as
        lxc.container.conf(5) asks for lxc.console.size.
    :param limits: limits.Limits of the container.
    :param ephemeral: host directory of the ephemeral disk, or None.
    :param nics: tuple of NicSpec (vif.nics_for).
    :param config_drive: host directory of the config drive, or None.
    :param cgroup_parent: ``[lxc] cgroup_parent``, '' for the root.
    :raises InvalidContainerName: instance.name is not a safe LXC name.
    """
    return ContainerSpec(
        name=check_name(instance.name),
        instance_uuid=instance.uuid,
        host=host,
        cid=cid,
        idmap=idmap,
        hostname=hostname_for(instance.hostname, instance.name),
        rootfs=rootfs,
        container_dir=container_dir,
        image_id=image.image_id,
        init_system=image.init_system,
        console_log_size=1 << (console_log_size.bit_length() - 1),
        limits=limits,
        cgroup_version=cgroup_version,
        ephemeral=ephemeral,
        swap_accounting=swap_accounting,
        nics=tuple(nics),
        config_drive=config_drive,
        cgroup_parent=cgroup_parent,
    )
