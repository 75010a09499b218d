"""Container IDs and the uid/gid ranges (idmaps) they own.

Every container runs in its own user namespace (user_namespaces(7)). Its
uid 0 maps to a host uid that no other container uses, so that a process
escaping one container owns nothing in another. The host ranges come from
root's entries in /etc/subuid and /etc/subgid (subuid(5), subgid(5)), which
are cut into slices of ``range_size`` ids (65536 by default, a full 16-bit
uid space)::

    container ID N  ->  host uids [subuid_start + N * size, + size)
                        host gids [subgid_start + N * size, + size)

so ``floor((min(subuid count, subgid count) - UNPACK_IDS - HELPER_IDS) /
size)`` IDs exist, numbered from 0, and the ranges of two different IDs
never overlap. The last UNPACK_IDS ids of root's ranges are no
container's: images are unpacked as root of a user namespace mapping them
(unpack_idmap; privsep.unpack), so a bug in the unpacker writes as
nobody's uids. The HELPER_IDS ids below them are neither a container's
nor the unpacker's: each running qemu-img has one of its own
(helper_ids; privsep.qemuimg), so that no two parsers of images share a
uid (a process may reopen the files of another of its uid through
/proc/PID/fd, proc(5)).

The ranges are the machine's (root's subordinate ranges), so the IDs are
too: every driver on one machine (several nova-compute services, each with
its own ``[lxc] state_path``, as in a test cloud with two compute hosts on
one machine) reserves them in one directory, ``[lxc] ids_path``
(``/var/lib/novalxc/ids`` by default, whatever the state_path). A
reservation names its owner, the ``state_path`` of the driver that made it,
so the same instance on two computes of one machine (a migration between
them) holds two IDs, one per side.

An ID is handed out by creating ``<ids_path>/<N>/`` with ``os.mkdir``,
which fails when the directory already exists: the reservation *is* the
directory, and ``owner.json`` inside it only records who made it.
Allocation additionally runs under the external (file-based, and also
in-process) oslo.concurrency lock ``novalxc-ids`` in ``locks/`` beside
``ids_path``. Both are needed:

* the lock alone, as in the old OpenVZ driver, was an in-process lock
  around an in-memory scan and gave one ID to two containers; it also
  forgets everything when nova-compute dies;
* the directory survives crashes and restarts, so an ID is never reused
  while the instance (or its leftover rootfs and LXC config, reported by
  ``artifact_ids``) still exists; and ``os.mkdir`` stays atomic even
  against a process that does not take our lock;
* the lock makes "is this instance already holding an ID? else take the
  lowest free one" a single step, so two concurrent spawns of one instance
  get one ID, and the lowest-free scan does not race.

Which ID an instance holds is looked up in an index,
``<ids_path>/by-instance/``: a symlink per (owner, instance), named by
index_key, whose target ``../<N>`` is that owner's reservation for that
instance (the lowest, in a state that holds several). Without it, each
lookup (each spawn's, under the lock) read every reservation's owner.json.
The reservation stays the truth: a lookup follows the link and checks the
owner.json it reaches, so a dangling or stale link means "none". That is
sound because every writer keeps one rule, under the lock: a reservation a
lookup may return has a link naming it. So a new reservation's link is
written before its owner.json, and a released one's link is removed after
the reservation. Each allocator rebuilds the index from the reservations,
under the lock, on first use (the driver's at init_host). That covers
reservations made before the index, and links lost in a power cut (links
are not fsynced; the reservations are).
"""

import dataclasses
import errno
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import threading
import time

from oslo_concurrency import lockutils
from oslo_log import log as logging

from novalxcdriver import durable
from novalxcdriver import exception

LOG = logging.getLogger(__name__)

LOCK_NAME = 'novalxc-ids'
OWNER_FILE = 'owner.json'
DEFAULT_RANGE_SIZE = 65536
# The ids an image's files may be owned by (0..65535), and the size of the
# range at the top of root's that unpacks them.
UNPACK_IDS = 65536
# The ids below them: one per qemu-img run at a time (helper_ids).
HELPER_IDS = 64

INDEX_DIR = 'by-instance'

# Only canonical decimal names are reservations; '007' would not block
# os.mkdir('7'), so it must not be counted either.
_CID_RE = re.compile(r'^(0|[1-9][0-9]*)$')
_LINK_RE = re.compile(r'^\.\./(0|[1-9][0-9]*)$')


