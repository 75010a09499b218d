"""Hostile and broken images, and hostile names, through the driver's spawn.

Each crafted rootfs tarball of issue 5 is booted through LXCDriver.spawn:
it is refused with ImageUnacceptable and a reason that names the problem,
or unpacked harmlessly and the container runs. Either way nothing is
written outside the image root (every escaping member aims at a canary
directory, checked file by file) and nothing of the instance is left.

Names and metadata full of shell syntax go through spawn too: no shell
runs them (canary files), and the container's config has no key they put
there.
"""

import os
import re
import uuid

from nova import exception as nova_exc
from nova.tests.unit import fake_instance
from oslo_config import fixture as config_fixture

from novalxcdriver import conf
from tests.functional import base as func_base
from tests.hardening import base
from tests.hardening import images
from tests.hardening import summary
from tests import tar_members

CONF = conf.CONF
GiB = 1 << 30


class HostileImagesTest(base.HardeningTestCase):

    def setUp(self):
        super().setUp()
        self.canary = os.path.join(self.root, 'canary')
        os.mkdir(self.canary)
        with open(os.path.join(self.canary, 'secret'), 'w') as f:
            f.write('host secret\n')
        os.chmod(os.path.join(self.canary, 'secret'), 0o600)
        self.work = os.path.join(self.root, 'corpus')
        os.mkdir(self.work)
        # A driver whose images may unpack to 1 GiB: the bomb goes past.
        self.max_bytes = 1 * GiB
        self.driver._images._max_bytes = self.max_bytes

    def _boot(self, case):
        """Spawn an instance from case's image.

        :returns: (outcome, detail, instance): outcome 'refused' with the
            ImageUnacceptable message, 'harmless' when the container ran,
            'error' with anything else.
        """
        image_id = self.add_image(case.path)
        instance = self.make_instance(root_gb=1)
        if case.max_unpacked_gib:
            self.driver._images._max_bytes = case.max_unpacked_gib * GiB
        try:
            self.spawn(instance, image_id)
        except nova_exc.ImageUnacceptable as e:
            return 'refused', str(e), instance, image_id
        except Exception as e:
            return 'error', '%s: %s' % (type(e).__name__, e), instance, \
                image_id
        finally:
            self.driver._images._max_bytes = self.max_bytes
        state = func_base.poll(
            lambda: self.lxc_state(instance.name) == 'RUNNING', timeout=30)
        return ('harmless' if state else 'error',
                'RUNNING' if state else self.lxc_state(instance.name),
                instance, image_id)

    def test_hostile_corpus_through_spawn(self):
        before = tar_members.tree_snapshot(self.canary)
        cases = images.corpus(self.work, self.canary, base.CACHE,
                              bomb_bytes=self.max_bytes + (1 << 20))
        outcomes = {}
        problems = {}
        for case in cases:
            outcome, detail, instance, image_id = self._boot(case)
            wrong = []
            if outcome != case.expect:
                wrong.append('expected %s, got %s: %s' % (
                    case.expect, outcome, detail))
            elif outcome == 'refused' and case.reason not in detail:
                wrong.append('reason %r not in %r' % (case.reason, detail))
            if outcome == 'harmless':
                # Its links, seen from inside, lead nowhere on the host.
                cat = self.attach(instance.name, 'cat', '/root/canary',
                                  '/etc/hostname')
                if 'host secret' in cat.stdout:
                    wrong.append('host secret read inside: %r' % cat.stdout)
                self.driver.destroy(self.ctxt, instance, [])
            elif os.path.lexists(os.path.join(self.state_path, 'images',
                                              image_id)):
                wrong.append('refused image left in the cache')
            after = tar_members.tree_snapshot(self.canary)
            if after != before:
                wrong.append('canary changed: %s' % sorted(
                    set(after.items()) ^ set(before.items())))
            wrong += self.leaks([instance.name])
            outcomes[case.name] = outcome
            print('HARDENING hostile image %-28s %-8s %s%s' % (
                case.name, outcome, detail.split(' rootfs: ', 1)[-1][:110],
                ''.join('\n    PROBLEM ' + w for w in wrong)))
            if wrong:
                problems[case.name] = wrong
        refused = list(outcomes.values()).count('refused')
        harmless = list(outcomes.values()).count('harmless')
        summary.record(
            'hostile', '%d crafted images: %d refused with ImageUnacceptable '
            'and a reason, %d unpacked harmlessly and booted, %d wrong; '
            'nothing written outside the image root' % (
                len(cases), refused, harmless, len(problems)),
            refused=refused, harmless=harmless, cases=len(cases),
            wrong=len(problems))
        self.assertEqual({}, problems)

    def test_names_and_metadata_reach_no_shell(self):
        image_id = self.add_image(images.busybox_plus(
            os.path.join(self.work, 'bb.tar.gz')))
        pwned = ['/tmp/hardening-pwned-%d-%d' % (os.getpid(), i)
                 for i in range(6)]
        self.addCleanup(lambda: [os.unlink(p) for p in pwned
                                 if os.path.exists(p)])
        instance = self.make_instance()
        instance.hostname = 'x$(touch %s)' % pwned[0]
        instance.display_name = (
            'vm; touch %s; echo "q" \'s\' `touch %s`\n'
            'lxc.mount.entry = / mnt none bind 0 0' % (pwned[1], pwned[2]))
        instance.metadata = {'k': '$(touch %s)' % pwned[3],
                             'k2\nlxc.cap.drop =': "'; touch x;'"}
        instance.user_data = '#!/bin/sh\ntouch %s\n' % pwned[4]
        self.driver.spawn(
            self.ctxt, instance, self.image_meta(image_id),
            [('/etc/$(touch %s)' % pwned[5], b'$(reboot)')], None, {},
            network_info=[])
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        with open(os.path.join(self.lxc_path, instance.name,
                               'config')) as f:
            config = f.read()
        pairs = base.config_keys(config)
        # Every line is a key LXC knows, set by the driver: no injection.
        bad = [(k, v) for k, v in pairs
               if v is None or not re.match(r'^lxc\.[a-z0-9_.-]+$', k) or
               re.search(r'touch|pwned|\$\(|`|;|mnt none bind', v or '')]
        uts = dict(pairs)['lxc.uts.name']
        hostname = self.attach(instance.name, 'hostname').stdout.strip()
        etc_hostname = self.attach(instance.name, 'cat',
                                   '/etc/hostname').stdout.strip()

        # A name that is not a safe LXC name is refused before anything.
        evil = fake_instance.fake_instance_obj(
            self.ctxt, id=1, uuid=str(uuid.uuid4()), host=self.host,
            display_name='x; touch %s' % pwned[0], flavor=instance.flavor)
        evil.numa_topology = None
        cfg = self.useFixture(config_fixture.Config(CONF))
        cfg.config(instance_name_template='%(display_name)s')
        try:
            evil_error = self.assertRaises(
                nova_exc.InvalidInput, self.spawn, evil, image_id)
        finally:
            cfg.config(instance_name_template=base.NAME_TEMPLATE)

        made = [p for p in pwned if os.path.exists(p)]
        summary.record(
            'names', 'shell syntax in hostname, display name, metadata, '
            'user data and injected file names: %d canary files made, %d '
            'config lines out of place, uts name %r; unsafe container name '
            'refused (%s)' % (len(made), len(bad), uts, type(
                evil_error).__name__),
            canaries=len(made), bad_lines=len(bad))
        self.assertEqual([], made)
        self.assertEqual([], bad)
        self.assertEqual(instance.name, uts)
        self.assertEqual(instance.name, hostname)
        self.assertIn(etc_hostname, ('', instance.name))
        self.assertIn('cannot be a container name', str(evil_error))
        self.driver.destroy(self.ctxt, instance, [])
        self.assertEqual([], self.leaks([instance.name]))
