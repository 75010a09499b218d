"""bench.networked_boot's pure parts and its report rows (goal 3)."""

import datetime

from oslotest import base

from bench import networked_boot as nb
from bench import report
from bench import run

SERVER = 'c7149c11-6acc-4003-9a9e-691cdc4914f8'
OTHER = '834ec849-59f3-4bff-bc8e-badb16a374f7'
PORT = '1d931950-764c-4a63-ba63-478b88e53909'
REQ = ('[None req-e8045f6d-d4bf-40fa-8392-d2c3b48af6da a3e4 f06a - - '
       'default default]')


def stamp(seconds):
    """A log line's timestamp, seconds after 10:16:35 local time."""
    t = datetime.datetime(2026, 12, 5, 10, 16, 35) + datetime.timedelta(
        seconds=seconds)
    return t.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]


def posted_at():
    return datetime.datetime(2026, 12, 5, 10, 16, 35).timestamp()


# As the services write them (nova, neutron, the driver), INFO level.
COMPUTE = [
    '%s 27614 INFO nova.compute.claims %s [instance: %s] Claim successful '
    'on node vm' % (stamp(0.30), REQ, SERVER),
    '%s 27614 INFO novalxcdriver.driver %s [instance: %s] Plugged VIFs '
    "['%s']; waiting for network-vif-plugged of ['%s']"
    % (stamp(1.50), REQ, SERVER, PORT, PORT),
    '%s 27614 INFO novalxcdriver.vif %s [instance: %s] OVN installed the '
    "flows of ['%s'] on this host; not waiting for Neutron's "
    'network-vif-plugged of them' % (stamp(1.58), REQ, SERVER, PORT),
    '%s 27614 INFO nova.compute.manager %s [instance: %s] Took 1.52 '
    'seconds to spawn the instance on the hypervisor.'
    % (stamp(2.60), REQ, SERVER),
    '%s 27614 INFO nova.compute.manager %s [instance: %s] Took 1.71 '
    'seconds to build instance.' % (stamp(2.65), REQ, SERVER),
    # A later one of the same server (a rebuild): the first counts.
    '%s 27614 INFO nova.compute.manager %s [instance: %s] Took 9.00 '
    'seconds to spawn the instance on the hypervisor.'
    % (stamp(30.0), REQ, SERVER),
    '%s 27614 INFO nova.compute.claims %s [instance: %s] Claim successful '
    'on node vm' % (stamp(5.0), REQ, OTHER),
    '%s 27614 INFO novalxcdriver.driver %s [instance: %s] Plugged VIFs '
    "['%s']; waiting for network-vif-plugged of none (active already, or "
    'not to be started)' % (stamp(5.5), REQ, OTHER, PORT),
    'a line with no timestamp [instance: %s] Claim successful' % OTHER,
]
API = [
    '%s 27417 INFO nova.api.openstack.compute.server_external_events %s '
    'Creating event network-changed:%s for instance %s on vm'
    % (stamp(0.90), REQ, PORT, SERVER),
    '%s 27417 INFO nova.api.openstack.compute.server_external_events %s '
    'Creating event network-vif-plugged:%s for instance %s on vm'
    % (stamp(2.55), REQ, PORT, SERVER),
]
NEUTRON = [
    '%s 2001 INFO neutron.plugins.ml2.drivers.ovn.mech_driver.mech_driver '
    '%s OVN reports status down for port: %s' % (stamp(0.70), REQ, PORT),
    # The aio's gunicorn access log: Nova's binding update, then a later
    # one (the first counts), a failed one of another port, a GET.
    '%s 2001 INFO gunicorn.access "PUT /v2.0/ports/%s HTTP/1.1" 200 361ms'
    % (stamp(0.85), PORT),
    '%s 2001 INFO gunicorn.access "PUT /v2.0/ports/%s HTTP/1.1" 200 90ms'
    % (stamp(20.0), PORT),
    '%s 2001 INFO gunicorn.access "PUT /v2.0/ports/%s HTTP/1.1" 409 9ms'
    % (stamp(0.80), SERVER),
    '%s 2001 INFO gunicorn.access "GET /v2.0/ports/%s HTTP/1.1" 200 9ms'
    % (stamp(0.75), PORT),
    '%s 2001 INFO neutron.plugins.ml2.drivers.ovn.mech_driver.mech_driver '
    '%s OVN reports status up for port: %s' % (stamp(1.60), REQ, PORT),
    # The delete's, later: the first one counts.
    '%s 2001 INFO neutron.plugins.ml2.drivers.ovn.mech_driver.mech_driver '
    '%s OVN reports status down for port: %s' % (stamp(40.0), REQ, PORT),
]


class ScheduleTest(base.BaseTestCase):

    def test_abba(self):
        self.assertEqual(['networked', 'none', 'none', 'networked',
                          'networked', 'none'], nb.schedule(3))
        self.assertEqual([], nb.schedule(0))


