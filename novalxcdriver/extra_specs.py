"""Validators of the driver's own flavor extra specs (namespace ``lxc:``).

Nova's API loads them through the ``nova.api.extra_spec_validators`` entry
point (setup.cfg) and checks each extra spec a flavor is given against them
from microversion 2.86, so a bad value is refused with HTTP 400 when the
flavor is set, not when a server boots. Once the namespace is known, an
``lxc:`` key no validator names is refused too (a typo does not pass
silently). Nova's ``quota:`` keys, which the driver also reads
(limits.py), are Nova's own validators. Format: nova/api/validation/
extra_specs/base.py.
"""

from nova.api.validation.extra_specs import base

from novalxcdriver import limits

EXTRA_SPEC_VALIDATORS = [
    base.ExtraSpecValidator(
        name=limits.PIDS_MAX_SPEC,
        description=(
            'The most tasks (processes and threads) the container may run '
            'at once: the pids.max of its pids cgroup '
            '(Documentation/admin-guide/cgroup-v1/pids.rst), so a fork '
            'bomb stops inside the container. Overrides the [lxc] pids_max '
            'option of the compute host. Only supported by novalxcdriver.'
        ),
        value={
            'type': int,
            'min': limits.PIDS_MAX_MIN,
        },
    ),
]


def register():
    """The validators, as the entry point's loader asks for them."""
    return EXTRA_SPEC_VALIDATORS
