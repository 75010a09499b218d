"""What a container's lxc.conf may hold: the lxc_admin daemon's policy.

A config is code run as root: lxc-start runs its hooks as root, mounts
what its mount entries name, maps the uids its idmap gives and grants the
devices its cgroup keys allow (lxc.container.conf(5)). The daemon writes a
config only after :func:`check` passed, so a config can do what the
driver's render_config makes it do and nothing more, whoever sent it:

- keys from an allow-list (KEYS and the prefixes below); anything else,
  an ``lxc.hook.*`` with a command, ``lxc.include`` of another file than
  LXC's own common.conf and userns.conf, ``lxc.cgroup*.devices.*`` and
  keys of other cgroup controllers are refused;
- both includes are there (they drop capabilities and load seccomp), and
  exactly one ``u`` and one ``g`` idmap, starting at container id 0, of
  host ids inside root's subordinate ranges (subuid(5), subgid(5)): an
  idmap of host root, or of any uid the host uses, is refused;
- a NIC is a ``phys`` device named as the driver names a veth's
  container end (PEER_PREFIX), so no host NIC can be moved in;
- ``lxc.rootfs.path`` is a ``dir:`` under a driver root, the console log
  is the container's own, and a mount entry binds lxcfs's files or a
  directory under a driver root to a relative target without ``..``,
  with only the options the driver uses;
- ``lxc.cgroup.dir`` is the daemon's own ``[lxc] cgroup_parent``, and
  is there when that is set: a config cannot place its container in
  another's cgroup, nor outside the group the operator weighs;
- one line per key, no carriage return or NUL, nothing but comments,
  blank lines and ``key = value``.
"""

import re

# The driver's own comment lines in a config (spec.render_config): its
# record of the instance (parse_record) and of its NICs (spec.parse_nics).
RECORD_PREFIX = '# novalxc.'
NIC_RECORD_PREFIX = RECORD_PREFIX + 'nic.'
# A NIC's container end while on the host: this prefix and the first
# characters of its Neutron port's id (vif.py). LXC moves the device a
# phys NIC names into the container: only those, never a host NIC.
PEER_PREFIX = 'nlx'
# Where lxcfs serves its files (Debian's lxcfs package; host.py's too).
LXCFS_MOUNT = '/var/lib/lxcfs'
LXC_INCLUDES = ('/usr/share/lxc/config/common.conf',
                '/usr/share/lxc/config/userns.conf')
# cgroup controllers whose limits the driver sets (limits.py): never
# devices, which would hand the container the host's devices.
CGROUP_CONTROLLERS = ('memory', 'cpu', 'cpuset', 'pids', 'blkio', 'io')
MOUNT_OPTIONS = frozenset(('bind', 'optional', 'ro', 'create=dir',
                           'create=file'))

_KEY_RE = re.compile(r'^lxc\.[a-z0-9_.-]+\Z')
_INT_RE = re.compile(r'^[0-9]{1,19}\Z')
_SIGNAL_RE = re.compile(r'^SIG[A-Z0-9+]{1,12}\Z')
_HOSTNAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z')
_ENV_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=[^\x00-\x1f]*\Z')
_IDMAP_RE = re.compile(r'^([ug]) 0 ([0-9]{1,10}) ([0-9]{1,10})\Z')
_CGROUP_RE = re.compile(r'^lxc\.cgroup2?\.([a-z]+)\.[a-z0-9_.]+\Z')
_NET_RE = re.compile(r'^lxc\.net\.([0-9]{1,4})\.([a-z.]+)\Z')
_MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z')
_NET_VALUES = {
    'type': re.compile(r'^(empty|phys)\Z'),
    'link': re.compile(r'^%s[0-9a-f-]{1,11}\Z' % PEER_PREFIX),
    'name': re.compile(r'^eth[0-9]{1,4}\Z'),
    'hwaddr': _MAC_RE,
    'mtu': re.compile(r'^[0-9]{2,5}\Z'),
    'flags': re.compile(r'^up\Z'),
}


# Keys whose value is checked by a pattern (or a fixed set).
KEYS = {
    'lxc.arch': re.compile(r'^linux64\Z'),
    'lxc.uts.name': _HOSTNAME_RE,
    'lxc.apparmor.profile': re.compile(r'^unconfined\Z'),
    'lxc.autodev': re.compile(r'^[01]\Z'),
    'lxc.signal.halt': _SIGNAL_RE,
    'lxc.signal.reboot': _SIGNAL_RE,
    'lxc.console.size': _INT_RE,
    'lxc.console.rotate': re.compile(r'^[01]\Z'),
    'lxc.environment': _ENV_RE,
}


class Refused(ValueError):
    """The config breaks the policy; the message says which line and why."""


def _under(path, roots):
    """Whether path is strictly below one of roots, with no . or .. part."""
    if not path.startswith('/') or '//' in path:
        return False
    parts = path.split('/')[1:]
    if any(p in ('', '.', '..') for p in parts):
        return False
    return any(path.startswith(root.rstrip('/') + '/') for root in roots)


def within(start, size, ranges):
    """Whether ids start..start+size-1 (size > 0) lie in one of ranges.

    :param ranges: [(start, count)], e.g. root's subordinate uids.
    """
    return size > 0 and any(s <= start and start + size <= s + n
                            for s, n in ranges)


