"""
Property test of the IMAP adapter on the in-memory store: any sequence of
commands (valid, odd or broken) gets exactly one tagged answer each, never
an internal error, and the connection stays usable.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.imap.test_server import ServerTestCase

_SETS = st.sampled_from(["1", "*", "1:*", "2:4", "4:2", "1,3,5", "99", "0", "1:", "a"])
_NAMES = st.sampled_from(
    ["INBOX", "inbox", "Work", "Work/2026", '"A b"', "&AMk-t&AOk-", "../x", '""', "~x", "Trash", "%", "*"]
)
_FLAGS = st.sampled_from(["(\\Seen)", "(\\Deleted \\Flagged)", "()", "(kw1 $Junk)", "(\\Bogus)", "\\Seen"])
_ITEMS = st.sampled_from(
    [
        "(FLAGS)",
        "(UID RFC822.SIZE)",
        "ALL",
        "FULL",
        "(BODY[])",
        "(BODY.PEEK[1.MIME])",
        "(BODY[HEADER.FIELDS (SUBJECT)]<0.5>)",
        "(ENVELOPE BODYSTRUCTURE)",
        "(BODY[TEXT]<100.2>)",
        "(NOSUCH)",
    ]
)
_COMMANDS = st.one_of(
    st.tuples(st.just("SELECT"), _NAMES).map(" ".join),
    st.tuples(st.just("EXAMINE"), _NAMES).map(" ".join),
    st.tuples(st.just("CREATE"), _NAMES).map(" ".join),
    st.tuples(st.just("DELETE"), _NAMES).map(" ".join),
    st.tuples(st.just("RENAME"), _NAMES, _NAMES).map(" ".join),
    st.tuples(st.just("SUBSCRIBE"), _NAMES).map(" ".join),
    st.tuples(st.just("UNSUBSCRIBE"), _NAMES).map(" ".join),
    st.tuples(st.just('LIST ""'), _NAMES).map(" ".join),
    st.tuples(st.just('LSUB ""'), _NAMES).map(" ".join),
    st.tuples(st.just("STATUS"), _NAMES, st.just("(MESSAGES UNSEEN UIDNEXT)")).map(" ".join),
    st.tuples(st.sampled_from(["FETCH", "UID FETCH"]), _SETS, _ITEMS).map(" ".join),
    st.tuples(
        st.sampled_from(["STORE", "UID STORE"]),
        _SETS,
        st.sampled_from(["FLAGS", "+FLAGS.SILENT", "-FLAGS"]),
        _FLAGS,
    ).map(" ".join),
    st.tuples(st.sampled_from(["COPY", "MOVE", "UID COPY", "UID MOVE"]), _SETS, _NAMES).map(" ".join),
    st.tuples(
        st.sampled_from(["SEARCH", "UID SEARCH"]),
        st.sampled_from(["ALL", "UNSEEN", "OR SEEN DELETED", "BODY x", "TEXT body", "NOT 1:2", "LARGER 10"]),
    ).map(" ".join),
    st.sampled_from(
        ["NOOP", "CHECK", "EXPUNGE", "CLOSE", "UNSELECT", "CAPABILITY", "NAMESPACE", "ID NIL", "ENABLE X"]
    ),
    st.sampled_from(
        ["UID EXPUNGE 1:*", "APPEND INBOX {5+}\r\nhello", "APPEND Nowhere (\\Seen) {3+}\r\nabc", "FROB", ""]
    ),
)


class ServerFuzzTests(ServerTestCase):
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_COMMANDS, min_size=1, max_size=12))
    def test_every_command_answered_once(self, commands: list[str]) -> None:
        """Each tagged command gets one tagged OK/NO/BAD; no SERVERBUG; NOOP still works at the end."""
        self.setUp()
        proto, transport = self.login()
        for i, text in enumerate(commands):
            tag = b"t%d" % i
            out = self.send(proto, transport, tag + b" " + text.encode() + b"\r\n")
            answers = [line for line in out.split(b"\r\n") if line.startswith(tag + b" ")]
            self.assertEqual(len(answers), 1, (text, out))
            self.assertRegex(answers[0], rb"^t\d+ (OK|NO|BAD) ", text)
            self.assertNotIn(b"SERVERBUG", out, text)
            self.assertFalse(transport.disconnecting, text)
        out = self.send(proto, transport, b"z NOOP\r\n")
        self.assertTrue(out.endswith(b"z OK NOOP completed\r\n"), out)
