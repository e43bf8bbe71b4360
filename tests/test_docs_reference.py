"""
The reference pages under ``docs/reference/`` stay in sync with the code.

Each test reads the source of truth (``txmail.config._KEYS`` and the
``Settings`` defaults, the ``twistd mailserver`` plugin's options, the
``txmail`` argument parser) and checks that the reference page names every
key, option and command, so adding one without documenting it fails here
rather than going unnoticed.

Implementation notes: the pages are plain reStructuredText read as text;
no Sphinx is needed.  ``config.rst`` is split into its ``[table]`` sections
and each section into its ``list-table`` rows (lines starting with
``   * - ``), so a key must be documented in its own table's section, with
its ``Settings`` attribute and its default in the same row.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

from txmail import config
from txmail.cli import build_parser

__all__ = ["config_sections", "default_spellings", "plugin_options"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_REFERENCE = os.path.join(_ROOT, "docs", "reference")
_PLUGIN = os.path.join(_ROOT, "twisted", "plugins", "txmail_plugin.py")


def _read(name: str) -> str:
    with open(os.path.join(_REFERENCE, name), encoding="utf-8") as f:
        return f.read()


def config_sections(text: str) -> dict[str, dict[str, str]]:
    """
    ``{table: {key: row text}}`` from the configuration reference: a section
    starts at a ``[table]`` title, a row at ``   * - ``key````.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    row_key: str | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        title = re.fullmatch(r"``\[\[?([a-z0-9_.]+)\]\]?``", line)
        if title and i + 1 < len(lines) and set(lines[i + 1]) == {"-"}:
            current = sections.setdefault(title.group(1), {})
            row_key = None
            continue
        if current is None:
            continue
        row = re.match(r"   \* - ``([a-z0-9_]+)``\s*$", line)
        if row:
            row_key = row.group(1)
            current[row_key] = ""
        elif line.startswith("   * - ") or not line.startswith("   "):
            row_key = None if not line.startswith("     ") else row_key
        if row_key is not None:
            current[row_key] += line + "\n"
    return sections


def default_spellings(value: object) -> list[str]:
    """The ways the reference may write the default *value* (any one will do)."""
    if value is None:
        return ["none"]
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, str):
        return [f'``"{value}"``']
    if isinstance(value, int):
        return [f"``{value}``"]
    if isinstance(value, float):
        number = str(int(value)) if value.is_integer() else str(value)
        return [f"``{number}``", f"({number} seconds)", f"``{number}`` seconds"]
    if isinstance(value, tuple):
        if not value:
            return ["``[]``", "``{}``"]
        return ["``[" + ", ".join(f"{v}" if isinstance(v, int) else f'"{v}"' for v in value) + "]``"]
    raise AssertionError(f"no spelling for default {value!r}")


def _load_plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_txmail_plugin_for_docs", _PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plugin_options() -> list[str]:
    """Every long option of ``twistd mailserver``, as ``--name``."""
    options = _load_plugin().Options
    names = [f"--{p[0]}" for p in options.optParameters]
    names += [f"--{p[0]}" for p in getattr(options, "optFlags", [])]
    names += ["--" + n[len("opt_") :].replace("_", "-") for n in dir(options) if n.startswith("opt_")]
    generic = {"--help", "--version"}
    return sorted(set(names) - generic)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


#: Tables of config.rst read by their own parsers, not through ``config._KEYS``.
_OWN_PARSERS = ("milter", "rspamd")


