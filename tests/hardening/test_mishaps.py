"""Mishaps: what crashes and operators do to a compute host (issue 11).

Each mishap runs in a root of its own. Server S boots from the busybox
image with a 1 GiB root disk, writes /root/f inside and syncs; the host
crashes (base.host_crash: nova-compute SIGKILLed, the containers killed,
every mount gone), the mishap strikes, and nova-compute restarts in a new
process (tests.hardening.worker). A restart in the same process would keep
the pid of S's ID reservation alive and hide what init_host does to an
instance it takes for a spawn interrupted by a crash. Then, the columns:

- disks kept: S's root disk is the same file (inode, size) and its
  filesystem still holds /root/f with its content (read with debugfs);
- compute up: the new process started and init_host succeeded;
- recovered: a hard reboot (Nova's ``reboot --hard``) brings S back
  RUNNING, /root/f intact, its config holding every line it had before;
- leaks: deleting S leaves nothing (base.leaks).

Some mishaps adapt the columns (their docstrings say how); each row says
what it expects. Every row is printed (``HARDENING mishap ...``), the
table too, and recorded under 'mishaps'; the test fails if any row is not
as expected. NOVALXC_MISHAPS=3,10b runs only those mishaps (keys in
MISHAPS).
"""

import dataclasses
import os
import shutil
import subprocess
import time
import traceback
import uuid

from tests.hardening import base
from tests.hardening import summary
from tests import tar_members

DATA = 'mishap-data\n'
# Where /root/f of the container is in its root disk: the overlay's upper
# layer (rootfs.py's layout).
DATA_IN_DISK = '/upper/root/f'
COLUMNS = ('disks kept', 'compute up', 'recovered', 'leaks')
EXPECTED = {'disks kept': 'yes', 'compute up': 'yes', 'recovered': 'yes',
            'leaks': 'none'}
# Where a crash during a second spawn kills nova-compute (test_crashes).
SPAWN_CRASH_POINT = 'novalxcdriver.rootfs:Rootfs.create'
CELL = 70  # characters of a table cell; the HARDENING lines say it all


class StepFailed(Exception):
    """A step the mishap builds on failed (a spawn, a write): no verdict."""


def short(text, size=CELL):
    text = ' '.join(str(text).split())
    return text if len(text) <= size else text[:size - 3] + '...'


def first_line(text):
    return str(text).strip().splitlines()[0] if str(text).strip() else ''


@dataclasses.dataclass
class Row:
    """One line of the table: what each column got and should get."""

    mishap: str
    expect: dict
    got: dict = dataclasses.field(
        default_factory=lambda: dict.fromkeys(COLUMNS, 'n/a'))
    details: list = dataclasses.field(default_factory=list)

    def wrong(self):
        """Columns that differ from what is expected, as text."""
        return ['%s is %r, expected %r' % (c, self.got[c], self.expect[c])
                for c in COLUMNS if self.got[c] != self.expect[c]]


