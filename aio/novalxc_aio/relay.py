"""A TCP relay from loopback ports of a network namespace to the host's.

Run by the aio for compute 2 (``python3 relay.py NETNS PORT...``):
listens on 127.0.0.1:PORT inside the namespace /run/netns/NETNS and
forwards each connection to 127.0.0.1:PORT of the namespace it was
started in. So compute 2's services use the same loopback URLs as
compute 1's (the Keystone catalog's included) while every API, RabbitMQ
and OVN's Southbound database keep listening on loopback only. Standard
library only (Debian's python3 3.11 has no os.setns: ctypes).
"""

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _connection(conn, port):
    try:
        upstream = socket.create_connection(('127.0.0.1', port), timeout=10)
    except OSError:
        conn.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
    back.start()
    _pump(conn, upstream)
    back.join()
    conn.close()
    upstream.close()


def _serve(listener, port):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_connection, args=(conn, port),
                         daemon=True).start()


def main(argv):
    netns, ports = argv[0], [int(p) for p in argv[1:]]
    home = os.open('/proc/self/ns/net', os.O_RDONLY)
    target = os.open(os.path.join('/run/netns', netns), os.O_RDONLY)
    # Listening sockets belong to the namespace they are made in; the
    # threads (made after returning home) connect in the host's.
    _setns(target)
    listeners = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(('127.0.0.1', port))
        sock.listen(128)
        listeners.append((sock, port))
    _setns(home)
    os.close(home)
    os.close(target)
    print('relaying 127.0.0.1:%s of %s to the host' % (
        ','.join(map(str, ports)), netns), flush=True)
    threads = [threading.Thread(target=_serve, args=lp, daemon=True)
               for lp in listeners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == '__main__':
    main(sys.argv[1:])