class ConfigReferenceTests(SynchronousTestCase):
    """docs/reference/config.rst documents every key of every table."""

    def setUp(self) -> None:
        self.sections = config_sections(_read("config.rst"))

    def test_every_key_documented(self) -> None:
        """Each (table, key) of ``_KEYS`` has a row in its table's section."""
        missing = [
            f"[{table}] {key}" for (table, key) in config._KEYS if key not in self.sections.get(table, {})
        ]
        self.assertEqual(missing, [])

    def test_no_unknown_keys_documented(self) -> None:
        """Every documented key exists (a renamed key leaves no stale row)."""
        documented = {
            (table, key) for table, rows in self.sections.items() if table not in _OWN_PARSERS for key in rows
        }
        self.assertEqual(sorted(documented - set(config._KEYS)), [])

    def test_filter_tables(self) -> None:
        """``[[milter]]`` and ``[rspamd]``, read by their own parsers, document exactly their keys and defaults."""
        from txmail.milter.settings import _KEYS as MILTER_KEYS
        from txmail.milter.settings import MilterSettings
        from txmail.policy.rspamd_settings import RspamdSettings

        rspamd_defaults = {f.name: f.default for f in dataclasses.fields(RspamdSettings)}
        milter_defaults = {f.name: f.default for f in dataclasses.fields(MilterSettings)}
        self.assertEqual(sorted(self.sections["milter"]), sorted(MILTER_KEYS))
        self.assertEqual(sorted(self.sections["rspamd"]), sorted(rspamd_defaults))
        problems = []
        for table, defaults in (("milter", milter_defaults), ("rspamd", rspamd_defaults)):
            for key, row in self.sections[table].items():
                default = defaults.get(key, dataclasses.MISSING)
                if default is dataclasses.MISSING or default == "":
                    continue  # required (address), or derived (name)
                if not any(spelling in row for spelling in default_spellings(default)):
                    problems.append(f"[{table}] {key}: default {default!r} not given")
        self.assertEqual(problems, [])

    def test_rows_name_attribute_and_default(self) -> None:
        """Each row names its ``Settings`` attribute and the attribute's default."""
        defaults = {f.name: f.default for f in dataclasses.fields(config.Settings)}
        problems = []
        for (table, key), attribute in config._KEYS.items():
            row = self.sections.get(table, {}).get(key, "")
            if f"``{attribute}``" not in row:
                problems.append(f"[{table}] {key}: attribute {attribute} not named")
            default = defaults[attribute]
            if default is dataclasses.MISSING:  # a default_factory (hostname)
                continue
            if not any(spelling in row for spelling in default_spellings(default)):
                problems.append(f"[{table}] {key}: default {default!r} not given")
        self.assertEqual(problems, [])

    def test_parser_sees_real_rows(self) -> None:
        """The row parser itself finds rows: a section with known keys is complete."""
        self.assertIn("max_literal", self.sections["imap"])
        self.assertIn("``imap_max_literal``", self.sections["imap"]["max_literal"])
        self.assertNotIn("idle_timeout", self.sections["smtp"])


class OptionsReferenceTests(SynchronousTestCase):
    """docs/reference/options.rst documents every ``twistd mailserver`` option."""

    def test_every_option_documented(self) -> None:
        text = _read("options.rst")
        options = plugin_options()
        self.assertIn("--smarthost", options)  # the option list itself is read
        self.assertEqual([o for o in options if f"``{o}" not in text], [])

    def test_no_unknown_options_documented(self) -> None:
        """Every option in the table exists in the plugin."""
        text = _read("options.rst").split("Useful ``twistd`` options")[0]
        documented = set(re.findall(r"``(--[a-z0-9-]+)", text))
        self.assertEqual(sorted(documented - set(plugin_options())), [])


class CommandsReferenceTests(SynchronousTestCase):
    """docs/reference/commands.rst documents every ``txmail`` command and its options."""

    def test_every_command_documented(self) -> None:
        text = _read("commands.rst")
        missing = []
        for command, sub in _subcommands(build_parser()).items():
            actions = _subcommands(sub) or {"": sub}
            for action, parser in actions.items():
                words = " ".join(w for w in ("txmail", command, action) if w)
                if f"``{words}" not in text:
                    missing.append(words)
                for argument in parser._actions:
                    for flag in argument.option_strings:
                        if flag.startswith("--") and flag != "--help" and flag not in text:
                            missing.append(f"{words} {flag}")
        self.assertEqual(missing, [])
