"""Storage quotas (txmail.quota): sizes, limits and the checks delivery makes."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.errors import ConfigError
from txmail.quota import QuotaExceeded, Quotas, Usage, parse_size
from txmail.smtp.codes import Reply


class ParseSizeTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        """Integers, binary units, decimals; none/unlimited/0 mean no limit."""
        self.assertEqual(parse_size(1000), 1000)
        self.assertEqual(parse_size("500M"), 500 * 1024**2)
        self.assertEqual(parse_size("1.5g"), int(1.5 * 1024**3))
        self.assertEqual(parse_size("2GiB"), 2 * 1024**3)
        self.assertEqual(parse_size("64k"), 65536)
        for none in ("none", "Unlimited", "0", 0):
            self.assertIsNone(parse_size(none))

    def test_bad_sizes(self) -> None:
        for bad in ("lots", "-1", -5, True, 1.5, "1X", ""):
            with self.assertRaises(ConfigError, msg=repr(bad)):
                parse_size(bad, "quota storage")


class QuotasTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.quotas = Quotas.from_settings(
            1000, [("Boss@Example.Test", 5000), ("archive@example.test", None)]
        )

    def test_limits(self) -> None:
        """The default applies unless the user has their own (case-insensitive), None meaning unlimited."""
        self.assertEqual(self.quotas.limit_for("alice@example.test"), 1000)
        self.assertEqual(self.quotas.limit_for("boss@example.test"), 5000)
        self.assertIsNone(self.quotas.limit_for("ARCHIVE@example.test"))
        self.assertTrue(self.quotas.enabled)
        self.assertFalse(Quotas().enabled)
        self.assertFalse(Quotas.from_settings(None, [("a@b.test", None)]).enabled)

    def test_check(self) -> None:
        """A message that fits passes; one past the limit is temporary (452 4.2.2); one larger than the limit permanent (552 5.2.2)."""
        self.quotas.check("alice@example.test", Usage(600, 3), 400)
        with self.assertRaises(QuotaExceeded) as cm:
            self.quotas.check("alice@example.test", Usage(600, 3), 401)
        self.assertFalse(cm.exception.permanent)
        self.assertEqual(cm.exception.reply, Reply(452, "4.2.2", "Mailbox full"))
        with self.assertRaises(QuotaExceeded) as cm:
            self.quotas.check("alice@example.test", Usage(0, 0), 1001)
        self.assertTrue(cm.exception.permanent)
        self.assertEqual((cm.exception.reply.code, cm.exception.reply.enhanced), (552, "5.2.2"))
        self.quotas.check("archive@example.test", Usage(10**12, 1), 10**9)

    def test_full(self) -> None:
        self.assertTrue(self.quotas.full("alice@example.test", Usage(1000, 1)))
        self.assertFalse(self.quotas.full("alice@example.test", Usage(999, 1)))
        self.assertFalse(self.quotas.full("archive@example.test", Usage(10**12, 1)))
