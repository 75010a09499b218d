"""bench.firstboot: the Glance stand-in and the first-boot rows."""

import os
import tempfile
import types

from oslotest import base
import requests

from bench import firstboot
from bench import report


class ServerTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        fd, self.path = tempfile.mkstemp()
        self.addCleanup(os.unlink, self.path)
        self.data = os.urandom(300 * 1024 + 7)
        with os.fdopen(fd, 'wb') as f:
            f.write(self.data)
        image = types.SimpleNamespace(image_id='img', tarball=self.path)
        self.server = self.useFixture(_Serving([image])).server

    def test_checked_download_gives_the_file(self):
        got = b''.join(firstboot.chunks(self.server, 'img',
                                        firstboot.sha512(self.path)))
        self.assertEqual(self.data, got)

    def test_wrong_hash_raises_at_the_end(self):
        it = firstboot.chunks(self.server, 'img', '0' * 128)
        self.assertRaises(IOError, b''.join, it)

    def test_unknown_image_is_404(self):
        self.assertRaises(requests.HTTPError, firstboot.chunks, self.server,
                          'nope', '0' * 128)


class _Serving(base.fixtures.Fixture):

    def __init__(self, images):
        super().__init__()
        self.images = images

    def _setUp(self):
        cm = firstboot.serving(self.images)
        self.server = cm.__enter__()
        self.addCleanup(cm.__exit__, None, None, None)


class RowsTest(base.BaseTestCase):

    def test_ratio_and_met_per_image_and_rate(self):
        results = {'images': {'debian': {'label': 'Debian 12'}},
                   'firstboot': {'debian': {
                       'loopback': {'download': [0.5, 0.4, 0.6],
                                    'stream': [2.0, 2.2, 1.9],
                                    'file': [2.5, 2.6, 2.7]},
                       '1000 Mbit/s': {'download': [1.0, 1.0, 1.1],
                                       'stream': [1.1, 1.2, 1.15],
                                       'file': [3.0, 3.1, 3.2]}}}}
        rows = report.firstboot_rows(results)
        self.assertEqual(2, len(rows))
        loop, link = rows
        self.assertEqual(11, loop['item'])
        self.assertIn('Debian 12, Glance stand-in at loopback', loop['metric'])
        self.assertIn('**4.00x**', loop['measured'])
        self.assertEqual('no', loop['met'])
        self.assertIn('**1.15x**', link['measured'])
        self.assertIn('(3.10x)', link['measured'])
        self.assertEqual('yes', link['met'])

    def test_not_run(self):
        rows = report.firstboot_rows({'errors': {}})
        self.assertEqual('not run', rows[0]['measured'])
