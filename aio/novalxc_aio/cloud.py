"""What a cloud user finds: flavors, images, a network, clouds.yaml, openrc.
"""

import hashlib
import importlib.util
import json
import os
import urllib.parse

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


def _busybox_path():
    """The busybox rootfs' cache path, named after its builder's code."""
    with open(_ROOTFS_IMAGES, 'rb') as f:
        key = hashlib.sha256(f.read()).hexdigest()[:8]
    return os.path.join(layout.IMAGE_CACHE, 'aio-busybox-%s.tar.gz' % key)


def busybox_tarball():
    """The busybox rootfs; each ethN gets its address by DHCP."""
    path = _busybox_path()
    if not os.path.exists(path):
        util.makedirs(layout.IMAGE_CACHE, 0o755)
        tmp = path + '.tmp'
        _rootfs_images().busybox_tarball(tmp, dhcp=True)
        os.rename(tmp, path)
    return path


def debian_cloud_qcow2():
    """The Debian 12 cloud image, a qcow2 disk (built once, cached)."""
    return _rootfs_images().debian_cloud_qcow2()


def debian_tarball():
    util.say('Debian 12 rootfs: debootstrap unless cached in %s (about a '
             'minute)', layout.IMAGE_CACHE)
    return _rootfs_images().debian_tarball()