class Scenario:
    """One mishap: its root, server S and the nova-compute serving it.

    The steps below are the mishaps' vocabulary; each sets its column of
    the row. A column keeps its first 'no', so later checks cannot hide
    an earlier failure.
    """

    def __init__(self, test, number, key, label, expect):
        self.test = test
        self.root = os.path.join(test.root, 'mishap-%s' % key)
        os.makedirs(self.root)
        self.image_id = str(uuid.uuid4())
        self.spec = base.instance_spec(0x4000 + 0x10 * number)
        self.name = base.instance_name(self.spec)
        self.lxc_path = os.path.join(self.root, 'lxc')
        self.state_path = os.path.join(self.root, 'state')
        self.container_dir = os.path.join(self.lxc_path, self.name)
        self.worker = None
        self.workers = []
        self.cid = None
        self.disk = None
        self.config = None
        self.row = Row('%s. %s' % (key, label), dict(EXPECTED, **expect))

    # -- the columns ------------------------------------------------------

    def set(self, column, verdict):
        """Give column a verdict; a 'no' is never overwritten."""
        current = self.row.got[column]
        if current == 'n/a' or (verdict.startswith('no') and
                                not current.startswith('no')):
            self.row.got[column] = verdict

    def detail(self, text):
        """A line printed under the row: an error, a leak, a note."""
        self.row.details.append(text)

    # -- steps ------------------------------------------------------------

    def new_worker(self, before_init=None):
        """Start a nova-compute process; run before_init(worker), init_host.

        :returns: whether it came up (the 'compute up' column says so).
        """
        try:
            worker = base.Worker(self.test, self.root, self.test.host,
                                 images={self.image_id: self.test.tarball},
                                 init_host=False, state_poll_interval=1.0)
            self.workers.append(worker)
            self.worker = worker
            if before_init:
                before_init(worker)
            worker.call('init_host')
        except base.WorkerError as e:
            self.set('compute up', 'no: %s' % short(first_line(e)))
            self.detail('init_host: %s' % e)
            return False
        self.set('compute up', 'yes')
        return True

    def start(self):
        """Worker A; S spawned, /root/f written and synced; the baseline."""
        self.new_worker()
        if self.row.got['compute up'] != 'yes':
            raise StepFailed('the first nova-compute did not come up')
        self.cid = self.spawn(self.spec)['cid']
        out = base.attach(self.name, self.lxc_path, 'sh', '-c',
                          'echo %s > /root/f && sync' % DATA.strip())
        if out.returncode:
            raise StepFailed('writing /root/f: %s' % out.stderr)
        st = os.stat(self.root_disk)
        self.disk = (st.st_ino, st.st_size)
        with open(self.config_path) as f:
            self.config = f.read()

    def spawn(self, spec):
        result, = self.worker.call('spawn', instances=[spec],
                                   image_id=self.image_id)
        if result['error']:
            raise StepFailed('spawn of %s: %s: %s' % (
                spec['id'], result['error'], result['message']))
        return result['value']

    @property
    def rootfs_dir(self):
        return os.path.join(self.state_path, 'rootfs', str(self.cid))

    @property
    def root_disk(self):
        return os.path.join(self.rootfs_dir, 'root.img')

    @property
    def config_path(self):
        return os.path.join(self.container_dir, 'config')

    @property
    def image_entry(self):
        return os.path.join(self.state_path, 'images', self.image_id)

    def crash(self):
        """The host crash that precedes the mishap (S was running)."""
        left = base.host_crash(self.worker, [self.name])
        if left:
            raise StepFailed('mounts left after the crash: %s' % left)

    def check_disks(self):
        """S's root disk: the same file, still holding /root/f."""
        try:
            st = os.stat(self.root_disk)
        except FileNotFoundError:
            return self.set('disks kept', 'no: root.img gone')
        if (st.st_ino, st.st_size) != self.disk:
            return self.set('disks kept', 'no: root.img replaced '
                            '(inode, size %s, were %s)' % (
                                (st.st_ino, st.st_size), self.disk))
        data = base.file_in_disk(self.root_disk, DATA_IN_DISK)
        if data != DATA:
            return self.set('disks kept', 'no: %s reads %r in root.img' % (
                DATA_IN_DISK, data))
        self.set('disks kept', 'yes')

    def reboot(self):
        """Hard reboot of S: the worker's result (error, message, value)."""
        result, = self.worker.call('reboot', instances=[self.spec],
                                   reboot_type='HARD')
        if result['error']:
            self.detail('hard reboot: %s: %s' % (result['error'],
                                                 result['message']))
        return result

    def recovery(self, result, fetched=False):
        """Whether a hard reboot's result is S back as it was ('yes').

        :param fetched: the image must have been fetched from Glance again
            (by this nova-compute process).
        """
        if result['error']:
            return 'no: %s: %s' % (result['error'],
                                   first_line(result['message']))
        state = base.lxc_info(self.name, self.lxc_path)[0]
        if state != 'RUNNING':
            return 'no: %s after the hard reboot' % state
        data = self.read_data()
        if data != DATA:
            return 'no: /root/f reads %r' % data
        missing = self.config_lines_lost()
        if missing:
            self.detail('config lines lost: %s' % missing)
            return 'no: the config lacks %d lines, e.g. %r' % (
                len(missing), missing[0])
        if fetched and self.worker.call('counts')['fetch'] < 1:
            return 'no: the image was not fetched again'
        return 'yes'

    def read_data(self, wait=30):
        """/root/f as S reads it (its init may still be starting)."""
        deadline = time.monotonic() + wait
        while True:
            out = base.attach(self.name, self.lxc_path, 'cat', '/root/f')
            if out.returncode == 0 or time.monotonic() > deadline:
                return out.stdout if out.returncode == 0 else (
                    'error: %s' % out.stderr.strip())
            time.sleep(0.5)

    def config_lines_lost(self):
        """Lines of S's first config missing from its config now."""
        try:
            with open(self.config_path) as f:
                now = set(base.config_keys(f.read()))
        except FileNotFoundError:
            return ['(no config at all)']
        return ['%s = %s' % kv if kv[1] is not None else kv[0]
                for kv in base.config_keys(self.config) if kv not in now]

    def delete(self, specs, keep=()):
        """Delete specs, stop this nova-compute, fill in 'leaks'.

        'leaks' is 'none' only if every delete succeeded and nothing of
        the instances is left.

        :param keep: directories in lxc_path that are not ours (foreign
            containers) and must stay.
        :returns: the deletes' errors (list of str).
        """
        errors = ['%s: %s' % (r['error'], first_line(r['message']))
                  for r in self.worker.call('destroy', instances=specs)
                  if r['error']]
        for error in errors:
            self.detail('delete: %s' % error)
        try:
            self.worker.quit()
        except base.WorkerError as e:
            self.detail('quit: %s' % e)
        kept = {'container dir %s' % d for d in keep}
        leaks = [leak for leak in base.leaks(
            self.lxc_path, self.state_path,
            [base.instance_name(s) for s in specs]) if leak not in kept]
        if leaks:
            self.detail('leaks: %s' % '; '.join(leaks))
        if errors:
            self.set('leaks', 'no: delete failed: %s' % errors[0])
        elif leaks:
            self.set('leaks', 'no: %d: %s' % (len(leaks), '; '.join(leaks)))
        else:
            self.set('leaks', 'none')
        return errors

    def restart_and_recover(self, before_init=None, fetched=False,
                            also_delete=()):
        """The usual end: restart, disks, hard reboot, delete."""
        up = self.new_worker(before_init)
        self.check_disks()
        if not up:
            return
        self.set('recovered', self.recovery(self.reboot(), fetched))
        self.delete([self.spec] + list(also_delete))

    def close(self):
        for worker in self.workers:
            worker.kill()
        base.force_clean(self.root)


