"""The durable record of each instance: what cannot be derived from Nova.

An instance's disks and this record are the truth about it on this host;
its LXC config, mounts and cgroups are derived from the record and Nova's
instance, flavor and network_info, and rebuilt at will (hard reboot, power
on, host boot). One JSON file per instance, keyed by its UUID::

    <state_path>/instances/<instance_uuid>.json

It names the container (LXC name and directory), its container ID and the
idmap that ID had when the disks were made (so a changed
``[lxc] id_range_size`` cannot silently remap them), the image its root
is built on and where its disks live. ``state`` is ``spawning`` from
before spawn makes anything until it has finished: the in-progress marker
that lets cleanup prove what a crashed spawn made. ``rescue_image_id``
names the image of a rescue (rescue.py) from before its rescue root is
made until that root is removed again: a restart remounts it, and its
presence says the config is the rescue container's. ``disk_idmap`` is
the idmap its disks' files are owned in when that is not its own: disks
received by a migration keep their source's owners and are shown to the
container through an idmapped mount (migration.py). State ``migrating``
marks disks handed over to a migration's destination: nothing mounts
them until the migration is confirmed (they go) or reverted. Written only
through durable.write.
"""

import dataclasses
import json
import os

from oslo_log import log as logging
from oslo_utils import uuidutils

from novalxcdriver import durable
from novalxcdriver import ids

LOG = logging.getLogger(__name__)

SPAWNING = 'spawning'
READY = 'ready'
MIGRATING = 'migrating'
_STATES = (SPAWNING, READY, MIGRATING)
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class InstanceRecord:
    """What this host must remember of one instance.

    :ivar instance_uuid: the Nova instance's UUID.
    :ivar name: its LXC name (instance.name), also its directory's name
        under ``lxc_path``.
    :ivar host: the compute host (init_host's host) that made it.
    :ivar cid: its container ID (ids.IdAllocator).
    :ivar idmap: ids.Idmap its disks were made with.
    :ivar image_id: the Glance image its root is built on.
    :ivar container_dir: ``<lxc_path>/<name>`` when it was made.
    :ivar rootfs: ``<state_path>/rootfs/<cid>``: its disks.
    :ivar state: SPAWNING, READY or MIGRATING.
    :ivar pid: the process that wrote it (whose spawn it is).
    :ivar rescue_image_id: the Glance image of its rescue root while it
        is rescued (rescue.py), else ''. Left out of the JSON when '', so
        the records of servers never rescued are those earlier versions
        wrote and read.
    :ivar disk_idmap: ids.Idmap its disks' files are owned in, when it
        differs from idmap (disks a migration brought), else None (and
        left out of the JSON).
    """

    instance_uuid: str
    name: str
    host: str
    cid: int
    idmap: ids.Idmap
    image_id: str
    container_dir: str
    rootfs: str
    state: str = SPAWNING
    pid: int = 0
    rescue_image_id: str = ''
    disk_idmap: ids.Idmap | None = None

    @property
    def disks_idmap(self):
        """The ids.Idmap its disks' files are owned in."""
        return self.disk_idmap or self.idmap

    def to_json(self):
        data = dataclasses.asdict(self)
        if not data['rescue_image_id']:
            del data['rescue_image_id']
        if data['disk_idmap'] is None or self.disk_idmap == self.idmap:
            del data['disk_idmap']
        data['version'] = _VERSION
        return json.dumps(data, sort_keys=True, indent=1) + '\n'

    @classmethod
    def from_json(cls, text):
        """Parse a record written by to_json.

        :raises ValueError: the text is empty, torn or not a record.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError('not a JSON object')
        data.pop('version', None)
        try:
            idmap = ids.Idmap(**data.pop('idmap'))
            disk_idmap = data.pop('disk_idmap', None)
            if disk_idmap is not None:
                disk_idmap = ids.Idmap(**disk_idmap)
            record = cls(idmap=idmap, disk_idmap=disk_idmap, **data)
        except (KeyError, TypeError) as e:
            raise ValueError('not an instance record: %s' % e)
        ints = (record.cid, record.pid, idmap.uid_start, idmap.gid_start,
                idmap.size)
        if disk_idmap is not None:
            ints += (disk_idmap.uid_start, disk_idmap.gid_start,
                     disk_idmap.size)
            if disk_idmap.size != idmap.size:
                raise ValueError('its disks\' idmap has %s ids, its own %s'
                                 % (disk_idmap.size, idmap.size))
        strs = (record.instance_uuid, record.name, record.host,
                record.image_id, record.container_dir, record.rootfs,
                record.rescue_image_id)
        if (not all(isinstance(i, int) and not isinstance(i, bool)
                    for i in ints) or
                not all(isinstance(s, str) for s in strs) or
                record.state not in _STATES):
            raise ValueError('a field has the wrong type or value')
        return record


INSTANCES = 'instances'
# The records of containers a resize on their own host set aside: the
# instance's disks it reverts to (container.Container.park_resize_source).
RESIZE_SOURCES = 'resize-sources'


class RecordStore:
    """The instance records under ``<state_path>/<kind>``.

    :param state_path: the driver's state directory ([lxc] state_path).
    :param kind: INSTANCES (each instance's container here) or
        RESIZE_SOURCES (containers set aside until a resize on this host
        is confirmed or reverted).
    """

    def __init__(self, state_path, kind=INSTANCES):
        self.path = os.path.join(state_path, kind)

    def _file(self, instance_uuid):
        if not uuidutils.is_uuid_like(instance_uuid):
            # It becomes a file name.
            raise ValueError('instance UUID %r is not a UUID'
                             % (instance_uuid,))
        return os.path.join(self.path, '%s.json' % instance_uuid)

    def write(self, record):
        """Write record durably (replacing the instance's former one).

        :raises OSError: nothing was written (e.g. ENOSPC).
        """
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        durable.write(self._file(record.instance_uuid), record.to_json(),
                      mode=0o600)

    def get(self, instance_uuid):
        """The instance's record, or None when it has none.

        A torn or corrupt record (a crash of the disk under it, an edit
        by hand) is logged and reads as None: callers fall back to what
        the other artifacts prove (the ID reservation names the instance).
        """
        path = self._file(instance_uuid)
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            record = InstanceRecord.from_json(text)
        except ValueError as e:
            LOG.warning('Ignoring the unreadable record %s: %s', path, e)
            return None
        if record.instance_uuid != instance_uuid:
            LOG.warning('Ignoring the record %s: it names instance %s',
                        path, record.instance_uuid)
            return None
        return record

    def all(self):
        """Every readable record: dict of instance UUID to InstanceRecord."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return {}
        records = {}
        for name in sorted(names):
            uuid, ext = os.path.splitext(name)
            if ext != '.json' or not uuidutils.is_uuid_like(uuid):
                continue
            record = self.get(uuid)
            if record is not None:
                records[uuid] = record
        return records

    def remove(self, instance_uuid):
        """Forget the instance (its artifacts are gone). Idempotent."""
        try:
            os.unlink(self._file(instance_uuid))
        except FileNotFoundError:
            return
        durable.fsync_dir(self.path)
