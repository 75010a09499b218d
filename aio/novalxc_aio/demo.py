"""demo: a Debian server's life through the API; smoke: the CI check.

Each step's time runs from the API call to the state reached, as the API
reports it (status, and no task in progress).
"""

import glob
import json
import os
import subprocess
import time
import uuid

from novalxc_aio import api
from novalxc_aio import commands
from novalxc_aio import layout
from novalxc_aio import util

ACTIVE_TIMEOUT = 300
STEP_TIMEOUT = 180
CONSOLE_TIMEOUT = 120


class Server:
    """One server seen through the compute API of one user."""

    def __init__(self, session, server_id):
        self.s = session
        self.id = server_id

    @classmethod
    def boot(cls, session, name, image, flavor):
        image_id = _image_id(session, image)
        body = {'server': {'name': name, 'imageRef': image_id,
                           'flavorRef': flavor,
                           # No VIFs until the driver plugs them.
                           'networks': 'none'}}
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


def _image_id(session, name):
    images = session.get('image', '/v2/images?name=' + name)['images']
    if not images:
        raise util.AioError('no image %s: run up first' % name)
    return images[0]['id']


def _session(secrets, who):
    if who == 'admin':
        return api.Session('admin', secrets['admin'], 'admin')
    return api.Session(layout.DEMO_USER, secrets['demo'],
                       layout.DEMO_PROJECT)


def demo():
    """Boot Debian 12 as the demo user and walk it through its life.

    :returns: 0 if every step reached its state, else 1.
    """
    secrets = util.load_secrets()
    s = _session(secrets, 'demo')
    name = 'demo-debian-%s' % uuid.uuid4().hex[:6]
    timings = []
    server = None
    try:
        util.say('booting %s (image %s, flavor lxc.small, --nic none) as '
                 'user %s', name, layout.DEBIAN_IMAGE, layout.DEMO_USER)
        start = time.monotonic()
        server = Server.boot(s, name, layout.DEBIAN_IMAGE, 'lxc.small')
        server.wait_status('ACTIVE', ACTIVE_TIMEOUT)
        timings.append(('boot -> ACTIVE', time.monotonic() - start))
        util.say('ACTIVE after %.1f s', timings[-1][1])

        def multi_user():
            out = server.console()
            return out if ('Reached target' in out and
                           'Multi-User' in out) else None
        out, waited = api.wait_until('systemd multi-user in the console log',
                                     multi_user, CONSOLE_TIMEOUT, 0.5)
        timings.append(('ACTIVE -> console shows Multi-User', waited))
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
        timings.append(('delete -> gone', server.delete()))
        server = None
        util.say('%-24s %6.1f s', timings[-1][0], timings[-1][1])
    except (util.AioError, api.ApiError, TimeoutError) as e:
        print('DEMO FAILED: %s' % e)
        _cleanup(server)
        _print_timings(timings)
        return 1
    _print_timings(timings)
    return 0


def _cleanup(server):
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


# -- smoke --------------------------------------------------------------------

class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, what, ok, detail=''):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print('%s: %s%s' % ('PASS' if ok else 'FAIL', what,
                            (' (%s)' % detail) if detail and not ok else ''),
              flush=True)
        return ok