# -- the mishaps ----------------------------------------------------------

def host_crash_only(s):
    s.start()
    s.crash()
    s.restart_and_recover()


def lxc_path_missing(s):
    """lxc_path's filesystem not mounted at boot: it is not there.

    The hard reboot regenerates S's config in a new lxc_path.
    """
    s.start()
    s.crash()
    moved = s.lxc_path + '.moved'
    os.rename(s.lxc_path, moved)
    s.restart_and_recover()
    # The test's own: configs only, nothing mounted there.
    if not base.mounts_under(moved):
        shutil.rmtree(moved)


def lxc_path_empty(s):
    s.start()
    s.crash()
    for name in os.listdir(s.lxc_path):
        shutil.rmtree(os.path.join(s.lxc_path, name))
    s.restart_and_recover()


def config_missing(s):
    s.start()
    s.crash()
    os.unlink(s.config_path)
    s.restart_and_recover()


def config_empty(s):
    s.start()
    s.crash()
    os.truncate(s.config_path, 0)
    s.restart_and_recover()


def config_truncated(s):
    """Cut at 60% of its length, mid-line, after the header."""
    s.start()
    s.crash()
    with open(s.config_path, 'rb') as f:
        text = f.read()
    cut = len(text) * 6 // 10
    while text[cut - 1:cut + 1].count(b'\n'):
        cut += 1
    header = text.rfind(b'\n#', 0, len(text)) + 1
    header_end = text.index(b'\n', header)
    if cut <= header_end:
        raise StepFailed('60%% of the config is in its header (%d <= %d)'
                         % (cut, header_end))
    os.truncate(s.config_path, cut)
    line_start = text.rfind(b'\n', 0, cut) + 1
    s.detail('note: config cut to %d of %d bytes, in %r' % (
        cut, len(text), text[line_start:text.index(b'\n', cut)].decode()))
    s.restart_and_recover()


def image_json_empty(s):
    """Expected: the entry set aside and fetched again."""
    s.start()
    s.crash()
    os.truncate(os.path.join(s.image_entry, 'image.json'), 0)
    s.restart_and_recover(fetched=True)


def image_entry_deleted(s):
    """Expected: the hard reboot fetches the image again from Glance."""
    s.start()
    s.crash()
    shutil.rmtree(s.image_entry)
    s.restart_and_recover(fetched=True)


def image_gone(s):
    """Deleted from Glance and from the cache: S's lower layer is lost.

    Nothing can rebuild S: the hard reboot must fail naming the image
    ('recovered' is then 'no: fault (image gone)'), keep the disk, and
    delete must still leave nothing.
    """
    s.start()
    s.crash()
    shutil.rmtree(s.image_entry)
    up = s.new_worker(before_init=lambda worker: worker.call(
        'remove_images', image_ids=[s.image_id]))
    s.check_disks()
    if not up:
        return
    result = s.reboot()
    if result['error'] and s.image_id in result['message']:
        s.set('recovered', 'no: fault (image gone)')
    elif result['error']:
        s.set('recovered', 'no: fault not naming the image: %s: %s' % (
            result['error'], first_line(result['message'])))
    else:
        s.set('recovered', 'rebooted without its image: %s'
              % s.recovery(result))
    s.check_disks()
    s.delete([s.spec])


