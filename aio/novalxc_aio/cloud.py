"""What a cloud user finds: flavors, images, clouds.yaml and openrc."""

import hashlib
import importlib.util
import json
import os

from novalxc_aio import api
from novalxc_aio import layout
from novalxc_aio import util

# Image properties: a root filesystem tarball for LXC hosts.
_IMAGE_PROPERTIES = {'hypervisor_type': 'lxc', 'os_type': 'linux'}


def flavors(secrets):
    """The aio's flavors, without swap or ephemeral disk.

    The driver refuses both.
    """
    s = api.Session('admin', secrets['admin'], 'admin')
    for flavor_id, ram, vcpus, disk in layout.FLAVORS:
        if s.exists('compute', '/flavors/' + flavor_id):
            continue
        util.say('creating flavor %s (%d MiB, %d vCPU, %d GiB)',
                 flavor_id, ram, vcpus, disk)
        s.post('compute', '/flavors', {'flavor': {
            'name': flavor_id, 'id': flavor_id, 'ram': ram, 'vcpus': vcpus,
            'disk': disk, 'swap': 0, 'OS-FLV-EXT-DATA:ephemeral': 0,
            'os-flavor-access:is_public': True}})


_ROOTFS_IMAGES = os.path.join(layout.REPO, 'tests', 'functional',
                              'rootfs_images.py')


def _rootfs_images():
    """tests/functional/rootfs_images.py, loaded by path.

    Its builders (busybox in a second, a debootstrapped Debian 12 with
    systemd in about a minute, cached) are the ones the functional tests
    use; loading the file alone avoids importing the tests package (nova).
    """
    spec = importlib.util.spec_from_file_location('novalxc_rootfs_images',
                                                  _ROOTFS_IMAGES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def busybox_tarball():
    """The busybox rootfs, cached under a name tied to its builder."""
    with open(_ROOTFS_IMAGES, 'rb') as f:
        key = hashlib.sha256(f.read()).hexdigest()[:8]
    path = os.path.join(layout.IMAGE_CACHE, 'aio-busybox-%s.tar.gz' % key)
    if not os.path.exists(path):
        util.makedirs(layout.IMAGE_CACHE, 0o755)
        tmp = path + '.tmp'
        _rootfs_images().busybox_tarball(tmp)
        os.rename(tmp, path)
    return path


def debian_tarball():
    util.say('Debian 12 rootfs: debootstrap unless cached in %s (about a '
             'minute)', layout.IMAGE_CACHE)
    return _rootfs_images().debian_tarball()


def images(secrets):
    """Upload the busybox and Debian 12 rootfs tarballs (public images).

    Rootfs tarballs go to Glance as container_format=bare,
    disk_format=raw: the driver unpacks them into the container's root.
    """
    s = api.Session('admin', secrets['admin'], 'admin')
    wanted = (
        (layout.BUSYBOX_IMAGE, busybox_tarball,
         {'os_distro': 'busybox'}),
        (layout.DEBIAN_IMAGE, debian_tarball,
         {'os_distro': 'debian', 'os_version': '12'}),
    )
    for name, build, properties in wanted:
        found = s.get('image', '/v2/images?name=' + name)['images']
        if any(i['status'] == 'active' for i in found):
            continue
        for image in found:  # an interrupted upload: start over
            s.call('DELETE', 'image', '/v2/images/' + image['id'])
        path = build()
        util.say('uploading image %s (%d MB) from %s', name,
                 os.path.getsize(path) // 10 ** 6, path)
        body = {'name': name, 'container_format': 'bare',
                'disk_format': 'raw', 'visibility': 'public'}
        body.update(_IMAGE_PROPERTIES)
        body.update(properties)
        image = s.post('image', '/v2/images', body)
        s.put_file('image', '/v2/images/%s/file' % image['id'], path)


def _cloud(name, user, password, project):
    # JSON strings are valid YAML scalars: no quoting rules to get wrong.
    q = json.dumps
    return '\n'.join([
        '  %s:' % name,
        '    auth:',
        '      auth_url: %s' % q(layout.KEYSTONE_URL),
        '      username: %s' % q(user),
        '      password: %s' % q(password),
        '      project_name: %s' % q(project),
        '      user_domain_name: "Default"',
        '      project_domain_name: "Default"',
        '    region_name: %s' % q(layout.REGION),
        '    identity_api_version: 3',
        '    interface: "public"',
    ])


def client_config(secrets):
    """clouds.yaml (0600: it holds passwords) and openrc files."""
    util.write_file(layout.CLOUDS_YAML, '\n'.join([
        '# Written by novalxc-aio. Use: . %s/demo-openrc  (or admin-openrc)'
        % layout.ETC,
        'clouds:',
        _cloud(layout.CLOUD_ADMIN, 'admin', secrets['admin'], 'admin'),
        _cloud(layout.CLOUD_DEMO, layout.DEMO_USER, secrets['demo'],
               layout.DEMO_PROJECT),
        '']), mode=0o600)
    for who, cloud in (('admin', layout.CLOUD_ADMIN),
                       ('demo', layout.CLOUD_DEMO)):
        util.write_file(layout.etc(who + '-openrc'), '\n'.join([
            '# Source me (bash): . %s' % layout.etc(who + '-openrc'),
            '# then e.g.: openstack server list',
            'export PATH=%s:$PATH' % layout.VENV_BIN,
            'export OS_CLIENT_CONFIG_FILE=%s' % layout.CLOUDS_YAML,
            'export OS_CLOUD=%s' % cloud,
            '']), mode=0o644)


def client_env(cloud=layout.CLOUD_DEMO):
    return util.clean_env({'OS_CLIENT_CONFIG_FILE': layout.CLOUDS_YAML,
                           'OS_CLOUD': cloud})


def check_client():
    """The openstack CLI works as the demo user and sees the images."""
    proc = util.run([layout.venv_bin('openstack'), 'image', 'list', '-f',
                     'value', '-c', 'Name'], env=client_env(), capture=True,
                    timeout=120)
    names = proc.stdout.split()
    missing = {layout.BUSYBOX_IMAGE, layout.DEBIAN_IMAGE} - set(names)
    if missing:
        raise util.AioError('openstack image list as %s lacks %s' % (
            layout.CLOUD_DEMO, ', '.join(sorted(missing))))
