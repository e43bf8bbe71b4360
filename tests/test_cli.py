"""Tests for the txmail admin command (txmail.cli.main) with temporary data directories."""

from __future__ import annotations

import io
import json
import os
import sys
import types
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from txmail import cli
from txmail.auth.passwords import ScramCredentials, verify_password
from txmail.directory import FileDirectory


class FakeMaildirProvider:
    """Stands in for txmail.store.maildir.MaildirProvider and records calls."""

    calls: list[tuple[str, str]] = []
    fail = False

    def __init__(self, path: str, **options: Any) -> None:
        self.path = path

    def store_for(self, user: str) -> defer.Deferred[object]:
        if self.fail:
            return defer.fail(OSError("disk full"))
        self.calls.append((self.path, user))
        return defer.succeed(object())


class CLITestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.prompts: list[str] = []
        self.answers: list[str] = []
        self.patch(cli.getpass, "getpass", self.fake_getpass)
        FakeMaildirProvider.calls = []
        FakeMaildirProvider.fail = False
        fake = types.ModuleType("txmail.store.maildir")
        fake.MaildirProvider = FakeMaildirProvider  # type: ignore[attr-defined]
        self.set_module("txmail.store.maildir", fake)

    def set_module(self, name: str, module: types.ModuleType | None) -> None:
        """Put *module* (or nothing) in sys.modules as *name* until the test ends."""
        missing = object()
        old = sys.modules.get(name, missing)

        def restore() -> None:
            if old is missing:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old  # type: ignore[assignment]

        self.addCleanup(restore)
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module

    def fake_getpass(self, prompt: str = "Password: ") -> str:
        self.prompts.append(prompt)
        return self.answers.pop(0)

    def txmail(self, *argv: str, stdin: str = "") -> int:
        self.patch(sys, "stdin", io.StringIO(stdin))
        return cli.main(list(argv))

    def directory(self, data_dir: str | None = None) -> FileDirectory:
        return FileDirectory(os.path.join(data_dir or self.data_dir, "users.json"), local_domains=[])

    def users_json(self, data_dir: str | None = None) -> str:
        with open(os.path.join(data_dir or self.data_dir, "users.json"), encoding="utf-8") as f:
            return f.read()


