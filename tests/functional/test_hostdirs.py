"""novalxc-prepare-host for real: nova-compute's bookkeeping as another user.

As root, on a private tree: the directories are made and given for real
(lchown), then a child process running as ``nobody`` does what
nova-compute's bookkeeping does (an ID reserved under its lock, an
instance record written durably, a container's config read). Without
the preparation, the same child fails: the directories are root's.
"""

import os
import pwd
import traceback
import uuid

from unittest import mock

import fixtures
from oslotest import base

from novalxcdriver import hostdirs
from novalxcdriver import ids
from novalxcdriver import privsep
from novalxcdriver.privsep import lxctools
from novalxcdriver import record


def _as_user(uid, gid, fn):
    """Run fn() in a child process as uid:gid; (exit status, error text)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            fn()
            status = 0
        except BaseException:
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, 'rb') as f:
        error = f.read().decode()
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), error


class PrepareHostTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('needs root')
        self.nobody = pwd.getpwnam('nobody')
        # The tree must be searchable by nobody, as /var/lib is: not
        # below the test runner's private TMPDIR.
        tmp = self.useFixture(fixtures.TempDir(rootdir='/var/tmp')).path
        os.chmod(tmp, 0o755)
        self.lxc = os.path.join(tmp, 'lxc')
        self.state = os.path.join(tmp, 'state')
        self.ids_path = os.path.join(self.state, 'ids')

    def bookkeeping(self):
        """What nova-compute writes: an ID reservation, then a record."""
        allocator = ids.IdAllocator(self.state, ids_path=self.ids_path,
                                    host='compute-x')
        instance_uuid = str(uuid.uuid4())
        cid = allocator.allocate(instance_uuid, 'instance-1')
        record.RecordStore(self.state).write(record.InstanceRecord(
            instance_uuid=instance_uuid, name='instance-1', host='compute-x',
            cid=cid, idmap=allocator.idmap(cid), image_id='',
            container_dir=os.path.join(self.lxc, 'instance-1'),
            rootfs=os.path.join(self.state, 'rootfs', str(cid)),
            state=record.READY))

    def run_as_nobody(self):
        return _as_user(self.nobody.pw_uid, self.nobody.pw_gid,
                        self.bookkeeping)

    def test_bookkeeping_works_as_the_user_given_it(self):
        # A host where nova-compute ran as root first.
        self.bookkeeping()
        logged = []
        hostdirs.prepare(self.nobody.pw_uid, self.nobody.pw_gid, self.lxc,
                         self.state, self.ids_path, log=logged.append)
        status, error = self.run_as_nobody()
        self.assertEqual(0, status, error)
        nobody = (self.nobody.pw_uid, self.nobody.pw_gid)
        for d in hostdirs.layout(self.lxc, self.state, self.ids_path):
            if d.owner != hostdirs.USER:
                continue
            paths = [d.path]
            for top, dirs, files in os.walk(d.path):
                paths += [os.path.join(top, n) for n in dirs + files]
            owners = {(os.lstat(p).st_uid, os.lstat(p).st_gid)
                      for p in paths}
            self.assertEqual({nobody}, owners, d.path)
        # Root's stay root's (lxc_path readable by the group); the
        # records of both users are there.
        for path, owner in ((self.state, (0, 0)),
                            (self.lxc, (0, self.nobody.pw_gid))):
            self.assertEqual(owner, (os.lstat(path).st_uid,
                                     os.lstat(path).st_gid))
        self.assertEqual(2, len(record.RecordStore(self.state).all()))
        self.assertTrue(logged)

    def test_bookkeeping_fails_as_another_user_without_it(self):
        # The control: root's directories refuse nobody.
        self.bookkeeping()
        status, error = self.run_as_nobody()
        self.assertEqual(1, status)
        self.assertIn('PermissionError', error)

    def test_links_in_the_bookkeeping_are_given_not_followed(self):
        target = os.path.join(self.state, 'not-bookkeeping')
        os.makedirs(os.path.join(self.state, 'locks'))
        with open(target, 'w'):
            pass
        os.symlink(target, os.path.join(self.state, 'locks', 'link'))
        hostdirs.prepare(self.nobody.pw_uid, self.nobody.pw_gid, self.lxc,
                         self.state, self.ids_path, log=lambda line: None)
        self.assertEqual(0, os.lstat(target).st_uid)
        self.assertEqual(self.nobody.pw_uid, os.lstat(
            os.path.join(self.state, 'locks', 'link')).st_uid)

    def make_container(self):
        """lxc_admin's make_dir, in this process; a config as it writes."""
        context = privsep.lxc_admin
        was = context.client_mode
        context.set_client_mode(False)
        try:
            with mock.patch.object(privsep, '_added_roots',
                                   new={self.lxc}):
                lxctools.make_dir('instance-1', self.lxc)
        finally:
            context.set_client_mode(was)
        config = os.path.join(self.lxc, 'instance-1', 'config')
        with open(config, 'w') as f:
            f.write('lxc.uts.name = instance-1\n')
        os.chmod(config, 0o644)
        return config

    def read_as_nobody(self, config):
        def read():
            os.listdir(os.path.dirname(config))
            with open(config) as f:
                f.read()
        return _as_user(self.nobody.pw_uid, self.nobody.pw_gid, read)

    def test_the_user_s_group_reads_containers_configs(self):
        hostdirs.prepare(self.nobody.pw_uid, self.nobody.pw_gid, self.lxc,
                         self.state, self.ids_path, log=lambda line: None)
        config = self.make_container()
        status, error = self.read_as_nobody(config)
        self.assertEqual(0, status, error)
        st = os.stat(os.path.dirname(config))
        self.assertEqual((0, self.nobody.pw_gid, 0o2750),
                         (st.st_uid, st.st_gid, st.st_mode & 0o7777))

    def test_containers_stay_root_s_alone_without_it(self):
        os.makedirs(self.lxc, mode=0o711)
        config = self.make_container()
        status, error = self.read_as_nobody(config)
        self.assertEqual(1, status)
        self.assertIn('PermissionError', error)
