"""One driver process, as one nova-compute service: commands on stdin.

Started by tests.hardening.base.Worker as ``python -m
tests.hardening.worker`` from the repository. Like nova-compute it runs in
native threading mode (no eventlet) and owns one LXCDriver with its own
CONF.host; several workers given the same [lxc] state_path and lxc_path
are several compute services on one node.

Protocol: one JSON object a line on stdin, ``{"op": NAME, ...}``; one JSON
answer a line on the original stdout, ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": CLASS, "message": TEXT}``. Everything else the
process prints goes to stderr (the test's log file).

``arm`` makes the process SIGKILL itself right before or after a named
function runs (``module:attr.path``), so tests can crash the driver at
any step of spawn or destroy.

"Glance" is the ``images`` map given to ``configure`` (image id to a
local tarball); ``remove_images`` deletes images from it, after which a
fetch raises nova.exception.ImageNotFound as Glance's client does.
"""

import os

# As nova-compute's entry point does, before anything imports eventlet.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')
from nova import monkey_patch  # noqa: E402
monkey_patch.patch()

import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from unittest import mock  # noqa: E402

from nova.compute import task_states  # noqa: E402
# nova.conf registers Nova's options (host, instance_name_template).
import nova.conf  # noqa: E402,F401
from nova import context as nova_context  # noqa: E402
from nova import exception as nova_exc  # noqa: E402
from nova import objects  # noqa: E402
from nova.tests.unit import fake_instance  # noqa: E402
from nova.virt import fake as fake_virt  # noqa: E402
import nova.virt.images  # noqa: E402

from novalxcdriver import conf  # noqa: E402
from novalxcdriver import configdrive  # noqa: E402
from novalxcdriver import download  # noqa: E402
from novalxcdriver import driver as driver_mod  # noqa: E402
from novalxcdriver import exception  # noqa: E402
from novalxcdriver import lxc  # noqa: E402
from novalxcdriver.privsep import unpack  # noqa: E402
from tests import fake_glance  # noqa: E402
from tests import unprivileged  # noqa: E402

CONF = conf.CONF
LOG = logging.getLogger('hardening.worker')


