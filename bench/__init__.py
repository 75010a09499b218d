"""Benchmarks of novalxcdriver against raw LXC on the same host.

``python -m bench.run`` (or ``tox -e bench``) measures spawn latency, image
size independence, boot to service, throughput, density, destroy, the
snapshot of a running server and unshelve, cold migration between two
drivers of the host (against ``rsync -S`` of the same files), the Nova
API of the all-in-one cloud and, when asked for, the host's figures for
many idle servers kept running through it, then writes every sample as
JSON, a markdown table of figures against targets, and PNG plots.
"""

# nova-compute runs in native threading mode (nova/cmd/compute.py), so the
# benchmark does too: left alone, importing nova.objects would monkey-patch
# this process with eventlet, and the threaded throughput runs would then
# measure green threads instead of what nova-compute does.
import os

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

from nova import monkey_patch  # noqa: E402

monkey_patch.patch(backend='threading')
