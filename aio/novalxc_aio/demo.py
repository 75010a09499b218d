"""demo: a Debian server's life through the API, timed.

Each step's time runs from the API call to the state reached, as the API
reports it (status, and no task in progress). What the API cannot show
(the address a server got by DHCP, what it reads from the metadata
service, a file written before a snapshot, a shelve, a rebuild or a
rescue, the container ID) is looked at inside its container with
lxc-attach, or in the driver's state: the aio runs as root on the compute
host. The image create step runs until the image is active and the
server has no task left.
"""

import glob
import json
import os
import subprocess
import time
import uuid

from novalxc_aio import api
from novalxc_aio import console
from novalxc_aio import layout
from novalxc_aio import util

ACTIVE_TIMEOUT = 300
STEP_TIMEOUT = 180
CONSOLE_TIMEOUT = 120
DHCP_TIMEOUT = 60
METADATA_URL = 'http://169.254.169.254/openstack/latest/meta_data.json'


class Server:
    """One server seen through the compute API of one user."""

    def __init__(self, session, server_id):
        self.s = session
        self.id = server_id

    @classmethod
    def boot(cls, session, name, image, flavor, networks='none',
             image_id=None, key_name=None):
        """POST a server; networks as the API takes them.

        'none', or a list of {'uuid': network id} or {'port': port id}.
        image is an image's name, or None with image_id.
        """
        image_id = image_id or image_id_of(session, image)
        body = {'server': {'name': name, 'imageRef': image_id,
                           'flavorRef': flavor, 'networks': networks}}
        if key_name:
            body['server']['key_name'] = key_name
        server = session.post('compute', '/servers', body)['server']
        return cls(session, server['id'])

    def show(self):
        return self.s.get('compute', '/servers/' + self.id)['server']

    def wait_status(self, status, timeout=STEP_TIMEOUT):
        """Wait for status with no task running; return server, seconds."""
        def reached():
            server = self.show()
            if server['status'] == 'ERROR':
                raise util.AioError('server %s went to ERROR: %s' % (
                    self.id, server.get('fault', {}).get('message')))
            if server['status'] == status and \
                    not server.get('OS-EXT-STS:task_state'):
                return server
        return api.wait_until('server %s %s' % (self.id, status), reached,
                              timeout)

    def action(self, body, status, timeout=STEP_TIMEOUT):
        """POST an action; return seconds until status is reached."""
        start = time.monotonic()
        self.s.post('compute', '/servers/%s/action' % self.id, body)
        self.wait_status(status, timeout)
        return time.monotonic() - start

    def create_image(self, name):
        """POST createImage (a snapshot); return the new image's ID.

        Nova makes the image (queued) and returns; the compute host then
        takes the snapshot and uploads it (wait_image).
        """
        return self.s.post('compute', '/servers/%s/action' % self.id,
                           {'createImage': {'name': name}})['image_id']

    def wait_image(self, image_id, watch=None, timeout=STEP_TIMEOUT):
        """Wait for the image active and the server with no task running.

        watch(), if given, is called at each poll (to look at the host
        meanwhile). Nova deletes the image when the snapshot fails.

        :returns: (image, seconds, the server's statuses seen meanwhile).
        """
        statuses = []

        def done():
            if watch:
                watch()
            server = self.show()
            if server['status'] not in statuses:
                statuses.append(server['status'])
            found = image(self.s, image_id)
            if found is None or found['status'] in ('killed', 'deleted'):
                raise util.AioError(
                    'image %s %s: the snapshot of server %s failed (fault: '
                    '%s; see %s)' % (
                        image_id, found['status'] if found else 'deleted',
                        self.id, server.get('fault', {}).get('message'),
                        layout.log_file('nova-compute')))
            if found['status'] == 'active' and \
                    not server.get('OS-EXT-STS:task_state'):
                return found
        found, seconds = api.wait_until('image %s active' % image_id, done,
                                        timeout)
        return found, seconds, statuses

    def console(self, length=None):
        body = {'os-getConsoleOutput': {}}
        if length:
            body['os-getConsoleOutput']['length'] = length
        return self.s.post('compute', '/servers/%s/action' % self.id,
                           body)['output']

    def delete(self, timeout=STEP_TIMEOUT):
        """DELETE; return seconds until the API no longer knows it."""
        start = time.monotonic()
        self.s.call('DELETE', 'compute', '/servers/' + self.id)
        api.wait_until('server %s deleted' % self.id,
                       lambda: not self.s.exists('compute',
                                                 '/servers/' + self.id),
                       timeout)
        return time.monotonic() - start


