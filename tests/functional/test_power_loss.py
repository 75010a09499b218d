"""A power loss before write-back, for every file the driver writes durably.

durable.write makes a crash leave the old content or the new; a disk that
lies about its cache, or a crash in a tool that does not use it, can still
leave a file empty or torn. For every file the driver writes through
durable.write while spawning and starting a server, this test empties
and truncates it after a simulated host crash, starts a new driver on the
same state, and checks that startup neither fails nor deletes data; then
the file is put back. At the end a hard reboot brings the server back
with its data, and delete leaves nothing.
"""

import os
import subprocess
from unittest import mock

from novalxcdriver import conf
from novalxcdriver import durable
from novalxcdriver import host
from novalxcdriver import lxc
from novalxcdriver import mount
from novalxcdriver.privsep import imagecache
from tests.functional import base

CONF = conf.CONF


class PowerLossTest(base.FunctionalTestCase):

    # init_host acts on every container of its host and on the whole
    # state: a root and host of this test's own.
    private_root = True
    host = 'novalxc-power-loss-%d' % os.getpid()

    def _crash_host(self, name):
        subprocess.run(['lxc-stop', '-k', '-n', name, '-P',
                        CONF.lxc.lxc_path], check=True)
        mount.unmount_tree(CONF.lxc.state_path)

    def _restart(self):
        """A new driver's init_host, every earlier process taken for dead.

        :returns: the driver, or the exception init_host raised.
        """
        restarted = base.new_driver(self.driver.virtapi)
        try:
            with mock.patch.object(host, 'process_alive',
                                   return_value=False):
                restarted.init_host(self.host)
        except Exception as e:
            return e
        restarted.cleanup_host(self.host)
        return restarted

    def test_torn_durable_files_neither_stop_startup_nor_lose_data(self):
        image_id = self.busybox_image()
        instance = self.make_instance(root_gb=1)
        written = []
        real_write = durable.write

        real_write_config = lxc.write_config

        def recording_write(path, *args, **kwargs):
            written.append(path)
            return real_write(path, *args, **kwargs)

        def recording_write_config(name, lxc_path, text):
            # Written by durable.write in the lxc_admin daemon.
            written.append(os.path.join(lxc_path, name, 'config'))
            return real_write_config(name, lxc_path, text)

        real_publish = imagecache.publish

        def recording_publish(partial, size):
            # The marker, written by durable.write in the storage_admin
            # daemon, lands with the partial's rename.
            written.append(os.path.join(partial, imagecache.MARKER))
            return real_publish(partial, size)

        with mock.patch.object(durable, 'write', recording_write), \
                mock.patch.object(lxc, 'write_config',
                                  recording_write_config), \
                mock.patch.object(imagecache, 'publish', recording_publish):
            self.spawn(instance, image_id)
        self.attach(instance.name, 'sh', '-c',
                    'echo power-loss-data > /root/f && sync')
        disk = self.driver._records.get(instance.uuid).rootfs + '/root.img'
        self._crash_host(instance.name)
        before = os.stat(disk)

        # The image's marker is written in its partial directory, then
        # published with it under the image's id.
        entry = os.path.join(CONF.lxc.state_path, 'images', image_id)
        files = sorted({os.path.join(entry, 'image.json')
                        if '/.partial-' in p else p for p in written})
        # The record, the ID's owner, the config and the image's marker.
        self.assertEqual({'config', 'image.json', 'owner.json',
                          instance.uuid + '.json'},
                         {os.path.basename(p) for p in files})
        failures = []
        for path in files:
            with open(path, 'rb') as f:
                original = f.read()
            st = os.stat(path)
            mode = st.st_mode & 0o7777
            for label, content in (('empty', b''),
                                   ('torn', original[:len(original) // 2])):
                with open(path, 'wb') as f:
                    f.write(content)
                result = self._restart()
                after = os.stat(disk)
                kept = ((after.st_ino, after.st_size) ==
                        (before.st_ino, before.st_size))
                # A damaged image cache entry is set aside whole.
                fate = 'set aside' if not os.path.exists(path) else 'left'
                print('POWER-LOSS %-50s %-5s startup %s, root disk %s, '
                      'file %s' % (
                          os.path.relpath(path, os.path.dirname(
                              CONF.lxc.state_path)), label,
                          'failed: %s' % result
                          if isinstance(result, Exception) else 'ok',
                          'kept' if kept else 'LOST', fate))
                if isinstance(result, Exception):
                    failures.append('%s %s: init_host: %s' % (path, label,
                                                              result))
                if not kept:
                    failures.append('%s %s: root disk changed' % (path,
                                                                  label))
                if fate == 'set aside':
                    # What the next hard reboot does: fetch it again.
                    self.driver._fetched_image(self.ctxt, image_id)
                # Put back, its owner's (nova-compute's, or the daemons'
                # root); the next case starts from a sound state.
                real_write(path, original, mode=mode)
                os.chown(path, st.st_uid, st.st_gid)
        self.assertEqual([], failures)
        # Every file put back; a hard reboot brings the server back.
        self.driver.reboot(self.ctxt, instance, [], 'HARD')
        self.assertEqual('power-loss-data\n',
                         self.attach(instance.name, 'cat', '/root/f').stdout)


class SymlinkedRootPowerLossTest(PowerLossTest):
    """The same, the driver's root reached through a symlink."""

    symlinked_root = True