class Worker:

    def __init__(self):
        self.driver = None
        self.images = {}
        self.fetch_delay = 0
        self.counts = {'fetch': 0, 'unpack': 0}
        self.counts_lock = threading.Lock()
        self.ctxt = None

    # -- set-up ----------------------------------------------------------

    def op_configure(self, host, lxc_path, state_path, images=None,
                     fetch_delay=0, name_template=None,
                     image_max_unpacked_gib=None, state_poll_interval=0,
                     root_disk_fs=None):
        CONF([], project='nova', default_config_files=[])
        objects.register_all()
        CONF.set_override('host', host)
        if name_template:
            CONF.set_override('instance_name_template', name_template)
        CONF.set_override('lxc_path', lxc_path, group='lxc')
        CONF.set_override('state_path', state_path, group='lxc')
        CONF.set_override('ids_path', os.path.join(state_path, 'ids'),
                          group='lxc')
        CONF.set_override('state_poll_interval', state_poll_interval,
                          group='lxc')
        CONF.set_override('soft_reboot_timeout', 20, group='lxc')
        if root_disk_fs:
            CONF.set_override('root_disk_fs', root_disk_fs, group='lxc')
        if image_max_unpacked_gib:
            CONF.set_override('image_max_unpacked_gib',
                              image_max_unpacked_gib, group='lxc')
        self.images = dict(images or {})
        self.fetch_delay = fetch_delay
        # Glance: a local copy, counted, streamed as Glance's checked
        # iterator (fetch to a file is the fallback). The driver calls the
        # modules' attributes at fetch time, so arm() can wrap these too.
        nova.virt.images.fetch = self._fetch
        download.chunks = self._chunks
        # Tarballs are unpacked by the storage_admin daemon's child:
        # counted where nova-compute starts one.
        real_unpack = unpack.start_unpack

        def counted_unpack(*args, **kwargs):
            with self.counts_lock:
                self.counts['unpack'] += 1
            return real_unpack(*args, **kwargs)

        unpack.start_unpack = counted_unpack
        # Nova's InstanceMetadata reads the database, which workers have
        # not: a config drive gets its meta_data.json alone.
        configdrive.instance_metadata.InstanceMetadata = _Metadata
        self.ctxt = nova_context.get_admin_context()
        account = unprivileged.user()
        if account:
            # As nova-compute run by that user (tests/unprivileged.py).
            unprivileged.install()
            unprivileged.configure(
                lambda group, name, value: CONF.set_override(
                    name, value, group=group))
            unprivileged.prepare(account, lxc_path, state_path,
                                 CONF.lxc.ids_path)
            unprivileged.refresh()
            # In /tmp: a privsep socket's path must stay short (the
            # test roots are long). A crashed worker leaves it, empty.
            unprivileged.user_tempdir(account)
            self.driver = unprivileged.Driver(unprivileged.call_as(
                account, driver_mod.LXCDriver, fake_virt.FakeVirtAPI()),
                account)
        else:
            self.driver = driver_mod.LXCDriver(fake_virt.FakeVirtAPI())
        return {'pid': os.getpid()}

    def _fetch(self, context, image_id, path, trusted_certs=None):
        with self.counts_lock:
            self.counts['fetch'] += 1
        # Slow enough that concurrent boots really race for the image.
        time.sleep(self.fetch_delay)
        if image_id not in self.images:
            raise nova_exc.ImageNotFound(image_id=image_id)
        # Glance's side reads the test's file as root.
        with unprivileged.as_root():
            src = open(self.images[image_id], 'rb')
        with src, open(path, 'wb') as dst:
            shutil.copyfileobj(src, dst)

    def _chunks(self, context, image_id):
        with self.counts_lock:
            self.counts['fetch'] += 1
        time.sleep(self.fetch_delay)
        if image_id not in self.images:
            raise nova_exc.ImageNotFound(image_id=image_id)
        with unprivileged.as_root():
            src = open(self.images[image_id], 'rb')
        return fake_glance.file_chunks(src)

    def op_init_host(self):
        self.driver.init_host(CONF.host)

    def op_add_images(self, images):
        self.images.update(images)

    def op_remove_images(self, image_ids):
        """Delete images from Glance: later fetches raise ImageNotFound."""
        for image_id in image_ids:
            self.images.pop(image_id, None)

    def op_arm(self, target, when, match=None):
        arm(target, when, match)

    def op_counts(self):
        with self.counts_lock:
            return dict(self.counts)

    def op_quit(self):
        self.driver.cleanup_host(CONF.host)
        return 'bye'

    # -- instances -------------------------------------------------------

    def instance(self, spec):
        flavor = objects.Flavor(
            flavorid='1', name='hardening',
            extra_specs=spec.get('extra_specs', {}),
            memory_mb=spec.get('memory_mb', 64), vcpus=spec.get('vcpus', 1),
            root_gb=spec.get('root_gb', 1),
            ephemeral_gb=spec.get('ephemeral_gb', 0),
            swap=spec.get('swap', 0))
        # Nova's own test factory sets every field a real instance has.
        instance = fake_instance.fake_instance_obj(
            self.ctxt, id=spec['id'], uuid=spec['uuid'],
            hostname=spec.get('hostname', 'hardening-%d' % spec['id']),
            display_name=spec.get('display_name', 'hardening'),
            host=CONF.host, node=CONF.host, flavor=flavor,
            metadata=spec.get('metadata', {}),
            user_data=spec.get('user_data'),
            config_drive=spec.get('config_drive', False))
        instance.numa_topology = None
        # Not loaded from a database (rebuild reads the image's shutdown
        # timeout from it).
        instance.system_metadata = {}
        return instance

    def _each(self, specs, action):
        """Run action(instance) for every spec, one thread each."""
        results = [None] * len(specs)

        def run(i, spec):
            start = time.monotonic()
            try:
                value = action(self.instance(spec))
                results[i] = {'uuid': spec['uuid'], 'error': None,
                              'value': value}
            except Exception as e:
                LOG.exception('%s of %s failed', action.__name__,
                              spec['uuid'])
                results[i] = {'uuid': spec['uuid'],
                              'error': type(e).__name__,
                              'message': str(e)}
            results[i]['seconds'] = time.monotonic() - start

        threads = [threading.Thread(target=run, args=(i, s))
                   for i, s in enumerate(specs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def image_meta(self, image_id):
        return objects.ImageMeta.from_dict({
            'id': image_id, 'container_format': 'bare',
            'disk_format': 'raw', 'properties': {}})

    def op_spawn(self, instances, image_id, power_on=True,
                 injected_files=()):
        def spawn(instance):
            self.driver.spawn(self.ctxt, instance,
                              self.image_meta(image_id),
                              [tuple(f) for f in injected_files], None, {},
                              network_info=[], power_on=power_on)
            return self._describe(instance)
        return self._each(instances, spawn)

    def op_destroy(self, instances):
        def destroy(instance):
            self.driver.destroy(self.ctxt, instance, [])
        return self._each(instances, destroy)

    def op_snapshot(self, instances, image_id):
        """Snapshot each instance to image_id; Glance reads and discards."""
        driver_mod.glance.API = fake_glance.FakeImageAPI(
            name_prefix='hardening-snapshot-')

        def snapshot(instance):
            self.driver.snapshot(self.ctxt, instance, image_id,
                                 lambda *args, **kwargs: None)
            return self._describe(instance)
        return self._each(instances, snapshot)

    def op_rebuild(self, instances, image_id, preserve_ephemeral=False):
        """Nova's rebuild of each instance on image_id (no volumes).

        The instance is not in a database: its saves do nothing.
        """
        def no_block_devices(*args, **kwargs):
            pass

        def rebuild(instance):
            instance.task_state = task_states.REBUILDING
            with mock.patch.object(instance, 'save'):
                self.driver.rebuild(
                    self.ctxt, instance, self.image_meta(image_id), [],
                    None, {}, [], no_block_devices, no_block_devices,
                    network_info=[], preserve_ephemeral=preserve_ephemeral)
            return self._describe(instance)
        return self._each(instances, rebuild)

    def op_resume_state_on_host_boot(self, instances):
        def resume(instance):
            self.driver.resume_state_on_host_boot(self.ctxt, instance, [],
                                                  None)
            return self._describe(instance)
        return self._each(instances, resume)

    def op_reboot(self, instances, reboot_type='HARD'):
        """:param reboot_type: 'HARD' or 'SOFT', as Nova passes it."""
        def reboot(instance):
            self.driver.reboot(self.ctxt, instance, [], reboot_type)
            return self._describe(instance)
        return self._each(instances, reboot)

    def op_power_on(self, instances):
        def power_on(instance):
            self.driver.power_on(self.ctxt, instance, [])
            return self._describe(instance)
        return self._each(instances, power_on)

    def op_info(self, instances):
        return self._each(instances, self._describe)

    def _describe(self, instance):
        """What the driver and LXC say of the instance's container.

        The driver may know an instance (its durable record) whose
        container LXC cannot show (config missing after a mishap): then
        state and pid are None and info_error says why.
        """
        exists = self.driver.instance_exists(instance)
        state = pid = info_error = None
        if exists:
            try:
                state, pid = lxc.info(instance.name, CONF.lxc.lxc_path)
            except exception.NovaLXCError as e:
                info_error = '%s: %s' % (type(e).__name__, e)
        return {'name': instance.name, 'exists': exists, 'state': state,
                'pid': pid, 'info_error': info_error,
                'cid': self.driver._ids.find(instance.uuid)}

    def op_list_instances(self):
        return self.driver.list_instances()

    def op_allocate_probe(self, uuid):
        """Reserve the lowest free ID as a new spawn would, then free it."""
        cid = self.driver._ids.allocate(uuid, 'probe')
        self.driver._ids.release(cid)
        return cid


class _Metadata:
    """Stands in for Nova's InstanceMetadata, without a database."""

    def __init__(self, instance, content=None, extra_md=None,
                 network_info=None):
        self.instance = instance
        self.extra_md = extra_md or {}

    def metadata_for_config_drive(self):
        yield ('openstack/latest/meta_data.json', json.dumps(
            dict(self.extra_md, uuid=self.instance.uuid,
                 hostname=self.instance.hostname)))


def arm(target, when, match=None):
    """SIGKILL this process right 'before' or 'after' target runs.

    :param target: 'module:attr[.attr...]', e.g.
        'novalxcdriver.rootfs:Rootfs.create'.
    :param match: only calls with an argument containing this text.
    """
    modname, path = target.split(':')
    owner = importlib.import_module(modname)
    parts = path.split('.')
    for part in parts[:-1]:
        owner = getattr(owner, part)
    name = parts[-1]
    static = isinstance(inspect.getattr_static(owner, name), staticmethod)
    real = getattr(owner, name)

    def die():
        LOG.warning('Crash point %s (%s): SIGKILL', target, when)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)

    def crashing(*args, **kwargs):
        hit = match is None or any(match in str(a) for a in args)
        if hit and when == 'before':
            die()
        result = real(*args, **kwargs)
        if hit and when == 'after':
            die()
        return result

    setattr(owner, name, staticmethod(crashing) if static else crashing)


def main():
    # Answers go to a private copy of stdout (not inherited by commands the
    # driver runs); fd 1 becomes stderr, so stray prints cannot corrupt
    # the protocol.
    answers = os.fdopen(os.dup(1), 'w', buffering=1)
    os.dup2(2, 1)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format='%(asctime)s ' + str(os.getpid()) +
               ' %(levelname)s %(name)s %(message)s')
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.pop('op')
        try:
            result = getattr(worker, 'op_' + op)(**request)
            answer = {'ok': True, 'result': result}
        except Exception as e:
            LOG.exception('op %s failed', op)
            answer = {'ok': False, 'error': type(e).__name__,
                      'message': str(e),
                      'traceback': traceback.format_exc()}
        answers.write(json.dumps(answer) + '\n')
        if op == 'quit':
            break


if __name__ == '__main__':
    main()
