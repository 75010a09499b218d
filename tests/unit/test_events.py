"""Tests for novalxcdriver.events: the container state watcher."""

import threading
from unittest import mock

from oslotest import base

from novalxcdriver import events

PATH = '/var/lib/novalxc/containers'


class StateWatcherScanTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.changes = []
        self.watcher = events.StateWatcher(
            PATH, 0.01, lambda *change: self.changes.append(change))
        patcher = mock.patch('novalxcdriver.lxc.states')
        self.states = patcher.start()
        self.addCleanup(patcher.stop)

    def scan(self, states):
        self.states.return_value = dict(states)
        self.watcher.scan()

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


class StateWatcherThreadTest(base.BaseTestCase):

    def test_thread_survives_failed_scans(self):
        results = [RuntimeError('lxc-ls failed'), {'a': 'RUNNING'},
                   RuntimeError('again'), {'a': 'STOPPED'}]
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