def index_key(owner, instance_uuid):
    """The name of (owner, instance_uuid)'s entry in the ID index.

    A digest, so that neither string needs to be a safe file name.

    :returns: 64 hex digits (sha256 of ``owner NUL instance_uuid``).
    """
    text = '%s\0%s' % (owner, instance_uuid)
    return hashlib.sha256(
        text.encode('utf-8', 'surrogateescape')).hexdigest()


@dataclasses.dataclass(frozen=True)
class Idmap:
    """Host-side ranges of one container.

    Container uid/gid 0 maps to host ``uid_start``/``gid_start``; ``size``
    consecutive ids are mapped in each direction.
    """

    uid_start: int
    gid_start: int
    size: int

    def fields(self):
        """[uid_start, gid_start, size]: how privsep entry points take it."""
        return [self.uid_start, self.gid_start, self.size]


@dataclasses.dataclass(frozen=True)
class Reservation:
    """Who holds container ID ``cid``.

    ``instance_uuid``, ``instance_name``, ``pid``, ``owner`` and ``host``
    are None when the reservation directory has no readable ``owner.json``
    (a crash between mkdir and rename, or a foreign entry); ``created_at``
    (epoch seconds) then falls back to the directory's mtime. ``owner`` is
    the state_path of the driver holding it (for reservations written
    before IDs were machine-wide: the state_path whose ``ids`` directory
    holds them); ``host`` its Nova host, for people ('' if unknown).
    """

    cid: int
    instance_uuid: str | None
    instance_name: str | None
    pid: int | None
    created_at: float
    owner: str | None = None
    host: str | None = None
    resize_source: bool = False


# read_subordinate_ranges' results: {(paths, user, files' stats): ranges}
_RANGES_READ = {}
_PASSWD = '/etc/passwd'


def _user_names(user):
    """Return the spellings of ``user`` a subuid line may use: name, uid."""
    names = {str(user)}
    try:
        if str(user).isdigit():
            names.add(pwd.getpwuid(int(user)).pw_name)
        else:
            names.add(str(pwd.getpwnam(user).pw_uid))
    except KeyError:
        # No passwd entry: only the spelling we were given can match.
        pass
    if str(user) == 'root':
        names.add('0')
    return names


def _read_range(path, names):
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.readlines()
    except OSError as e:
        raise exception.IdmapUnavailable(
            reason='cannot read %s: %s' % (path, e.strerror or e))
    found = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        fields = line.split(':')
        if len(fields) != 3 or fields[0] not in names:
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            start = count = -1
        if start < 0 or count <= 0:
            LOG.warning('Ignoring malformed line %(n)d of %(path)s: %(l)r',
                        {'n': lineno, 'path': path, 'l': line})
            continue
        found.append((start, count))
    if not found:
        raise exception.IdmapUnavailable(
            reason='%s has no range for %s' % (
                path, ' or '.join(sorted(names))))
    if len(found) > 1:
        LOG.info('%(path)s has %(n)d ranges for %(user)s; only the first, '
                 '%(first)s, is used.',
                 {'path': path, 'n': len(found),
                  'user': '/'.join(sorted(names)), 'first': found[0]})
    return found[0]


