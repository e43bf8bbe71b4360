"""setup.cfg ships every package of src/txmail (a missing one only shows in a non-editable install)."""

from __future__ import annotations

import configparser
import os

from twisted.trial.unittest import SynchronousTestCase

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackagesTests(SynchronousTestCase):
    def test_every_package_listed(self) -> None:
        config = configparser.ConfigParser()
        config.read(os.path.join(_ROOT, "setup.cfg"))
        listed = set(config["options"]["packages"].split())
        src = os.path.join(_ROOT, "src")
        found = {
            os.path.relpath(dirpath, src).replace(os.sep, ".")
            for dirpath, _, files in os.walk(os.path.join(src, "txmail"))
            if "__init__.py" in files
        }
        self.assertIn("txmail.smtp", found)
        self.assertEqual(sorted(found - listed), [])
