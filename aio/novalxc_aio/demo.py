"""demo: a Debian server's life through the API, timed.

Each step's time runs from the API call to the state reached, as the API
reports it (status, and no task in progress). What the API cannot show
(the address a server got by DHCP, what it reads from the metadata
service) is looked at inside its container with lxc-attach: the aio runs
as root on the compute host.
"""

import json
import subprocess
import time
import uuid

from novalxc_aio import api
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
    def boot(cls, session, name, image, flavor, networks='none'):
        """POST a server; networks as the API takes them.

        'none', or a list of {'uuid': network id} or {'port': port id}.
        """
        image_id = _image_id(session, image)
        body = {'server': {'name': name, 'imageRef': image_id,
                           'flavorRef': flavor, 'networks': networks}}
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

    def action(self, body, status):
        """POST an action; return seconds until status is reached."""
        start = time.monotonic()
        self.s.post('compute', '/servers/%s/action' % self.id, body)
        self.wait_status(status)
        return time.monotonic() - start

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


def attach(name, *argv, timeout=60):
    """Run argv in container name (lxc-attach); CompletedProcess."""
    return subprocess.run(
        ['lxc-attach', '-P', layout.LXC_PATH, '-n', name, '--clear-env',
         '--'] + list(argv), capture_output=True, text=True,
        timeout=timeout)


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


def _image_id(session, name):
    images = session.get('image', '/v2/images?name=' + name)['images']
    if not images:
        raise util.AioError('no image %s: run up first' % name)
    return images[0]['id']


def session(secrets, who):
    if who == 'admin':
        return api.Session('admin', secrets['admin'], 'admin')
    return api.Session(layout.DEMO_USER, secrets['demo'],
                       layout.DEMO_PROJECT)


def demo():
    """Boot Debian 12 on demo-net as the demo user; walk it through its life.

    :returns: 0 if every step reached its state, else 1.
    """
    secrets = util.load_secrets()
    s = session(secrets, 'demo')
    admin = session(secrets, 'admin')
    name = 'demo-debian-%s' % uuid.uuid4().hex[:6]
    timings = []
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
            util.say('%-24s %6.1f s', timings[-1][0], seconds)
        (got, mtu), _w = api.wait_until(
            'DHCP address %s again' % address,
            lambda: _has_address(container, address), DHCP_TIMEOUT, 0.5)
        util.say('after these, eth0 has %s again', got)
        timings.append(('delete -> gone', server.delete()))
        server = None
        util.say('%-24s %6.1f s', timings[-1][0], timings[-1][1])
    except (util.AioError, api.ApiError, TimeoutError) as e:
        print('DEMO FAILED: %s' % e)
        cleanup(server)
        _print_timings(timings)
        return 1
    _print_timings(timings)
    return 0


def _has_address(container, address):
    found = inside_ipv4(container)
    return found if found[0] == address else None


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
