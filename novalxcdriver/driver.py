"""LXCDriver: Nova's compute driver contract, mapped onto containers.

Each method finds the instance's container.Container and asks it to act;
Nova objects are translated into a spec.ContainerSpec on the way down and
project exceptions into Nova's on the way up. nova-compute loads this class
as ``compute_driver = novalxc.LXCDriver`` through the nova.virt.novalxc
shim. Method contracts: nova/virt/driver.py (Nova 34).
"""

import functools
import os
import time

from nova.compute import power_state
from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova.console import type as ctype
from nova import context as nova_context
from nova import exception as nova_exc
from nova.image import glance
from nova import objects
from nova.objects import fields
from nova.virt import driver
from nova.virt import event as virtevent
from nova.virt import hardware
import nova.virt.node
import os_resource_classes as orc
from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_serialization import jsonutils
from oslo_utils import excutils
from oslo_utils import units
from oslo_utils import uuidutils

from novalxcdriver import conf
from novalxcdriver import configdrive
from novalxcdriver import container as container_mod
from novalxcdriver import diagnostics
from novalxcdriver import disk
from novalxcdriver import diskimage
from novalxcdriver import download
from novalxcdriver import events
from novalxcdriver import exception
from novalxcdriver import host as host_mod
from novalxcdriver import hostdirs
from novalxcdriver import ids
from novalxcdriver import images
from novalxcdriver import limits as limits_mod
from novalxcdriver import lxcfs
from novalxcdriver import migration as migration_mod
from novalxcdriver import numa
from novalxcdriver import privsep
from novalxcdriver import record as record_mod
from novalxcdriver import rescue as rescue_mod
from novalxcdriver import rootfs as rootfs_mod
from novalxcdriver import snapshot as snapshot_mod
from novalxcdriver import spec as spec_mod
from novalxcdriver import vif as vif_mod

CONF = conf.CONF
LOG = logging.getLogger(__name__)

# LXC state (lxc-info -s) to Nova power state.
POWER_STATES = {
    'STOPPED': power_state.SHUTDOWN,
    'STARTING': power_state.RUNNING,
    'RUNNING': power_state.RUNNING,
    'STOPPING': power_state.RUNNING,
    'ABORTING': power_state.CRASHED,
    'FREEZING': power_state.PAUSED,
    'FROZEN': power_state.PAUSED,
    'THAWED': power_state.RUNNING,
}

# LXC state reached on its own to the lifecycle event Nova understands.
LIFECYCLE_EVENTS = {
    'STOPPED': virtevent.EVENT_LIFECYCLE_STOPPED,
    'RUNNING': virtevent.EVENT_LIFECYCLE_STARTED,
    'FROZEN': virtevent.EVENT_LIFECYCLE_PAUSED,
}


