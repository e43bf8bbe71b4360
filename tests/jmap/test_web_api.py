"""
JMAP request processing (:mod:`txmail.web.api`): parsing, request-level
errors, dispatch, method errors, result references, creation ids, the
session object.
"""

from __future__ import annotations

import ast
import json
import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txmail.jmap.core import CORE, CallContext, Capability, Limits, MethodError, Registry
from txmail.web import api

TEST = "urn:example:test"


def _request(body: Any) -> bytes:
    return json.dumps(body).encode()


class Recorder:
    """A test capability whose methods record what they were called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], CallContext]] = []

    def capability(self) -> Capability:
        return Capability(
            urn=TEST,
            session={"x": 1},
            account=lambda user: {"owner": user},
            methods={
                "Test/get": self.get,
                "Test/set": self.set,
                "Test/fail": self.fail,
                "Test/crash": self.crash,
                "Test/deferred": self.deferred,
                "Test/coroutine": self.coroutine,
                "Test/bad": lambda context, arguments: ["not", "a", "dict"],
                "Test/extra": self.extra,
            },
        )

    def get(self, context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("Test/get", arguments, context))
        context.check_account(arguments)
        return {
            "accountId": context.account_id,
            "list": [
                {"id": "m1", "threadId": "t1", "to": ["a", "b"]},
                {"id": "m2", "threadId": "t2", "to": ["c"]},
            ],
            "ids": arguments.get("ids"),
        }

    def set(self, context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("Test/set", arguments, context))
        created = {}
        for creation_id in arguments.get("create", {}):
            new_id = f"id-{creation_id}"
            context.created_ids[creation_id] = new_id
            created[creation_id] = {"id": new_id}
        return {"created": created, "updated": arguments.get("update"), "destroyed": arguments.get("destroy")}

    def fail(self, context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
        raise MethodError("stateMismatch", "no", extra=1)

    def crash(self, context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
        raise ZeroDivisionError("secret internals")

    def deferred(self, context: CallContext, arguments: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        return defer.succeed({"via": "deferred"})

    async def coroutine(self, context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
        await defer.succeed(None)
        return {"via": "coroutine", "using": sorted(context.using)}

    def extra(self, context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
        context.add_response("Test/set", {"implied": True})
        return {"own": True}


def _registry(recorder: Recorder | None = None, limits: Limits | None = None) -> Registry:
    registry = Registry([api.core_capability(limits or Limits())])
    registry.add((recorder or Recorder()).capability())
    return registry


class ParseRequestTests(SynchronousTestCase):
    """parse_request: every request-level error (RFC 8620 section 3.6.1)."""

    def setUp(self) -> None:
        self.registry = _registry()
        self.limits = Limits(max_size_request=2000, max_calls_in_request=3)

    def parse(self, body: bytes) -> api.JMAPRequest:
        return api.parse_request(body, self.registry, self.limits)

    def error(self, body: bytes) -> dict[str, Any]:
        e = self.assertRaises(api.RequestError, self.parse, body)
        return e.to_json()

    def test_valid(self) -> None:
        request = self.parse(
            _request(
                {"using": [CORE], "methodCalls": [["Core/echo", {"a": 1}, "c1"]], "createdIds": {"k": "v"}}
            )
        )
        self.assertEqual(request.using, frozenset({CORE}))
        self.assertEqual(request.method_calls, (("Core/echo", {"a": 1}, "c1"),))
        self.assertEqual(request.created_ids, {"k": "v"})

    def test_not_json(self) -> None:
        for body in (
            b"{",
            b"\xff\xfe",
            b'{"a": NaN}',
            b'{"a": 1, "a": 2}',
            b'{"a": "\\ud800"}',
            b'{"\\udc00": 1}',
            b"[" * 100_000,
            b'{"a": 1e400}',
            b'{"a": -1.5e999}',
        ):
            e = self.assertRaises(api.RequestError, api.parse_request, body, self.registry, Limits())
            error = e.to_json()
            self.assertEqual(error["type"], "urn:ietf:params:jmap:error:notJSON", body[:10])
            self.assertEqual(error["status"], 400)

    def test_surrogate_pairs(self) -> None:
        document = api.parse_json(b'{"a": "\\ud83d\\ude00", "b": "\\\\ud800"}')
        self.assertEqual(document, {"a": "\U0001f600", "b": "\\ud800"})

    def test_content_type(self) -> None:
        api.check_content_type("application/json")
        api.check_content_type("Application/JSON; charset=utf-8")
        for value in (None, "", "text/plain", "application/jsonx"):
            e = self.assertRaises(api.RequestError, api.check_content_type, value)
            self.assertEqual(e.type, "urn:ietf:params:jmap:error:notJSON")

    def test_not_request(self) -> None:
        bodies = [
            [],
            {"methodCalls": []},
            {"using": "x", "methodCalls": []},
            {"using": [1], "methodCalls": []},
            {"using": [CORE]},
            {"using": [CORE], "methodCalls": [["Core/echo", {}]]},
            {"using": [CORE], "methodCalls": [["Core/echo", [], "c"]]},
            {"using": [CORE], "methodCalls": [[1, {}, "c"]]},
            {"using": [CORE], "methodCalls": [["Core/echo", {}, 3]]},
            {"using": [CORE], "methodCalls": ["Core/echo"]},
            {"using": [CORE], "methodCalls": [], "createdIds": []},
            {"using": [CORE], "methodCalls": [], "createdIds": {"a": 1}},
        ]
        for body in bodies:
            self.assertEqual(
                self.error(_request(body))["type"], "urn:ietf:params:jmap:error:notRequest", body
            )

    def test_unknown_capability(self) -> None:
        error = self.error(_request({"using": [CORE, "urn:x:nope"], "methodCalls": []}))
        self.assertEqual(error["type"], "urn:ietf:params:jmap:error:unknownCapability")
        self.assertEqual(error["status"], 400)
        self.assertIn("urn:x:nope", error["detail"])

    def test_max_size_request(self) -> None:
        body = _request({"using": [CORE], "methodCalls": [["Core/echo", {"p": "x" * 2000}, "c"]]})
        error = self.error(body)
        self.assertEqual(error["type"], "urn:ietf:params:jmap:error:limit")
        self.assertEqual(error["limit"], "maxSizeRequest")

    def test_max_calls(self) -> None:
        calls = [["Core/echo", {}, str(i)] for i in range(3)]
        self.assertEqual(len(self.parse(_request({"using": [CORE], "methodCalls": calls})).method_calls), 3)
        error = self.error(_request({"using": [CORE], "methodCalls": [*calls, ["Core/echo", {}, "4"]]}))
        self.assertEqual(error["type"], "urn:ietf:params:jmap:error:limit")
        self.assertEqual(error["limit"], "maxCallsInRequest")


class PointerTests(SynchronousTestCase):
    """evaluate_pointer: RFC 6901 with the ``*`` extension of RFC 8620 section 3.7."""

    document = {
        "list": [{"id": "a", "to": ["x", "y"]}, {"id": "b", "to": ["z"]}],
        "a/b": 1,
        "m~n": 2,
        "nested": [[1, 2], [3]],
    }

    def test_plain(self) -> None:
        self.assertEqual(api.evaluate_pointer(self.document, ""), self.document)
        self.assertEqual(api.evaluate_pointer(self.document, "/list/1/id"), "b")
        self.assertEqual(api.evaluate_pointer(self.document, "/a~1b"), 1)
        self.assertEqual(api.evaluate_pointer(self.document, "/m~0n"), 2)

    def test_star(self) -> None:
        self.assertEqual(api.evaluate_pointer(self.document, "/list/*/id"), ["a", "b"])
        # Arrays of arrays are flattened.
        self.assertEqual(api.evaluate_pointer(self.document, "/list/*/to"), ["x", "y", "z"])
        self.assertEqual(api.evaluate_pointer(self.document, "/nested/*"), [1, 2, 3])

    def test_errors(self) -> None:
        for path in (
            "list",
            "/nope",
            "/list/2",
            "/list/01",
            "/list/-1",
            "/list/x",
            "/a~1b/c",
            "/list/*/nope",
            "/*",
        ):
            self.assertRaises(ValueError, api.evaluate_pointer, self.document, path)
        self.assertRaises(ValueError, api.evaluate_pointer, self.document, "/x" * 100)


class ProcessTests(TestCase):
    """process: dispatch, method errors, references, created ids."""

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.registry = _registry(self.recorder)
        self.failures: list[str] = []
        self.context = CallContext(
            user="alice@example.test", account_id=api.account_id("alice@example.test"), store=None
        )

    def run_request(self, body: dict[str, Any]) -> dict[str, Any]:
        request = api.parse_request(_request(body), self.registry, Limits())
        d = defer.ensureDeferred(
            api.process(
                request, self.registry, self.context, session_state="S1", on_failure=self.failures.append
            )
        )
        return self.successResultOf(d)

    def test_echo(self) -> None:
        response = self.run_request(
            {"using": [CORE], "methodCalls": [["Core/echo", {"hello": True, "n": [1]}, "b3ff"]]}
        )
        self.assertEqual(
            response,
            {"methodResponses": [["Core/echo", {"hello": True, "n": [1]}, "b3ff"]], "sessionState": "S1"},
        )

    def test_unknown_method(self) -> None:
        response = self.run_request(
            {
                "using": [CORE],
                "methodCalls": [["Nope/get", {}, "a"], ["Test/get", {}, "b"], ["Core/echo", {}, "c"]],
            }
        )
        responses = response["methodResponses"]
        self.assertEqual(responses[0][0], "error")
        self.assertEqual(responses[0][1]["type"], "unknownMethod")
        self.assertEqual(responses[0][2], "a")
        # Test/get exists, but its capability is not in "using".
        self.assertEqual(responses[1][1]["type"], "unknownMethod")
        self.assertEqual(responses[2], ["Core/echo", {}, "c"])
        self.assertEqual(self.recorder.calls, [])

    def test_account_not_found(self) -> None:
        response = self.run_request(
            {"using": [CORE, TEST], "methodCalls": [["Test/get", {"accountId": "a0"}, "a"]]}
        )
        self.assertEqual(response["methodResponses"], [["error", {"type": "accountNotFound"}, "a"]])

    def test_method_error(self) -> None:
        response = self.run_request({"using": [TEST], "methodCalls": [["Test/fail", {}, "a"]]})
        self.assertEqual(
            response["methodResponses"],
            [["error", {"type": "stateMismatch", "description": "no", "extra": 1}, "a"]],
        )

    def test_server_fail(self) -> None:
        response = self.run_request(
            {
                "using": [TEST, CORE],
                "methodCalls": [["Test/crash", {}, "a"], ["Test/bad", {}, "b"], ["Core/echo", {"x": 1}, "c"]],
            }
        )
        responses = response["methodResponses"]
        self.assertEqual([r[1].get("type") for r in responses[:2]], ["serverFail", "serverFail"])
        self.assertNotIn("secret", json.dumps(responses))
        self.assertEqual(responses[2], ["Core/echo", {"x": 1}, "c"])
        self.assertEqual(self.failures, ["Test/crash", "Test/bad"])

    def test_deferred_and_coroutine(self) -> None:
        response = self.run_request(
            {"using": [TEST], "methodCalls": [["Test/deferred", {}, "a"], ["Test/coroutine", {}, "b"]]}
        )
        self.assertEqual(
            response["methodResponses"],
            [
                ["Test/deferred", {"via": "deferred"}, "a"],
                ["Test/coroutine", {"via": "coroutine", "using": [TEST]}, "b"],
            ],
        )

    def test_extra_responses(self) -> None:
        response = self.run_request(
            {"using": [TEST], "methodCalls": [["Test/extra", {}, "a"], ["Test/deferred", {}, "b"]]}
        )
        self.assertEqual(
            response["methodResponses"],
            [
                ["Test/extra", {"own": True}, "a"],
                ["Test/set", {"implied": True}, "a"],
                ["Test/deferred", {"via": "deferred"}, "b"],
            ],
        )

    def test_result_references(self) -> None:
        account = self.context.account_id
        response = self.run_request(
            {
                "using": [TEST],
                "methodCalls": [
                    ["Test/get", {"accountId": account}, "g"],
                    [
                        "Test/get",
                        {
                            "accountId": account,
                            "#ids": {"resultOf": "g", "name": "Test/get", "path": "/list/*/threadId"},
                        },
                        "t",
                    ],
                    [
                        "Test/get",
                        {
                            "accountId": account,
                            "#ids": {"resultOf": "g", "name": "Test/get", "path": "/list/*/to"},
                        },
                        "u",
                    ],
                ],
            }
        )
        responses = response["methodResponses"]
        self.assertEqual(responses[1][1]["ids"], ["t1", "t2"])
        self.assertEqual(responses[2][1]["ids"], ["a", "b", "c"])
        self.assertEqual(self.recorder.calls[1][1], {"accountId": account, "ids": ["t1", "t2"]})

    def test_invalid_result_references(self) -> None:
        account = self.context.account_id
        bad = [
            {"resultOf": "nope", "name": "Test/get", "path": "/list"},
            {"resultOf": "g", "name": "Test/set", "path": "/list"},
            {"resultOf": "g", "name": "Test/get", "path": "/missing"},
            {"resultOf": "g", "name": "Test/get", "path": "list"},
            {"resultOf": "g", "name": "Test/get"},
            "g",
            # A call can only refer to earlier calls, never to itself.
            {"resultOf": "self", "name": "Test/get", "path": ""},
        ]
        calls: list[Any] = [["Test/get", {"accountId": account}, "g"]]
        for i, ref in enumerate(bad):
            calls.append(
                ["Test/get", {"accountId": account, "#ids": ref}, "self" if i == len(bad) - 1 else f"b{i}"]
            )
        response = self.run_request({"using": [TEST], "methodCalls": calls})
        types = [r[1]["type"] for r in response["methodResponses"][1:]]
        self.assertEqual(types, ["invalidResultReference"] * len(bad))
        self.assertEqual(len(self.recorder.calls), 1)

    def test_reference_and_plain_argument(self) -> None:
        response = self.run_request(
            {
                "using": [TEST],
                "methodCalls": [
                    ["Test/get", {"accountId": self.context.account_id}, "g"],
                    [
                        "Test/get",
                        {"ids": [], "#ids": {"resultOf": "g", "name": "Test/get", "path": "/list"}},
                        "b",
                    ],
                ],
            }
        )
        self.assertEqual(response["methodResponses"][1][1]["type"], "invalidArguments")

    def test_reference_to_error_response(self) -> None:
        response = self.run_request(
            {
                "using": [TEST],
                "methodCalls": [
                    ["Test/fail", {}, "f"],
                    ["Test/set", {"#destroy": {"resultOf": "f", "name": "Test/fail", "path": "/type"}}, "b"],
                ],
            }
        )
        self.assertEqual(response["methodResponses"][1][1]["type"], "invalidResultReference")

    def test_created_ids(self) -> None:
        response = self.run_request(
            {
                "using": [TEST],
                "createdIds": {"old": "id-old"},
                "methodCalls": [
                    ["Test/set", {"create": {"k1": {}}}, "a"],
                    [
                        "Test/set",
                        {
                            "update": {"#k1": {"x": 1}, "#old": {}, "#unknown": {}, "plain": {}},
                            "destroy": ["#k1", "z"],
                        },
                        "b",
                    ],
                    [
                        "Test/get",
                        {"accountId": self.context.account_id, "ids": ["#k1", "#old", "#nope"]},
                        "c",
                    ],
                ],
            }
        )
        responses = response["methodResponses"]
        self.assertEqual(
            responses[1][1]["updated"], {"id-k1": {"x": 1}, "id-old": {}, "#unknown": {}, "plain": {}}
        )
        self.assertEqual(responses[1][1]["destroyed"], ["id-k1", "z"])
        self.assertEqual(responses[2][1]["ids"], ["id-k1", "id-old", "#nope"])
        self.assertEqual(response["createdIds"], {"old": "id-old", "k1": "id-k1"})

    def test_no_created_ids_without_request_member(self) -> None:
        response = self.run_request(
            {"using": [TEST], "methodCalls": [["Test/set", {"create": {"k1": {}}}, "a"]]}
        )
        self.assertNotIn("createdIds", response)
        self.assertEqual(response["sessionState"], "S1")

    def test_context_per_call(self) -> None:
        self.run_request(
            {
                "using": [TEST, CORE],
                "methodCalls": [
                    ["Test/get", {"accountId": self.context.account_id}, "a"],
                    ["Test/set", {}, "b"],
                ],
            }
        )
        (_, _, first), (_, _, second) = self.recorder.calls
        self.assertEqual(first.user, "alice@example.test")
        self.assertEqual(first.using, frozenset({TEST, CORE}))
        self.assertIs(first.created_ids, second.created_ids)


class CounterTests(SynchronousTestCase):
    def test_per_user_limit(self) -> None:
        counter = api.RequestCounter(2)
        self.assertTrue(counter.acquire("a"))
        self.assertTrue(counter.acquire("a"))
        self.assertFalse(counter.acquire("a"))
        self.assertTrue(counter.acquire("b"))
        counter.release("a")
        self.assertEqual(counter.count("a"), 1)
        self.assertTrue(counter.acquire("a"))
        counter.release("a")
        counter.release("a")
        counter.release("a")
        self.assertEqual(counter.count("a"), 0)


class SessionTests(SynchronousTestCase):
    def test_account_id(self) -> None:
        alice = api.account_id("alice@example.test")
        self.assertEqual(alice, api.account_id("alice@example.test"))
        self.assertNotEqual(alice, api.account_id("bob@example.test"))
        self.assertRegex(alice, r"^a[0-9a-f]{24}$")
        self.assertNotIn("alice", alice)

    def test_session_object(self) -> None:
        registry = _registry()
        urls = api.SessionURLs.under("https://mail.example.test/jmap/")
        session = api.session_object(registry.capabilities.values(), "alice@example.test", urls)
        account = api.account_id("alice@example.test")
        self.assertEqual(session["capabilities"][CORE]["maxCallsInRequest"], Limits().max_calls_in_request)
        self.assertEqual(session["capabilities"][TEST], {"x": 1})
        self.assertEqual(
            session["accounts"],
            {
                account: {
                    "name": "alice@example.test",
                    "isPersonal": True,
                    "isReadOnly": False,
                    "accountCapabilities": {TEST: {"owner": "alice@example.test"}},
                }
            },
        )
        self.assertEqual(session["primaryAccounts"], {TEST: account})
        self.assertEqual(session["username"], "alice@example.test")
        self.assertEqual(session["apiUrl"], "https://mail.example.test/jmap/api")
        self.assertEqual(
            session["downloadUrl"],
            "https://mail.example.test/jmap/download/{accountId}/{blobId}/{name}?accept={type}",
        )
        self.assertEqual(session["uploadUrl"], "https://mail.example.test/jmap/upload/{accountId}/")
        self.assertEqual(
            session["eventSourceUrl"],
            "https://mail.example.test/jmap/eventsource?types={types}&closeafter={closeafter}&ping={ping}",
        )
        # The state is stable, and changes with the content, not with the URLs.
        other = api.session_object(
            registry.capabilities.values(), "alice@example.test", api.SessionURLs.under("http://x/jmap")
        )
        self.assertEqual(session["state"], other["state"])
        bob = api.session_object(registry.capabilities.values(), "bob@example.test", urls)
        self.assertNotEqual(session["state"], bob["state"])


class SansIOTests(SynchronousTestCase):
    def test_no_twisted_import(self) -> None:
        import txmail.web.api
        import txmail.web.tokens

        for module in (txmail.web.api, txmail.web.tokens):
            with open(os.path.splitext(module.__file__)[0] + ".py", encoding="utf-8") as f:
                tree = ast.parse(f.read())
            names = [
                alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
            ]
            names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
            self.assertEqual(
                [n for n in names if n.split(".")[0] in ("twisted", "zope")], [], module.__name__
            )
