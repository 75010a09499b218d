"""init_host after a crash: nothing of an instance deleted, IDs kept safe."""

import os
import shutil
import subprocess
import sys

from nova.compute import power_state

from novalxcdriver import conf
from novalxcdriver import exception
from novalxcdriver import mount
from novalxcdriver import rootfs
from tests.functional import base

CONF = conf.CONF


class ReconcileTest(base.FunctionalTestCase):

    # Tests that move lxc_path must not pull it from under other tests.
    private_root = True

    # init_host acts on every container of its host: a host name of this
    # process's own keeps it off containers of concurrent test processes.
    host = 'novalxc-reconcile-%d' % os.getpid()

    def _allocate_in_dead_process(self, instance):
        # A driver process that reserved an ID and died mid-spawn.
        code = ('import sys; from novalxcdriver import ids; '
                'print(ids.IdAllocator(sys.argv[1]).allocate(sys.argv[2], '
                'sys.argv[3]))')
        out = subprocess.run(
            [sys.executable, '-c', code, CONF.lxc.state_path, instance.uuid,
             instance.name], check=True, capture_output=True, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))))
        return int(out.stdout.split()[-1])

    def test_interrupted_spawn_kept_until_deleted(self):
        image_id = self.busybox_image()
        survivor = self.make_instance()
        self.spawn(survivor, image_id)
        crashed = self.make_instance()
        cid = self._allocate_in_dead_process(crashed)
        # The crash came after the root was mounted, before the config.
        image = self.driver._images.lookup(image_id)
        root = rootfs.Rootfs(CONF.lxc.state_path, cid)
        root.create(image.rootfs, self.driver._ids.idmap(cid))
        self.assertTrue(root.is_mounted())

        restarted = base.new_driver(None)
        restarted.init_host(self.host)

        # Its owner is dead, as after any restart: that proves nothing.
        self.assertEqual(cid, restarted._ids.find(crashed.uuid))
        self.assertTrue(root.is_mounted())
        self.assertEqual('RUNNING', self.lxc_state(survivor.name))
        self.assertIn(survivor.name, restarted.list_instances())
        # Nova's delete of the instance removes it all.
        restarted.destroy(self.ctxt, crashed, [])
        self.assertEqual([], self.artifacts_of(crashed, cid))
        self.assertIsNone(restarted._ids.find(crashed.uuid))

    def test_id_of_leftover_rootfs_is_not_reused(self):
        image_id = self.busybox_image()
        first = self.make_instance()
        self.spawn(first, image_id, power_on=False)
        cid = self.driver._ids.find(first.uuid)
        # A leftover root whose reservation is gone (e.g. removed by hand).
        self.driver._ids.release(cid)
        second = self.make_instance()
        self.spawn(second, image_id, power_on=False)
        self.assertNotEqual(cid, self.driver._ids.find(second.uuid))
        self.assertTrue(os.path.isdir(
            os.path.join(CONF.lxc.state_path, 'rootfs', str(cid))))

    def test_rootfs_remounted_after_host_reboot(self):
        image_id = self.busybox_image()
        instance = self.make_instance()
        self.spawn(instance, image_id)
        cid = self.driver._ids.find(instance.uuid)
        # A host reboot: every container stopped, every mount gone.
        subprocess.run(['lxc-stop', '-k', '-n', instance.name, '-P',
                        CONF.lxc.lxc_path], check=True)
        root = rootfs.Rootfs(CONF.lxc.state_path, cid)
        mount.unmount_tree(root.path)
        self.assertFalse(root.is_mounted())

        restarted = base.new_driver(None)
        restarted.init_host(self.host)
        self.assertTrue(root.is_mounted())
        restarted.resume_state_on_host_boot(self.ctxt, instance, [], None)
        self.assertEqual('RUNNING', self.lxc_state(instance.name))

    def test_destroy_undoes_mounts_stacked_on_a_disk(self):
        # Two processes remounting one root at once (before the remount
        # lock) stacked a second mount on a disk; umount(2) takes off only
        # the top one, and the destroy stopped at "still mounted".
        image_id = self.busybox_image()
        instance = self.make_instance(ephemeral_gb=1)
        self.spawn(instance, image_id)
        root = rootfs.Rootfs(CONF.lxc.state_path,
                             self.driver._ids.find(instance.uuid))
        point = root.ephemeral_disk.mountpoint
        subprocess.run(['mount', '-t', 'tmpfs', 'stacked', point],
                       check=True)
        # mountinfo's name for it (resolved, if the root is a symlink).
        self.assertEqual(2, mount.mounts().count(os.path.realpath(point)))

        self.driver.destroy(self.ctxt, instance, [])
        self.assertEqual([], mount.below(root.path))
        self.assertFalse(os.path.exists(root.path))

    def test_not_started_twice_while_it_runs_from_another_lxc_path(self):
        image_id = self.busybox_image()
        instance = self.make_instance()
        self.spawn(instance, image_id)
        pid = self.lxc_pid(instance.name)
        moved = CONF.lxc.lxc_path + '.moved'
        os.rename(CONF.lxc.lxc_path, moved)
        self.addCleanup(os.rename, moved, CONF.lxc.lxc_path)
        # Its config gone with lxc_path: its cgroup shows it running.
        self.assertEqual(power_state.RUNNING,
                         self.driver.get_info(instance).state)
        # Made again at the same path, LXC finds it through its command
        # socket (named after lxcpath and name): started once, not twice.
        self.driver.power_on(self.ctxt, instance, [])
        self.assertEqual(pid, self.lxc_pid(instance.name))
        shutil.rmtree(CONF.lxc.lxc_path)
        # lxc_path set to another directory: LXC there cannot see it.
        CONF.set_override('lxc_path', CONF.lxc.lxc_path + '.other',
                          group='lxc')
        other = base.new_driver(None)
        other.init_host(self.host)
        self.addCleanup(shutil.rmtree, CONF.lxc.lxc_path)
        e = self.assertRaises(exception.ContainerRunningElsewhere,
                              other.power_on, self.ctxt, instance, [])
        self.assertIn(str(pid), str(e))
        # Still the one init, untouched.
        self.assertTrue(os.path.exists('/proc/%d' % pid))


class SymlinkedRootReconcileTest(ReconcileTest):
    """The same, the driver's root reached through a symlink.

    A restart finds mounts by the paths the driver builds, which lead
    through the link; mountinfo names the resolved ones.
    """

    symlinked_root = True