def spawn_killed(s):
    """nova-compute SIGKILLed in the spawn of T, S running; host crash.

    S must come back; T, never ACTIVE, must just leave nothing once
    deleted.
    """
    s.start()
    t = base.instance_spec(s.spec['id'] + 1)
    s.worker.call('arm', target=SPAWN_CRASH_POINT, when='after')
    status = s.worker.crash_during('spawn', instances=[t],
                                   image_id=s.image_id)
    if status != -9:
        raise StepFailed('spawn of T ended with %s, not SIGKILL' % status)
    s.crash()
    s.restart_and_recover(also_delete=[t])


class Foreign:
    """A stopped LXC container that is not ours, watched for changes.

    :param directory: where to make it (a container directory).
    """

    def __init__(self, directory):
        os.makedirs(os.path.join(directory, 'rootfs'))
        with open(os.path.join(directory, 'config'), 'w') as f:
            f.write('lxc.uts.name = foreign\n'
                    'lxc.rootfs.path = dir:%s/rootfs\n' % directory)
        with open(os.path.join(directory, 'rootfs', 'foreign-file'),
                  'w') as f:
            f.write('not yours\n')
        self.path = directory
        self.snapshot = tar_members.tree_snapshot(directory)
        self.reported = False

    def move(self, directory):
        """The operator moves it away (if it is still there)."""
        if os.path.isdir(self.path):
            os.makedirs(os.path.dirname(directory), exist_ok=True)
            os.rename(self.path, directory)
            self.path = directory

    def check(self, when):
        """[] while untouched, else what 'when' did to it (said once)."""
        if self.reported:
            return []
        if not os.path.isdir(self.path):
            what = 'deleted'
        else:
            now = tar_members.tree_snapshot(self.path)
            changed = sorted(p for p in set(self.snapshot) | set(now)
                             if self.snapshot.get(p) != now.get(p))
            if not changed:
                return []
            what = 'changed %s of' % changed
        self.reported = True
        return ['%s %s the foreign container' % (when, what)]


def refused(result, needle, what):
    """[] if the operation failed naming needle, else why not (list)."""
    if not result['error']:
        return ['it did not fail']
    if needle not in result['message']:
        return ['it failed without naming %s: %s' % (
            what, first_line(result['message']))]
    return []


def verdict(failures, success='yes'):
    return 'no: ' + '; '.join(failures) if failures else success


def foreign_container(s):
    """S's container directory replaced by a foreign container.

    The driver cannot prove the container is S's: the hard reboot must
    fail naming its path and leave it untouched. Once the operator moves
    it away, the hard reboot brings S back. 'recovered' is all of that.
    """
    s.start()
    s.crash()
    os.makedirs(os.path.join(s.root, 'aside'))
    os.rename(s.container_dir, os.path.join(s.root, 'aside', s.name))
    foreign = Foreign(s.container_dir)
    up = s.new_worker()
    s.check_disks()
    if not up:
        return
    failures = foreign.check('init_host')
    failures += refused(s.reboot(), s.container_dir, 'the path')
    failures += foreign.check('the hard reboot')
    s.check_disks()
    foreign.move(os.path.join(s.root, 'foreign', s.name))
    recovery = s.recovery(s.reboot())
    if recovery != 'yes':
        failures.append('once it was moved away, %s' % recovery[4:])
    s.delete([s.spec])
    failures += foreign.check('the moved-away hard reboot and delete')
    s.set('recovered', verdict(failures))


def foreign_container_at_spawn(s):
    """A new server whose name a foreign container has: spawn refuses.

    Columns: 'recovered' is the refusal (naming the path, the foreign
    container untouched, also by the delete of the server in ERROR that
    follows), 'leaks' what the new server left.
    """
    if not s.new_worker():
        return
    foreign = Foreign(s.container_dir)
    result, = s.worker.call('spawn', instances=[s.spec],
                            image_id=s.image_id)
    failures = refused(result, s.container_dir, 'the path')
    failures += foreign.check('the spawn')
    # The user deletes the server in ERROR: Nova calls destroy.
    s.delete([s.spec], keep=[s.container_dir])
    failures += foreign.check('the delete')
    s.set('recovered', verdict(failures, 'refused, foreign untouched'))


