"""The suite's unprivileged mode runs the driver as the user it says.

Only with NOVALXC_TEST_USER (tox -e functional-unprivileged): the checks
that make the rest of that run mean what it claims (tests/unprivileged.py).
"""

import os

from unittest import mock

from novalxcdriver import ids
from tests.functional import base
from tests import unprivileged


def _credentials():
    """(effective uid, effective gid, groups, CapEff) of this thread."""
    with open('/proc/thread-self/status') as f:
        status = dict(line.rstrip('\n').split(':\t', 1)
                      for line in f if ':\t' in line)
    return (int(status['Uid'].split()[1]), int(status['Gid'].split()[1]),
            status['Groups'].split(), int(status['CapEff'], 16))


def _daemons():
    """(uid, argv) of every process running oslo.privsep's daemon."""
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
            with open('/proc/%s/status' % pid) as f:
                uid = next(int(line.split()[2]) for line in f
                           if line.startswith('Uid:'))
        except (OSError, StopIteration):
            continue
        if b'oslo_privsep.daemon' in argv and argv[0] != b'sudo':
            found.append((uid, argv))
    return found


class UnprivilegedModeTest(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.account = unprivileged.user()
        if self.account is None:
            self.skipTest('NOVALXC_TEST_USER is not set')

    def test_the_driver_runs_as_the_user_its_daemons_as_root(self):
        seen = []
        real = ids.IdAllocator.allocate

        def allocate(allocator, *args, **kwargs):
            seen.append(_credentials())
            return real(allocator, *args, **kwargs)

        instance = self.make_instance()
        with mock.patch.object(ids.IdAllocator, 'allocate', allocate):
            self.spawn(instance, self.busybox_image())
        self.assertEqual([(self.account.pw_uid, self.account.pw_gid, [],
                           0)], seen)
        # The test itself is root again; what the driver wrote is the
        # user's.
        self.assertEqual(0, os.geteuid())
        record = os.path.join(self.driver._state_path, 'instances',
                              instance.uuid + '.json')
        self.assertEqual(self.account.pw_uid, os.stat(record).st_uid)
        self.assertEqual('RUNNING', self.lxc_state(instance.name))
        # Its daemons, started through sudo, run as root and read the
        # config file that gives them the suite's roots.
        config = unprivileged._config_path()
        ours = [uid for uid, argv in _daemons()
                if config.encode() in argv]
        self.assertTrue(ours)
        self.assertEqual({0}, set(ours))
