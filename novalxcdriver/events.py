"""Lifecycle events: containers that stop or start on their own.

A poweroff inside a container, or an init that crashes, changes its LXC
state without Nova asking. A daemon thread scans every container's state
(one lxc-ls call per scan) and reports each change, so the driver can emit
Nova's virtevent.LifecycleEvent and the server's state follows. Nova itself
ignores events for instances with a task in progress (the compute manager's
_sync_instance_power_state), so changes the driver makes cause no harm.

A reboot from inside is a restart by LXC that may fall between two scans:
a running container whose init pid changed is reported as restarted.
"""

import threading

from oslo_log import log as logging

from novalxcdriver import lxc

LOG = logging.getLogger(__name__)


class StateWatcher:
    """Calls on_change(name, old_state, new_state) for each change seen.

    :param lxc_path: the lxcpath to scan.
    :param interval: seconds between scans.
    :param on_change: callback, run in the watcher's thread.
    :param on_restart: callback(name), run in the watcher's thread, for a
        container seen running with another init than when last seen
        running.
    """

    def __init__(self, lxc_path, interval, on_change, on_restart=None):
        self._lxc_path = lxc_path
        self._interval = interval
        self._on_change = on_change
        self._on_restart = on_restart
        self._states = None
        self._running_pids = {}
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run,
                                        name='novalxc-state-watcher',
                                        daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join()

    def scan(self):
        """Scan once and report changes since the previous scan."""
        scanned = lxc.states(self._lxc_path)
        states = {name: state for name, (state, _pid) in scanned.items()}
        previous, self._states = self._states, states
        # The init pid each container had when last seen running, whatever
        # it went through between scans.
        pids = self._running_pids
        self._running_pids = {name: pid for name, pid in pids.items()
                              if name in scanned}
        self._running_pids.update(
            (name, pid) for name, (state, pid) in scanned.items()
            if state == 'RUNNING' and pid is not None)
        if previous is None:
            return
        for name, state in states.items():
            old = previous.get(name)
            if old is not None and old != state:
                self._call(self._on_change, name, old, state)
            if (self._on_restart and state == 'RUNNING' and
                    pids.get(name) not in (None,
                                           self._running_pids.get(name))):
                self._call(self._on_restart, name)

    @staticmethod
    def _call(callback, name, *args):
        try:
            callback(name, *args)
        except Exception:
            # The baseline has moved on: a failure here must not lose the
            # other containers' changes.
            LOG.exception('Handling a change of container %s (%s) failed',
                          name, ' -> '.join(args) or 'restart')

    def _run(self):
        while not self._stop.wait(self._interval):
            try:
                self.scan()
            except Exception:
                # A failed scan must not end the watching.
                LOG.exception('Scanning container states failed')
