"""novalxc-aio: a single-node OpenStack cloud whose compute runs LXC.

Run through the ``aio/novalxc-aio`` command (see aio/README.md). Only the
Python standard library is used here, so the command runs with Debian's
python3 before the cloud's virtualenv exists.
"""