class UserCommandTests(CLITestCase):
    def test_add_with_stdin(self) -> None:
        """user add --password-stdin stores a verifier (never the password) and creates the mailbox."""
        code = self.txmail(
            "user",
            "add",
            "--data-dir",
            self.data_dir,
            "Alice@Example.test",
            "--password-stdin",
            stdin="pa ss word\n",
        )
        self.assertEqual(code, 0, self.stderr.getvalue())
        self.assertEqual(self.stdout.getvalue(), "added user alice@example.test\n")
        text = self.users_json()
        self.assertNotIn("pa ss word", text)
        creds = ScramCredentials.from_dict(json.loads(text)["users"]["alice@example.test"]["scram"])
        self.assertTrue(verify_password(creds, "pa ss word"))
        self.assertEqual(
            FakeMaildirProvider.calls, [(os.path.join(self.data_dir, "mail"), "alice@example.test")]
        )

    def test_add_with_prompt(self) -> None:
        """Without --password-stdin the password is asked twice with getpass."""
        self.answers = ["wonderland", "wonderland"]
        self.assertEqual(self.txmail("user", "add", "--data-dir", self.data_dir, "alice@example.test"), 0)
        self.assertEqual(len(self.prompts), 2)
        creds = self.successResultOf(self.directory().get_credentials("alice@example.test"))
        self.assertTrue(verify_password(creds, "wonderland"))

    def test_prompt_mismatch(self) -> None:
        """Two different passwords at the prompt fail with exit 1 and add nobody."""
        self.answers = ["one", "two"]
        self.assertEqual(self.txmail("user", "add", "--data-dir", self.data_dir, "alice@example.test"), 1)
        self.assertIn("do not match", self.stderr.getvalue())
        self.assertEqual(self.directory().list_users(), [])

    def test_add_errors(self) -> None:
        """Existing users, bad addresses, empty and prohibited passwords exit 1 with a clear message."""
        self.txmail(
            "user", "add", "--data-dir", self.data_dir, "alice@example.test", "--password-stdin", stdin="pw\n"
        )
        cases = [
            ("alice@example.test", "pw\n", "exists"),
            ("not an address", "pw\n", "invalid address"),
            ("bob@example.test", "\n", "empty password"),
            ("bob@example.test", "bell\x07\n", "invalid password"),
        ]
        for address, stdin, message in cases:
            self.stderr.truncate(0)
            self.stderr.seek(0)
            code = self.txmail(
                "user", "add", "--data-dir", self.data_dir, address, "--password-stdin", stdin=stdin
            )
            self.assertEqual(code, 1, address)
            self.assertIn(message, self.stderr.getvalue())
            self.assertTrue(self.stderr.getvalue().startswith("txmail: error: "))
            self.assertNotIn("Traceback", self.stderr.getvalue())
        self.assertEqual(self.directory().list_users(), ["alice@example.test"])

    def test_storage_failure_reported(self) -> None:
        """If the mailbox cannot be created the command says so and exits 1 (the user exists)."""
        FakeMaildirProvider.fail = True
        code = self.txmail(
            "user", "add", "--data-dir", self.data_dir, "alice@example.test", "--password-stdin", stdin="pw\n"
        )
        self.assertEqual(code, 1)
        self.assertIn(
            "user alice@example.test added, but creating its mail storage failed: disk full",
            self.stderr.getvalue(),
        )
        self.assertEqual(self.directory().list_users(), ["alice@example.test"])

    def test_list_passwd_del(self) -> None:
        """user list prints users; passwd changes the password; del removes the user."""
        for name in ("bob@example.test", "alice@example.test"):
            self.txmail("user", "add", "--data-dir", self.data_dir, name, "--password-stdin", stdin="old\n")
        self.stdout.seek(0)
        self.stdout.truncate(0)
        self.stdout.seek(0)
        self.assertEqual(self.txmail("user", "list", "--data-dir", self.data_dir), 0)
        self.assertEqual(self.stdout.getvalue(), "alice@example.test\nbob@example.test\n")
        self.assertEqual(
            self.txmail(
                "user",
                "passwd",
                "--data-dir",
                self.data_dir,
                "bob@example.test",
                "--password-stdin",
                stdin="new\n",
            ),
            0,
        )
        creds = self.successResultOf(self.directory().get_credentials("bob@example.test"))
        self.assertTrue(verify_password(creds, "new"))
        self.assertEqual(self.txmail("user", "del", "--data-dir", self.data_dir, "bob@example.test"), 0)
        self.assertEqual(self.directory().list_users(), ["alice@example.test"])

    def test_unknown_user(self) -> None:
        """passwd and del of an unknown user exit 1; passwd does not prompt first."""
        self.assertEqual(self.txmail("user", "passwd", "--data-dir", self.data_dir, "ghost@example.test"), 1)
        self.assertEqual(self.prompts, [])
        self.assertIn("no user ghost@example.test", self.stderr.getvalue())
        self.assertEqual(self.txmail("user", "del", "--data-dir", self.data_dir, "ghost@example.test"), 1)

    def test_default_data_dir(self) -> None:
        """Without --data-dir the directory is ./txmail-data, like the server's default."""
        cwd = os.getcwd()
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        os.chdir(work)
        self.addCleanup(os.chdir, cwd)
        self.assertEqual(
            self.txmail("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n"), 0
        )
        self.assertTrue(os.path.isfile(os.path.join(work, "txmail-data", "users.json")))

    def test_usage_error(self) -> None:
        """A missing subcommand or argument is a usage error with exit status 2."""
        self.assertEqual(self.txmail(), 2)
        self.assertEqual(self.txmail("user", "add"), 2)
        self.assertEqual(self.txmail("alias", "add", "only-alias@example.test"), 2)


