"""Tests for novalxcdriver.extra_specs: Nova's API validates lxc: specs.

Nova loads validators from the ``nova.api.extra_spec_validators`` entry
point when nova.api.validation.extra_specs.validators is imported. An
installed novalxcdriver (tox) has the entry point; a source tree on
PYTHONPATH may not, so the tests register the namespace themselves exactly
as Nova's loader does when it is missing.
"""

from importlib import metadata
from unittest import mock

from nova.api.validation.extra_specs import validators
from nova import exception as nova_exc
from oslotest import base

from novalxcdriver import extra_specs
from novalxcdriver import limits


def _installed():
    return any(ep.value == 'novalxcdriver.extra_specs' for ep in
               metadata.entry_points(group='nova.api.extra_spec_validators'))


class RegisterTest(base.BaseTestCase):

    def test_pids_max_validator(self):
        (validator,) = extra_specs.register()
        self.assertEqual(limits.PIDS_MAX_SPEC, validator.name)
        self.assertEqual({'type': int, 'min': 16}, validator.value)
        self.assertIn('pids', validator.description)

    def test_entry_point_loaded_by_nova_when_installed(self):
        if not _installed():
            self.skipTest('novalxcdriver is not installed with its entry '
                          'points (a source tree on PYTHONPATH)')
        self.assertIn(limits.PIDS_MAX_SPEC, validators.VALIDATORS)
        self.assertIn('lxc', validators.NAMESPACES)


class ValidateTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        registry = dict(validators.VALIDATORS)
        namespaces = set(validators.NAMESPACES)
        # As validators.load_validators() does for each plugin.
        for validator in extra_specs.register():
            registry[validator.name] = validator
            namespaces.add(validator.name_regex.split(':', 1)[0])
        for name, value in (('VALIDATORS', registry),
                            ('NAMESPACES', namespaces)):
            patcher = mock.patch.object(validators, name, value)
            patcher.start()
            self.addCleanup(patcher.stop)

    def test_valid_values(self):
        for value in ('16', '64', '100000'):
            validators.validate('lxc:pids_max', value)

    def test_bad_values_refused(self):
        for value in ('abc', '8', '15', '-1', '', '6.5'):
            self.assertRaises(nova_exc.ValidationError, validators.validate,
                              'lxc:pids_max', value)

    def test_unknown_key_of_the_namespace_refused(self):
        self.assertRaises(nova_exc.ValidationError, validators.validate,
                          'lxc:foo', '1')

    def test_other_namespaces_untouched(self):
        validators.validate('quota:cpu_quota', '10000')
        validators.validate('somebody:else', 'x')
