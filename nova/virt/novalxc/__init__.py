"""Import shim: nova-compute loads ``nova.virt.<compute_driver>``.

With ``compute_driver = novalxc.LXCDriver`` nova imports this module and
looks up ``LXCDriver`` in it; the driver itself lives in novalxcdriver.
"""

from novalxcdriver.driver import LXCDriver

__all__ = ['LXCDriver']