class ConfigTests(CLITestCase):
    def write_config(self, text: str) -> str:
        path = os.path.abspath(self.mktemp()) + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_config_gives_data_dir_and_domains(self) -> None:
        """With --config the data directory and primary domain come from the file."""
        data_dir = os.path.abspath(self.mktemp())
        config = self.write_config(
            f'[server]\ndata_dir = "{data_dir}"\ndomains = ["Example.org", "other.org"]\n'
        )
        self.assertEqual(
            self.txmail("user", "add", "--config", config, "carol", "--password-stdin", stdin="pw\n"), 0
        )
        self.assertIn('"carol@example.org"', self.users_json(data_dir))
        self.assertEqual(FakeMaildirProvider.calls, [(os.path.join(data_dir, "mail"), "carol@example.org")])

    def test_user_add_uses_the_configured_backend(self) -> None:
        """user add creates the storage through the provider [store] backend names, not Maildir directly."""
        import txmail.service

        data_dir = os.path.abspath(self.mktemp())
        config = self.write_config(
            f'[server]\ndata_dir = "{data_dir}"\ndomains = ["example.org"]\n[store]\nbackend = "memory"\n'
        )
        made: list[Any] = []
        real = txmail.service.make_store_provider

        def recording(settings: Any, **kwargs: Any) -> Any:
            provider = real(settings, **kwargs)
            made.append((settings.store_backend, provider))
            return provider

        self.patch(txmail.service, "make_store_provider", recording)
        self.assertEqual(
            self.txmail("user", "add", "--config", config, "carol", "--password-stdin", stdin="pw\n"), 0
        )
        self.assertEqual([backend for backend, _ in made], ["memory"])
        self.assertEqual(FakeMaildirProvider.calls, [])
        self.assertFalse(os.path.exists(os.path.join(data_dir, "mail")))
        self.assertEqual(self.stdout.getvalue(), "added user carol@example.org\n")
        self.assertEqual(self.txmail("user", "del", "--config", config, "carol"), 0)
        self.assertTrue(
            self.stdout.getvalue().endswith(
                "deleted user carol@example.org (their mail stays in the memory store)\n"
            )
        )

    def test_check_config_ok(self) -> None:
        """check-config prints OK and a summary of the settings."""
        config = self.write_config(
            f'[server]\nhostname = "mx.example.org"\ndata_dir = "{self.data_dir}"\ndomains = ["example.org"]\n'
        )
        self.assertEqual(self.txmail("check-config", "--config", config), 0)
        out = self.stdout.getvalue()
        self.assertTrue(out.startswith("OK\n"))
        self.assertIn("mx.example.org", out)
        self.assertIn("example.org", out)
        self.assertIn(self.data_dir, out)
        self.assertIn("  mail store:     maildir\n", out)

    def test_check_config_errors(self) -> None:
        """A bad key, bad TOML or a missing file exits 1 with the config error on stderr."""
        cases = [
            (self.write_config("[server]\nbogus = 1\n"), "unknown key 'bogus'"),
            (self.write_config("[server\n"), "not valid TOML"),
            (os.path.join(self.data_dir, "missing.toml"), "cannot read config file"),
            (self.write_config('[server]\nplaintext_auth = "sometimes"\n'), "plaintext_auth"),
        ]
        for path, message in cases:
            self.stderr.truncate(0)
            self.stderr.seek(0)
            self.assertEqual(self.txmail("check-config", "--config", path), 1)
            self.assertIn(message, self.stderr.getvalue())
            self.assertNotIn("OK", self.stdout.getvalue())

    def test_check_config_policy(self) -> None:
        """check-config validates [policy], [dkim], [srs] and [arc], loading the signing keys."""
        from txmail.policy import dkim

        os.makedirs(self.data_dir, exist_ok=True)
        key = os.path.join(self.data_dir, "k.key")
        dkim.write_key(key, dkim.generate_key("ed25519-sha256")[0])
        good = self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\ndomains = ["example.org"]\n'
            '[policy]\ndnsbl = ["zen.example=127.0.0.[2..11]"]\ngreylisting = true\n'
            f'[[dkim.keys]]\ndomain = "example.org"\nselector = "ed"\nkey = "{key}"\n'
            '[srs]\nsecrets = ["sixteen characters or more"]\n'
        )
        self.assertEqual(self.txmail("check-config", "--config", good), 0)
        out = self.stdout.getvalue()
        self.assertIn("dns lists", out)
        self.assertIn("greylisting", out)
        self.assertIn("ed._domainkey.example.org", out)
        self.assertIn("forwarding:     srs", out)
        cases = [
            ('[policy]\ndnsbl = ["zen.example=127.0.0"]\n', "needs four octets"),
            ("[policy.limits]\nmax_connections = -1\n", "max_connections"),
            ("[policy]\nbogus = true\n", "unknown key 'bogus' in [policy]"),
            ('[srs]\nsecrets = ["short"]\n', "at least 16 characters"),
            (f'[[dkim.keys]]\ndomain = "example.org"\nselector = "s"\nkey = "{key}.missing"\n', "dkim key"),
            (f'[arc]\ndomain = "example.org"\nselector = "ed"\nkey = "{key}"\n', "must be an RSA key"),
        ]
        for text, message in cases:
            self.stderr.truncate(0)
            self.stderr.seek(0)
            path = self.write_config(f'[server]\ndata_dir = "{self.data_dir}"\n' + text)
            self.assertEqual(self.txmail("check-config", "--config", path), 1, text)
            self.assertIn(message, self.stderr.getvalue())

    def test_check_config_bad_users_file(self) -> None:
        """check-config also reports a users.json that cannot be parsed."""
        os.makedirs(self.data_dir)
        with open(os.path.join(self.data_dir, "users.json"), "w") as f:
            f.write("{oops")
        config = self.write_config(f'[server]\ndata_dir = "{self.data_dir}"\n')
        self.assertEqual(self.txmail("check-config", "--config", config), 1)
        self.assertIn("not valid JSON", self.stderr.getvalue())

    def test_check_config_needs_config(self) -> None:
        """check-config without --config is a usage error."""
        self.assertEqual(self.txmail("check-config"), 2)


