"""
The conformance suites ship in the package (txmail.testing.store, .queue,
.directory): nothing under src/ imports from tests/, and importing
txmail.testing alone does not pull in the suites or twisted.trial.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")

SUITES = ("txmail.testing.store", "txmail.testing.queue", "txmail.testing.directory")


def imported_modules(source: str) -> list[str]:
    """The absolute module names *source* imports, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return found


def _run(code: str) -> str:
    """Run *code* in a fresh interpreter with this one's import path; return its output."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout


class PackagedSuitesTests(SynchronousTestCase):
    def test_checker_finds_imports(self) -> None:
        """The checker sees plain and from-imports, nested ones too, and ignores relative ones."""
        source = "import os\nfrom tests.store import x\ndef f():\n    import tests\n    from . import y\n"
        self.assertEqual(sorted(imported_modules(source)), ["os", "tests", "tests.store"])

    def test_src_does_not_import_tests(self) -> None:
        """No module under src/ imports the tests package."""
        checked, offenders = [], []
        for dirpath, _, files in os.walk(_SRC):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                checked.append(os.path.relpath(path, _SRC))
                with open(path, encoding="utf-8") as f:
                    modules = imported_modules(f.read())
                if any(m == "tests" or m.startswith("tests.") for m in modules):
                    offenders.append(checked[-1])
        for suite in SUITES:
            self.assertIn(os.path.join(*suite.split(".")) + ".py", checked)
        self.assertEqual(offenders, [])

    def test_suites_importable(self) -> None:
        """Each suite imports from the package and has its mixin, not a TestCase of its own."""
        import importlib

        from twisted.trial.unittest import SynchronousTestCase as Base

        for module_name, mixin in zip(
            SUITES,
            ("MailStoreConformanceMixin", "QueueConformanceMixin", "DirectoryConformanceMixin"),
            strict=True,
        ):
            module = importlib.import_module(module_name)
            self.assertIn(mixin, module.__all__)
            cls = getattr(module, mixin)
            self.assertFalse(issubclass(cls, Base), mixin)
            self.assertTrue([n for n in dir(cls) if n.startswith("test_")], mixin)
            self.assertFalse(
                [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Base)],
                module_name,
            )

    def test_testing_imports_without_trial(self) -> None:
        """Importing txmail.testing imports neither twisted.trial nor the suites."""
        out = _run(
            "import sys, txmail.testing\n"
            f"print(sorted(m for m in ('twisted.trial', *{SUITES!r}) if m in sys.modules))\n"
            "print(txmail.testing.__file__)\n"
        )
        loaded, path = out.splitlines()
        self.assertEqual(loaded, "[]")
        import txmail.testing

        # The package this process tests (src/ or an installed copy), not another one.
        self.assertEqual(path, txmail.testing.__file__)
        self.assertTrue(path.endswith(os.path.join("txmail", "testing", "__init__.py")), path)
