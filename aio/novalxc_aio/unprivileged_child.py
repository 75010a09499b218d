"""The driver's lifecycle in a process of an unprivileged user.

Run by ``novalxc-aio unprivileged`` (unprivileged.py) as the user
``novalxc-unpriv``, with the aio's virtualenv (the driver as installed
there) and a configuration of its own: its privsep daemons start through
sudo, as in any deployment where nova-compute is not root. No Nova
service, database or Glance: the driver alone, as nova-compute calls it,
with Glance's download replaced by a copy of a local image (a tarball,
a qcow2) and Glance's upload by a reader of the snapshot's stream.

Prints this process's credentials from /proc, then one line per step,
``OK <step>`` or ``FAIL <step> <error>``; exits 1 if a step failed.
Argv: the config file, the busybox tarball, a qcow2 disk image.
"""

import shutil
import sys
import traceback
import uuid

from nova import context as nova_context
from nova.image import glance
from nova.network import model as network_model
from nova import objects
from nova.tests.unit import fake_instance
from nova.virt import fake as fake_virt
import nova.virt.images

from novalxcdriver import conf
from novalxcdriver import download
from novalxcdriver import driver as driver_mod

CONF = conf.CONF


def main():
    config_file, tarball, qcow2 = sys.argv[1:4]
    CONF(['--config-file', config_file], project='nova')
    CONF.set_override('enabled', True, group='serial_console')
    with open('/proc/self/status') as f:
        for line in f:
            if line.split(':')[0] in ('Uid', 'Gid', 'CapEff', 'CapPrm'):
                print('CRED', line.strip())
    # Fresh ids each run: the cache misses, so the download, the unpack
    # and the publish are exercised every time.
    run = uuid.uuid4().hex
    tarball_id = str(uuid.uuid5(uuid.NAMESPACE_URL, 'tarball-' + run))
    qcow2_id = str(uuid.uuid5(uuid.NAMESPACE_URL, 'qcow2-' + run))
    sources = {tarball_id: tarball, qcow2_id: qcow2}
    nova.virt.images.fetch = (
        lambda ctx, image_id, path, **kw: shutil.copyfile(
            sources[image_id], path))
    download.chunks = lambda ctx, image_id: None
    uploaded = []

    def upload(self, ctx, image_id, meta, data=None, **kwargs):
        size = 0
        while True:
            chunk = data.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
        uploaded.append(size)
        return meta

    glance.API.get = lambda self, ctx, image_id, **kw: {'name': 'snap'}
    glance.API.update = upload
    objects.register_all()
    # No database: what the compute manager would save is dropped.
    objects.Instance.save = lambda self, *args, **kwargs: None
    ctxt = nova_context.get_admin_context()
    drv = driver_mod.LXCDriver(fake_virt.FakeVirtAPI())
    failed = []

    def step(label, fn, *args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            print('FAIL', label, '%s: %s' % (type(e).__name__, e))
            traceback.print_exc()
            failed.append(label)
            return None
        print('OK', label)
        return result

    def instance(n, image_id, **flavor_values):
        values = dict(name='unpriv', flavorid='unpriv', memory_mb=128,
                      vcpus=1, root_gb=1, ephemeral_gb=0, swap=0,
                      extra_specs={}, is_public=True, projects=[])
        values.update(flavor_values)
        inst = fake_instance.fake_instance_obj(
            ctxt, id=n, uuid=str(uuid.uuid4()), hostname='unpriv-%d' % n,
            flavor=objects.Flavor(**values), host=CONF.host,
            image_ref=image_id)
        inst.numa_topology = None
        inst.system_metadata = {}
        inst.info_cache = objects.InstanceInfoCache(
            network_info=network_model.NetworkInfo([]))
        return inst

    def meta(image_id, disk_format):
        return objects.ImageMeta.from_dict({
            'id': image_id, 'name': 'unpriv', 'container_format': 'bare',
            'disk_format': disk_format, 'properties': {}})

    def console_says(inst, text):
        out = drv.get_console_output(ctxt, inst)
        if text not in out:
            raise AssertionError('%r not in the console log %r'
                                 % (text, out[-200:]))

    step('init_host', drv.init_host, CONF.host)
    inst = instance(1, tarball_id, ephemeral_gb=1)
    tarball_meta = meta(tarball_id, 'raw')
    step('spawn (tarball, not cached, with an ephemeral disk)', drv.spawn,
         ctxt, inst, tarball_meta, [], None, {}, network_info=[])
    step('get_info', drv.get_info, inst)
    step('serial console', drv.get_serial_console, ctxt, inst)
    step('console log', console_says, inst, b'busybox booted')
    step('diagnostics', drv.get_instance_diagnostics, inst)
    step('reboot (soft)', drv.reboot, ctxt, inst, [], 'SOFT')
    step('power off', drv.power_off, inst)
    step('power on', drv.power_on, ctxt, inst, [])
    step('pause', drv.pause, inst)
    step('unpause', drv.unpause, inst)
    step('reboot (hard)', drv.reboot, ctxt, inst, [], 'HARD')
    step('snapshot', drv.snapshot, ctxt, inst, str(uuid.uuid4()),
         lambda **kwargs: None)
    if uploaded and not uploaded[0]:
        failed.append('snapshot stream')
        print('FAIL snapshot stream: empty')
    step('rescue', drv.rescue, ctxt, inst, [], tarball_meta, 'pw', None,
         None)
    step('unrescue', drv.unrescue, ctxt, inst)
    step('rebuild', drv.rebuild, ctxt, inst, tarball_meta, [], None, {}, [],
         lambda *args: None, lambda *args: None, network_info=[])

    def resize_here(server, root_gb):
        # Nova's resize to the same host (allow_resize_to_same_host): its
        # migration record names this host, which the driver would read
        # from the database; the disks are copied by the storage_admin
        # daemon (privsep.migrationcopy).
        drv._moves_to_this_host = lambda context, instance: True
        migration = objects.Migration(source_compute=CONF.host,
                                      dest_compute=CONF.host)
        new_flavor = server.flavor.obj_clone()
        new_flavor.flavorid = 'unpriv-2'
        new_flavor.root_gb = root_gb
        new_flavor.memory_mb = 192
        disk_info = drv.migrate_disk_and_power_off(
            ctxt, server, '127.0.0.1', new_flavor, [])
        old_flavor, server.flavor = server.flavor, new_flavor
        try:
            drv.finish_migration(ctxt, migration, server, disk_info, [],
                                 tarball_meta, True, {})
        except Exception:
            server.flavor = old_flavor
            drv.finish_revert_migration(ctxt, server, [], migration)
            raise
        drv.confirm_migration(ctxt, migration, server, [])
        if drv.get_info(server).state != 1:
            raise AssertionError('the resized server is not running')
        console_says(server, b'busybox booted')

    step('resize on this host (root and ephemeral disks copied through '
         'privsep)', resize_here, inst, 2)
    tree = instance(3, tarball_id, root_gb=0)
    step('spawn (root_gb 0)', drv.spawn, ctxt, tree, tarball_meta, [], None,
         {}, network_info=[])
    step('resize of a root without a disk on this host (its upper layer '
         'copied through privsep)', resize_here, tree, 0)
    step('destroy (root_gb 0)', drv.destroy, ctxt, tree, [])
    step('destroy', drv.destroy, ctxt, inst, [])
    inst2 = instance(2, qcow2_id)
    step('spawn (qcow2, not cached)', drv.spawn, ctxt, inst2,
         meta(qcow2_id, 'qcow2'), [], None, {}, network_info=[])
    step('get_info (qcow2)', drv.get_info, inst2)
    step('destroy (qcow2)', drv.destroy, ctxt, inst2, [])
    # Both entries are unused now: pruned at once.
    CONF.set_override('remove_unused_original_minimum_age_seconds', 0,
                      group='image_cache')
    step('image cache pruned', drv.manage_image_cache, ctxt, [])

    def cache_empty():
        for image_id in (tarball_id, qcow2_id):
            if drv._images.lookup(image_id) is not None:
                raise AssertionError('%s is still cached' % image_id)

    step('image cache entries gone', cache_empty)
    step('init_host again (a restart)', drv.init_host, CONF.host)
    step('cleanup_host', drv.cleanup_host, CONF.host)
    print('%d steps failed' % len(failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