def busy_mount(s):
    """A host process holds S's root busy when S is deleted. No crash.

    Delete must fail naming the holder's pid, keep S's container ID and
    root disk, and detach nothing lazily. Columns: 'recovered' is that
    refusal and then, the holder gone and nova-compute restarted, delete
    succeeding; 'leaks' what that delete left.
    """
    s.start()
    merged = os.path.join(s.rootfs_dir, 'merged')
    holder = subprocess.Popen(['sleep', '600'],
                              cwd=os.path.join(merged, 'root'))
    try:
        result, = s.worker.call('destroy', instances=[s.spec])
        failures = refused(result, str(holder.pid),
                           "the holder's pid %d" % holder.pid)
        s.check_disks()
        if s.cid not in base.held_ids(s.lxc_path, s.state_path):
            failures.append('container ID %d released' % s.cid)
        if merged not in base.mounts_under(s.rootfs_dir):
            failures.append('%s detached lazily' % merged)
    finally:
        holder.kill()
        holder.wait()
    s.worker.kill()
    if not s.new_worker():
        failures.append('not deleted: nova-compute is down')
    elif s.delete([s.spec]):
        failures.append('delete failed with the holder gone')
    s.set('recovered', verdict(failures))


OK = {}
# (key, label, mishap, expected columns other than EXPECTED's). Row 0 is
# the control: the same steps, no mishap; it shows every check can pass.
MISHAPS = (
    ('0', 'none: host crash only', host_crash_only, OK),
    ('1', 'lxc_path missing at start', lxc_path_missing, OK),
    ('2', 'lxc_path empty', lxc_path_empty, OK),
    ('3', 'config missing', config_missing, OK),
    ('4', 'config empty', config_empty, OK),
    ('5', 'config truncated mid-line', config_truncated, OK),
    ('6', 'image.json empty', image_json_empty, OK),
    ('7', 'image cache entry deleted', image_entry_deleted, OK),
    ('8', 'image gone from Glance and cache', image_gone,
     {'recovered': 'no: fault (image gone)'}),
    ('9', 'spawn marker left by a SIGKILL', spawn_killed, OK),
    ('10', 'foreign container with the name', foreign_container, OK),
    ('10b', 'foreign container, new server', foreign_container_at_spawn,
     {'disks kept': 'n/a', 'recovered': 'refused, foreign untouched'}),
    ('11', 'busy mount at destroy', busy_mount, OK),
)


def table(rows):
    """The rows as a text table, one line each, cells cut short."""
    cells = [('mishap',) + COLUMNS] + [
        (r.mishap,) + tuple(short(r.got[c]) for c in COLUMNS) for r in rows]
    widths = [max(len(line[i]) for line in cells)
              for i in range(len(cells[0]))]
    lines = [' | '.join(cell.ljust(w) for cell, w in zip(line, widths))
             .rstrip() for line in cells]
    lines.insert(1, '-+-'.join('-' * w for w in widths))
    return '\n'.join(lines)


class MishapTest(base.WorkerTestCase):

    host_prefix = 'hardening-mishap'

    def _run(self, number, key, label, mishap, expect):
        s = Scenario(self, number, key, label, expect)
        try:
            mishap(s)
        except base.WorkerDied as e:
            s.set('compute up', 'no: %s' % e)
            s.detail('nova-compute died: %s' % traceback.format_exc())
        except Exception:
            s.detail('the mishap stopped: %s' % traceback.format_exc())
        finally:
            s.close()
        return s.row

    def test_mishaps(self):
        only = os.environ.get('NOVALXC_MISHAPS')
        rows = []
        for number, (key, label, mishap, expect) in enumerate(MISHAPS):
            if only and key not in only.split(','):
                continue
            row = self._run(number, key, label, mishap, expect)
            rows.append(row)
            print('HARDENING mishap %-36s disks kept: %s | compute up: %s '
                  '| recovered: %s | leaks: %s%s' % (
                      row.mishap, *(row.got[c] for c in COLUMNS),
                      ''.join('\n    ' + x for x in
                              row.wrong() + row.details)))
        self.assertTrue(rows, 'NOVALXC_MISHAPS=%s chose no mishap' % only)
        print('\n' + table(rows))
        wrong = {r.mishap: r.wrong() for r in rows if r.wrong()}

        def count(column):
            return sum(r.got[column] != r.expect[column] for r in rows)
        summary.record(
            'mishaps',
            '%d mishaps, %d as expected: disks lost in %d, compute down in '
            '%d, not recovered in %d, leaks in %d' % (
                len(rows), len(rows) - len(wrong), count('disks kept'),
                count('compute up'), count('recovered'), count('leaks')),
            mishaps=len(rows), wrong=len(wrong),
            rows={r.mishap: r.got for r in rows})
        self.assertEqual({}, wrong)
