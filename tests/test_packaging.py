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

    def test_migrations_shipped(self) -> None:
        """The PostgreSQL migrations (SQL files, not modules) are package data of txmail.pg."""
        import fnmatch

        config = configparser.ConfigParser()
        config.read(os.path.join(_ROOT, "setup.cfg"))
        patterns = config["options.package_data"]["txmail.pg"].split()
        migrations = os.path.join(_ROOT, "src", "txmail", "pg", "migrations")
        files = [f"migrations/{name}" for name in sorted(os.listdir(migrations)) if name.endswith(".sql")]
        self.assertIn("migrations/0001_directory.sql", files)
        self.assertEqual([f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)], [])