# (prefix, lxc_path, driver state) of each compute host: lxc-* talk to a
# container's monitor over an abstract socket of the network namespace it
# started in, so compute 2's are reached from its namespace.
HOSTS = ((layout.NOVA_HOST, [], layout.LXC_PATH, layout.DRIVER_STATE),
         (layout.C2_HOST, ['nsenter', '--net=/run/netns/' + layout.C2_NETNS,
                           '--'], layout.C2_LXC_PATH,
          layout.C2_DRIVER_STATE))


def host_of(name):
    """The HOSTS entry whose lxc_path runs container name (else the first).

    A server being moved has a container on both hosts until the move is
    confirmed or reverted: the running one is the server.
    """
    found = [h for h in HOSTS if os.path.isdir(os.path.join(h[2], name))]
    for h in found:
        proc = subprocess.run(h[1] + ['lxc-info', '-P', h[2], '-n', name,
                                      '-H', '-s'], capture_output=True,
                              text=True, timeout=60)
        if proc.stdout.strip() not in ('', 'STOPPED'):
            return h
    return found[0] if found else HOSTS[0]


def attach(name, *argv, timeout=60):
    """Run argv in container name (lxc-attach); CompletedProcess."""
    _host, prefix, lxc_path, _state = host_of(name)
    return subprocess.run(
        prefix + ['lxc-attach', '-P', lxc_path, '-n', name, '--clear-env',
                  '--'] + list(argv), capture_output=True, text=True,
        timeout=timeout)


