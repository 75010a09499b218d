"""A pure description of one container, and its rendering to lxc.conf text.

Nothing here touches the host: ``ContainerSpec`` is built from Nova's
instance and the driver's choices (container ID, idmap, image), and
``render_config`` turns it into the text of ``<lxc_path>/<name>/config``
(keys from lxc.container.conf(5), LXC 5). The same text carries the
container's own record (Nova instance UUID, host, container ID, image), as
comment lines, so a crashed host can be reconciled from the files alone;
``parse_record`` is the one reader of that record.
"""

import dataclasses
import re

from novalxcdriver import exception
from novalxcdriver import ids
from novalxcdriver import limits as limits_mod

# LXC uses the name as a directory under lxcpath; keep it a plain word.
# \Z, not $: $ also matches before a trailing newline.
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z')
# RFC 1123 host name label(s), as lxc.uts.name goes to sethostname(2).
_HOSTNAME_RE = re.compile(
    r'^(?=.{1,63}\Z)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?'
    r'(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\Z')
_RECORD_PREFIX = '# novalxc.'

# Signals that make each kind of init halt and reboot cleanly
# (lxc.signal.halt / lxc.signal.reboot): systemd(1) "Signals",
# busybox init.c, sysvinit's LXC defaults.
INIT_SIGNALS = {
    'systemd': ('SIGRTMIN+3', 'SIGINT'),
    'busybox': ('SIGUSR1', 'SIGTERM'),
    'sysvinit': ('SIGPWR', 'SIGINT'),
}


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
    :ivar swap_accounting: whether the host's memory cgroups limit swap.
    :ivar ephemeral: host directory bind-mounted on /mnt, or None.
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

    @property
    def config_path(self):
        return self.container_dir + '/config'

    @property
    def console_log(self):
        return self.container_dir + '/console.log'

    @property
    def lxc_log(self):
        return self.container_dir + '/lxc.log'


def check_name(name):
    """Return name if it is a safe LXC container name.

    :raises InvalidContainerName: anything else (shell characters, '/',
        newlines, a leading dot, over 128 characters).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
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
    keys = [
        # Debian's stock unprivileged setup: capabilities, devices cgroup,
        # seccomp, /proc and /sys, and the lxcfs hooks (common.conf.d).
        ('lxc.include', '/usr/share/lxc/config/common.conf'),
        ('lxc.include', '/usr/share/lxc/config/userns.conf'),
        ('lxc.arch', 'linux64'),
        ('lxc.uts.name', spec.hostname),
        ('lxc.rootfs.path', 'dir:' + spec.rootfs),
        ('lxc.idmap', 'u 0 %d %d' % (spec.idmap.uid_start, spec.idmap.size)),
        ('lxc.idmap', 'g 0 %d %d' % (spec.idmap.gid_start, spec.idmap.size)),
        # No AppArmor on these kernels; isolation rests on the user
        # namespace, seccomp, dropped capabilities and cgroups.
        ('lxc.apparmor.profile', 'unconfined'),
        ('lxc.autodev', '1'),
        # Only a loopback until VIFs are plugged.
        ('lxc.net.0.type', 'empty'),
        ('lxc.signal.halt', halt),
        ('lxc.signal.reboot', reboot),
        ('lxc.console.logfile', spec.console_log),
        ('lxc.console.size', str(spec.console_log_size)),
        ('lxc.console.rotate', '1'),
        ('lxc.log.file', spec.lxc_log),
        ('lxc.log.level', 'WARN'),
    ]
    keys += limits_mod.render(spec.limits, spec.cgroup_version,
                              spec.swap_accounting)
    if spec.ephemeral:
        # Where cloud-init and Nova's other drivers put the ephemeral disk.
        keys.append(('lxc.mount.entry',
                     '%s mnt none bind,create=dir 0 0' % spec.ephemeral))
    lines = ['# Written by novalxcdriver; changes are lost on rebuild.']
    lines += ['%s%s = %s' % (_RECORD_PREFIX, k, v) for k, v in record]
    lines += ['%s = %s' % (k, v) for k, v in keys]
    for line in lines:
        if '\n' in line or '\r' in line:
            raise ValueError('newline in lxc config line %r' % line)
    return '\n'.join(lines) + '\n'


def parse_record(config_text):
    """Read the driver's record back from a rendered config.

    :returns: dict with 'instance_uuid', 'host', 'image_id' (str) and 'id'
        (int), or {} when the text holds no record.
    """
    record = {}
    for line in config_text.splitlines():
        if line.startswith(_RECORD_PREFIX) and '=' in line:
            key, _sep, value = line[len(_RECORD_PREFIX):].partition('=')
            record[key.strip()] = value.strip()
    if 'id' in record:
        try:
            record['id'] = int(record['id'])
        except ValueError:
            del record['id']
    return record


def build(instance, host, cid, idmap, image, container_dir, rootfs,
          console_log_size, limits, cgroup_version=1, ephemeral=None,
          swap_accounting=True):
    """Describe the container of a Nova instance.

    :param instance: nova.objects.Instance (name, uuid, hostname are read).
    :param image: images.CachedImage the rootfs is built on.
    :param console_log_size: bytes; rounded down to a power of two as
        lxc.container.conf(5) asks for lxc.console.size.
    :param limits: limits.Limits of the container.
    :param ephemeral: host directory of the ephemeral disk, or None.
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
    )