class LXCDriver(driver.ComputeDriver):
    """Runs each Nova instance as an unprivileged LXC system container."""

    capabilities = dict(
        driver.ComputeDriver.capabilities,
        # Images are rootfs tarballs (disk_format=raw) or disk images,
        # raw or qcow2, whose root partition's tree is copied once per
        # host (diskimage.py). Nova turns these into COMPUTE_IMAGE_TYPE_*
        # traits; the other formats (vmdk, iso, ami, ...) stay False.
        supports_image_type_raw=True,
        supports_image_type_qcow2=True,
        # manage_image_cache prunes the unpacked image cache.
        has_imagecache=True,
        # Evacuate rebuilds from the image on the new host (local disks:
        # the old root's writes stay on the failed host); cold migration
        # and resize copy the disks (migration.py). A resize on its own
        # host (Nova's allow_resize_to_same_host) keeps both copies until
        # confirm or revert (park_resize_source).
        supports_evacuate=True,
        # Not a cluster: a cold migration (same flavor) must change host.
        # True would report COMPUTE_SAME_HOST_COLD_MIGRATE, which lets
        # Nova's API schedule a migrate back onto the server's own host
        # (nova.compute.api._allow_resize_to_same_host). Same-host resize
        # needs no capability.
        supports_migrate_to_same_host=False,
        # Hot-plug into the running container's network namespace.
        supports_attach_interface=True,
        supports_multiattach=False,
        supports_trusted_certs=False,
        supports_pcpus=True,  # PCPU inventory and pinning: numa.py
        # rescue and unrescue are (rescue.py); a volume-backed server
        # cannot be (COMPUTE_RESCUE_BFV): there are no volumes.
        supports_bfv_rescue=False,
    )

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi)
        self._lxc_path = CONF.lxc.lxc_path
        self._state_path = CONF.lxc.state_path
        self._ids_path = CONF.lxc.ids_path
        self._node_uuid = None
        self._images = images.ImageCache(
            self._state_path, CONF.lxc.image_max_unpacked_gib * units.Gi,
            disk_images=CONF.lxc.disk_images)
        if not CONF.lxc.disk_images:
            # Honest traits: no COMPUTE_IMAGE_TYPE_QCOW2 for the scheduler.
            self.capabilities = dict(self.capabilities,
                                     supports_image_type_qcow2=False)
        self._records = record_mod.RecordStore(self._state_path)
        self._resize_sources = record_mod.RecordStore(
            self._state_path, record_mod.RESIZE_SOURCES)
        self._ids = None
        self._watcher = None
        # init_host's host: Nova's harness runs several computes in one
        # process and sets CONF.host only while each starts.
        self._host = CONF.host
        self._my_ip = CONF.my_ip

    # -- host -------------------------------------------------------------

    def init_host(self, host):
        """Check the host, adopt and check records, watch states.

        Deletes nothing of any instance: a spawn interrupted by a crash
        keeps what it made until Nova deletes the instance (destroy), and
        a missing lxc_path is not made again while records exist (its
        filesystem may just not be mounted); configs are rebuilt at the
        next hard reboot or power on.

        :raises HostCheckFailed: listing everything the host lacks, and
            idmap settings that differ from the recorded ones.
        """
        self._host = host
        # Before any call: the daemons act only under known roots.
        privsep.add_roots(self._lxc_path, self._state_path)
        problems = host_mod.problems(CONF.lxc.root_disk_fs)
        problems += host_mod.traversal_problems(
            (self._lxc_path, self._state_path))
        problems += hostdirs.problems(self._lxc_path, self._state_path,
                                      self._ids_path)
        if not problems:
            os.makedirs(self._state_path, mode=0o711, exist_ok=True)
            problems += lxcfs.ensure(self._state_path)
        try:
            self._ids = ids.IdAllocator(
                self._state_path, range_size=CONF.lxc.id_range_size,
                artifact_ids=self._artifact_ids,
                ids_path=self._ids_path, host=host)
            if self._ids.count < 1:
                raise exception.IdmapUnavailable(
                    reason='the range holds no block of %d ids' %
                    CONF.lxc.id_range_size)
            if not problems:
                self._ids.adopt(os.path.join(self._state_path, 'ids'))
        except (exception.IdmapUnavailable, exception.IdConflict) as e:
            problems.append(str(e))

        if not problems:
            self._adopt_configs(host)
            problems += self._idmap_problems()
        if not problems:
            try:
                privsep.start_daemons()
                vif_mod.start_daemons()
            except Exception as e:
                problems.append('the privsep daemons cannot start: %s'
                                % e)
        if problems:
            raise exception.HostCheckFailed(problems='; '.join(problems))
        try:
            self._images.prepare()
        except Exception as e:
            # A first boot then starts its own unpacker.
            LOG.warning('No spare image unpacker: %s', e)
        warning = host_mod.private_mount_warning(self._state_path,
                                                 disk.ATTACHED_TIMEOUT)
        if warning:
            LOG.warning('%s', warning)
        records = self._records.all()
        if not os.path.isdir(self._lxc_path) and records:
            LOG.warning('lxc_path %s is missing while %d instances have '
                        'records in %s: is its filesystem mounted? Their '
                        'configs are written again at their next hard '
                        'reboot or power on.', self._lxc_path, len(records),
                        self._records.path)
        else:
            hostdirs.make_lxc_path(self._lxc_path)
        self._reconcile(records)
        if CONF.lxc.state_poll_interval:
            self._watcher = events.StateWatcher(
                self._lxc_path, CONF.lxc.state_poll_interval,
                self._state_changed, on_restart=self._restarted)
            self._watcher.start()

    def cleanup_host(self, host):
        if self._watcher:
            self._watcher.stop()

    def _artifact_ids(self):
        return container_mod.artifact_ids(self._lxc_path, self._state_path,
                                          self._records)

    def _adopt_configs(self, host):
        """Write the record of each container that has only a config.

        Containers made before records existed carry theirs in their
        config; its idmap keys give the idmap their disks were made with.
        Only this host's: a config naming another host belongs to a driver
        sharing lxc_path with another state_path, whose record is there.
        A container deleted since the listing is skipped.
        """
        for name, found in container_mod.config_records(
                self._lxc_path).items():
            uuid = found.get('instance_uuid')
            if ('id' not in found or not uuidutils.is_uuid_like(uuid) or
                    found.get('host', host) != host or
                    self._records.get(uuid) is not None):
                continue
            c = self._container_of(name, uuid)
            try:
                with open(c.config_path) as f:
                    idmap = spec_mod.parse_idmap(f.read())
            except FileNotFoundError:
                continue
            if idmap is None:
                continue
            root = rootfs_mod.Rootfs(self._state_path, found['id'])
            self._records.write(record_mod.InstanceRecord(
                instance_uuid=uuid, name=name, host=found.get('host', ''),
                cid=found['id'], idmap=idmap,
                image_id=found.get('image_id', ''), container_dir=c.dir,
                rootfs=root.path, state=record_mod.READY))
            LOG.info('Recorded container %s of instance %s from its config',
                     name, uuid)

    def _idmap_problems(self):
        """Records whose idmap the current settings would change."""
        problems = []
        for rec in self._records.all().values():
            try:
                current = self._ids.idmap(rec.cid)
            except exception.IdmapUnavailable as e:
                current = str(e)
            if current != rec.idmap:
                problems.append(str(exception.IdmapChanged(
                    cid=rec.cid, instance_uuid=rec.instance_uuid,
                    recorded=_idmap_text(rec.idmap),
                    current=(_idmap_text(current)
                             if isinstance(current, ids.Idmap)
                             else current))))
        return problems

    def _reconcile(self, records):
        """Log what a crash interrupted; remount roots after a reboot.

        Removes only what holds nothing: partial image downloads and ID
        reservations that never got an owner, no artifact or record
        using the ID.
        """
        self._images.remove_partials()
        disk.remove_template_leftovers(
            os.path.join(self._state_path, disk.TEMPLATES))
        for path in snapshot_mod.remove_spool_leftovers(
                os.path.join(self._state_path, snapshot_mod.SPOOL)):
            LOG.info('Removed %s, left by a snapshot cut short', path)
        held = self._artifact_ids()
        reservations = self._ids.reservations(mine=True)
        claimed = {r.cid for r in records.values()} | {
            cid for cid, res in reservations.items()
            if res.instance_uuid is not None}
        for cid in sorted(rootfs_mod.existing_ids(self._state_path) -
                          claimed):
            LOG.warning('Left in place: %s names container ID %d, which no '
                        'instance record or ID reservation claims. Move it '
                        'away once you know whose disks it holds.',
                        rootfs_mod.Rootfs(self._state_path, cid).path, cid)
        for cid, res in reservations.items():
            if res.instance_uuid is None and cid not in held:
                # Killed between the reservation's mkdir and its owner.
                self._ids.remove_orphan(cid)
            elif res.resize_source:
                LOG.info('Container ID %d of instance %s is set aside by '
                         'a resize on this host until it is confirmed or '
                         'reverted', cid, res.instance_uuid)
            elif (res.instance_uuid is not None and
                    res.instance_uuid not in records and
                    not host_mod.process_alive(res.pid)):
                LOG.warning('Container ID %d of instance %s has no record: '
                            'its spawn was interrupted. It is kept until '
                            'Nova deletes the instance.', cid,
                            res.instance_uuid)
        for uuid, rec in records.items():
            if rec.host != self._host:
                continue
            if (rec.state == record_mod.SPAWNING and
                    not host_mod.process_alive(rec.pid)):
                LOG.warning('The spawn of instance %s (container %s, ID %d) '
                            'was interrupted; what it made is kept until '
                            'Nova deletes the instance.', uuid, rec.name,
                            rec.cid)
                continue
            container = self._container_of(rec.name, uuid)
            try:
                container.remount(self._images)
            except exception.NovaLXCError:
                LOG.exception('Cannot remount the root of container %s; '
                              'its next hard reboot will try again',
                              rec.name)
            if CONF.serial_console.enabled:
                try:
                    container.restart_serial_console(
                        CONF.serial_console.proxyclient_address,
                        CONF.serial_console.port_range)
                except exception.NovaLXCError:
                    LOG.exception('Cannot restart the serial console relay '
                                  'of container %s; the next console '
                                  'request will try again', rec.name)

    def _state_changed(self, name, old, new):
        record = self._container_of(name, None).config_record()
        transition = LIFECYCLE_EVENTS.get(new)
        # EVENT_LIFECYCLE_STARTED is 0: compare with None, not truth.
        if (not record or record.get('host') != self._host or
                transition is None):
            return
        if old in ('FROZEN', 'FREEZING') and new == 'RUNNING':
            transition = virtevent.EVENT_LIFECYCLE_RESUMED
        LOG.info('Container %s went from %s to %s', name, old, new)
        self.emit_event(virtevent.LifecycleEvent(record['instance_uuid'],
                                                 transition))

    def manage_image_cache(self, context, all_instances):
        """Remove cached images that nothing uses (Nova's periodic pass).

        Kept: the images of every container in lxc_path (its rescue
        image too while rescued) and of the instances Nova lists, and any
        image used within [image_cache]
        remove_unused_original_minimum_age_seconds. Nothing is removed
        when [image_cache] remove_unused_base_images is False.
        """
        if not CONF.image_cache.remove_unused_base_images:
            return
        # A resize's source set aside here reverts to its image.
        records = (list(self._records.all().values()) +
                   list(self._resize_sources.all().values()))
        in_use = {r.image_id for r in records}
        # A rescued server's rescue image is mounted too.
        in_use.update(r.rescue_image_id for r in records
                      if r.rescue_image_id)
        for r in container_mod.config_records(self._lxc_path).values():
            in_use.update(r[key] for key in ('image_id', 'rescue_image_id')
                          if key in r)
        in_use.update(i.image_ref for i in all_instances if i.image_ref)
        min_age = CONF.image_cache.remove_unused_original_minimum_age_seconds
        self._images.prune(in_use, min_age)

    def _restarted(self, name):
        """Give a container restarted by LXC alone its attached NICs again.

        A reboot from inside the guest restarts it with the NICs LXC
        started it with: the pairs of NICs attached since then died with
        the old network namespace (their host ends are gone).
        """
        c = self._container_of(name, None)
        record = c.config_record()
        if record.get('host') != self._host:
            return
        with self._nics_lock(record['instance_uuid']):
            lost = [nic.name for nic in c.nics()
                    if not vif_mod.link_exists(nic.host_dev)]
        if not lost:
            return
        instance, network_info = self._instance_and_network_info(
            record['instance_uuid'])
        LOG.info('Container %s restarted without its NICs %s; plugging '
                 'them again', name, ', '.join(lost), instance=instance)
        self._replug_running(c, instance, network_info)

    def _instance_and_network_info(self, instance_uuid):
        """The instance and its network_info, from Nova's database."""
        context = nova_context.get_admin_context()
        instance = objects.Instance.get_by_uuid(
            context, instance_uuid, expected_attrs=['info_cache'])
        return instance, instance.get_network_info()

    def get_host_ip_addr(self):
        return self._my_ip

    def get_available_nodes(self, refresh=False):
        return [self._host]

    def _local_node_uuid(self):
        """This compute's node UUID (nova.virt.node), kept on first use.

        Kept, not read again: Nova's harness runs several computes in
        one process, with one process-wide cache.
        """
        if self._node_uuid is None:
            self._node_uuid = nova.virt.node.get_local_node_uuid()
        return self._node_uuid

    def get_nodenames_by_uuid(self, refresh=False):
        return {self._local_node_uuid(): self._host}

    def get_available_resource(self, nodename):
        """Host CPUs, memory (MiB) and instance disk (GiB), Nova's dict."""
        node_uuid = self._local_node_uuid()
        mem_total, mem_used = host_mod.memory_mb()
        disk_total, disk_used, disk_free = host_mod.disk_gb(self._state_path)
        arch = fields.Architecture.canonicalize(host_mod.arch())
        return {
            'vcpus': host_mod.cpu_count(),
            'memory_mb': mem_total,
            'local_gb': disk_total,
            'vcpus_used': 0,
            'memory_mb_used': mem_used,
            'local_gb_used': disk_used,
            'hypervisor_type': fields.HVType.LXC,
            'hypervisor_version': host_mod.lxc_version_int(),
            'hypervisor_hostname': nodename,
            'cpu_info': jsonutils.dumps({'arch': arch}),
            'disk_available_least': disk_free,
            'supported_instances': [(arch, fields.HVType.LXC,
                                     fields.VMMode.EXE)],
            'numa_topology': numa.topology()._to_json(),
            'uuid': node_uuid,
        }

    def update_provider_tree(self, provider_tree, nodename, allocations=None):
        """VCPU, PCPU, MEMORY_MB and DISK_GB inventory of the host.

        VCPU counts [compute] cpu_shared_set (all CPUs when neither set is
        configured), PCPU [compute] cpu_dedicated_set, as Nova's libvirt
        driver does; reserved_host_* and allocation ratios apply.
        """
        memory_mb, _used = host_mod.memory_mb()
        disk_gb, _used, _free = host_mod.disk_gb(self._state_path)
        ratios = self._get_allocation_ratios(
            provider_tree.data(nodename).inventory)
        totals = {
            orc.VCPU: (len(numa.shared_cpus()), CONF.reserved_host_cpus),
            orc.PCPU: (len(numa.dedicated_cpus()), 0),
            orc.MEMORY_MB: (memory_mb, CONF.reserved_host_memory_mb),
            orc.DISK_GB: (disk_gb,
                          self._get_reserved_host_disk_gb_from_config()),
        }
        provider_tree.update_inventory(nodename, {
            rc: {'total': total, 'min_unit': 1, 'max_unit': total,
                 'step_size': 1,
                 # Dedicated CPUs are never overcommitted.
                 'allocation_ratio': 1.0 if rc == orc.PCPU else ratios[rc],
                 'reserved': reserved}
            for rc, (total, reserved) in totals.items() if total})

    # -- instances ----------------------------------------------------------

    def _container_of(self, name, instance_uuid):
        return container_mod.Container(name, instance_uuid, self._lxc_path,
                                       self._state_path, self._ids,
                                       self._records)

    def _container(self, instance):
        try:
            return self._container_of(instance.name, instance.uuid)
        except exception.InvalidContainerName as e:
            raise nova_exc.InvalidInput(reason=str(e))

    def _existing(self, instance):
        c = self._container(instance)
        if not c.exists():
            raise nova_exc.InstanceNotFound(instance_id=instance.uuid)
        return c

    def list_instances(self):
        """Names of the instances recorded on this host.

        Their configs may be missing until rebuilt.
        """
        return [r.name for r in self._records.all().values()
                if r.host == self._host]

    def list_instance_uuids(self):
        return [r.instance_uuid for r in self._records.all().values()
                if r.host == self._host]

    def instance_exists(self, instance):
        return self._container(instance).exists()

    def get_info(self, instance, use_cache=True):
        """:raises InstanceNotFound: no container for the instance."""
        c = self._existing(instance)
        try:
            state, _pid = c.state()
        except exception.ContainerNotFound:
            raise nova_exc.InstanceNotFound(instance_id=instance.uuid)
        except exception.CommandFailed as e:
            # A config LXC cannot read: a hard reboot writes it again.
            LOG.warning('Cannot read the state of container %s: %s',
                        c.name, e, instance=instance)
            return hardware.InstanceInfo(state=power_state.NOSTATE,
                                         internal_id=c.name)
        power = POWER_STATES.get(state, power_state.NOSTATE)
        if power == power_state.PAUSED and c.is_suspended():
            power = power_state.SUSPENDED
        return hardware.InstanceInfo(state=power, internal_id=c.name)

    def get_console_output(self, context, instance):
        return self._existing(instance).console_output()

    def get_serial_console(self, context, instance):
        """Where nova-serialproxy reaches the container's /dev/console.

        A relay on a port of [serial_console] port_range, bound on
        [serial_console] proxyclient_address (serialconsole.py); asked
        again, the same port while the relay lives (Nova validates a
        token's port this way).

        :returns: nova.console.type.ConsoleSerial.
        :raises ConsoleTypeUnavailable: [serial_console] enabled is False.
        :raises InstanceNotFound: no such container.
        :raises InstanceNotReady: the container does not run (HTTP 409).
        :raises SocketPortRangeExhaustedException: no free port (400).
        """
        if not CONF.serial_console.enabled:
            raise nova_exc.ConsoleTypeUnavailable(console_type='serial')
        address = CONF.serial_console.proxyclient_address
        try:
            relay = self._existing(instance).serial_console(
                address, CONF.serial_console.port_range)
        except exception.ContainerNotRunning:
            raise nova_exc.InstanceNotReady(instance_id=instance.uuid)
        except exception.ConsolePortsExhausted:
            raise nova_exc.SocketPortRangeExhaustedException(host=address)
        return ctype.ConsoleSerial(host=relay.address, port=relay.port)

    # -- lifecycle -----------------------------------------------------------

    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        """Create the container from image_meta's rootfs and start it.

        Its VIFs are plugged before the start, which waits for Neutron's
        network-vif-plugged events (_plug_vifs_and_wait). A config drive,
        when Nova asks for one, carries injected_files and admin_password
        (configdrive.py); nothing is injected otherwise.

        :raises ImageUnacceptable: the image is not a usable rootfs archive.
        :raises InvalidInput: something asked of the instance that this
            host or driver cannot provide (a VIF type other than ovs or
            bridge, volumes, a flavor larger than the host, a bad extra
            spec).
        :raises VirtualInterfaceCreateException: Neutron reported a VIF
            failed, or not in time (vif_plugging_is_fatal).
        """
        self._refuse_unsupported(instance, block_device_info)
        c = self._container(instance)
        # Before network_info is looked at: Nova allocates the ports in
        # Neutron beside the spawn (NetworkInfoAsyncWrapper, whose first
        # use waits), so a new image downloads and unpacks meanwhile, as
        # libvirt's driver makes its disks first.
        image = self._cached_image(context, instance, image_meta)
        network_info = network_info or []
        nics = vif_mod.nics_for(network_info)
        flavor = instance.flavor
        cid = self._ids.allocate(instance.uuid, instance.name)
        try:
            spec = self._spec(
                instance, c, cid, image, nics,
                config_drive=configdrive.required_by(instance, image_meta))
            # Undoes what it made itself when it fails, and only that.
            c.create(spec, image, root_gb=flavor.root_gb,
                     ephemeral_gb=flavor.ephemeral_gb)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._ids.release(cid)
        self._bring_up(c, spec, instance, network_info, power_on,
                       functools.partial(self._plug_vifs_and_wait,
                                         instance, network_info, power_on),
                       'Spawn', injected_files, admin_password)
        LOG.info('Container %s spawned (ID %d)', c.name, cid,
                 instance=instance)

    def _bring_up(self, c, spec, instance, network_info, power_on, plug,
                  what, injected_files=None, admin_password=None):
        """Config drive, VIFs, start: the tail of spawn and finish_migration.

        c has just been made (create or receive) with its ID; on any
        failure it is destroyed, with that ID, and whatever VIFs plug()
        may have plugged are unplugged, so nothing is left.

        :param plug: plugs network_info's VIFs (and waits, if it does).
        :param what: 'Spawn' or 'Migration', for the log.
        """
        plugged = []
        try:
            if spec.config_drive:
                configdrive.write(spec.config_drive, instance,
                                  injected_files, admin_password,
                                  network_info, spec.idmap)
            plugged = network_info
            plug()
            if power_on:
                c.start(created=True)
            c.mark_ready()
        except Exception:
            with excutils.save_and_reraise_exception():
                LOG.warning('%s failed; removing what it made', what,
                            instance=instance)
                c.destroy()
                self._unplug_vifs(instance, plugged)

    def rebuild(self, context, instance, image_meta, injected_files,
                admin_password, allocations, bdms, detach_block_devices,
                attach_block_devices, network_info=None, evacuate=False,
                block_device_info=None, preserve_ephemeral=False,
                accel_uuids=None, reimage_boot_volume=False):
        """Give the server a fresh root from image_meta in its container.

        Nova's rebuild (nova/virt/driver.py; ComputeManager's
        _do_rebuild_instance calls it in task state REBUILDING and saves
        the instance expecting REBUILD_SPAWNING): the container's own
        writes and, unless preserve_ephemeral, its ephemeral disk's
        content are gone; its root now overlays image_meta's cached
        rootfs. It keeps its name, container ID, idmap and record, its
        NICs, and the flavor's limits; its config drive is made as spawn
        makes it (injected_files, admin_password). It is started again:
        Nova stops a server that was SHUTOFF itself afterwards.

        The image is fetched and unpacked, the flavor checked and the
        config drive written before anything of the server is touched.
        Then the container is stopped cleanly as Nova's default rebuild
        stops it ([DEFAULT] shutdown_timeout or the image's
        os_shutdown_timeout), the task state moves through
        REBUILD_BLOCK_DEVICE_MAPPING to REBUILD_SPAWNING as in Nova's
        _rebuild_default_impl, the container commits to its new root
        (Container.begin_replacing_root) and _rebuild makes it. A crash
        after that commit leaves the record of the replacement, which
        the next hard reboot, start or rebuild finishes; before it, the
        old root is intact.

        Evacuate (evacuate=True: the server's host is down) spawns the
        server here from image_meta, as Nova's _rebuild_default_impl
        does (_evacuate); its disks stayed on the failed host.

        :raises PreserveEphemeralNotSupported: evacuate with
            preserve_ephemeral: the ephemeral disk is on the failed host.
        :raises InvalidInput: volumes (a volume-backed server included),
            or a flavor this host cannot honour; nothing is touched.
        :raises ImageUnacceptable: image_meta is not a usable rootfs
            archive; the server is untouched (still running).
        :raises ImageNotFound: neither Glance nor the cache has it.
        :raises InstanceNotFound: nothing of the instance on this host.
        :raises ContainerExists: its container directory is someone
            else's.
        :raises MountBusy: a host process holds a mount to undo; the
            container is stopped, its root intact.
        :raises MountFailed, CommandFailed: after the commit (a disk
            cannot be made or mounted): the next hard reboot, start or
            rebuild finishes the new root.
        """
        if evacuate:
            return self._evacuate(
                context, instance, image_meta, injected_files,
                admin_password, allocations, bdms, detach_block_devices,
                attach_block_devices, network_info, block_device_info,
                preserve_ephemeral)
        # reimage_boot_volume is True from API microversion 2.93 on, for
        # any server; a volume-backed one has its root volume in the
        # mapping, refused here.
        self._refuse_unsupported(instance, block_device_info)
        network_info = network_info or []
        c = self._existing(instance)
        rec = c.record()
        cid = c.cid()
        image = self._cached_image(context, instance, image_meta)
        spec = self._spec(
            instance, c, cid, image,
            config_drive=configdrive.required_by(instance, image_meta),
            idmap=rec.idmap if rec else None)
        root = c.rootfs()
        try:
            if spec.config_drive:
                root.stage_config_drive(functools.partial(
                    configdrive.write, instance=instance,
                    injected_files=injected_files,
                    admin_password=admin_password,
                    network_info=network_info, idmap=spec.idmap))
            timeout = compute_utils.get_value_from_system_metadata(
                instance, key='image_os_shutdown_timeout', type=int,
                default=CONF.shutdown_timeout)
            c.stop(timeout, CONF.compute.shutdown_retry_interval)
            detach_block_devices(context, bdms)
            instance.task_state = task_states.REBUILD_BLOCK_DEVICE_MAPPING
            instance.save(expected_task_state=[task_states.REBUILDING])
            attach_block_devices(context, instance, bdms)
            instance.task_state = task_states.REBUILD_SPAWNING
            instance.save(expected_task_state=[
                task_states.REBUILD_BLOCK_DEVICE_MAPPING])
            c.begin_replacing_root(rootfs_mod.Replacement(
                image_id=image.image_id, hostname=spec.hostname,
                ephemeral_gb=(0 if preserve_ephemeral
                              else instance.flavor.ephemeral_gb),
                config_drive=bool(spec.config_drive)))
        except Exception:
            with excutils.save_and_reraise_exception():
                # Not committed: the old root and config drive stay.
                root.unstage()
        self._rebuild(context, instance, c, network_info)
        self._plug_stopped(c, instance, network_info)
        c.start()
        self._replug_running(c, instance, network_info)
        LOG.info('Container %s rebuilt on image %s (ID %d)', c.name,
                 image.image_id, cid, instance=instance)

    def _evacuate(self, context, instance, image_meta, injected_files,
                  admin_password, allocations, bdms, detach_block_devices,
                  attach_block_devices, network_info, block_device_info,
                  preserve_ephemeral):
        """Spawn an evacuated server here: Nova's default rebuild's steps.

        nova/compute/manager.py _rebuild_default_impl with evacuate:
        block devices detached, the task states it moves through, spawn
        within the instance's mutated migration context. The root's own
        writes and the ephemeral disk's content stayed on the failed host
        (local disks, as with libvirt's); its destroy removes them when
        it comes back.
        """
        if preserve_ephemeral:
            raise nova_exc.PreserveEphemeralNotSupported()
        detach_block_devices(context, bdms, detach_root_bdm=True)
        instance.task_state = task_states.REBUILD_BLOCK_DEVICE_MAPPING
        instance.save(expected_task_state=[task_states.REBUILDING])
        block_device_info = attach_block_devices(context, instance, bdms)
        instance.task_state = task_states.REBUILD_SPAWNING
        instance.save(expected_task_state=[
            task_states.REBUILD_BLOCK_DEVICE_MAPPING])
        with instance.mutated_migration_context():
            self.spawn(context, instance, image_meta, injected_files,
                       admin_password, allocations,
                       network_info=network_info,
                       block_device_info=block_device_info)

    @staticmethod
    def _refuse_unsupported(instance, block_device_info):
        # Each refusal is a clear build fault rather than a silent omission.
        mapping = driver.block_device_info_get_mapping(block_device_info)
        if mapping:
            raise nova_exc.InvalidInput(
                reason='novalxcdriver cannot attach volumes')
        if len(driver.block_device_info_get_ephemerals(
                block_device_info)) > 1:
            raise nova_exc.InvalidInput(
                reason='novalxcdriver gives a container one ephemeral disk, '
                       'on /mnt')

    def _spec(self, instance, container, cid, image, nics=(),
              config_drive=False, idmap=None):
        """The instance's ContainerSpec, limits checked against the host.

        :param nics: tuple of spec.NicSpec (vif.nics_for).
        :param config_drive: whether it has a config drive.
        :param idmap: ids.Idmap recorded for it (default: cid's today).

        :raises InvalidInput: the flavor asks more than the host has, or
            an extra spec is bad.
        """
        flavor = instance.flavor
        root = rootfs_mod.Rootfs(self._state_path, cid)
        try:
            mem_total, _used = host_mod.memory_mb()
            if flavor.memory_mb > mem_total:
                raise exception.InvalidFlavor(
                    reason='%d MiB of memory asked, the host has %d MiB' %
                    (flavor.memory_mb, mem_total))
            disk_total = host_mod.disk_gb(self._state_path)[0]
            if flavor.root_gb + flavor.ephemeral_gb > disk_total:
                raise exception.InvalidFlavor(
                    reason='%d GiB of disk asked, the filesystem holding '
                           'instances has %d GiB' % (
                               flavor.root_gb + flavor.ephemeral_gb,
                               disk_total))
            topology = instance.numa_topology
            limits = limits_mod.for_instance(
                flavor, cid, sorted(numa.shared_cpus()), CONF.lxc.pids_max,
                pinning=topology.cpu_pinning if topology else None)
        except exception.InvalidFlavor as e:
            raise nova_exc.InvalidInput(reason=str(e))
        return spec_mod.build(
            instance, self._host, cid, idmap or self._ids.idmap(cid), image,
            container_dir=container.dir, rootfs=root.merged,
            console_log_size=CONF.lxc.console_log_size_kib * 1024,
            limits=limits, cgroup_version=host_mod.cgroup_version(),
            cgroup_parent=CONF.lxc.cgroup_parent,
            swap_accounting=host_mod.swap_accounting(),
            ephemeral=(root.ephemeral_disk.mountpoint
                       if flavor.ephemeral_gb else None),
            nics=nics,
            config_drive=(configdrive.path_for(root.path)
                          if config_drive else None))

    def _cached_image(self, context, instance, image_meta):
        image_id = image_meta.id
        formats = (image_meta.obj_attr_is_set('container_format') and
                   image_meta.container_format,
                   image_meta.obj_attr_is_set('disk_format') and
                   image_meta.disk_format)
        accepted = [('bare', 'raw')]
        if CONF.lxc.disk_images:
            accepted.append(('bare', 'qcow2'))
        if formats not in accepted:
            raise nova_exc.ImageUnacceptable(
                image_id=image_id,
                reason='novalxcdriver boots root filesystem tarballs '
                       '(container_format=bare, disk_format=raw)%s, not '
                       '%s/%s' % ((' and disk images (bare, raw or qcow2)'
                                   if CONF.lxc.disk_images else ''),
                                  *(f or '(unset)' for f in formats)))

        try:
            return self._fetched_image(context, image_id, formats[1],
                                       instance)
        except exception.ImageUnpackError as e:
            raise nova_exc.ImageUnacceptable(image_id=image_id,
                                             reason=str(e))

    def _fetched_image(self, context, image_id, disk_format=None,
                       instance=None):
        """images.CachedImage of image_id, fetched from Glance if missing.

        :param disk_format: Glance's, or None (the content decides).
        :param instance: when image_id is its image, its image properties
            (Nova keeps them as ``image_<name>`` system metadata; Nova's
            ImageMeta drops names it does not know) name a disk image's
            root partition.
        :raises ImageNotFound: Glance has no such image.
        :raises ImageUnpackError: it is not a usable rootfs archive or
            disk image.
        """
        def fetch(dest_path):
            download.fetch(context, image_id, dest_path)

        def stream():
            chunks = download.chunks(context, image_id)
            return None if chunks is None else download.held(chunks)

        root_partition = None
        if (instance is not None and instance.image_ref == image_id and
                instance.obj_attr_is_set('system_metadata')):
            root_partition = instance.system_metadata.get(
                'image_' + diskimage.ROOT_PARTITION_PROPERTY)
        return self._images.get(image_id, fetch, disk_format, root_partition,
                                stream)

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        """Kill the container, remove all of it and unplug its VIFs.

        Idempotent. The NICs its config names are removed even when
        network_info misses them. destroy_disks False (Nova: the disks
        are on shared storage, or a caller keeps them) stops the
        container and unmounts its disks, and keeps them with its record
        and ID: a later destroy with destroy_disks removes them.
        """
        self.cleanup(context, instance, network_info, block_device_info,
                     destroy_disks)

    def cleanup(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, migrate_data=None, destroy_vifs=True,
                destroy_secrets=True):
        """destroy's work; VIFs stay plugged unless destroy_vifs."""
        c = self._container(instance)
        try:
            nics = c.nics()
        except ValueError as e:
            LOG.warning('Cannot read the NICs of container %s: %s', c.name,
                        e, instance=instance)
            nics = ()
        if destroy_disks:
            c.destroy()
            if instance.task_state == task_states.DELETING:
                # Deleted before its resize here was confirmed (Nova
                # confirms first; that failed).
                c.destroy_resize_source(instance_deleted=True)
        else:
            c.shut_down()
            LOG.info('Container %s stopped; its disks are kept (destroy '
                     'without destroy_disks)', c.name, instance=instance)
        if destroy_vifs:
            self._unplug_vifs(instance, network_info or [], nics)

    def reboot(self, context, instance, network_info, reboot_type,
               block_device_info=None, bad_volumes_callback=None,
               accel_info=None, share_info=None):
        """SOFT: clean reboot within [lxc] soft_reboot_timeout, else HARD.

        HARD rebuilds what is derived (_rebuild), as libvirt's hard reboot
        defines its domain anew: the repair for a missing or torn config,
        unmounted disks or an image gone from the cache. VIFs are plugged
        again around it (_replug_running).

        :raises InstanceNotFound: nothing of the instance on this host.
        :raises ContainerExists: its container directory is someone else's.
        :raises ImageGone: its image is neither cached nor in Glance.
        """
        c = self._existing(instance)
        if not (reboot_type == 'SOFT' and c.has_config() and
                c.reboot_soft(CONF.lxc.soft_reboot_timeout)):
            self._rebuild(context, instance, c, network_info)
            c.kill()
            self._plug_stopped(c, instance, network_info)
            c.start()
        self._replug_running(c, instance, network_info)

    def _rebuild(self, context, instance, c, network_info):
        """Write c's config and record from Nova's instance; mount its root.

        Its container ID and idmap come from its record (or reservation);
        its image from the cache, fetched from Glance again if missing or
        corrupt there. Its NICs are those its config names (attached
        ones keep their names), or network_info's when the config is
        unreadable.

        A rescued server stays rescued while Nova says it is (rescue.kept):
        its rescue root is mounted again, its rescue image fetched again
        if need be. A rescue its record names but Nova does not (one that
        failed or was cut short) is left: the container is killed and the
        server gets its own root back.

        A rebuild cut short once it committed to a new root (see rebuild)
        is finished here, on the image it named (_server_spec).

        :raises ImageGone: the image is neither cached nor in Glance.
        :raises ContainerExists: its container directory is someone else's.
        :raises RescueUnavailable: its rescue cannot be assembled again.
        :raises ReplacementUnreadable: that rebuild's record is torn.
        """
        spec, image = self._server_spec(context, instance, c, network_info)
        rec = c.record()
        rescue_image_id = (rec.rescue_image_id if rec else
                           c.config_record().get('rescue_image_id', ''))
        if rescue_image_id and rescue_mod.kept(instance):
            root = rootfs_mod.Rootfs(self._state_path, spec.cid)
            try:
                rescue_image = self._fetched_image(context, rescue_image_id)
            except (nova_exc.ImageNotFound, exception.ImageUnpackError) as e:
                raise exception.RescueUnavailable(
                    instance_uuid=instance.uuid, rootfs=root.path,
                    reason='its rescue image %s is neither cached nor '
                    'usable from Glance (%s)' % (rescue_image_id, e)) from e
            rescue_root = rescue_mod.root_of(root)
            c.rebuild(self._rescue_spec(
                spec, rescue_image,
                os.path.isdir(configdrive.path_for(rescue_root.path))),
                image, rescue_image)
            return
        if rescue_image_id:
            LOG.warning('The record names a rescue (image %s) but Nova '
                        'does not: the server gets its own root back',
                        rescue_image_id, instance=instance)
            c.kill()
        c.rebuild(spec, image)

    def _server_spec(self, context, instance, c, network_info):
        """(spec.ContainerSpec, images.CachedImage) of the server's own root.

        As _rebuild describes them, without a rescue.

        A rebuild cut short once it committed to a new root (see rebuild)
        gives the image it named: c.rebuild finishes that root.

        :raises ImageGone: the image is neither cached nor in Glance.
        :raises ReplacementUnreadable: that rebuild's record is torn.
        """
        rec = c.record()
        cid = c.cid()
        image_id = (rec.image_id if rec else
                    c.config_record().get('image_id') or instance.image_ref)
        root = rootfs_mod.Rootfs(self._state_path, cid)
        replacement = root.replacement()
        if replacement is not None:
            image_id = replacement.image_id
        try:
            image = self._fetched_image(context, image_id,
                                        instance=instance)
        except (nova_exc.ImageNotFound, exception.ImageUnpackError) as e:
            LOG.error('Cannot assemble the root of %s: %s', c.name, e,
                      instance=instance)
            raise exception.ImageGone(image_id=image_id,
                                      instance_uuid=instance.uuid,
                                      rootfs=root.path) from e
        try:
            nics = c.nics() if c.has_config() else None
        except ValueError:
            nics = None
        if nics is None:
            nics = vif_mod.nics_for(network_info or [])
        spec = self._spec(
            instance, c, cid, image, nics,
            config_drive=(replacement.config_drive if replacement else
                          os.path.isdir(configdrive.path_for(root.path))),
            idmap=rec.idmap if rec else None)
        return spec, image

    def _rescue_spec(self, spec, rescue_image, config_drive):
        """The spec of the rescue of the server spec describes (rescue.py).

        :param config_drive: whether the rescue has a config drive.
        """
        rescue_root = rescue_mod.root_of(
            rootfs_mod.Rootfs(self._state_path, spec.cid))
        return rescue_mod.spec_of(
            spec, rescue_image, rescue_root,
            configdrive.path_for(rescue_root.path) if config_drive else None)

    def snapshot(self, context, instance, image_id, update_task_state):
        """Upload the container's root, taken while it runs, to image_id.

        The point in time costs writers milliseconds on a btrfs root disk
        and the copy of the upper layer otherwise (snapshot.py). The
        image is a zstd-compressed rootfs tarball, owners as the
        container sees them, streamed to Glance with no copy on disk.
        Task states as Nova's contract (and shelve) expect:
        IMAGE_PENDING_UPLOAD, then IMAGE_UPLOADING.

        :raises InstanceNotRunning: no container (as libvirt).
        :raises InstanceNotFound: the container went during the snapshot
            (Nova then deletes the half-made image).
        :raises SnapshotFailed: the copy, find or tar failed.
        """
        c = self._container(instance)
        if not c.exists():
            raise nova_exc.InstanceNotRunning(instance_id=instance.uuid)
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        image_api = glance.API()
        name = image_api.get(context, image_id).get('name')
        try:
            snap = c.take_snapshot(image_id)
        except exception.ContainerNotFound:
            raise nova_exc.InstanceNotFound(instance_id=instance.uuid)
        try:
            update_task_state(
                task_state=task_states.IMAGE_UPLOADING,
                expected_state=task_states.IMAGE_PENDING_UPLOAD)
            # Nova keeps the image's properties as image_* system
            # metadata; reading them needs no database.
            sysmeta = (instance.system_metadata
                       if instance.obj_attr_is_set('system_metadata')
                       else {})
            arch = (sysmeta.get('image_hw_architecture') or
                    fields.Architecture.canonicalize(host_mod.MACHINE))
            started = time.monotonic()
            data = snap.stream()
            image_api.update(context, image_id,
                             snapshot_mod.image_metadata(instance, name,
                                                         arch),
                             data=data, purge_props=False)
            LOG.info('Snapshot %s uploaded: %d bytes in %.1f s (writers '
                     'blocked %.3f s, %s)', image_id, data.bytes,
                     time.monotonic() - started, snap.stall, snap.method,
                     instance=instance)
            if not c.exists():
                raise exception.ContainerNotFound(name=c.name)
        except Exception:
            with excutils.save_and_reraise_exception() as ctx:
                if not c.exists():
                    ctx.reraise = False
                    raise nova_exc.InstanceNotFound(instance_id=instance.uuid)
        finally:
            c.end_snapshot(snap)

    def power_off(self, instance, timeout=0, retry_interval=0):
        self._existing(instance).stop(timeout, retry_interval)

    def power_on(self, context, instance, network_info,
                 block_device_info=None, accel_info=None, share_info=None):
        """Start the container; its config and mounts are made anew first.

        :raises ImageGone, ContainerExists: as reboot.
        """
        c = self._existing(instance)
        self._rebuild(context, instance, c, network_info)
        self._plug_stopped(c, instance, network_info)
        c.start()

    def resume_state_on_host_boot(self, context, instance, network_info,
                                  share_info, block_device_info=None):
        """Restart a container that was running before the host booted."""
        c = self._existing(instance)
        self._rebuild(context, instance, c, network_info)
        c.thaw()
        self._plug_stopped(c, instance, network_info)
        c.start()

    def rescue(self, context, instance, network_info, image_meta,
               rescue_password, block_device_info, share_info):
        """Boot image_meta's root in the container, the server's on /mnt.

        Nova's contract (nova/virt/driver.py; compute manager's
        rescue_instance powers the server off first and reads its power
        state after): image_meta is the rescue image Nova chose (the one
        asked for, else the server's base image, else its own); without
        an id, the server's own image, as libvirt falls back to
        instance.image_ref. rescue_password is the admin_pass of the
        rescue's config drive (configdrive.py), as in libvirt's rescue
        config drive, when the server has a config drive or the rescue
        image asks for one; there are no volumes or shares to attach. The
        server's own root is only mounted, on /mnt (rescue.py).

        On failure the container gets the server's own config and root
        back, stopped, and the error is raised: Nova puts the server in
        ERROR, from which a hard reboot starts it (or a rescue retries).

        :raises InstanceNotRescuable: stable device rescue was asked
            (hw_rescue_device, hw_rescue_bus image properties).
        :raises InstanceNotFound: nothing of the instance on this host.
        :raises ImageUnacceptable: the rescue image is not a usable rootfs
            archive.
        :raises ImageGone, ContainerExists: as reboot.
        """
        if hardware.check_hw_rescue_props(image_meta):
            # As libvirt refuses it for LXC: no disk bus to boot from.
            raise nova_exc.InstanceNotRescuable(
                instance_id=instance.uuid,
                reason='stable device rescue (hw_rescue_device, '
                       'hw_rescue_bus) needs block devices; containers '
                       'have none')
        c = self._existing(instance)
        spec, image = self._server_spec(context, instance, c, network_info)
        rescue_image = (self._cached_image(context, instance, image_meta)
                        if image_meta.obj_attr_is_set('id') else image)
        root = rootfs_mod.Rootfs(self._state_path, spec.cid)
        rescue_spec = self._rescue_spec(
            spec, rescue_image,
            os.path.isdir(configdrive.path_for(root.path)) or
            configdrive.required_by(instance, image_meta))
        c.kill()
        try:
            c.rescue(rescue_spec, image, rescue_image,
                     root_gb=instance.flavor.root_gb)
            if rescue_spec.config_drive:
                configdrive.write(rescue_spec.config_drive, instance, None,
                                  rescue_password, network_info or [],
                                  spec.idmap)
            self._plug_stopped(c, instance, network_info)
            c.start()
        except Exception:
            with excutils.save_and_reraise_exception():
                LOG.warning('Rescue failed; giving the container its own '
                            'root back', instance=instance)
                try:
                    c.kill()
                    c.rebuild(spec, image)
                except Exception:
                    LOG.exception('Cannot undo the rescue; a hard reboot '
                                  'of the server does it', instance=instance)
        LOG.info('Container %s rescued with image %s', c.name,
                 rescue_image.image_id, instance=instance)

    def unrescue(self, context, instance):
        """Boot the server from its own root again, as before its rescue.

        Nova's contract (nova/virt/driver.py; compute manager's
        unrescue_instance then saves it ACTIVE with the power state read
        here): the rescue container is killed, the server's config and
        record are written again (_rebuild's machinery, no rescue), its
        rescue root is removed and it is started with the same container
        ID, idmap and NICs, on its root as the rescue left it. Finishes a
        rescue or unrescue cut short; a server not rescued is restarted.

        :raises InstanceNotFound: nothing of the instance on this host.
        :raises ImageGone, ContainerExists: as reboot; the rescue runs on.
        :raises MountBusy: a host process holds a file of the rescue root.
        """
        c = self._existing(instance)
        network_info = instance.get_network_info()
        spec, image = self._server_spec(context, instance, c, network_info)
        c.kill()
        c.rebuild(spec, image)
        self._plug_stopped(c, instance, network_info)
        c.start()
        LOG.info('Container %s unrescued', c.name, instance=instance)

    def pause(self, instance):
        self._existing(instance).freeze()

    def unpause(self, instance):
        self._existing(instance).thaw()

    def suspend(self, context, instance):
        """Freeze the container (cgroup freezer), marked as suspended.

        Its memory stays allocated: CRIU cannot checkpoint on these
        kernels, so nothing is written to disk.
        """
        self._existing(instance).freeze(suspend=True)

    def resume(self, context, instance, network_info, block_device_info=None,
               share_info=None):
        self._existing(instance).thaw()

    # -- cold migration and resize: migration.py ---------------------------

    def migrate_disk_and_power_off(self, context, instance, dest,
                                   flavor, network_info,
                                   block_device_info=None,
                                   timeout=0, retry_interval=0):
        """Stop the server and hand its disks to the destination (source).

        Nova's contract (nova/virt/driver.py; ComputeManager's
        _resize_instance): the disks may not shrink and a root disk
        cannot come or go (migration.check_resize); such a flavor or
        volumes are refused before anything happens, with
        InstanceFaultRollback so the server stays ACTIVE here. Then the
        container stops cleanly within timeout seconds (halt resent every
        retry_interval), its VIFs are unplugged and its root unmounted;
        its disks stay in place, untouched until confirm_migration deletes
        them or finish_revert_migration mounts them again. The destination
        pulls them (finish_migration).

        A resize on this host (Nova's allow_resize_to_same_host) also
        sets the container aside (Container.park_resize_source) so that
        the new one can take its name here; both coexist until confirm or
        revert.

        :param dest: the destination's get_host_ip_addr().
        :param flavor: the new flavor (instance.flavor is the old one).
        :returns: the disk info (JSON text, migration.DiskInfo).
        :raises InstanceFaultRollback: wrapping ResizeError: refused.
        :raises InstanceNotFound: nothing of the instance on this host.
        """
        try:
            self._refuse_unsupported(instance, block_device_info)
            migration_mod.check_resize(instance.flavor, flavor)
        except (exception.ResizeRefused, nova_exc.InvalidInput) as e:
            raise nova_exc.InstanceFaultRollback(
                nova_exc.ResizeError(reason=str(e)))
        here = self._moves_to_this_host(context, instance)
        c = self._existing(instance)
        record = c.hand_over(timeout, retry_interval)
        self.unplug_vifs(instance, network_info)
        root = rootfs_mod.Rootfs(self._state_path, record.cid)
        files = [migration_mod.ROOT_DISK
                 if os.path.exists(root.root_disk.image_path)
                 else migration_mod.ROOT_DIR]
        if root.has_ephemeral():
            files.append(migration_mod.EPHEMERAL_DISK)
        # Resolved: the destination's daemon walks them from / without
        # following a link, and a driver root may be one (/var/lib/nova
        # -> /srv/nova).
        info = migration_mod.DiskInfo(
            instance_uuid=instance.uuid, source_host=self._host,
            source_ip=str(self._my_ip),
            token=migration_mod.new_token(root.path),
            rootfs=os.path.realpath(root.path),
            files=tuple(files), idmap=record.disks_idmap,
            image_id=record.image_id,
            image_cache=os.path.realpath(
                self._images.entry_path(record.image_id)),
            root_gb=instance.flavor.root_gb,
            ephemeral_gb=instance.flavor.ephemeral_gb)
        if here:
            c.park_resize_source()
        LOG.info('Container %s stopped for its migration to %s; its disks '
                 '%s wait in %s', c.name, dest, ', '.join(files), root.path,
                 instance=instance)
        return info.to_json()

    def _moves_to_this_host(self, context, instance):
        """True when the instance's migration has this host for its end.

        Nova gives the driver only the destination's IP, which two
        compute services of one machine may share: the migration record
        names the destination service.
        """
        mc = instance.migration_context
        if mc is None:
            return False
        migration = objects.Migration.get_by_id(context, mc.migration_id)
        return migration.dest_compute == self._host

    def finish_migration(self, context, migration, instance, disk_info,
                         network_info, image_meta, resize_instance,
                         allocations, block_device_info=None, power_on=True,
                         share_info=None):
        """Make the server here from the source's disks (destination).

        The disks are copied from the source by the storage_admin daemon
        (migration.fetch: locally on one machine, else over SSH), keep
        their owners and are shown
        in the idmap of a container ID allocated here (rootfs.receive).
        They grow to the new flavor (instance.flavor); an ephemeral disk
        the old flavor had not is made empty. The image comes from the
        cache, or Glance, or (gone from Glance) the source's cache. The
        config drive, if the server had one, is written anew from Nova's
        instance (its admin password is not kept, as after a rebuild
        without one). The VIFs are plugged, then the container started
        when power_on.

        On failure everything made here goes (the source still holds the
        disks; Nova sets the server to ERROR and a revert brings it back
        there).

        :param disk_info: what migrate_disk_and_power_off returned.
        :raises MigrationUnreadable: disk_info is not this driver's.
        :raises ImageGone: the image is neither cached here, nor in
            Glance, nor in the source's cache.
        :raises InvalidInput: the flavor cannot be honoured here.
        :raises CommandFailed, CommandTimedOut: the copy or a grow
            failed.
        """
        info = migration_mod.DiskInfo.from_json(disk_info)
        if info.instance_uuid != instance.uuid:
            raise exception.MigrationUnreadable(
                reason='it names instance %s' % info.instance_uuid)
        if info.idmap.size != CONF.lxc.id_range_size:
            # An idmapped mount shifts ranges of one size only.
            raise exception.MigrationUnreadable(
                reason='its disks hold %d ids per container, this host '
                       '%d ([lxc] id_range_size)' % (
                           info.idmap.size, CONF.lxc.id_range_size))
        self._refuse_unsupported(instance, block_device_info)
        network_info = network_info or []
        c = self._container(instance)
        if c.exists():
            # Kept by a destroy without its disks, or a retried finish:
            # not this migration's to take or remove.
            raise exception.ContainerExists(
                name=c.name, path=c.dir,
                reason='instance %s has a container on this host already'
                % instance.uuid)
        try:
            try:
                image = self._fetched_image(context, info.image_id,
                                            instance=instance)
            except nova_exc.ImageNotFound:
                LOG.info('Image %s is gone from Glance: copying it from '
                         'the cache of %s', info.image_id, info.source_host,
                         instance=instance)
                image = self._images.receive(
                    info.image_id,
                    functools.partial(migration_mod.fetch_image, info))
        except (nova_exc.ImageNotFound, exception.ImageUnpackError,
                exception.CommandFailed, exception.CommandTimedOut) as e:
            raise exception.ImageGone(
                image_id=info.image_id, instance_uuid=instance.uuid,
                rootfs=info.rootfs + ' on ' + info.source_host) from e
        started = time.monotonic()
        cid = self._ids.allocate(instance.uuid, instance.name)
        try:
            spec = self._spec(
                instance, c, cid, image, vif_mod.nics_for(network_info),
                config_drive=configdrive.required_by(instance, image_meta))
            c.receive(spec, image, functools.partial(migration_mod.fetch,
                                                     info),
                      info.idmap, instance.flavor.root_gb,
                      instance.flavor.ephemeral_gb)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._ids.release(cid)
        self._bring_up(c, spec, instance, network_info, power_on,
                       functools.partial(self.plug_vifs, instance,
                                         network_info),
                       'Migration')
        LOG.info('Container %s received from %s in %.1f s (ID %d, %s)',
                 c.name, info.source_host, time.monotonic() - started, cid,
                 'started' if power_on else 'stopped', instance=instance)

    def confirm_migration(self, context, migration, instance, network_info):
        """Remove every trace of the migrated server's source copy here.

        Its VIFs were unplugged when it left; their names are the
        destination's now, so they are not touched. After a resize on
        this host only the container set aside goes (the server runs in
        the new one).
        """
        c = self._container(instance)
        if migration.dest_compute == self._host:
            c.destroy_resize_source()
        else:
            c.destroy()
        LOG.info('Migration confirmed: the source copy is gone',
                 instance=instance)

    def finish_revert_migration(self, context, instance, network_info,
                                migration, block_device_info=None,
                                power_on=True, share_info=None):
        """Bring the server back on its untouched disks here (source).

        Nova destroyed the destination's copy first; after a resize on
        this host the container set aside comes back in its place
        (Container.take_back_resize_source). The record leaves
        ``migrating``, the config is written for the old flavor (Nova
        restored it) and the root mounted (_rebuild), the VIFs plugged
        and the container started when power_on.

        :raises InstanceNotFound: nothing of the instance on this host.
        :raises ImageGone: its image is neither cached nor in Glance.
        """
        self._container(instance).take_back_resize_source()
        c = self._existing(instance)
        self._rebuild(context, instance, c, network_info)
        migration_mod.remove_token(c.rootfs().path)
        self._plug_stopped(c, instance, network_info)
        if power_on:
            c.start()
        LOG.info('Migration reverted: container %s is back', c.name,
                 instance=instance)

    # -- live migration: refused -------------------------------------------

    def check_can_live_migrate_destination(self, context, instance,
                                           src_compute_info, dst_compute_info,
                                           block_migration=False,
                                           disk_over_commit=False):
        """Refuse: live migration needs checkpoint/restore (CRIU).

        A container's memory and kernel state can only move with CRIU,
        and Debian 12's CRIU 3.17 fails ``criu check`` on these kernels
        (design.md). Nova's conductor tries each other host, which all
        refuse, and ends in NoValidHost: the server stays where it is.
        Cold migration (server migrate) moves it with a clean stop.

        :raises MigrationPreCheckError: always.
        """
        raise nova_exc.MigrationPreCheckError(
            reason='novalxcdriver cannot live-migrate containers (needs a '
                   'working CRIU checkpoint/restore); use cold migration')

    # -- networking: vif.py ------------------------------------------------

    def plug_vifs(self, instance, network_info):
        """Make and plug each VIF's veth pair where missing. Idempotent.

        :raises InvalidInput, VirtualInterfacePlugException: vif.plug.
        """
        for vif in network_info or ():
            vif_mod.plug(instance, vif)

    def _plug_stopped(self, c, instance, network_info):
        """plug_vifs for stopped c, once pairs it took with it are gone.

        vif.settle: NICs attached since its last start died with it.
        """
        vif_mod.settle(self._config_nics(c))
        self.plug_vifs(instance, network_info)

    @staticmethod
    def _config_nics(c):
        try:
            return c.nics()
        except ValueError as e:
            LOG.warning('Cannot read the NICs of container %s: %s', c.name,
                        e)
            return ()

    def unplug_vifs(self, instance, network_info):
        """:raises VirtualInterfaceUnplugException: vif.unplug."""
        for vif in network_info or ():
            vif_mod.unplug(instance, vif)

    def _unplug_vifs(self, instance, network_info, nics=()):
        """Unplug network_info's VIFs, then the rest of nics; quietly."""
        for vif in network_info:
            vif_mod.unplug(instance, vif, ignore_errors=True)
        unplugged = {vif['id'] for vif in network_info}
        vif_mod.remove_leftovers(
            [nic for nic in nics if nic.port_id not in unplugged])

    def _neutron_failed_callback(self, event_name, instance):
        LOG.error('Neutron reported failure on event %s', event_name,
                  instance=instance)
        if CONF.vif_plugging_is_fatal:
            raise nova_exc.VirtualInterfaceCreateException()

    def _plug_vifs_and_wait(self, instance, network_info, power_on):
        """Plug the VIFs; return once Neutron reports the down ones up.

        Nova's libvirt driver's rule (_create_guest_with_network): wait
        for network-vif-plugged of each VIF not active yet, only before a
        start and with [DEFAULT] vif_plugging_timeout set; a failure event
        or a timeout is fatal if vif_plugging_is_fatal, else logged. An
        ML2/OVN port's wait ends when ovn-controller marks it installed
        here ([lxc] ovn_installed_timeout; _exit_wait_if_ovn_installed).

        :raises VirtualInterfaceCreateException: a fatal failure.
        """
        timeout = CONF.vif_plugging_timeout
        events = (vif_mod.neutron_events(network_info)
                  if power_on and timeout else [])
        since = time.time()
        try:
            with self.virtapi.wait_for_instance_event(
                    instance, events, timeout=timeout,
                    error_callback=self._neutron_failed_callback):
                self.plug_vifs(instance, network_info)
                if network_info:
                    # Where a boot's seconds go (the networked boot's
                    # timeline, bench.networked_boot), and why one hangs.
                    LOG.info('Plugged VIFs %s; waiting for '
                             'network-vif-plugged of %s',
                             [vif['id'] for vif in network_info],
                             [tag for _name, tag in events] or
                             'none (active already, or not to be started)',
                             instance=instance)
                self._exit_wait_if_ovn_installed(instance, network_info,
                                                 events, since)
        except nova_exc.InstanceEventTimeout:
            if CONF.vif_plugging_is_fatal:
                raise nova_exc.VirtualInterfaceCreateException()
            LOG.warning('Neutron did not report VIFs %s plugged within '
                        '%ss; starting anyway (vif_plugging_is_fatal is '
                        'False)', [tag for _name, tag in events], timeout,
                        instance=instance)

    def _exit_wait_if_ovn_installed(self, instance, network_info, events,
                                    since):
        """Stop waiting for the events of VIFs OVN has installed here.

        vif.installed_events says which; Nova's VirtAPI.exit_wait_early is
        for a driver that knows the condition is met (the events still
        arrive, and are taken as expected). Only inside
        wait_for_instance_event's block.

        :param since: time.time() before the plug (seconds).
        """
        early = vif_mod.installed_events(
            instance, network_info, events, since,
            min(CONF.lxc.ovn_installed_timeout, CONF.vif_plugging_timeout))
        if early:
            self.virtapi.exit_wait_early(early)

    def _replug_running(self, c, instance, network_info):
        """Give a running container the NICs its config names.

        A restart by LXC alone (a soft reboot) gives back only the NICs
        its config had at lxc-start: the pairs of NICs attached since then
        died with the old network namespace. Plug them again and move
        their container ends in.
        """
        with self._nics_lock(instance.uuid):
            _state, pid = c.state()
            if pid is not None:
                vif_mod.settle(self._config_nics(c), pid)
            self.plug_vifs(instance, network_info)
            if pid is None:
                return
            for nic in c.nics():
                if vif_mod.link_exists(nic.peer_dev):
                    vif_mod.hot_plug(pid, nic)

    @staticmethod
    def _nics_lock(instance_uuid):
        """Serialises changes to one container's NICs in this process.

        The state watcher's thread replugs NICs while Nova may reboot or
        attach: two plugs of one pair would undo each other.
        """
        return lockutils.lock('novalxc-nics-' + instance_uuid)

    def attach_interface(self, context, instance, image_meta, vif):
        """Plug vif and give the container a NIC for it, at once if running.

        The NIC takes the first free ethN and stays in the config, so
        restarts by Nova keep it (plug_vifs, _replug_running), and so does
        a reboot from inside the guest once the state watcher sees it
        (_restarted; [lxc] state_poll_interval).

        :raises InstanceNotFound: no container for the instance.
        :raises InterfaceAttachFailed: anything else; nothing is left.
        """
        with self._nics_lock(instance.uuid):
            return self._attach_interface(context, instance, image_meta, vif)

    def _attach_interface(self, context, instance, image_meta, vif):
        c = self._existing(instance)
        nics = c.nics()
        if any(nic.port_id == vif['id'] for nic in nics):
            LOG.info('Port %s is attached already', vif['id'],
                     instance=instance)
            return
        try:
            nic = vif_mod.nic_for(vif, len(nics), vif_mod.free_name(nics))
            vif_mod.plug(instance, vif)
            _state, pid = c.state()
            if pid is not None:
                vif_mod.hot_plug(pid, nic)
            c.set_nics(nics + (nic,))
        except Exception as e:
            LOG.error('Attaching port %s failed: %s', vif['id'], e,
                      instance=instance)
            vif_mod.unplug(instance, vif, ignore_errors=True)
            raise nova_exc.InterfaceAttachFailed(
                instance_uuid=instance.uuid) from e
        LOG.info('Port %s attached as %s', vif['id'], nic.name,
                 instance=instance)

    def detach_interface(self, context, instance, vif):
        """Remove vif's NIC from the container and unplug it.

        Deleting the host end of the pair takes the container end with
        it, wherever it is.

        :raises InstanceNotFound: no container for the instance.
        :raises VirtualInterfaceUnplugException: unplugging failed.
        """
        with self._nics_lock(instance.uuid):
            return self._detach_interface(context, instance, vif)

    def _detach_interface(self, context, instance, vif):
        c = self._existing(instance)
        nics = c.nics()
        kept = tuple(nic for nic in nics if nic.port_id != vif['id'])
        if kept == nics:
            LOG.warning('Port %s is not attached to the container',
                        vif['id'], instance=instance)
        try:
            vif_mod.unplug(instance, vif)
        finally:
            if kept != nics:
                c.set_nics(kept)

    # -- diagnostics and host figures ------------------------------------

    def _diagnostics_sample(self, instance):
        """(diagnostics.Sample, Nova power state) of the instance.

        :raises InstanceNotFound: no container for the instance.
        """
        c = self._existing(instance)
        power = self.get_info(instance).state
        try:
            _state, pid = c.state()
        except exception.ContainerNotFound:
            raise nova_exc.InstanceNotFound(instance_id=instance.uuid)
        sample = diagnostics.sample(c.name, pid, host_mod.cgroup_version(),
                                    disks=diagnostics.disks_of(c.rootfs()))
        return sample, power

    def get_instance_diagnostics(self, instance):
        """CPU, memory, disk and NIC figures of the container.

        :returns: nova.objects.Diagnostics (diagnostics.to_diagnostics).
        :raises InstanceNotFound: no container for the instance.
        """
        sample, power = self._diagnostics_sample(instance)
        return diagnostics.to_diagnostics(sample, power)

    def get_diagnostics(self, instance):
        """The same figures as a dict in libvirt's keys (to_dict).

        :raises InstanceNotFound: no container for the instance.
        """
        sample, _power = self._diagnostics_sample(instance)
        return diagnostics.to_dict(sample)

    def get_host_cpu_stats(self):
        """Host CPU times (ns) and frequency (MHz), for Nova's CPU monitor."""
        return diagnostics.host_cpu_stats()

    def get_host_uptime(self):
        """uptime(1)'s line, as libvirt returns it."""
        return diagnostics.host_uptime()


def _idmap_text(idmap):
    return 'uid %d, gid %d, %d ids' % (idmap.uid_start, idmap.gid_start,
                                       idmap.size)
