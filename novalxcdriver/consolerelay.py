"""The serial console relay: one TCP port to one container's console.

Run by serialconsole.ensure as its own process (``python -m
novalxcdriver.consolerelay``), in a session of its own, so that it
outlives a nova-compute restart. It is handed a listening socket and a
pid to watch; for each client it runs the console command (lxc-console)
with the client's socket as stdin and stdout, one client at a time, as a
VM's TCP serial port serves one. It exits when the watched process (the
container's LXC monitor) exits: the relay dies with its container.

Standard library only: it starts at every console request after a
container start and should cost little.
"""

import argparse
import os
import selectors
import signal
import socket
import subprocess
import sys

BUSY = b'The console is in use by another client.\r\n'


def serve(listener, watch_fd, argv):
    """Relay clients of listener to argv until watch_fd is readable.

    :param listener: a listening socket.socket.
    :param watch_fd: a pidfd (pidfd_open(2)): readable once its process
        has exited.
    :param argv: list of str, the console command; its stdin and stdout
        are the client's socket, no shell.
    :returns: None, once the watched process is gone.
    """
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, 'client')
    sel.register(watch_fd, selectors.EVENT_READ, 'watched')
    child = child_fd = None
    try:
        while True:
            for key, _mask in sel.select():
                if key.data == 'watched':
                    return
                if key.data == 'child':
                    child.wait()
                    sel.unregister(child_fd)
                    os.close(child_fd)
                    child = child_fd = None
                    continue
                try:
                    conn, _peer = listener.accept()
                except OSError:
                    continue
                with conn:
                    if child is not None:
                        _refuse(conn)
                        continue
                    # A proxy that vanished without a FIN is noticed.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE,
                                    1)
                    conn.setblocking(True)
                    child = subprocess.Popen(argv, stdin=conn, stdout=conn,
                                             close_fds=True)
                child_fd = os.pidfd_open(child.pid)
                sel.register(child_fd, selectors.EVENT_READ, 'child')
    finally:
        if child is not None:
            child.kill()
            child.wait()


def _refuse(conn):
    try:
        conn.sendall(BUSY)
    except OSError:
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(prog='novalxcdriver.consolerelay')
    parser.add_argument('--listen-fd', type=int, required=True,
                        help='an inherited listening socket')
    parser.add_argument('--watch-pid', type=int, required=True,
                        help='exit when this process exits')
    parser.add_argument('command', nargs=argparse.REMAINDER,
                        help='-- then the console command')
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ['--'] else \
        args.command
    if not command:
        parser.error('no console command')
    listener = socket.socket(fileno=args.listen_fd)
    listener.setblocking(False)
    try:
        watch_fd = os.pidfd_open(args.watch_pid)
    except ProcessLookupError:
        return 0
    # serialconsole.stop sends SIGTERM: leave through serve's finally, so
    # the console command goes too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(listener, watch_fd, command)
    return 0


if __name__ == '__main__':
    sys.exit(main())
