"""The unit tests' base class."""

from unittest import mock

import fixtures
from oslotest import base


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
