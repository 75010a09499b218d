# nova-compute runs in native threading mode (nova/cmd/compute.py patches
# with backend='threading'), and so do these tests. Left alone, importing
# nova.tests.unit or nova.tests.functional would monkey-patch the test
# process with eventlet instead (whose green subprocess, for one, raises its
# own TimeoutExpired). Choose threading before anything imports eventlet.
import os

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

from nova import monkey_patch  # noqa: E402

monkey_patch.patch(backend='threading')
