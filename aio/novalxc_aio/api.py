"""A minimal OpenStack REST client (Keystone v3 password auth + JSON).

The standard library only: ``up`` registers the cloud's services before
anything else is installed, and ``demo`` measures state changes without an
openstack CLI start-up (about two seconds each) in every poll.
"""

import json
import os
import time
import urllib.error
import urllib.request

from novalxc_aio import layout

COMPUTE_VERSION = 'compute latest'


class ApiError(Exception):
    def __init__(self, method, url, status, body):
        super().__init__('%s %s -> %s: %s' % (method, url, status,
                                              body[:1000]))
        self.status = status
        self.body = body


class Session:
    """A token of one user in one project, and the catalog it came with."""

    def __init__(self, username, password, project,
                 auth_url=layout.KEYSTONE_URL, domain='Default'):
        self.auth_url = auth_url
        body = {'auth': {
            'identity': {'methods': ['password'], 'password': {'user': {
                'name': username, 'password': password,
                'domain': {'name': domain}}}},
            'scope': {'project': {'name': project,
                                  'domain': {'name': domain}}}}}
        status, headers, data = self._raw(
            'POST', auth_url + '/auth/tokens', body, auth=False)
        self.token = headers['X-Subject-Token']
        self.project_id = data['token']['project']['id']
        self.user_id = data['token']['user']['id']
        self.catalog = data['token'].get('catalog', [])

    def endpoint(self, service_type, interface='public'):
        if service_type == 'identity':
            return self.auth_url
        for service in self.catalog:
            if service['type'] == service_type:
                for ep in service['endpoints']:
                    if ep['interface'] == interface:
                        return ep['url'].rstrip('/')
        raise LookupError('no %s endpoint of type %s in the catalog' % (
            interface, service_type))

    def _raw(self, method, url, body=None, auth=True, headers=None,
             data=None, timeout=120):
        hdrs = {'Accept': 'application/json'}
        if auth:
            hdrs['X-Auth-Token'] = self.token
        if body is not None:
            data = json.dumps(body).encode()
            hdrs['Content-Type'] = 'application/json'
        hdrs.update(headers or {})
        req = urllib.request.Request(url, data=data, method=method,
                                     headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read().decode() or 'null'
                status, resp_headers = resp.status, resp.headers
        except urllib.error.HTTPError as e:
            raise ApiError(method, url, e.code, e.read().decode(
                errors='replace'))
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(method, url, 'no answer',
                           '%s (is the cloud up? novalxc-aio status)' % e)
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        return status, resp_headers, payload

    def call(self, method, service_type, path, body=None, **kwargs):
        """JSON request to a service of the catalog; returns the payload."""
        headers = kwargs.pop('headers', {})
        if service_type == 'compute':
            headers['OpenStack-API-Version'] = COMPUTE_VERSION
        url = self.endpoint(service_type) + path
        return self._raw(method, url, body, headers=headers, **kwargs)[2]

    def put_file(self, service_type, path, filename):
        """PUT a file's bytes (streamed, with its length) to path."""
        size = os.path.getsize(filename)
        with open(filename, 'rb') as f:
            return self._raw(
                'PUT', self.endpoint(service_type) + path, data=f,
                headers={'Content-Type': 'application/octet-stream',
                         'Content-Length': str(size)}, timeout=1800)[2]

    def get(self, service_type, path):
        return self.call('GET', service_type, path)

    def post(self, service_type, path, body):
        return self.call('POST', service_type, path, body)

    def exists(self, service_type, path):
        try:
            self.get(service_type, path)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise


def wait_until(what, predicate, timeout, interval=0.25):
    """Poll predicate() until true; return (value, seconds waited).

    :raises TimeoutError: still false after timeout seconds.
    """
    start = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError('%s: not reached after %ds' % (what, timeout))
        time.sleep(interval)
