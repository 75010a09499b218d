"""A server's serial console through the Nova API and nova-serialproxy.

``openstack console url show --serial SERVER`` asks the API for a
websocket URL (POST /servers/{id}/remote-consoles, protocol serial);
nova-serialproxy checks its token and relays the websocket to the TCP
port the driver's relay serves on the compute host. The websocket client
is websocket-client (Debian's python3-websocket, which up installs: this
tool runs on the system's Python), with the ``binary`` subprotocol
nova-serialproxy (websockify) speaks.
"""

import time


def serial_url(session, server_id):
    """The websocket URL of the server's serial console (str)."""
    return session.post(
        'compute', '/servers/%s/remote-consoles' % server_id,
        {'remote_console': {'protocol': 'serial', 'type': 'serial'}})[
            'remote_console']['url']


def exchange(url, send, expect, timeout=30, knock=None):
    """Send bytes to the console and read until expect shows up.

    :param send: bytes written once connected.
    :param expect: bytes awaited in what the console writes back.
    :param knock: bytes sent every 2 s until something arrives (a getty
        prompts only when a line is entered), or None.
    :returns: (everything read, seconds from connect to expect).
    :raises TimeoutError: expect did not show up within timeout seconds.
    :raises OSError, websocket.WebSocketException: no connection.
    """
    # Imported here: the tool's other commands run before up installs it.
    import websocket
    ws = websocket.create_connection(url, subprotocols=['binary'],
                                     timeout=2)
    start = time.monotonic()
    seen = b''
    try:
        ws.send_binary(send)
        last_knock = start
        while expect not in seen:
            now = time.monotonic()
            if now - start > timeout:
                raise TimeoutError('%r not on the serial console within '
                                   '%ds; it wrote %r' % (expect, timeout,
                                                         seen[-300:]))
            if knock and not seen and now - last_knock > 2:
                ws.send_binary(knock)
                last_knock = now
            try:
                data = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if not data:
                raise TimeoutError('the serial console closed; it wrote %r'
                                   % seen[-300:])
            seen += data if isinstance(data, bytes) else data.encode()
    finally:
        ws.close()
    return seen, time.monotonic() - start