class AliasCommandTests(CLITestCase):
    def test_alias_add_list_del(self) -> None:
        """alias add/list/del manage aliases, including a catch-all."""
        self.txmail(
            "user", "add", "--data-dir", self.data_dir, "alice@example.test", "--password-stdin", stdin="pw\n"
        )
        self.assertEqual(
            self.txmail(
                "alias",
                "add",
                "--data-dir",
                self.data_dir,
                "Sales@example.test",
                "alice@example.test",
                "x@remote.test",
            ),
            0,
        )
        self.assertEqual(
            self.txmail("alias", "add", "--data-dir", self.data_dir, "@example.test", "alice@example.test"), 0
        )
        self.stdout.seek(0)
        self.stdout.truncate(0)
        self.stdout.seek(0)
        self.assertEqual(self.txmail("alias", "list", "--data-dir", self.data_dir), 0)
        self.assertEqual(
            self.stdout.getvalue(),
            "@example.test -> alice@example.test\nsales@example.test -> alice@example.test, x@remote.test\n",
        )
        resolved = self.successResultOf(self.directory().resolve_recipient("sales@example.test"))
        self.assertEqual(resolved, ["alice@example.test", "x@remote.test"])
        self.assertEqual(self.txmail("alias", "del", "--data-dir", self.data_dir, "sales@example.test"), 0)
        self.assertEqual(list(self.directory().list_aliases()), ["@example.test"])

    def test_alias_errors(self) -> None:
        """Duplicate aliases, bad targets and unknown aliases exit 1 with a message."""
        self.txmail("alias", "add", "--data-dir", self.data_dir, "a@example.test", "b@example.test")
        cases: list[tuple[list[str], str]] = [
            (["alias", "add", "--data-dir", self.data_dir, "a@example.test", "c@example.test"], "exists"),
            (["alias", "add", "--data-dir", self.data_dir, "d@example.test", "not valid"], "invalid address"),
            (["alias", "add", "--data-dir", self.data_dir, "d@example.test", "d@example.test"], "itself"),
            (["alias", "del", "--data-dir", self.data_dir, "zzz@example.test"], "no alias"),
        ]
        for argv, message in cases:
            self.stderr.truncate(0)
            self.stderr.seek(0)
            self.assertEqual(self.txmail(*argv), 1, argv)
            self.assertIn(message, self.stderr.getvalue())


class RealStorageTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.set_module("txmail.store.maildir", None)
        try:
            import txmail.store.maildir  # noqa: F401
        except ImportError:
            raise SkipTest("txmail.store.maildir is not available yet") from None

    def test_user_add_creates_maildir(self) -> None:
        """user add creates the user's Maildir (tmp/new/cur) below <data-dir>/mail."""
        code = self.txmail(
            "user", "add", "--data-dir", self.data_dir, "alice@example.test", "--password-stdin", stdin="pw\n"
        )
        self.assertEqual(code, 0, self.stderr.getvalue())
        found: list[str] = []
        for root, dirs, _ in os.walk(os.path.join(self.data_dir, "mail")):
            if {"tmp", "new", "cur"} <= set(dirs):
                found.append(root)
        self.assertTrue(found, "no Maildir was created")
        self.assertTrue(any("alice" in path for path in found), found)


class QueueCommandTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        from txmail.delivery.queue import SpoolQueue
        from txmail.model import DeliveryState, Envelope, MessageSource, RecipientState

        self.queue_dir = os.path.join(self.data_dir, "queue")
        queue = SpoolQueue(self.queue_dir)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")
        results: list[str] = []
        envelope = Envelope(
            "alice@example.test", ("a@remote.test", "b@remote.test"), mail_params={"RET": "HDRS"}
        )
        queue.enqueue(envelope, MessageSource.from_file(path, 20), envelope.rcpt_to).addCallback(
            results.append
        )
        self.queue_id = results[0]
        queue.update_recipients(
            self.queue_id,
            {
                "a@remote.test": RecipientState(
                    DeliveryState.DEFERRED,
                    attempts=1,
                    next_attempt=4102444800,
                    last_error="451 4.2.0 later",
                    host="mx.remote.test",
                )
            },
        )

    def entry(self) -> dict:
        with open(os.path.join(self.queue_dir, f"{self.queue_id}.json")) as f:
            return json.load(f)

    def test_list_and_show(self) -> None:
        """list gives one line per entry with state counts; show gives every recipient's state."""
        self.assertEqual(self.txmail("queue", "list", "--data-dir", self.data_dir), 0)
        out = self.stdout.getvalue()
        self.assertIn(self.queue_id, out)
        self.assertIn("<alice@example.test>", out)
        self.assertIn("1 deferred, 1 pending", out)
        self.assertIn("1 entry", out)
        self.stdout.seek(0)
        self.stdout.truncate(0)
        self.assertEqual(self.txmail("queue", "show", self.queue_id, "--data-dir", self.data_dir), 0)
        out = self.stdout.getvalue()
        self.assertIn("<a@remote.test>: deferred, 1 attempt(s)", out)
        self.assertIn("last host: mx.remote.test", out)
        self.assertIn("last error: 451 4.2.0 later", out)
        self.assertIn("<b@remote.test>: pending", out)
        self.assertIn("RET=HDRS", out)

    def test_flush(self) -> None:
        """flush makes deferred recipients due now and says the server picks them up at its next poll."""
        self.assertEqual(self.txmail("queue", "flush", "--data-dir", self.data_dir), 0)
        self.assertIn("1 deferred recipient(s) due now", self.stdout.getvalue())
        self.assertIn("next queue pass", self.stdout.getvalue())
        self.assertLess(self.entry()["recipients"]["a@remote.test"]["next_attempt"], 4102444800)
        self.assertEqual(self.entry()["recipients"]["a@remote.test"]["state"], "deferred")

    def test_delete(self) -> None:
        """delete removes the entry's files; an unknown id is an error."""
        self.assertEqual(self.txmail("queue", "delete", self.queue_id, "--data-dir", self.data_dir), 0)
        self.assertEqual(os.listdir(self.queue_dir), [])
        self.assertEqual(self.txmail("queue", "delete", self.queue_id, "--data-dir", self.data_dir), 1)
        self.assertIn(f"no queue entry {self.queue_id}", self.stderr.getvalue())
        self.assertEqual(self.txmail("queue", "show", "NOPE", "--data-dir", self.data_dir), 1)

    def test_release(self) -> None:
        """release lets a held (quarantined) message go: its recipients become pending; show says why it was held."""
        from txmail.delivery.queue import SpoolQueue
        from txmail.model import Envelope, MessageSource

        queue = SpoolQueue(self.queue_dir)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")
        results: list[str] = []
        envelope = Envelope("alice@example.test", ("c@remote.test",), hold="milter rspamd: quarantine")
        queue.enqueue(envelope, MessageSource.from_file(path, 20), envelope.rcpt_to).addCallback(
            results.append
        )
        held = results[0]
        self.assertEqual(self.txmail("queue", "show", held, "--data-dir", self.data_dir), 0)
        self.assertIn("held for:  milter rspamd: quarantine", self.stdout.getvalue())
        self.assertIn("<c@remote.test>: held", self.stdout.getvalue())
        self.assertEqual(self.txmail("queue", "release", "--data-dir", self.data_dir), 1)
        self.assertIn("give a queue ID or --all", self.stderr.getvalue())
        self.assertEqual(self.txmail("queue", "release", held, "--data-dir", self.data_dir), 0)
        self.assertIn("1 held recipient(s) released", self.stdout.getvalue())
        with open(os.path.join(self.queue_dir, f"{held}.json")) as f:
            self.assertEqual(json.load(f)["recipients"]["c@remote.test"]["state"], "pending")
        self.assertEqual(self.txmail("queue", "release", "--all", "--data-dir", self.data_dir), 0)
        self.assertIn("0 held recipient(s) released", self.stdout.getvalue())

    def test_no_queue(self) -> None:
        """A data directory without a queue is reported, not created."""
        empty = self.mktemp()
        self.assertEqual(self.txmail("queue", "list", "--data-dir", empty), 1)
        self.assertIn("no queue", self.stderr.getvalue())
        self.assertFalse(os.path.exists(empty))