def images(secrets):
    """Upload the busybox and Debian 12 rootfs tarballs, the cloud image.

    debian-12-cloud is made as distributions make theirs (cloud-init and
    sshd, debootstrapped into a partitioned disk, qemu-img convert to
    qcow2) and uploaded as disk_format=qcow2: the driver converts it once
    per host and boots its root partition.

    Rootfs tarballs go to Glance as container_format=bare,
    disk_format=raw: the driver unpacks them into the container's root.
    Each image records its tarball's name (property novalxc_rootfs, which
    changes with the recipe): a changed recipe uploads a new image and
    deletes the old one.
    """
    s = api.Session('admin', secrets['admin'], 'admin')
    wanted = (
        (layout.BUSYBOX_IMAGE, _busybox_path, busybox_tarball,
         {'os_distro': 'busybox'}),
        (layout.DEBIAN_IMAGE, _rootfs_images().debian_tarball_path,
         debian_tarball, {'os_distro': 'debian', 'os_version': '12'}),
        (layout.DEBIAN_CLOUD_IMAGE,
         _rootfs_images().debian_cloud_qcow2_path, debian_cloud_qcow2,
         {'os_distro': 'debian', 'os_version': '12',
          'os_admin_user': layout.DEBIAN_CLOUD_USER,
          'disk_format': 'qcow2'}),
    )
    for name, path_of, build, properties in wanted:
        rootfs = os.path.basename(path_of())
        found = s.get('image', '/v2/images?name=' + name)['images']
        if any(i['status'] == 'active' and i.get('novalxc_rootfs') == rootfs
               for i in found):
            continue
        path = build()
        util.say('uploading image %s (%d MB) from %s', name,
                 os.path.getsize(path) // 10 ** 6, path)
        body = {'name': name, 'container_format': 'bare',
                'disk_format': 'raw', 'visibility': 'public',
                'novalxc_rootfs': rootfs}
        body.update(_IMAGE_PROPERTIES)
        body.update(properties)
        image = s.post('image', '/v2/images', body)
        s.put_file('image', '/v2/images/%s/file' % image['id'], path)
        # Older recipes and interrupted uploads.
        for old in found:
            util.say('deleting image %s %s (%s)', name, old['id'],
                     old.get('novalxc_rootfs') or old['status'])
            s.call('DELETE', 'image', '/v2/images/' + old['id'])


# Ingress rules of the demo project's security groups (egress is open:
# Neutron gives every new group its egress rules).
_ICMP = {'protocol': 'icmp'}
_SSH = {'protocol': 'tcp', 'port_range_min': 22, 'port_range_max': 22}
_RULES = (('default', (_ICMP, _SSH)), (layout.NO_ICMP_GROUP, (_SSH,)))


def network(secrets):
    """The demo project's network, subnet and security groups.

    Made as the demo user, so they are the demo project's; found by name
    on later runs. demo-net is a geneve network whose subnet has DHCP
    (OVN's native DHCP hands out each port's address, the MTU and a route
    to the metadata service). The project's "default" security group
    gets ICMP and SSH ingress from anywhere; "no-icmp" only SSH.
    """
    s = api.Session(layout.DEMO_USER, secrets['demo'], layout.DEMO_PROJECT)

    # kind: the collection's JSON key; its URL has dashes.
    def find(kind, **query):
        query['project_id'] = s.project_id
        found = s.get('network', '/v2.0/%s?%s' % (
            kind.replace('_', '-'),
            urllib.parse.urlencode(sorted(query.items()))))[kind]
        return found[0] if found else None

    def ensure(kind, body, **query):
        found = find(kind, **query)
        if found:
            return found
        singular = kind[:-1]
        util.say('creating %s %s', singular.replace('_', ' '),
                 body.get('name', ''))
        return s.post('network', '/v2.0/' + kind.replace('_', '-'),
                      {singular: body})[singular]

    net = ensure('networks', {'name': layout.DEMO_NETWORK},
                 name=layout.DEMO_NETWORK)
    ensure('subnets', {'name': layout.DEMO_SUBNET, 'network_id': net['id'],
                       'ip_version': 4, 'cidr': layout.DEMO_CIDR,
                       'enable_dhcp': True},
           name=layout.DEMO_SUBNET, network_id=net['id'])
    # Listing its groups makes the project's "default" group if missing.
    groups = {'default': find('security_groups', name='default'),
              layout.NO_ICMP_GROUP: ensure(
                  'security_groups',
                  {'name': layout.NO_ICMP_GROUP,
                   'description': 'SSH in, no ICMP (isolation checks)'},
                  name=layout.NO_ICMP_GROUP)}
    for name, rules in _RULES:
        group = groups[name]
        for rule in rules:
            wanted = dict(rule, direction='ingress', ethertype='IPv4',
                          remote_ip_prefix='0.0.0.0/0')
            if any(all(r.get(k) == v for k, v in wanted.items())
                   for r in group['security_group_rules']):
                continue
            util.say('security group %s: allowing %s in', name,
                     rule['protocol'])
            s.post('network', '/v2.0/security-group-rules',
                   {'security_group_rule': dict(
                       wanted, security_group_id=group['id'])})
    admin = api.Session('admin', secrets['admin'], 'admin')
    shared = _shared_network(admin)
    for network in (net, shared):
        host_access(admin, network)
    return net


def _find(s, kind, **query):
    found = s.get('network', '/v2.0/%s?%s' % (
        kind.replace('_', '-'),
        urllib.parse.urlencode(sorted(query.items()))))[kind]
    return found[0] if found else None


def _shared_network(admin):
    """SHARED_NETWORK: the admin's, shared with every project, DHCP."""
    net = _find(admin, 'networks', name=layout.SHARED_NETWORK,
                project_id=admin.project_id)
    if not net:
        util.say('creating network %s (shared)', layout.SHARED_NETWORK)
        net = admin.post('network', '/v2.0/networks', {'network': {
            'name': layout.SHARED_NETWORK, 'shared': True}})['network']
    if not _find(admin, 'subnets', network_id=net['id']):
        admin.post('network', '/v2.0/subnets', {'subnet': {
            'name': layout.SHARED_SUBNET, 'network_id': net['id'],
            'ip_version': 4, 'cidr': layout.SHARED_CIDR,
            'enable_dhcp': True}})
    return net


def host_access(admin, network):
    """Give the host an address on network, through a port of its own.

    A Neutron port (no port security: the host is not a server) bound
    to this host, plugged as an OVS internal interface on br-int whose
    iface-id names it, so ovn-controller claims it; the host then
    reaches the network's servers directly (SSH, as a user would over a
    router). Idempotent: each up plugs and addresses it again.

    :returns: (interface name, the port's IPv4 address).
    """
    name = 'novalxc-host-%s' % network['name']
    port = _find(admin, 'ports', network_id=network['id'], name=name)
    if not port:
        util.say('creating port %s: the host on %s', name, network['name'])
        port = admin.post('network', '/v2.0/ports', {'port': {
            'name': name, 'network_id': network['id'],
            'device_owner': layout.HOST_ACCESS_OWNER,
            'binding:host_id': layout.NOVA_HOST,
            'port_security_enabled': False}})['port']
    subnet = admin.get('network', '/v2.0/subnets/' +
                       port['fixed_ips'][0]['subnet_id'])['subnet']
    address = port['fixed_ips'][0]['ip_address']
    dev = layout.HOST_ACCESS_PREFIX + network['id'][:8]
    util.run(['ovs-vsctl', '--may-exist', 'add-port', 'br-int', dev, '--',
              'set', 'Interface', dev, 'type=internal',
              'external_ids:iface-id=%s' % port['id'],
              'external_ids:attached-mac=%s' % port['mac_address'],
              'external_ids:iface-status=active'])
    util.wait_for('interface %s' % dev,
                  lambda: os.path.exists('/sys/class/net/' + dev), 10)
    util.run(['ip', 'link', 'set', dev, 'address', port['mac_address'],
              'mtu', str(network['mtu']), 'up'])
    util.run(['ip', 'addr', 'replace', '%s/%s' % (
        address, subnet['cidr'].split('/')[1]), 'dev', dev])
    return dev, address


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
            '# The password is not here: OS_CLOUD names the %s entry of %s'
            % (cloud, layout.CLOUDS_YAML),
            '# (mode 0600, readable by root only), which the client reads.',
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