def _mount_entry(value, roots, lxcfs):
    fields = value.split()
    if len(fields) != 6 or fields[2] != 'none' or fields[4:] != ['0', '0']:
        return 'not "SOURCE TARGET none OPTIONS 0 0"'
    source, target, options = fields[0], fields[1], fields[3].split(',')
    if not (_under(source, roots) or _under(source, (lxcfs,))):
        return 'source %s is neither lxcfs\'s nor under a driver root' % (
            source)
    if target.startswith('/') or any(
            p in ('', '.', '..') for p in target.split('/')):
        return 'target %s is not a plain relative path' % target
    if 'bind' not in options or not set(options) <= MOUNT_OPTIONS:
        return 'options %s: a bind with only %s' % (
            fields[3], ','.join(sorted(MOUNT_OPTIONS)))
    return None


def _value_problem(key, value, container_dir, roots, lxcfs):
    if key in KEYS:
        return None if KEYS[key].match(value) else 'bad value'
    if key == 'lxc.include':
        return None if value in LXC_INCLUDES else 'not LXC\'s own file'
    if key.startswith('lxc.hook.'):
        return None if value == '' else 'a hook command'
    if key == 'lxc.rootfs.path':
        ok = value.startswith('dir:') and _under(value[4:], roots)
        return None if ok else 'not a dir: under a driver root'
    if key == 'lxc.console.logfile':
        ok = value == container_dir + '/console.log'
        return None if ok else 'not the container\'s console.log'
    if key == 'lxc.mount.entry':
        return _mount_entry(value, roots, lxcfs)
    m = _CGROUP_RE.match(key)
    if m:
        if m.group(1) not in CGROUP_CONTROLLERS:
            return 'cgroup controller %s' % m.group(1)
        return None
    m = _NET_RE.match(key)
    if m and m.group(2) in _NET_VALUES:
        return None if _NET_VALUES[m.group(2)].match(value) else 'bad value'
    return 'not a key the driver writes'


def check(text, container_dir, roots, subuids, subgids, lxcfs,
          cgroup_parent=''):
    """Raise Refused unless text is a config the driver could have written.

    :param text: the config, str.
    :param container_dir: ``<lxc_path>/<name>``, normalized.
    :param roots: the daemon's driver roots (normalized paths).
    :param subuids: root's subordinate uid ranges, [(start, count)].
    :param subgids: the same for gids.
    :param lxcfs: lxcfs's mount point (host.LXCFS_MOUNT).
    :param cgroup_parent: the only lxc.cgroup.dir allowed, and required
        unless it is ''.
    :raises Refused: with the first offending line's number and reason.
    """
    if '\r' in text or '\0' in text:
        raise Refused('a carriage return or NUL byte')
    includes, idmaps, cgroup_dirs = [], {}, []
    for n, line in enumerate(text.split('\n'), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith('#'):
            continue
        key, sep, value = line.partition('=')
        key, value = key.strip(), value.strip()
        if not sep or not _KEY_RE.match(key):
            raise Refused('line %d: not "key = value"' % n)
        if key == 'lxc.idmap':
            m = _IDMAP_RE.match(value)
            if not m or m.group(1) in idmaps:
                raise Refused('line %d: lxc.idmap: not one "u|g 0 START '
                              'SIZE" of each kind' % n)
            kind, start, size = m.group(1), int(m.group(2)), int(m.group(3))
            if not within(start, size,
                          subuids if kind == 'u' else subgids):
                raise Refused('line %d: lxc.idmap %s: host ids %d-%d are not '
                              'all root\'s subordinate ids' % (
                                  n, kind, start, start + size - 1))
            idmaps[kind] = (start, size)
            continue
        if key == 'lxc.cgroup.dir':
            if value != cgroup_parent or not value or cgroup_dirs:
                raise Refused('line %d: lxc.cgroup.dir: not once this '
                              'host\'s cgroup_parent %r' % (n, cgroup_parent))
            cgroup_dirs.append(value)
            continue
        problem = _value_problem(key, value, container_dir, roots, lxcfs)
        if problem:
            raise Refused('line %d: %s: %s' % (n, key, problem))
        if key == 'lxc.include':
            includes.append(value)
    if sorted(idmaps) != ['g', 'u']:
        raise Refused('no u and g idmap: the container would be privileged')
    if sorted(set(includes)) != sorted(LXC_INCLUDES):
        raise Refused('LXC\'s common.conf and userns.conf must be included')
    if cgroup_parent and not cgroup_dirs:
        raise Refused('no lxc.cgroup.dir: this host puts every container '
                      'under %r' % cgroup_parent)


def parse_record(config_text):
    """Read the driver's record back from a rendered config.

    Here, not in spec.py (which names it too), so that the lxc_admin
    daemon reads a config's owner as nova-compute does.

    :returns: dict with 'instance_uuid', 'host', 'image_id' (str), 'id'
        (int), with disk I/O throttles 'io' (limits.format_io), in a
        rescue container 'rescue_image_id' (str); or {} when the text
        holds no record.
    """
    record = {}
    for line in config_text.splitlines():
        if line.startswith(NIC_RECORD_PREFIX):
            continue
        if line.startswith(RECORD_PREFIX) and '=' in line:
            key, _sep, value = line[len(RECORD_PREFIX):].partition('=')
            record[key.strip()] = value.strip()
    if 'id' in record:
        try:
            record['id'] = int(record['id'])
        except ValueError:
            del record['id']
    return record