def lxc_info(name, *flags):
    """lxc-info -H of container name with flags; '' if it has none."""
    _host, prefix, lxc_path, _state = host_of(name)
    proc = subprocess.run(prefix + ['lxc-info', '-P', lxc_path, '-n', name,
                                    '-H'] + list(flags), capture_output=True,
                          text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else ''


def state_and_pid(name):
    """(LXC state, init pid) of container name; ('', '') if it has none.

    Two calls: with two flags lxc-info labels its lines even with -H.
    """
    return lxc_info(name, '-s'), lxc_info(name, '-p')


def reservations_of(instance_uuid):
    """Container IDs whose on-disk reservation names the instance."""
    found = []
    for owner in glob.glob(os.path.join(layout.IDS_PATH, '*',
                                        'owner.json')):
        try:
            with open(owner) as f:
                if json.load(f).get('instance_uuid') == instance_uuid:
                    found.append(os.path.basename(os.path.dirname(owner)))
        except (OSError, ValueError):
            continue
    return found


def host_uid(pid):
    """The host uid of process pid (a container's init: its root), or None.

    The container's idmap shows here: its root is the first host uid of
    its range.
    """
    try:
        return os.stat('/proc/%s' % pid).st_uid if pid else None
    except OSError:
        return None


def rescue_root(cid, name):
    """Where the driver makes a rescue's root (<rootfs>/rescue).

    <state_path>/rootfs/<cid>/rescue of the host running container name,
    as novalxcdriver/rescue.py names it (the driver is not importable
    here).
    """
    return os.path.join(host_of(name)[3], 'rootfs', cid, 'rescue')


def file_owner(name, path):
    """The uid owning path as container name sees it (stat), or what failed."""
    proc = attach(name, 'stat', '-c', '%u', path)
    if proc.returncode != 0:
        return 'exit %d: %s' % (proc.returncode, proc.stderr.strip()[-300:])
    return proc.stdout.strip()


def is_absent(name, path):
    """True if path does not exist inside container name (cat says so)."""
    proc = attach(name, 'cat', path)
    return proc.returncode != 0 and 'No such file' in proc.stderr


def write_marker(name, path):
    """Write a new random line to path inside container name; the line.

    :raises AioError: lxc-attach failed.
    """
    token = 'marker-%s' % uuid.uuid4().hex
    proc = attach(name, 'sh', '-c', 'echo %s > %s' % (token, path))
    if proc.returncode != 0:
        raise util.AioError('cannot write %s in %s: exit %d: %s' % (
            path, name, proc.returncode, proc.stderr.strip()[-500:]))
    return token


def read_marker(name, path):
    """What path holds inside container name (stripped), or what failed."""
    proc = attach(name, 'cat', path)
    if proc.returncode != 0:
        return 'exit %d: %s' % (proc.returncode, proc.stderr.strip()[-300:])
    return proc.stdout.strip()


def inside_ipv4(name, dev='eth0'):
    """(address, MTU) of dev inside container name; address None if none."""
    proc = attach(name, 'ip', '-o', '-4', 'addr', 'show', 'dev', dev)
    words = proc.stdout.split()
    address = (words[words.index('inet') + 1].split('/')[0]
               if 'inet' in words else None)
    words = attach(name, 'ip', '-o', 'link', 'show', 'dev', dev).stdout.split()
    mtu = int(words[words.index('mtu') + 1]) if 'mtu' in words else None
    return address, mtu


def metadata(name):
    """meta_data.json as read from inside container name, or None."""
    proc = attach(name, 'wget', '-q', '-O', '-', METADATA_URL)
    try:
        return json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        return None


def fixed_ip(session, server_id):
    """The server's first fixed IPv4 address, as Neutron assigned it."""
    ports = session.get('network', '/v2.0/ports?device_id=' +
                        server_id)['ports']
    for port in ports:
        for ip in port['fixed_ips']:
            if ':' not in ip['ip_address']:
                return ip['ip_address']
    return None


def network_id(session, name=layout.DEMO_NETWORK):
    found = session.get('network', '/v2.0/networks?name=' + name)['networks']
    if not found:
        raise util.AioError('no network %s: run up first' % name)
    return found[0]['id']


def image(session, image_id):
    """The Glance image, or None if Glance does not know it (any more)."""
    try:
        return session.get('image', '/v2/images/' + image_id)
    except api.ApiError as e:
        if e.status == 404:
            return None
        raise


def image_problems(found, server_id=None):
    """What is wrong with a snapshot image for this driver ('' if none)."""
    wanted = {'status': 'active', 'disk_format': 'raw',
              'container_format': 'bare', 'hypervisor_type': 'lxc'}
    if server_id:
        wanted['instance_uuid'] = server_id
    return ', '.join('%s %r, not %r' % (key, found.get(key), value)
                     for key, value in wanted.items()
                     if found.get(key) != value)


def delete_image(session, image_id):
    """Delete an image; best effort (report, do not raise)."""
    try:
        session.call('DELETE', 'image', '/v2/images/' + image_id)
    except api.ApiError as e:
        if e.status != 404:
            print('could not delete image %s: %s' % (image_id, e))


def image_id_of(session, name):
    """The ID of the active image called name.

    Active only: up uploads a changed image before it deletes the old one,
    and an upload cut short leaves one queued.
    """
    images = [i for i in session.get('image', '/v2/images?name=' + name)[
        'images'] if i['status'] == 'active']
    if not images:
        raise util.AioError('no active image %s in Glance: run up first'
                            % name)
    return images[0]['id']


def session(secrets, who):
    if who == 'admin':
        return api.Session('admin', secrets['admin'], 'admin')
    return api.Session(layout.DEMO_USER, secrets['demo'],
                       layout.DEMO_PROJECT)


def demo():
    """Boot Debian 12 on demo-net as the demo user; walk it through its life.

    Its serial console's login prompt through nova-serialproxy; reboot,
    stop, start, pause, unpause, suspend, resume; a snapshot
    (server image create) while it runs, a server booted from it;
    shelve (offloaded) and unshelve; rebuild (on its image), rescue
    (with busybox) and unrescue; with two compute hosts, cold migration
    to the other host and back; delete.

    :returns: 0 if every step reached its state, else 1.
    """
    secrets = util.load_secrets()
    s = session(secrets, 'demo')
    admin = session(secrets, 'admin')
    name = 'demo-debian-%s' % uuid.uuid4().hex[:6]
    timings = []
    images = []
    server = None
    try:
        util.say('booting %s (image %s, flavor lxc.small, network %s) as '
                 'user %s', name, layout.DEBIAN_IMAGE, layout.DEMO_NETWORK,
                 layout.DEMO_USER)
        start = time.monotonic()
        server = Server.boot(s, name, layout.DEBIAN_IMAGE, 'lxc.small',
                             networks=[{'uuid': network_id(s)}])
        server.wait_status('ACTIVE', ACTIVE_TIMEOUT)
        active = time.monotonic()
        timings.append(('boot -> ACTIVE', active - start))
        util.say('ACTIVE after %.1f s', timings[-1][1])
        # The container's name: an admin-only attribute.
        container = admin.get('compute', '/servers/' + server.id)[
            'server']['OS-EXT-SRV-ATTR:instance_name']
        address = fixed_ip(s, server.id)
        util.say('Neutron port address %s; container %s', address,
                 container)
        (got, mtu), _w = api.wait_until(
            'DHCP address %s on eth0 inside %s' % (address, container),
            lambda: _has_address(container, address), DHCP_TIMEOUT, 0.5)
        timings.append(('ACTIVE -> DHCP address inside',
                        time.monotonic() - active))
        util.say('inside: eth0 %s, MTU %d (lxc-attach ... ip -4 addr)', got,
                 mtu)
        meta, _w = api.wait_until(
            'meta_data.json from inside', lambda: metadata(container),
            DHCP_TIMEOUT, 0.5)
        timings.append(('ACTIVE -> metadata read inside',
                        time.monotonic() - active))
        if meta.get('uuid') != server.id:
            raise util.AioError('metadata names %s, not the server %s' % (
                meta.get('uuid'), server.id))
        util.say('inside: wget %s -> uuid %s, hostname %s', METADATA_URL,
                 meta['uuid'], meta.get('hostname'))

        def multi_user():
            out = server.console()
            return out if ('Reached target' in out and
                           'Multi-User' in out) else None
        out, _w = api.wait_until('systemd multi-user in the console log',
                                 multi_user, CONSOLE_TIMEOUT, 0.5)
        timings.append(('ACTIVE -> console shows Multi-User',
                        time.monotonic() - active))
        print('---- console log (last 25 lines) ----')
        print('\n'.join(out.rstrip('\n').splitlines()[-25:]))
        print('-------------------------------------')
        url = console.serial_url(s, server.id)
        util.say('serial console: %s (openstack console url show --serial '
                 '%s)', url, name)
        seen, seconds = console.exchange(url, b'\r', b'login: ',
                                         CONSOLE_TIMEOUT, knock=b'\r')
        timings.append(('serial console -> login prompt', seconds))
        util.say('serial console answers: %r',
                 seen.decode(errors='replace').strip().splitlines()[-1])
        for label, body, status in (
                ('reboot (soft)', {'reboot': {'type': 'SOFT'}}, 'ACTIVE'),
                ('stop', {'os-stop': None}, 'SHUTOFF'),
                ('start', {'os-start': None}, 'ACTIVE'),
                ('pause', {'pause': None}, 'PAUSED'),
                ('unpause', {'unpause': None}, 'ACTIVE'),
                ('suspend', {'suspend': None}, 'SUSPENDED'),
                ('resume', {'resume': None}, 'ACTIVE')):
            seconds = server.action(body, status)
            timings.append(('%s -> %s' % (label, status), seconds))
            util.say('%-28s %6.1f s', timings[-1][0], seconds)
        (got, mtu), _w = api.wait_until(
            'DHCP address %s again' % address,
            lambda: _has_address(container, address), DHCP_TIMEOUT, 0.5)
        util.say('after these, eth0 has %s again', got)
        _snapshot_steps(s, admin, server, container, address, timings,
                        images)
        _rebuild_rescue_steps(s, server, container, address, timings)
        _migration_steps(admin, server, container, address, timings)
        timings.append(('delete -> gone', server.delete()))
        server = None
        util.say('%-28s %6.1f s', timings[-1][0], timings[-1][1])
        server = _cloud_image_steps(s, timings)
    except (util.AioError, api.ApiError, TimeoutError) as e:
        print('DEMO FAILED: %s' % e)
        cleanup(server)
        for image_id in images:
            delete_image(s, image_id)
        _print_timings(timings)
        return 1
    for image_id in images:
        delete_image(s, image_id)
    _print_timings(timings)
    return 0


MARKER_FILE = '/root/demo-marker'


def _say_step(timings, label, seconds):
    timings.append((label, seconds))
    util.say('%-28s %6.1f s', label, seconds)


def _snapshot_steps(s, admin, server, container, address, timings, images):
    """Snapshot the running server, boot a copy, shelve and unshelve it.

    A marker file written inside before each is read back afterwards.
    The snapshot's image ID goes to images (deleted by the caller); the
    shelve's image Nova deletes itself at unshelve.

    :raises AioError: a step did not do what it should.
    """
    name = server.show()['name']
    token = write_marker(container, MARKER_FILE)
    util.say('inside: wrote %s', MARKER_FILE)
    before = state_and_pid(container)
    seen = set()
    start = time.monotonic()
    image_id = server.create_image(name + '-snapshot')
    images.append(image_id)
    found, _s, statuses = server.wait_image(
        image_id, lambda: seen.add(state_and_pid(container)))
    _say_step(timings, 'image create -> image active',
              time.monotonic() - start)
    problems = image_problems(found, server.id)
    if problems:
        raise util.AioError('snapshot image %s: %s' % (image_id, problems))
    seen.add(state_and_pid(container))
    if before[0] != 'RUNNING' or statuses != ['ACTIVE'] or seen != {before}:
        raise util.AioError(
            'the snapshot stopped the server: statuses %s; container '
            '(state, init pid) before %s, during and after %s' % (
                statuses, before, sorted(seen)))
    util.say('image %s active (%s, %s, hypervisor_type %s, %.1f MB); the '
             'server stayed ACTIVE, init pid %s throughout', image_id,
             found['disk_format'], found['container_format'],
             found['hypervisor_type'], (found.get('size') or 0) / 1e6,
             before[1])

    start = time.monotonic()
    copy = Server.boot(s, name + '-copy', None, 'lxc.small',
                       networks=[{'uuid': network_id(s)}],
                       image_id=image_id)
    try:
        copy.wait_status('ACTIVE', ACTIVE_TIMEOUT)
        _say_step(timings, 'boot from snapshot -> ACTIVE',
                  time.monotonic() - start)
        copy_container = admin.get('compute', '/servers/' + copy.id)[
            'server']['OS-EXT-SRV-ATTR:instance_name']
        read = read_marker(copy_container, MARKER_FILE)
        if read != token:
            raise util.AioError('%s inside the server booted from the '
                                'snapshot holds %r, not %r' % (
                                    MARKER_FILE, read[:200], token))
        util.say('inside %s: %s holds the marker', copy_container,
                 MARKER_FILE)
        seconds = copy.delete()
        copy = None
        _say_step(timings, 'delete (the copy) -> gone', seconds)
    finally:
        cleanup(copy)

    token = write_marker(container, MARKER_FILE)
    util.say('inside: wrote %s again', MARKER_FILE)
    ports = _port_ids(s, server.id)
    _say_step(timings, 'shelve -> SHELVED_OFFLOADED',
              server.action({'shelve': None}, 'SHELVED_OFFLOADED'))
    shelved = s.get('image', '/v2/images?name=%s-shelved' % name)['images']
    if lxc_info(container, '-s'):
        raise util.AioError('shelved offloaded, but container %s is still '
                            'there' % container)
    util.say('container %s gone from the host; image %s', container,
             ', '.join('%s-shelved %s (%s)' % (name, i['id'], i['status'])
                       for i in shelved) or 'NONE')
    _say_step(timings, 'unshelve -> ACTIVE',
              server.action({'unshelve': None}, 'ACTIVE'))
    _same_ports_and_address(s, server.id, ports, address, 'unshelve')
    read = read_marker(container, MARKER_FILE)
    if read != token:
        raise util.AioError('after unshelve %s holds %r, not %r' % (
            MARKER_FILE, read[:200], token))
    (got, _mtu), _w = api.wait_until(
        'DHCP address %s after unshelve' % address,
        lambda: _has_address(container, address), DHCP_TIMEOUT, 0.5)
    left = [i['id'] for i in shelved if image(s, i['id'])]
    if not shelved or left:
        raise util.AioError('the shelve image: %s' % (
            'none found' if not shelved else
            'not deleted at unshelve: %s' % ', '.join(left)))
    util.say('after unshelve: %s holds the marker, eth0 %s (the same port), '
             'the shelve image deleted', MARKER_FILE, got)


def _rebuild_rescue_steps(s, server, container, address, timings):
    """Rebuild the server on its image, rescue it with busybox, unrescue.

    Rebuild: a marker written inside is gone, the container keeps its
    container ID, its root's host uid (its idmap), its port and address.
    Rescue: the same container runs busybox with the server's root on
    /mnt, where a marker written before shows, owned by uid 0. Unrescue:
    the marker is in / again and the rescue root is gone.

    :raises AioError: a step did not do what it should.
    """
    cids = reservations_of(server.id)
    ports = _port_ids(s, server.id)
    uid = host_uid(lxc_info(container, '-p'))
    write_marker(container, MARKER_FILE)
    util.say('inside: wrote %s; container ID %s, its root host uid %s',
             MARKER_FILE, ','.join(cids), uid)

    def same_container(after):
        now = reservations_of(server.id)
        now_uid = host_uid(lxc_info(container, '-p'))
        if lxc_info(container, '-s') != 'RUNNING' or now != cids or \
                now_uid != uid:
            raise util.AioError(
                'after %s: container %s %r, container IDs %s (before %s), '
                'its root host uid %s (before %s)' % (
                    after, container, lxc_info(container, '-s'), now, cids,
                    now_uid, uid))
    _say_step(timings, 'rebuild -> ACTIVE', server.action(
        {'rebuild': {'imageRef': image_id_of(s, layout.DEBIAN_IMAGE)}},
        'ACTIVE', ACTIVE_TIMEOUT))
    same_container('rebuild')
    if not is_absent(container, MARKER_FILE):
        raise util.AioError('after rebuild %s is still there: %r' % (
            MARKER_FILE, read_marker(container, MARKER_FILE)[:200]))
    _same_ports_and_address(s, server.id, ports, address, 'rebuild')
    (got, _mtu), _w = api.wait_until(
        'DHCP address %s after rebuild' % address,
        lambda: _has_address(container, address), DHCP_TIMEOUT, 0.5)
    util.say('after rebuild: %s gone, the same container (ID %s), eth0 %s '
             '(the same port)', MARKER_FILE, ','.join(cids), got)

    token = write_marker(container, MARKER_FILE)
    util.say('inside: wrote %s again', MARKER_FILE)
    _say_step(timings, 'rescue (busybox) -> RESCUE', server.action(
        {'rescue': {'rescue_image_ref': image_id_of(
            s, layout.BUSYBOX_IMAGE)}}, 'RESCUE'))
    same_container('rescue')
    on_mnt = '/mnt' + MARKER_FILE
    read = read_marker(container, on_mnt)
    owner = file_owner(container, on_mnt)
    if read != token or owner != '0':
        raise util.AioError('rescued: %s holds %r (not %r), owner %r '
                            '(not 0)' % (on_mnt, read[:200], token, owner))
    util.say('rescued: busybox in container %s, %s holds the marker, '
             'owner uid 0', container, on_mnt)
    _say_step(timings, 'unrescue -> ACTIVE',
              server.action({'unrescue': None}, 'ACTIVE'))
    same_container('unrescue')
    read = read_marker(container, MARKER_FILE)
    left = [path for path in [rescue_root(cid, container) for cid in cids]
            if os.path.lexists(path)]
    if read != token or left:
        raise util.AioError('after unrescue %s holds %r (not %r); rescue '
                            'root left: %s' % (MARKER_FILE, read[:200],
                                               token, left or 'none'))
    (got, _mtu), _w = api.wait_until(
        'DHCP address %s after unrescue' % address,
        lambda: _has_address(container, address), DHCP_TIMEOUT, 0.5)
    util.say('after unrescue: %s holds the marker, no rescue root left, '
             'eth0 %s', MARKER_FILE, got)


def _migration_steps(admin, server, container, address, timings):
    """With two compute hosts: cold migrate there and back, each confirmed.

    As the admin (Nova's default policy). Each move: a marker written
    inside before it is read after it, on the other host, and eth0 has
    the port's address again by DHCP.

    :raises AioError: a step did not do what it should.
    """
    services = admin.get('compute', '/os-services?binary=nova-compute')[
        'services']
    hosts = [x['host'] for x in services
             if x['state'] == 'up' and x['status'] == 'enabled']
    if len(hosts) < 2:
        util.say('one compute host: no migration (up --computes 2 adds '
                 'a second)')
        return
    moving = Server(admin, server.id)
    for _there_and_back in range(2):
        token = write_marker(container, MARKER_FILE)
        before = moving.show()['OS-EXT-SRV-ATTR:host']
        _say_step(timings, 'migrate (cold) -> VERIFY_RESIZE', moving.action(
            {'migrate': None}, 'VERIFY_RESIZE', ACTIVE_TIMEOUT))
        after = moving.show()['OS-EXT-SRV-ATTR:host']
        _say_step(timings, 'confirm resize -> ACTIVE',
                  moving.action({'confirmResize': None}, 'ACTIVE'))
        read = read_marker(container, MARKER_FILE)
        if after == before or read != token:
            raise util.AioError('migrated from %s to %s: %s holds %r (not '
                                '%r)' % (before, after, MARKER_FILE,
                                         read[:200], token))
        (got, _mtu), _w = api.wait_until(
            'DHCP address %s after the migration' % address,
            lambda: _has_address(container, address), DHCP_TIMEOUT, 0.5)
        util.say('migrated from %s to %s: %s holds the marker, eth0 %s',
                 before, after, MARKER_FILE, got)


def _same_ports_and_address(session, server_id, ports, address, after):
    """Raise AioError unless the server kept its ports and address."""
    now = _port_ids(session, server_id), fixed_ip(session, server_id)
    if now != (ports, address):
        raise util.AioError('after %s the server has ports %s, address %s; '
                            'before: %s, %s' % (after, now[0], now[1],
                                                ports, address))


def _port_ids(session, server_id):
    return sorted(p['id'] for p in session.get(
        'network', '/v2.0/ports?device_id=' + server_id)['ports'])


def _has_address(container, address):
    found = inside_ipv4(container)
    return found if found[0] == address else None


# The demo user's SSH key (made once) and its Nova keypair.
DEMO_KEY = layout.etc('demo-key')
DEMO_KEYPAIR = 'demo-key'
SSH_TIMEOUT = 120


def _keypair(s):
    """The demo keypair's name; its private key is DEMO_KEY."""
    if not os.path.exists(DEMO_KEY):
        util.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                  'novalxc-aio demo', '-f', DEMO_KEY])
    with open(DEMO_KEY + '.pub') as f:
        public = f.read().strip()
    found = [k['keypair'] for k in s.get('compute',
                                         '/os-keypairs')['keypairs']
             if k['keypair']['name'] == DEMO_KEYPAIR]
    if found and found[0]['public_key'].strip() != public:
        s.call('DELETE', 'compute', '/os-keypairs/' + DEMO_KEYPAIR)
        found = []
    if not found:
        s.post('compute', '/os-keypairs', {'keypair': {
            'name': DEMO_KEYPAIR, 'public_key': public}})
    return DEMO_KEYPAIR


