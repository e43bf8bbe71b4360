"""Tests for the Sender Rewriting Scheme, txmail.policy.srs."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.policy.srs import (
    SRS,
    BadHash,
    InvalidAddress,
    MalformedSRS,
    NotSRS,
    SRSError,
    TimestampExpired,
    is_srs,
)

#: 2023-11-14 22:13:20 UTC: day 19675, 219 modulo 1024, timestamp "G3".
T0 = 1_700_000_000
DAY = 86400

#: Known answers from independent implementations, for ``now = T0``.
#: Produced with Debian's ``srs`` package (Shevek's Mail::SRS 0.31, the
#: scheme's reference implementation, which libsrs2 and postsrsd follow),
#: with ``time`` overridden::
#:
#:     perl -e 'BEGIN { *CORE::GLOBAL::time = sub { 1700000000 } }
#:         use Mail::SRS;
#:         print Mail::SRS->new(Secret => ["s3cr3t-key"])
#:             ->forward("user@orig.example", "forwarder.example")'
#:
#: (``Mail::SRS->new`` is the Guarded, SRS0/SRS1, scheme), and the first two
#: cross-checked with PyPI's ``srslib`` 0.1.5 (``time.time`` patched).
#: Rows: (secret, our domain, options, input, output).
KNOWN_ANSWERS = [
    (
        b"s3cr3t-key",
        "forwarder.example",
        {},
        "user@orig.example",
        "SRS0=+FD9=G3=orig.example=user@forwarder.example",
    ),
    (
        b"other-secret",
        "second.example",
        {},
        "SRS0=+FD9=G3=orig.example=user@forwarder.example",
        "SRS1=YYX4=forwarder.example==+FD9=G3=orig.example=user@second.example",
    ),
    (
        b"third",
        "third.example",
        {},
        "SRS1=YYX4=forwarder.example==+FD9=G3=orig.example=user@second.example",
        "SRS1=yL5P=forwarder.example==+FD9=G3=orig.example=user@third.example",
    ),
    (
        b"s3cr3t-key",
        "forwarder.example",
        {},
        "Odd=Local+Part@Orig.Example",
        "SRS0=kcjg=G3=Orig.Example=Odd=Local+Part@forwarder.example",
    ),
    (
        b"s3cr3t-key",
        "fwd.example",
        {"separator": "+", "hash_length": 6},
        "SRS0+abcd=ZZ=x.example=bob@other.example",
        "SRS1+64Q1TW=other.example=+abcd=ZZ=x.example=bob@fwd.example",
    ),
]


def make(domain: str = "forwarder.example", *secrets: bytes, **options: object) -> SRS:
    return SRS(list(secrets) or [b"s3cr3t-key"], domain, **options)  # type: ignore[arg-type]


class KnownAnswerTests(SynchronousTestCase):
    def test_forward_matches_mail_srs(self) -> None:
        """Forwarding gives, character for character, what Mail::SRS gives for the same inputs."""
        for secret, domain, options, original, expected in KNOWN_ANSWERS:
            self.assertEqual(make(domain, secret, **options).forward(original, T0), expected)

    def test_reverse_of_mail_srs_addresses(self) -> None:
        """Addresses made by Mail::SRS reverse: SRS0 to the sender, SRS1 to the first forwarder."""
        self.assertEqual(
            make().reverse("SRS0=+FD9=G3=orig.example=user@forwarder.example", T0), "user@orig.example"
        )
        self.assertEqual(
            make("second.example", b"other-secret").reverse(
                "SRS1=YYX4=forwarder.example==+FD9=G3=orig.example=user@second.example", T0
            ),
            "SRS0=+FD9=G3=orig.example=user@forwarder.example",
        )

    def test_timestamp_encoding(self) -> None:
        """The timestamp is the day modulo 1024 in two base32 characters."""
        self.assertIn("=G3=", make().forward("a@b.example", T0))
        # Day 19675 + 1024 wraps to the same stamp; the next day is G4.
        self.assertIn("=G3=", make().forward("a@b.example", T0 + 1024 * DAY))
        self.assertIn("=G4=", make().forward("a@b.example", T0 + DAY))
        self.assertIn("=AA=", make().forward("a@b.example", 0))


class ForwardTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """A forwarded address reverses to the original one."""
        srs = make()
        for original in ("user@orig.example", "a.b-c_d@sub.orig.example", "x@[192.0.2.1]"):
            rewritten = srs.forward(original, T0)
            self.assertTrue(rewritten.endswith("@forwarder.example"), rewritten)
            self.assertTrue(is_srs(rewritten))
            self.assertEqual(srs.reverse(rewritten, T0 + 3600), original)

    def test_odd_local_parts(self) -> None:
        """Local parts holding '=', '+', '-' or an '@' in quotes survive the round trip."""
        srs = make()
        for original in (
            "a=b@orig.example",
            "a+tag@orig.example",
            "==@orig.example",
            "user=orig.example=x@orig.example",
            '"odd@local"@orig.example',
            "SRS0@orig.example",
            "srs2=x@orig.example",
        ):
            self.assertEqual(srs.reverse(srs.forward(original, T0), T0), original)

    def test_null_sender(self) -> None:
        """The null sender stays null."""
        self.assertEqual(make().forward("", T0), "")

    def test_own_domain_unchanged(self) -> None:
        """An address already in our domain, in any case, is not rewritten."""
        srs = make()
        self.assertEqual(srs.forward("user@forwarder.example", T0), "user@forwarder.example")
        self.assertEqual(srs.forward("User@Forwarder.Example", T0), "User@Forwarder.Example")
        ours = srs.forward("user@orig.example", T0)
        self.assertEqual(srs.forward(ours, T0), ours)

    def test_no_at_sign(self) -> None:
        """An address without a domain cannot be rewritten."""
        for bad in ("postmaster", "@orig.example", "user@"):
            self.assertRaises(InvalidAddress, make().forward, bad, T0)

    def test_separator(self) -> None:
        """The configured separator follows the tag; the fields after it are joined with '='."""
        rewritten = make(separator="-").forward("user@orig.example", T0)
        self.assertTrue(rewritten.startswith("SRS0-"))
        self.assertTrue(rewritten.endswith("=G3=orig.example=user@forwarder.example"))
        self.assertEqual(make().reverse(rewritten, T0), "user@orig.example")

    def test_hash_length(self) -> None:
        """hash_length sets the number of hash characters written."""
        rewritten = make(hash_length=10).forward("user@orig.example", T0)
        self.assertEqual(len(rewritten.split("=")[1]), 10)

    def test_bad_arguments(self) -> None:
        """The constructor refuses no secret, a str secret, a bad separator or lengths out of range."""
        for args, kwargs in (
            (([], "d.example"), {}),
            (([b""], "d.example"), {}),
            ((["text"], "d.example"), {}),
            (([b"k"], ""), {}),
            (([b"k"], "d.example"), {"separator": "/"}),
            (([b"k"], "d.example"), {"hash_length": 0}),
            (([b"k"], "d.example"), {"hash_length": 28}),
            (([b"k"], "d.example"), {"max_age_days": 1023}),
        ):
            self.assertRaises(ValueError, SRS, *args, **kwargs)


class ChainTests(SynchronousTestCase):
    def test_srs0_becomes_srs1(self) -> None:
        """An SRS0 address from another forwarder becomes SRS1 pointing back to it."""
        first = make("first.example", b"k1")
        second = make("second.example", b"k2")
        srs0 = first.forward("user@orig.example", T0)
        srs1 = second.forward(srs0, T0)
        self.assertTrue(srs1.startswith("SRS1="))
        self.assertIn("=first.example==", srs1)
        self.assertTrue(srs1.endswith("@second.example"))
        self.assertEqual(second.reverse(srs1, T0), srs0)
        self.assertEqual(first.reverse(second.reverse(srs1, T0), T0), "user@orig.example")

    def test_srs1_keeps_first_forwarder(self) -> None:
        """An SRS1 address forwarded again still points to the first forwarder, with its hash intact."""
        first = make("first.example", b"k1")
        second = make("second.example", b"k2")
        third = make("third.example", b"k3")
        srs0 = first.forward("user@orig.example", T0)
        srs1 = second.forward(srs0, T0)
        again = third.forward(srs1, T0)
        self.assertEqual(again.split("=", 2)[2], srs1.split("=", 2)[2].replace("@second.", "@third."))
        self.assertEqual(third.reverse(again, T0), srs0)
        self.assertRaises(BadHash, second.reverse, again.replace("@third.", "@second."), T0)

    def test_unparsable_srs1_wrapped_as_srs0(self) -> None:
        """An SRS1 local part without its fields is rewritten like any other address."""
        srs = make()
        for odd in ("SRS1=x@other.example", "SRS1==first.example=@other.example"):
            rewritten = srs.forward(odd, T0)
            self.assertTrue(rewritten.startswith("SRS0="), rewritten)
            self.assertEqual(srs.reverse(rewritten, T0), odd)


class ReverseTests(SynchronousTestCase):
    def test_rotation(self) -> None:
        """Addresses signed with an older secret still reverse; new ones are signed with the first."""
        old = make("forwarder.example", b"old")
        rotated = make("forwarder.example", b"new", b"old")
        signed_old = old.forward("user@orig.example", T0)
        self.assertEqual(rotated.reverse(signed_old, T0), "user@orig.example")
        signed_new = rotated.forward("user@orig.example", T0)
        self.assertNotEqual(signed_new, signed_old)
        self.assertEqual(make("forwarder.example", b"new").reverse(signed_new, T0), "user@orig.example")
        self.assertRaises(BadHash, make("forwarder.example", b"new").reverse, signed_old, T0)

    def test_expiry(self) -> None:
        """An address reverses up to max_age_days after it was made, and not a day later."""
        srs = make(max_age_days=21)
        rewritten = srs.forward("user@orig.example", T0)
        self.assertEqual(srs.reverse(rewritten, T0 + 21 * DAY), "user@orig.example")
        self.assertRaises(TimestampExpired, srs.reverse, rewritten, T0 + 22 * DAY)
        self.assertRaises(TimestampExpired, srs.reverse, rewritten, T0 + 1000 * DAY)
        # After a full cycle of 1024 days the stamp means "today" again (as in libsrs2).
        self.assertEqual(srs.reverse(rewritten, T0 + 1024 * DAY), "user@orig.example")

    def test_future_timestamp(self) -> None:
        """A stamp one day ahead (clock skew) is accepted; two days ahead is expired."""
        srs = make()
        tomorrow = srs.forward("user@orig.example", T0 + DAY)
        self.assertEqual(srs.reverse(tomorrow, T0), "user@orig.example")
        later = srs.forward("user@orig.example", T0 + 2 * DAY)
        self.assertRaises(TimestampExpired, srs.reverse, later, T0)

    def test_tampering(self) -> None:
        """Changing the host, the local part or the timestamp breaks the hash."""
        srs = make()
        rewritten = srs.forward("user@orig.example", T0)
        for old, new in (("orig.example", "evil.example"), ("=user@", "=admin@"), ("=G3=", "=G4=")):
            self.assertRaises(BadHash, srs.reverse, rewritten.replace(old, new), T0)

    def test_non_ascii_timestamp(self) -> None:
        """
        A timestamp whose upper case is longer ("ß" is "SS") is malformed,
        even under a good hash (only our own secret can make one).
        """
        srs = make()
        for stamp in ("\u00dfT", "\ufb00T", "G\u00df"):
            forged = f"SRS0={srs._hash(stamp, 'orig.example', 'user')}={stamp}=orig.example=user@forwarder.example"
            self.assertRaises(MalformedSRS, srs.reverse, forged, T0)

    def test_other_secret(self) -> None:
        """An address made with another secret is refused."""
        rewritten = make("forwarder.example", b"theirs").forward("user@orig.example", T0)
        self.assertRaises(BadHash, make().reverse, rewritten, T0)

    def test_hash_too_short_or_long(self) -> None:
        """A hash shorter than hash_length is refused; a longer correct prefix is accepted."""
        srs = make()
        long_form = make(hash_length=8).forward("user@orig.example", T0)
        self.assertEqual(srs.reverse(long_form, T0), "user@orig.example")
        short = make(hash_length=2).forward("user@orig.example", T0)
        self.assertRaises(BadHash, srs.reverse, short, T0)

    def test_case_insensitive(self) -> None:
        """An address whose case an MTA changed still reverses (to the lower-cased original)."""
        srs = make()
        rewritten = srs.forward("User@Orig.Example", T0)
        self.assertEqual(srs.reverse(rewritten.lower(), T0), "user@orig.example")
        self.assertEqual(srs.reverse(rewritten.upper(), T0), "USER@ORIG.EXAMPLE")
        srs1 = make("second.example", b"k2").forward(rewritten, T0)
        back = make("second.example", b"k2").reverse(srs1.lower(), T0)
        self.assertEqual(back, "SRS0" + rewritten.lower()[4:])
        self.assertEqual(srs.reverse(back, T0), "user@orig.example")

    def test_accepted_separators(self) -> None:
        """Any of '=', '+', '-' after the tag is read, whatever separator we write."""
        srs = make()
        rewritten = srs.forward("user@orig.example", T0)
        for sep in "+-":
            self.assertEqual(srs.reverse("SRS0" + sep + rewritten[5:], T0), "user@orig.example")

    def test_not_srs(self) -> None:
        """Ordinary addresses, and SRS-like ones with another tag or separator, are not SRS."""
        for address in ("user@forwarder.example", "SRS2=a=b=c=d@x", "SRS0_a=b@x", "SRS0@x", "srs"):
            self.assertFalse(is_srs(address), address)
            self.assertRaises(NotSRS, make().reverse, address, T0)
        self.assertTrue(is_srs("srs0+x"))
        self.assertTrue(is_srs("SrS1-x@y"))

    def test_malformed(self) -> None:
        """SRS addresses missing a field, or with a bad timestamp, are malformed."""
        srs = make()
        for address in (
            "SRS0=hash=G3=orig.example@forwarder.example",
            "SRS0=hash=G3==user@forwarder.example",
            "SRS0=@forwarder.example",
            "SRS1=hash=first.example@forwarder.example",
            "SRS1==first.example==x@forwarder.example",
        ):
            self.assertRaises(MalformedSRS, srs.reverse, address, T0)
        good = srs.forward("user@orig.example", T0)
        digest = good.split("=")[1]
        stamp = "1!"
        bad_stamp = f"SRS0={digest}={stamp}=orig.example=user@forwarder.example"
        # The hash is checked first: a changed stamp is a bad hash...
        self.assertRaises(BadHash, srs.reverse, bad_stamp, T0)
        # ...and a correctly signed stamp that is not base32 is malformed.
        signed = srs._hash(stamp, "orig.example", "user")
        self.assertRaises(
            MalformedSRS, srs.reverse, f"SRS0={signed}={stamp}=orig.example=user@forwarder.example", T0
        )

    def test_errors_are_value_errors(self) -> None:
        """Every SRS error is an SRSError and a ValueError."""
        for cls in (NotSRS, MalformedSRS, BadHash, TimestampExpired, InvalidAddress):
            self.assertTrue(issubclass(cls, SRSError))
            self.assertTrue(issubclass(cls, ValueError))