class EventsTest(base.BaseTestCase):

    def parsed(self):
        return nb.events({'compute': COMPUTE, 'api': API,
                          'neutron': NEUTRON})

    def test_server_and_port_milestones_first_of_each(self):
        by_server, by_port, ports, _awaited = self.parsed()
        t0 = posted_at()
        self.assertEqual(
            {'claim': 0.30, 'plugged': 1.50, 'ovn_installed': 1.58,
             'spawned': 2.60, 'built': 2.65, 'network_changed': 0.90,
             'vif_plugged': 2.55},
            {k: round(v - t0, 3) for k, v in by_server[SERVER].items()})
        self.assertEqual(
            {'port_down': 0.70, 'port_bound': 0.85, 'ovn_up': 1.60},
            {k: round(v - t0, 3) for k, v in by_port[PORT].items()})
        self.assertEqual({SERVER: [PORT]}, ports)

    def test_what_the_driver_waited_for(self):
        _s, _p, _ports, awaited = self.parsed()
        self.assertEqual("['%s']" % PORT, awaited[SERVER])
        self.assertTrue(awaited[OTHER].startswith('none'))

    def test_timeline_relative_to_the_post(self):
        by_server, by_port, ports, _a = self.parsed()
        sample = {'server_id': SERVER, 'posted_at': posted_at(),
                  'seconds': 3.1}
        self.assertEqual(
            {'claim': 0.3, 'port_down': 0.7, 'port_bound': 0.85,
             'network_changed': 0.9,
             'plugged': 1.5, 'ovn_installed': 1.58, 'ovn_up': 1.6,
             'vif_plugged': 2.55,
             'spawned': 2.6, 'built': 2.65, 'active': 3.1},
            nb.timeline(sample, by_server, by_port, ports))

    def test_a_server_without_lines_has_active_only(self):
        sample = {'server_id': 'x', 'posted_at': posted_at(),
                  'seconds': 1.0}
        self.assertEqual({'active': 1.0},
                         nb.timeline(sample, {}, {}, {}))

    def test_median_timeline_over_those_that_have_it(self):
        self.assertEqual(
            {'claim': 0.4, 'active': 2.0},
            nb.median_timeline([{'claim': 0.3, 'active': 1.0},
                                {'claim': 0.5, 'active': 2.0},
                                {'active': 3.0}]))


def _result(networked, none, errors=(), awaited=None):
    def side(values, errs):
        return {'samples': [{'seconds': v} for v in values],
                'errors': list(errs),
                'figures': nb.stats.summary(values),
                'timeline': {'claim': 0.3, 'active': values[0]}}
    ratio = nb.stats.summary(networked)['median'] / nb.stats.summary(
        none)['median']
    return {'image': 'debian-12', 'network': 'demo-net',
            'sides': {'networked': side(networked, errors),
                      'none': side(none, ())},
            'ratio': ratio, 'met': ratio <= nb.GOAL_RATIO,
            'awaited': len(networked) if awaited is None else awaited}


class ReportTest(base.BaseTestCase):

    def test_missed(self):
        row, = report.networked_boot_rows({'networked-boot': _result(
            [3.8, 3.6, 4.0], [1.0, 0.9, 1.1])})
        self.assertEqual(13, row['item'])
        self.assertEqual('no', row['met'])
        self.assertIn('**3.80 s**', row['measured'])
        self.assertIn('**1.00 s**', row['measured'])
        self.assertIn('**3.80x**', row['measured'])
        self.assertIn('awaited in 3 of 3', row['measured'])
        # Results from before the OVN mark was looked for have no count.
        self.assertIn("ended by OVN's installed mark in 0", row['measured'])
        result = _result([1.2, 1.3], [1.0, 1.0])
        result['ovn_installed'] = 2
        row, = report.networked_boot_rows({'networked-boot': result})
        self.assertIn("awaited in 2 of 2, the wait ended by OVN's "
                      'installed mark in 2', row['measured'])

    def test_met_only_without_errors(self):
        row, = report.networked_boot_rows({'networked-boot': _result(
            [1.4, 1.2], [1.0, 1.0])})
        self.assertEqual('yes', row['met'])
        row, = report.networked_boot_rows({'networked-boot': _result(
            [1.4, 1.2], [1.0, 1.0], errors=['boom'])})
        self.assertEqual('no', row['met'])

    def test_skipped_failed_and_not_asked(self):
        row, = report.networked_boot_rows(
            {'networked-boot': {'skipped': 'no cloud'}})
        self.assertIn('skipped: no cloud', row['measured'])
        row, = report.networked_boot_rows(
            {'errors': {'networked-boot': 'Traceback\nKeyError: x\n'}})
        self.assertIn('KeyError: x', row['measured'])
        self.assertEqual([], report.networked_boot_rows({}))

    def test_timeline_section(self):
        lines = report.networked_boot_section({'networked-boot': _result(
            [3.8], [1.0])})
        self.assertIn('| claim | +0.30 s | +0.30 s |', lines)
        self.assertIn('| active | +3.80 s | +1.00 s |', lines)
        self.assertIn('| plugged | — | — |', lines)
        self.assertEqual([], report.networked_boot_section({}))


class OptionsTest(base.BaseTestCase):

    def test_an_api_family_run_by_default(self):
        self.assertIn('networked-boot', run.API_FAMILIES)
        self.assertIn('networked-boot', run.DEFAULT_FAMILIES)
        args = run.parse_args(['--only', 'networked-boot',
                               '--networked-boot-runs', '3',
                               '--api-network', 'private'])
        self.assertEqual(3, args.networked_boot_runs)
        self.assertEqual('private', args.api_network)