def ssh(address, *command, user=layout.DEBIAN_CLOUD_USER, timeout=30):
    """Run command on a server over SSH with the demo key.

    From the host, through its port on the server's network
    (cloud.host_access). Host keys are not kept: each server is new.
    """
    return subprocess.run(
        ['ssh', '-i', DEMO_KEY, '-o', 'BatchMode=yes',
         '-o', 'StrictHostKeyChecking=no',
         '-o', 'UserKnownHostsFile=/dev/null',
         '-o', 'ConnectTimeout=5', '-o', 'LogLevel=ERROR',
         '%s@%s' % (user, address)] + list(command),
        capture_output=True, text=True, timeout=timeout)


def _cloud_image_steps(s, timings):
    """Boot debian-12-cloud with the demo keypair and log in over SSH.

    cloud-init (the OpenStack datasource: the metadata service) puts the
    key in place for its user; the host reaches demo-net through its own
    port. Returns None once the server is deleted (the caller's cleanup
    deletes it on failure).
    """
    key = _keypair(s)
    name = 'demo-cloud-%s' % uuid.uuid4().hex[:6]
    start = time.monotonic()
    server = Server.boot(s, name, layout.DEBIAN_CLOUD_IMAGE, 'lxc.small',
                         networks=[{'uuid': network_id(s)}], key_name=key)
    server.wait_status('ACTIVE', ACTIVE_TIMEOUT)
    active = time.monotonic()
    timings.append(('cloud image: boot -> ACTIVE', active - start))
    address = fixed_ip(s, server.id)
    util.say('%s (%s, key %s) ACTIVE after %.1f s, address %s', name,
             layout.DEBIAN_CLOUD_IMAGE, key, active - start, address)

    def logged_in():
        proc = ssh(address, 'hostname; cloud-init status --wait >/dev/null;'
                   ' cloud-id; sudo -n id -un')
        return proc.stdout.split() if proc.returncode == 0 else None
    said, seconds = api.wait_until('SSH login as %s@%s' % (
        layout.DEBIAN_CLOUD_USER, address), logged_in, SSH_TIMEOUT, 1)
    timings.append(('cloud image: ACTIVE -> SSH login', seconds))
    util.say('ssh -i %s %s@%s: hostname %s, cloud-init datasource %s, '
             'sudo as %s', DEMO_KEY, layout.DEBIAN_CLOUD_USER, address,
             *(said + ['?'] * 3)[:3])
    if said[:1] != [name]:
        raise util.AioError('%s says its hostname is %r, not %s' % (
            address, said[:1], name))
    timings.append(('cloud image: delete -> gone', server.delete()))
    return None


def cleanup(server):
    if server is None:
        return
    try:
        print('deleting server %s' % server.id)
        server.delete()
    except Exception as e:  # best effort: report, keep the first error
        print('could not delete server %s: %s' % (server.id, e))


def _print_timings(timings):
    print('\nstep                                  seconds')
    for label, seconds in timings:
        print('%-36s %8.1f' % (label, seconds))
