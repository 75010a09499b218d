"""The unit tests' base class."""

import os
from unittest import mock

import fixtures
from oslotest import base

from novalxcdriver import durable
from novalxcdriver import ids
from novalxcdriver.privsep import lxcconf


class TestCase(base.BaseTestCase):
    """oslotest's base, with patches that are undone at cleanup."""

    def patch(self, target, new=mock.DEFAULT, **kwargs):
        """mock.patch(target, new, **kwargs) for this test; the mock."""
        return self.useFixture(fixtures.MockPatch(target, new,
                                                  **kwargs)).mock

    def patch_object(self, target, attribute, new=mock.DEFAULT, **kwargs):
        """mock.patch.object(...) for this test; the mock."""
        return self.useFixture(fixtures.MockPatchObject(
            target, attribute, new, **kwargs)).mock


def checked_config_writer(roots, subuid_path, subgid_path):
    """A stand-in for lxc.write_config: the daemon's policy, then the write.

    So every config a unit test makes the driver write must pass
    privsep.lxcconf.check, as it must in the lxc_admin daemon.
    """
    def write_config(name, lxc_path, text):
        container_dir = os.path.join(lxc_path, name)
        subuids, subgids = ids.read_subordinate_ranges(subuid_path,
                                                       subgid_path)
        lxcconf.check(text, container_dir, roots, [subuids], [subgids],
                      lxcconf.LXCFS_MOUNT)
        durable.write(os.path.join(container_dir, 'config'), text)
    return write_config