def _lxc_info(name, *flags):
    proc = subprocess.run(['lxc-info', '-P', layout.LXC_PATH, '-n', name,
                           '-H'] + list(flags), capture_output=True,
                          text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else ''


def _reservations_of(instance_uuid):
    """Container IDs whose on-disk reservation names the instance."""
    found = []
    for owner in glob.glob(os.path.join(layout.DRIVER_STATE, 'ids', '*',
                                        'owner.json')):
        try:
            with open(owner) as f:
                if json.load(f).get('instance_uuid') == instance_uuid:
                    found.append(os.path.basename(os.path.dirname(owner)))
        except (OSError, ValueError):
            continue
    return found


def _leftovers(name, cids):
    paths = [os.path.join(layout.LXC_PATH, name)]
    for cid in cids:
        paths += [os.path.join(layout.DRIVER_STATE, 'rootfs', cid),
                  os.path.join(layout.DRIVER_STATE, 'ids', cid)]
    found = [p for p in paths if os.path.lexists(p)]
    for cid in cids:
        root = os.path.join(layout.DRIVER_STATE, 'rootfs', cid)
        found += [m for m in commands.mounts_under(layout.DRIVER_STATE)
                  if m == root or m.startswith(root + '/')]
    return found


def _ovn_switches():
    return util.run(['ovn-nbctl', 'ls-list'], capture=True).stdout


def _neutron_checks(c, s):
    """Neutron answers and drives OVN (servers boot without NICs yet)."""
    try:
        agents = s.get('network', '/v2.0/agents?host=' +
                       layout.NOVA_HOST)['agents']
        c.check('Neutron sees the OVN controller of %s' % layout.NOVA_HOST,
                any(a['agent_type'] == 'OVN Controller agent' and a['alive']
                    for a in agents),
                json.dumps([(a['agent_type'], a['alive']) for a in agents]))
        net = s.post('network', '/v2.0/networks',
                     {'network': {'name': 'smoke-net'}})['network']
        switch = 'neutron-' + net['id']
        try:
            api.wait_until('logical switch ' + switch,
                           lambda: switch in _ovn_switches(), 20)
            c.check('a Neutron network becomes an OVN logical switch', True)
        except TimeoutError as e:
            c.check('a Neutron network becomes an OVN logical switch', False,
                    str(e))
        s.call('DELETE', 'network', '/v2.0/networks/' + net['id'])
        try:
            api.wait_until('logical switch %s gone' % switch,
                           lambda: switch not in _ovn_switches(), 20)
            c.check('deleting it removes the logical switch', True)
        except TimeoutError as e:
            c.check('deleting it removes the logical switch', False, str(e))
    except (util.AioError, api.ApiError) as e:
        c.check('Neutron with ML2/OVN', False, str(e))


def smoke(keep_up=False):
    """up, a busybox server through the API, reboot, delete, down.

    Checks the host, not only the API: the container runs, reboots into a
    new init, and after delete nothing of it remains (LXC dir, rootfs dir
    and mounts, container ID reservation). Prints "N passed, M failed".
    """
    c = Checks()
    try:
        c.check('up', commands.up() == 0)
    except util.AioError as e:
        c.check('up', False, str(e))
        print('%d passed, %d failed' % (c.passed, c.failed))
        return 1
    secrets = util.load_secrets()
    s = _session(secrets, 'admin')
    _neutron_checks(c, s)
    server = None
    try:
        server = Server.boot(s, 'smoke-%s' % uuid.uuid4().hex[:6],
                             layout.BUSYBOX_IMAGE, 'lxc.tiny')
        shown, seconds = server.wait_status('ACTIVE', ACTIVE_TIMEOUT)
        c.check('server ACTIVE (%.1f s)' % seconds, True)
        name = shown['OS-EXT-SRV-ATTR:instance_name']
        c.check('server on host %s' % layout.NOVA_HOST,
                shown['OS-EXT-SRV-ATTR:host'] == layout.NOVA_HOST,
                shown['OS-EXT-SRV-ATTR:host'])
        c.check('container %s RUNNING' % name,
                _lxc_info(name, '-s') == 'RUNNING', _lxc_info(name, '-s'))
        cids = _reservations_of(server.id)
        c.check('one container ID reserved', len(cids) == 1, str(cids))
        try:
            out, _w = api.wait_until(
                'console', lambda: 'busybox booted' in server.console(),
                60)
            c.check('console log shows the boot', True)
        except TimeoutError as e:
            c.check('console log shows the boot', False, str(e))
        pid = _lxc_info(name, '-p')
        seconds = server.action({'reboot': {'type': 'SOFT'}}, 'ACTIVE')
        new_pid = _lxc_info(name, '-p')
        c.check('reboot -> ACTIVE (%.1f s) with a new init' % seconds,
                new_pid and new_pid != pid and
                _lxc_info(name, '-s') == 'RUNNING',
                'init pid %s -> %s' % (pid, new_pid))
        seconds = server.delete()
        server = None
        c.check('delete -> gone from the API (%.1f s)' % seconds, True)
        c.check('lxc-info no longer knows %s' % name,
                _lxc_info(name, '-s') == '')
        left = _leftovers(name, cids)
        c.check('nothing of the server remains on the host', not left,
                ', '.join(left))
        c.check('no container ID reservation remains',
                not _reservations_of(shown['id']))
    except (util.AioError, api.ApiError, TimeoutError) as e:
        c.check('server lifecycle', False, str(e))
        _cleanup(server)
    if not keep_up:
        c.check('down', commands.down() == 0)
    print('%d passed, %d failed' % (c.passed, c.failed))
    return 0 if c.failed == 0 else 1
