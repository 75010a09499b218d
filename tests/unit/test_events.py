"""Tests for novalxcdriver.events: the container state watcher."""

import threading
from unittest import mock

import fixtures
from oslotest import base

from novalxcdriver import events

PATH = '/var/lib/novalxc/containers'


class _WatcherBase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.changes, self.restarts = [], []
        self.watcher = events.StateWatcher(
            PATH, 0.01, lambda *change: self.changes.append(change),
            on_restart=self.restarts.append)
        patcher = mock.patch('novalxcdriver.lxc.states')
        self.states = patcher.start()
        self.addCleanup(patcher.stop)

    def scan(self, states):
        # A state alone: a running container keeps init pid 100.
        self.states.return_value = {
            name: value if isinstance(value, tuple) else
            (value, 100 if value == 'RUNNING' else None)
            for name, value in states.items()}
        self.watcher.scan()


class StateWatcherScanTest(_WatcherBase):

    def test_first_scan_is_baseline(self):
        self.scan({'a': 'RUNNING', 'b': 'STOPPED'})
        self.assertEqual([], self.changes)
        self.states.assert_called_once_with(PATH)

    def test_changes_reported_with_old_and_new(self):
        self.scan({'a': 'RUNNING', 'b': 'STOPPED', 'c': 'RUNNING'})
        self.scan({'a': 'STOPPED', 'b': 'STOPPED', 'c': 'FROZEN'})
        self.assertEqual(sorted([('a', 'RUNNING', 'STOPPED'),
                                 ('c', 'RUNNING', 'FROZEN')]),
                         sorted(self.changes))

    def test_unchanged_not_reported(self):
        self.scan({'a': 'RUNNING'})
        self.scan({'a': 'RUNNING'})
        self.scan({'a': 'RUNNING'})
        self.assertEqual([], self.changes)

    def test_change_reported_once(self):
        self.scan({'a': 'RUNNING'})
        self.scan({'a': 'STOPPED'})
        self.scan({'a': 'STOPPED'})
        self.scan({'a': 'RUNNING'})
        self.assertEqual([('a', 'RUNNING', 'STOPPED'),
                          ('a', 'STOPPED', 'RUNNING')], self.changes)

    def test_new_container_not_a_change(self):
        self.scan({'a': 'RUNNING'})
        self.scan({'a': 'RUNNING', 'b': 'RUNNING'})
        self.assertEqual([], self.changes)
        # Once seen, its changes count.
        self.scan({'a': 'RUNNING', 'b': 'STOPPED'})
        self.assertEqual([('b', 'RUNNING', 'STOPPED')], self.changes)

    def test_vanished_container_not_a_change(self):
        self.scan({'a': 'RUNNING', 'b': 'RUNNING'})
        self.scan({'a': 'RUNNING'})
        self.assertEqual([], self.changes)

    def test_failing_callback_does_not_lose_other_changes(self):
        def on_change(name, old, new):
            self.changes.append((name, old, new))
            if name == 'bad':
                raise ValueError('cannot handle %s' % name)

        self.watcher = events.StateWatcher(PATH, 0.01, on_change)
        self.scan({'bad': 'RUNNING', 'a': 'RUNNING', 'z': 'RUNNING'})
        self.scan({'bad': 'STOPPED', 'a': 'STOPPED', 'z': 'STOPPED'})
        self.assertEqual(sorted([('bad', 'RUNNING', 'STOPPED'),
                                 ('a', 'RUNNING', 'STOPPED'),
                                 ('z', 'RUNNING', 'STOPPED')]),
                         sorted(self.changes))

    def test_failed_scan_keeps_previous_baseline(self):
        self.scan({'a': 'RUNNING'})
        self.states.side_effect = RuntimeError('lxc-ls failed')
        self.assertRaises(RuntimeError, self.watcher.scan)
        self.states.side_effect = None
        self.scan({'a': 'STOPPED'})
        self.assertEqual([('a', 'RUNNING', 'STOPPED')], self.changes)


class RestartTest(_WatcherBase):

    def test_new_init_between_scans_is_a_restart(self):
        # A reboot from inside, quicker than the scan interval.
        self.scan({'a': ('RUNNING', 10), 'b': ('RUNNING', 20)})
        self.scan({'a': ('RUNNING', 11), 'b': ('RUNNING', 20)})
        self.assertEqual(['a'], self.restarts)
        self.assertEqual([], self.changes)
        self.scan({'a': ('RUNNING', 11), 'b': ('RUNNING', 20)})
        self.assertEqual(['a'], self.restarts)

    def test_restart_seen_through_its_states(self):
        self.scan({'a': ('RUNNING', 10)})
        self.scan({'a': ('STOPPING', None)})
        self.scan({'a': ('STOPPED', None)})
        self.scan({'a': ('RUNNING', 12)})
        self.assertEqual(['a'], self.restarts)
        self.assertEqual([('a', 'RUNNING', 'STOPPING'),
                          ('a', 'STOPPING', 'STOPPED'),
                          ('a', 'STOPPED', 'RUNNING')], self.changes)

    def test_first_start_is_no_restart(self):
        self.scan({'a': ('STOPPED', None)})
        self.scan({'a': ('RUNNING', 10)})
        self.scan({'b': ('RUNNING', 30), 'a': ('RUNNING', 10)})
        self.assertEqual([], self.restarts)

    def test_vanished_then_recreated_is_no_restart(self):
        self.scan({'a': ('RUNNING', 10)})
        self.scan({})
        self.scan({'a': ('RUNNING', 40)})
        self.assertEqual([], self.restarts)

    def test_failing_restart_callback_logged(self):
        def on_restart(name):
            raise ValueError('no network info')
        self.watcher = events.StateWatcher(PATH, 0.01, self.changes.append,
                                           on_restart=on_restart)
        self.scan({'a': ('RUNNING', 10)})
        log = self.useFixture(fixtures.FakeLogger())
        self.scan({'a': ('RUNNING', 11)})
        self.assertIn('container a (restart) failed', log.output)


class StateWatcherThreadTest(base.BaseTestCase):

    def test_thread_survives_failed_scans(self):
        results = [RuntimeError('lxc-ls failed'), {'a': ('RUNNING', 9)},
                   RuntimeError('again'), {'a': ('STOPPED', None)}]
        calls = []
        changed = threading.Event()
        changes = []

        def states(path):
            calls.append(path)
            result = results[min(len(calls), len(results)) - 1]
            if isinstance(result, Exception):
                raise result
            return result

        def on_change(*change):
            changes.append(change)
            changed.set()

        watcher = events.StateWatcher(PATH, 0.01, on_change)
        with mock.patch('novalxcdriver.lxc.states', side_effect=states):
            watcher.start()
            self.addCleanup(watcher.stop)
            self.assertTrue(changed.wait(10), 'no change reported')
            watcher.stop()
        self.assertEqual([('a', 'RUNNING', 'STOPPED')], changes)
        self.assertGreaterEqual(len(calls), 4)
        self.assertEqual({PATH}, set(calls))
        self.assertFalse(watcher._thread.is_alive())

    def test_stop_ends_thread(self):
        watcher = events.StateWatcher(PATH, 0.01, mock.Mock())
        with mock.patch('novalxcdriver.lxc.states', return_value={}):
            watcher.start()
            self.assertTrue(watcher._thread.daemon)
            watcher.stop()
        self.assertFalse(watcher._thread.is_alive())

    def test_stop_before_start(self):
        events.StateWatcher(PATH, 0.01, mock.Mock()).stop()