def read_subordinate_ranges(subuid_path='/etc/subuid',
                            subgid_path='/etc/subgid', user='root'):
    """Return ``user``'s subordinate ranges from subuid(5)/subgid(5) files.

    Lines are ``name_or_uid:start:count``; the user may be given by name or
    by uid (``root`` or ``0``). Blank lines and ``#`` comments are skipped,
    malformed lines are logged and skipped.

    When the user has several lines, the first well-formed one is used.
    Tools such as ``usermod --add-subuids`` append ranges, so the first
    line stays put and existing containers keep their idmaps; picking e.g.
    the largest range would silently remap every container when a bigger
    range is appended.

    Read again only when a file's inode, size, mtime or ctime changed
    since the last read: the storage_admin daemon checks an idmap against
    them about five times per spawn, and the reading (with the passwd
    lookup) was most of that check's cost.

    :returns: ``((uid_start, uid_count), (gid_start, gid_count))``
    :raises exception.IdmapUnavailable: a file is unreadable or has no
        usable range for the user.
    """
    try:
        key = (subuid_path, subgid_path, user) + tuple(
            (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            for st in map(os.stat, (subuid_path, subgid_path, _PASSWD)))
    except OSError:
        key = None
    ranges = _RANGES_READ.get(key)
    if ranges is None:
        names = _user_names(user)
        ranges = (_read_range(subuid_path, names),
                  _read_range(subgid_path, names))
        if key is not None:
            # Only success: fixing a file is seen at the next call.
            if len(_RANGES_READ) >= 8:
                _RANGES_READ.clear()
            _RANGES_READ[key] = ranges
    return ranges


def _top_of_root(ranges, skip, size, what):
    """size ids of root's ranges just below their top skip ids.

    :raises exception.IdmapUnavailable: the ranges are unreadable or
        smaller than skip + size.
    """
    (uid_start, uid_count), (gid_start, gid_count) = (
        ranges or read_subordinate_ranges())
    reserved = skip + size
    if min(uid_count, gid_count) < reserved:
        raise exception.IdmapUnavailable(
            reason='root\'s subordinate ranges hold fewer than the %d ids '
                   'images are %s under' % (reserved, what))
    return Idmap(uid_start=uid_start + uid_count - reserved,
                 gid_start=gid_start + gid_count - reserved,
                 size=size)


def unpack_idmap(ranges=None):
    """The idmap images are unpacked under: the top UNPACK_IDS of root's.

    :param ranges: read_subordinate_ranges()'s result; read if None.
    :returns: Idmap of UNPACK_IDS ids, no container's (IdAllocator.count
        leaves them out).
    :raises exception.IdmapUnavailable: root's ranges are unreadable or
        smaller than UNPACK_IDS.
    """
    return _top_of_root(ranges, 0, UNPACK_IDS, 'unpacked')


def helper_ids(ranges=None):
    """The HELPER_IDS ids just below the unpack range (module docstring).

    :param ranges: read_subordinate_ranges()'s result; read if None.
    :returns: Idmap of HELPER_IDS ids: uid_start + n and gid_start + n
        are helper n's.
    :raises exception.IdmapUnavailable: root's ranges are unreadable or
        smaller than UNPACK_IDS + HELPER_IDS.
    """
    return _top_of_root(ranges, UNPACK_IDS, HELPER_IDS,
                        'unpacked and converted')


class _SharedCall:
    """fn() for concurrent callers, each given a call begun after it asked.

    A caller that comes while a call runs waits for the next one, which
    one of the waiters makes for all of them: the artifact scan, O(n) in
    the containers, ran once per spawn, ten at a time at concurrency 10.
    Such a result is as fresh as the caller's own call would have been.
    A failed call's waiters call fn themselves (its exception is the
    caller's that made it).
    """

    def __init__(self, fn):
        self._fn = fn
        self._cond = threading.Condition()
        self._started = 0
        self._running = False
        # The last call that ended: its number, result, and whether it
        # raised.
        self._finished = 0
        self._result = None
        self._failed = False

    def __call__(self):
        with self._cond:
            wanted = self._started + 1
            while self._finished < wanted:
                if not self._running:
                    self._running = True
                    self._started += 1
                    number = self._started
                    break
                self._cond.wait()
            else:
                if not self._failed:
                    return self._result
                number = None
        if number is None:
            return self._fn()
        result, failed = None, True
        try:
            result = self._fn()
            failed = False
            return result
        finally:
            with self._cond:
                self._running = False
                self._finished = number
                self._result, self._failed = result, failed
                self._cond.notify_all()


class IdAllocator:
    """Hands out container IDs, persistently and race-free on one host.

    :param state_path: the driver's state directory: the owner its
        reservations name.
    :param ids_path: the machine's reservation directory (``[lxc]
        ids_path``); default ``state_path/ids`` (an allocator of its own).
    :param host: the Nova host its reservations name, for people.
    :param range_size: uids/gids per container (``[lxc] id_range_size``).
    :param subuid_path: subuid(5) file holding root's range.
    :param subgid_path: subgid(5) file holding root's range.
    :param artifact_ids: optional callable returning an iterable of IDs
        still used by leftover artifacts (rootfs dirs, container configs);
        those IDs are never handed out. Each allocation uses the result of
        a call begun after the allocation began, before the lock is taken
        (concurrent allocations share one: _SharedCall); its exceptions
        propagate. That is enough because artifacts of an ID are made
        only while it is reserved, and a reservation is released only
        once they are gone: an ID whose artifacts appeared since the call
        is reserved.

    The subordinate ranges are read on first use (``count``, ``idmap``,
    ``allocate``) and then cached: changing them under running containers
    would move their idmaps, so a change takes effect on restart.
    """

    def __init__(self, state_path, range_size=DEFAULT_RANGE_SIZE,
                 subuid_path='/etc/subuid', subgid_path='/etc/subgid',
                 artifact_ids=None, ids_path=None, host=''):
        if range_size < 1:
            raise ValueError('range_size must be positive, got %r'
                             % (range_size,))
        self.state_path = state_path
        self.owner = os.path.realpath(state_path)
        self.host = host
        self.ids_path = ids_path or os.path.join(state_path, 'ids')
        self.index_path = os.path.join(self.ids_path, INDEX_DIR)
        # Beside it: a lock file inside would look like an entry.
        self.lock_path = os.path.join(
            os.path.dirname(self.ids_path.rstrip('/')), 'locks')
        # Reservations from before ids_path: their state_path's ids/.
        self._legacy_owner = (
            os.path.realpath(os.path.dirname(self.ids_path.rstrip('/')))
            if os.path.basename(self.ids_path.rstrip('/')) == 'ids'
            else None)
        self.range_size = range_size
        self.subuid_path = subuid_path
        self.subgid_path = subgid_path
        self._artifact_ids = (None if artifact_ids is None
                              else _SharedCall(artifact_ids))
        self._ranges = None
        self._ranges_lock = threading.Lock()
        # Set once this process has rebuilt the index (ensure_index).
        self._indexed = False
        self._index_lock = threading.Lock()

    def _get_ranges(self):
        with self._ranges_lock:
            # Cache only success, so fixing /etc/subuid needs no restart.
            if self._ranges is None:
                self._ranges = read_subordinate_ranges(
                    self.subuid_path, self.subgid_path)
            return self._ranges

    @property
    def count(self):
        """Number of container IDs on this host (IDs are 0..count-1).

        :raises exception.IdmapUnavailable: no subordinate range for root.
        """
        (_, uid_count), (_, gid_count) = self._get_ranges()
        # The top UNPACK_IDS are the unpacker's (unpack_idmap), the
        # HELPER_IDS below them qemu-img's (helper_ids).
        return max(0, min(uid_count, gid_count) - UNPACK_IDS -
                   HELPER_IDS) // self.range_size

    def idmap(self, cid):
        """Return the :class:`Idmap` of container ID ``cid``.

        :raises exception.IdmapUnavailable: no range for root, or ``cid``
            is not in ``0..count-1`` (e.g. root's ranges shrank).
        """
        (uid_start, _), (gid_start, _) = self._get_ranges()
        count = self.count
        if isinstance(cid, bool) or not isinstance(cid, int) or not (
                0 <= cid < count):
            raise exception.IdmapUnavailable(
                reason='container ID %r is outside the %d IDs that root\'s '
                       'subordinate ranges hold' % (cid, count))
        offset = cid * self.range_size
        return Idmap(uid_start=uid_start + offset,
                     gid_start=gid_start + offset, size=self.range_size)

    def _lock(self):
        return lockutils.lock(LOCK_NAME, external=True,
                              lock_path=self.lock_path)

    def _reservation_path(self, cid):
        return os.path.join(self.ids_path, str(cid))

    def allocate(self, instance_uuid, instance_name):
        """Reserve the lowest free container ID for an instance.

        Idempotent: if ``instance_uuid`` already holds a reservation, that
        ID is returned and nothing is written. An ID is free when it has no
        reservation directory and ``artifact_ids`` does not list it.

        :returns: the container ID (int).
        :raises exception.IdRangeExhausted: no free ID.
        :raises exception.IdmapUnavailable: no subordinate range for root.
        """
        instance_uuid, instance_name = str(instance_uuid), str(instance_name)
        count = self.count
        os.makedirs(self.ids_path, mode=0o755, exist_ok=True)
        self.ensure_index()
        # Scanning every container's artifacts is the slowest part: it
        # runs outside the lock (see artifact_ids above for why).
        leftovers = (set() if self._artifact_ids is None
                     else {int(i) for i in self._artifact_ids()})
        with self._lock():
            existing = self._find(instance_uuid)
            if existing is not None:
                return existing
            busy = set(self._reserved_ids()) | leftovers
            for cid in range(count):
                if cid in busy:
                    continue
                path = self._reservation_path(cid)
                try:
                    # The atomic step: no makedirs/exist_ok here.
                    os.mkdir(path, 0o755)
                except FileExistsError:
                    # Someone outside our lock got there first.
                    continue
                try:
                    # The link first: a lookup finds no owner.json
                    # without one (module docstring).
                    self._link(instance_uuid, cid)
                    self._write_owner(path, instance_uuid, instance_name,
                                      self.owner, self.host, sync=False)
                except BaseException:
                    shutil.rmtree(path, ignore_errors=True)
                    raise
                break
            else:
                raise exception.IdRangeExhausted(count=count)
        # The fsyncs wait on the journal, behind every disk being written
        # by concurrent spawns: outside the lock, so that ten spawns do
        # not queue on each other's. Others see the reservation already;
        # only its durability waits, and it comes before the ID is used.
        # A power loss before that leaves no reservation or an ownerless
        # one (remove_orphan), and no artifact carries the ID yet.
        try:
            durable.sync(os.path.join(path, OWNER_FILE))
            durable.fsync_dir(self.ids_path)
        except BaseException:
            self.release(cid)
            raise
        LOG.debug('Reserved container ID %(cid)d for instance '
                  '%(uuid)s (%(name)s)',
                  {'cid': cid, 'uuid': instance_uuid,
                   'name': instance_name})
        return cid

    @staticmethod
    def _write_owner(path, instance_uuid, instance_name, owner, host,
                     created_at=None, resize_source=False, sync=True):
        record = {'instance_uuid': instance_uuid,
                  'instance_name': instance_name,
                  'owner': owner,
                  'host': host,
                  'pid': os.getpid(),
                  'created_at': time.time() if created_at is None
                  else created_at}
        if resize_source:
            record['resize_source'] = True
        # Readers see no owner.json or a whole one, after a crash too.
        durable.write(os.path.join(path, OWNER_FILE), json.dumps(record),
                      mode=0o644, sync=sync)

    def _reserved_ids(self):
        try:
            names = os.listdir(self.ids_path)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if _CID_RE.match(n))

    def _read_reservation(self, cid):
        path = self._reservation_path(cid)
        try:
            mtime = os.lstat(path).st_mtime
        except FileNotFoundError:
            return None
        try:
            with open(os.path.join(path, OWNER_FILE), encoding='utf-8') as f:
                rec = json.load(f)
            uuid, name = rec['instance_uuid'], rec['instance_name']
            pid, created = rec['pid'], rec['created_at']
            owner = rec.get('owner', self._legacy_owner)
            host = rec.get('host', '')
            resize_source = rec.get('resize_source', False)
            if not (isinstance(uuid, str) and isinstance(name, str) and
                    isinstance(pid, int) and
                    isinstance(created, (int, float)) and
                    isinstance(owner, (str, type(None))) and
                    isinstance(host, str) and
                    isinstance(resize_source, bool)):
                raise ValueError('unexpected types')
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            # Still taken: the directory is the reservation.
            return Reservation(cid=cid, instance_uuid=None,
                               instance_name=None, pid=None,
                               created_at=mtime)
        return Reservation(cid=cid, instance_uuid=uuid, instance_name=name,
                           pid=pid, created_at=float(created), owner=owner,
                           host=host, resize_source=resize_source)

    def reservation(self, cid):
        """The Reservation of cid, or None when it is free."""
        return self._read_reservation(int(cid))

    def reservations(self, mine=False):
        """Return the reservations on disk, unreadable ones included.

        Takes no lock: a reservation being created may show up without its
        owner (see :class:`Reservation`). IDs beyond ``count`` (left from
        larger ranges) are included too.

        :param mine: only this driver's (its state_path the owner) and
            those naming no owner.
        :returns: ``{cid: Reservation}``
        """
        result = {}
        for cid in self._reserved_ids():
            res = self._read_reservation(cid)
            if res is not None and not (
                    mine and res.instance_uuid is not None and
                    res.owner != self.owner):
                result[cid] = res
        return result

    def find(self, instance_uuid):
        """Return the ID this driver reserved for ``instance_uuid``, or None.

        Another driver's reservation for the same instance (the other end
        of a migration on this machine) is not this one's, nor is the ID
        of a resize's source kept aside (set_resize_source). Should a
        corrupted state hold several, the index names the lowest as of
        its last rebuild.

        Reads the index entry and the one owner.json it names (module
        docstring); the first call in a process rebuilds the index.
        """
        self.ensure_index()
        return self._find(str(instance_uuid))

    def _findable(self, res, instance_uuid):
        return (res is not None and res.instance_uuid == instance_uuid and
                res.owner == self.owner and not res.resize_source)

    def _find(self, instance_uuid):
        cid = self._linked(index_key(self.owner, instance_uuid))
        if cid is not None and self._findable(self._read_reservation(cid),
                                              instance_uuid):
            return cid
        return None

    def _linked(self, key):
        """The ID index entry key names, or None (absent or not a link)."""
        try:
            target = os.readlink(os.path.join(self.index_path, key))
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:
                # Not a symlink: no writer of ours made it.
                return None
            raise
        match = _LINK_RE.match(target)
        return int(match.group(1)) if match else None

    def _link(self, instance_uuid, cid):
        """Point this driver's index entry of instance_uuid at cid.

        Under the lock. Only a stale entry is ever replaced, so the moment
        it does not exist is one when none would be found anyway.
        """
        os.makedirs(self.index_path, mode=0o755, exist_ok=True)
        path = os.path.join(self.index_path,
                            index_key(self.owner, instance_uuid))
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.symlink('../%d' % cid, path)

    @staticmethod
    def _entry_of(res):
        """The name of res's index entry, or None: no owner or instance."""
        if res is None or res.instance_uuid is None or res.owner is None:
            return None
        return index_key(res.owner, res.instance_uuid)

    def _unindex(self, res):
        """Remove res's index entry if it names res's ID (under the lock).

        Then the index directory too, once empty: an ids_path without
        reservations holds nothing.
        """
        key = self._entry_of(res)
        if key is not None and self._linked(key) == res.cid:
            self._remove(os.path.join(self.index_path, key))
        self._remove_empty_index()

    def _remove_empty_index(self):
        try:
            os.rmdir(self.index_path)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise

    def ensure_index(self):
        """Rebuild the index once in this process (rebuild_index)."""
        if self._indexed:
            return
        with self._index_lock:
            if not self._indexed:
                self.rebuild_index()

    def rebuild_index(self):
        """Make the ID index agree with the reservations, under the lock.

        This driver's reservations a lookup may return get an entry
        naming them (the lowest ID of an instance holding several).
        Entries of any owner that name nothing a lookup would return
        under their name (dangling, an ownerless or set-aside
        reservation, another instance's) go; so do entries that are not
        symlinks, except directories (logged, left alone).

        :returns: ``(written, removed)``: numbers of entries.
        """
        written = removed = 0
        with self._lock():
            held = {}
            wanted = {}
            for cid in self._reserved_ids():
                res = self._read_reservation(cid)
                if res is None:
                    continue
                held[cid] = res
                if self._findable(res, res.instance_uuid):
                    # _reserved_ids ascends: the first is the lowest.
                    wanted.setdefault(
                        index_key(self.owner, res.instance_uuid), cid)
            try:
                names = os.listdir(self.index_path)
            except FileNotFoundError:
                names = []
            for name in names:
                cid = self._linked(name)
                res = held.get(cid)
                if name in wanted or (self._entry_of(res) == name and
                                      not res.resize_source):
                    continue
                path = os.path.join(self.index_path, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    LOG.warning('Left in place: %s is a directory, which no '
                                'writer of the ID index makes', path)
                    continue
                self._remove(path)
                removed += 1
            for key, cid in wanted.items():
                if self._linked(key) != cid:
                    self._link(held[cid].instance_uuid, cid)
                    written += 1
            self._remove_empty_index()
            self._indexed = True
        if written or removed:
            LOG.info('ID index %(path)s rebuilt: %(w)d entries written, '
                     '%(r)d removed', {'path': self.index_path,
                                       'w': written, 'r': removed})
        return written, removed

    def set_resize_source(self, cid, instance_uuid, resize_source):
        """Mark (or unmark) this driver's ID cid as a resize's source.

        While marked, the ID stays reserved for its instance but ``find``
        does not name it, so the instance can hold a second ID for the
        resize's new container on this host.

        :raises IdNotHeld: cid is not this driver's reservation for
            instance_uuid.
        """
        path = self._reservation_path(int(cid))
        self.ensure_index()
        with self._lock():
            res = self._read_reservation(int(cid))
            if (res is None or res.instance_uuid != str(instance_uuid) or
                    res.owner != self.owner):
                raise exception.IdNotHeld(
                    cid=cid, path=path, instance=instance_uuid,
                    holder=res.instance_uuid if res else None)
            if res.resize_source != resize_source:
                if not resize_source:
                    # Findable again: linked first, as by allocate, unless
                    # a lower ID of the instance is found already.
                    found = self._find(res.instance_uuid)
                    if found is None or found > res.cid:
                        self._link(res.instance_uuid, res.cid)
                self._write_owner(path, res.instance_uuid, res.instance_name,
                                  res.owner, res.host, res.created_at,
                                  resize_source=resize_source)
                if resize_source:
                    self._unindex(res)

    def adopt(self, legacy_path):
        """Move this driver's reservations from legacy_path into ids_path.

        Reservations made before IDs were machine-wide live in
        ``<state_path>/ids``; each keeps its ID and gets this driver as
        its owner. Under the lock, so no allocation sees an ID in
        neither place.

        :returns: list of the IDs moved.
        :raises IdConflict: an ID is reserved in both places by different
            instances: two drivers of this machine have given one uid
            range to two containers. Nothing more is moved.
        """
        if os.path.realpath(legacy_path) == os.path.realpath(self.ids_path):
            return []
        try:
            names = sorted(n for n in os.listdir(legacy_path)
                           if _CID_RE.match(n))
        except FileNotFoundError:
            return []
        legacy = IdAllocator(self.state_path, ids_path=legacy_path)
        moved = []
        os.makedirs(self.ids_path, mode=0o755, exist_ok=True)
        self.ensure_index()
        with self._lock():
            for name in names:
                cid = int(name)
                old = legacy._read_reservation(cid)
                if old is None:
                    continue
                current = self._read_reservation(cid)
                if current is not None and (
                        current.instance_uuid != old.instance_uuid or
                        current.owner != self.owner):
                    raise exception.IdConflict(
                        cid=cid, path=self._reservation_path(cid),
                        holder=current.instance_uuid,
                        owner=current.owner,
                        legacy=legacy._reservation_path(cid),
                        instance=old.instance_uuid)
                if current is None:
                    path = self._reservation_path(cid)
                    os.mkdir(path, 0o755)
                    if old.instance_uuid is not None:
                        if self._find(old.instance_uuid) is None:
                            self._link(old.instance_uuid, cid)
                        self._write_owner(path, old.instance_uuid,
                                          old.instance_name, self.owner,
                                          self.host, old.created_at)
                self._remove(legacy._reservation_path(cid))
                legacy._unindex(old)
                moved.append(cid)
        if moved:
            LOG.info('Moved the reservations of container IDs %s from %s '
                     'into the machine\'s %s', moved, legacy_path,
                     self.ids_path)
        return moved

    def release(self, cid):
        """Remove the reservation of ``cid``; a missing one is not an error.

        Call it only after the container's artifacts are gone, or list
        them in ``artifact_ids``: once released the ID may be reused.
        """
        path = self._reservation_path(int(cid))
        with self._lock():
            res = self._read_reservation(int(cid))
            self._remove(path)
            # After the reservation: a link left by a crash in between
            # dangles, and dangling means none.
            self._unindex(res)
        LOG.debug('Released container ID %d', cid)

    def remove_orphan(self, cid):
        """Remove the reservation of ``cid`` if it names no owner.

        ``allocate`` writes ``owner.json`` under the lock right after the
        mkdir, so a reservation without an owner seen under the lock was
        left by a process killed in between (or made by hand). Its ID never
        reached a spawn, so no artifact of a container carries it (and
        ``artifact_ids`` would still protect one that did).

        :returns: True if the reservation was removed.
        """
        path = self._reservation_path(int(cid))
        with self._lock():
            res = self._read_reservation(int(cid))
            if res is None or res.instance_uuid is not None:
                return False
            self._remove(path)
        LOG.warning('Removed container ID %d: its reservation names no '
                    'owner (a process died while making it)', cid)
        return True

    @staticmethod
    def _remove(path):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        try:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            else:
                # Never follow a symlink planted in ids/.
                os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
