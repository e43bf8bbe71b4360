"""
Headless Chromium against a real server, for the webmail's browser tests.

:class:`BrowserTestCase` starts one browser per test class (Selenium's
driver, with Debian's ``chromium`` and ``chromedriver``) and a
:class:`txmail.testing.TestServer` with the JMAP endpoint per test.  The
server runs on trial's reactor; every Selenium call blocks, so it runs in
a thread (:meth:`BrowserTestCase.browser`).  A test decorated with
:func:`screenshots` saves a screenshot when it fails and names its path in
the failure.  The tests skip when Selenium, Chromium or its driver are
missing.
"""

from __future__ import annotations

import atexit
import contextlib
import email
import email.policy
import functools
import imaplib
import os
import shutil
import smtplib
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SkipTest, TestCase

from txmail.testing import TestServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - where selenium is not installed
    webdriver = None

ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
PASSWORD = "correct horse"


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    if webdriver is None:
        return "selenium is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return f"chromium is not installed ({CHROMIUM})"
    if not os.access(CHROMEDRIVER, os.X_OK):
        return f"chromedriver is not installed ({CHROMEDRIVER})"
    return None


def start_browser() -> Any:
    options = Options()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-proxy-server",
    ):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def screenshots(test: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], defer.Deferred[None]]:
    """Run the coroutine test method *test*; when it fails, save a screenshot and say where."""

    @functools.wraps(test)
    def run(self: BrowserTestCase) -> defer.Deferred[None]:
        async def go() -> None:
            try:
                await test(self)
            except SkipTest:
                raise
            except BaseException as e:
                path = os.path.abspath(self.mktemp()) + ".png"
                try:
                    await self.browser(self.driver.save_screenshot, path)
                except Exception as shot:  # the browser itself is gone
                    path = f"(no screenshot: {shot})"
                raise self.failureException(f"{type(e).__name__}: {e}\nscreenshot: {path}") from e

        return defer.Deferred.fromCoroutine(go())

    return run


class BrowserTestCase(TestCase):
    """One headless browser a class; a server with the JMAP endpoint and users alice, bob and carol a test."""

    timeout = 120
    driver: Any = None

    @classmethod
    def _browser_for_class(cls) -> Any:
        """The class's browser, started on its first test (trial has no setUpClass) and quit at exit."""
        if cls.__dict__.get("driver") is None:
            cls.driver = start_browser()
            atexit.register(cls.driver.quit)
        return cls.driver

    async def asyncSetUp(self) -> None:
        reason = skip_reason()
        if reason is not None:
            raise SkipTest(reason)
        self.driver = await threads.deferToThread(self._browser_for_class)
        self.server = TestServer(web=True)
        await self.server.start()
        self.addCleanup(self.server.stop)
        # Runs before the server stops: the page lets go of its connections.
        self.addCleanup(lambda: self.browser(self.driver.get, "about:blank"))
        for user in (ALICE, BOB, CAROL):
            self.server.add_user(user, PASSWORD)
        host, port = self.server.web_address
        self.base = f"http://{host}:{port}"

    def setUp(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.asyncSetUp())

    # -- the browser, in a thread --

    def browser(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThread(fn, *args)

    def wait(
        self, condition: Callable[[Any], Any], timeout: float = 10.0, what: str = ""
    ) -> defer.Deferred[Any]:
        """Fires with *condition(driver)* once it is true (in the browser's thread); fails after *timeout*."""

        def check(driver: Any) -> Any:
            try:
                return condition(driver)
            except WebDriverException:
                return False

        def run() -> Any:
            try:
                return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(check)
            except TimeoutException:
                raise AssertionError(f"waited {timeout}s for {what or condition}") from None

        return self.browser(run)

    def element(self, element_id: str, timeout: float = 10.0) -> defer.Deferred[Any]:
        """The displayed element with id *element_id*."""

        def shown(driver: Any) -> Any:
            found = driver.find_element(By.ID, element_id)
            return found if found.is_displayed() else False

        return self.wait(shown, timeout, f"#{element_id} to show")

    def text(self, element_id: str) -> defer.Deferred[str]:
        return self.browser(lambda: self.driver.find_element(By.ID, element_id).text)

    def click(self, element_id: str) -> defer.Deferred[Any]:
        """Click the element with id *element_id* once it shows (found again if the page redrew it)."""

        def clicked(driver: Any) -> bool:
            found = driver.find_element(By.ID, element_id)
            if not found.is_displayed() or not found.is_enabled():
                return False
            found.click()
            return True

        return self.wait(clicked, what=f"#{element_id} to click")

    def type(self, element_id: str, text: str) -> defer.Deferred[None]:
        def run() -> None:
            field = self.driver.find_element(By.ID, element_id)
            field.clear()
            field.send_keys(text)

        return self.element(element_id).addCallback(lambda _: self.browser(run))

    def list_subjects(self) -> defer.Deferred[list[str]]:
        """The subjects in the message list, in order (read again if the page redraws the list meanwhile)."""

        def subjects(driver: Any) -> tuple[list[str]]:
            return ([e.text for e in driver.find_elements(By.CSS_SELECTOR, "#message-list li .subject")],)

        return self.wait(subjects, what="the subjects").addCallback(lambda found: found[0])

    def wait_for_subject(self, subject: str, timeout: float = 10.0) -> defer.Deferred[Any]:
        """The message list's button of the message with *subject*, once listed."""

        def listed(driver: Any) -> Any:
            for item in driver.find_elements(By.CSS_SELECTOR, "#message-list li"):
                if item.find_element(By.CSS_SELECTOR, ".subject").text == subject:
                    return item.find_element(By.TAG_NAME, "button")
            return False

        return self.wait(listed, timeout, f"{subject!r} in the message list")

    async def open_message(self, subject: str) -> None:
        """Click the message with *subject* in the list; wait for the reader to show it."""

        def clicked(driver: Any) -> bool:
            for item in driver.find_elements(By.CSS_SELECTOR, "#message-list li"):
                if item.find_element(By.CSS_SELECTOR, ".subject").text == subject:
                    item.find_element(By.TAG_NAME, "button").click()
                    return True
            return False

        await self.wait(clicked, what=f"{subject!r} to click in the message list")
        await self.wait(
            lambda d: d.find_element(By.ID, "reader-subject").text == subject,
            what=f"{subject!r} in the reader",
        )

    def open_folder(self, name: str) -> defer.Deferred[Any]:
        """Click the folder *name* in the folder list; wait for the list to show it."""

        def clicked(driver: Any) -> bool:
            for button in driver.find_elements(By.CSS_SELECTOR, "#folder-list button"):
                if button.find_element(By.CSS_SELECTOR, ".name").text == name:
                    button.click()
                    return True
            return False

        d = self.wait(clicked, what=f"the folder {name!r} to click")
        d.addCallback(
            lambda _: self.wait(lambda dr: dr.find_element(By.ID, "list-title").text == name, what=name)
        )
        return d

    # -- the page --

    async def login(self, user: str = ALICE, password: str = PASSWORD) -> None:
        await self.browser(self.driver.get, self.base + "/")
        await self.browser(self.driver.delete_all_cookies)
        await self.browser(self.driver.get, self.base + "/")
        await self.type("login-user", user)
        await self.type("login-password", password)
        await self.click("login-submit")
        await self.element("message-list")
        await self.wait(lambda d: d.find_element(By.ID, "list-title").text, what="the list title")

    # -- mail, from outside the browser --

    def smtp_send(self, sender: str, recipients: list[str], message: bytes) -> defer.Deferred[Any]:
        """Deliver *message* over SMTP (smtplib, in a thread) to the server's MTA port."""

        def run() -> Any:
            with smtplib.SMTP(*self.server.smtp_address, timeout=10) as client:
                return client.sendmail(sender, recipients, message)

        return threads.deferToThread(run)

    def deliver(
        self, subject: str, body: str = "hello", *, to: str = ALICE, sender: str = BOB
    ) -> defer.Deferred[Any]:
        message = (
            f"From: Bob <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash(subject))}@example.test>\r\n"
            f"Date: Mon, 7 Dec 2026 08:00:00 +0000\r\n\r\n{body.replace(chr(10), chr(13) + chr(10))}\r\n"
        ).encode()
        return self.smtp_send(sender, [to], message)

    def imap(self, user: str, fn: Callable[[imaplib.IMAP4], Any]) -> defer.Deferred[Any]:
        """Run *fn* with an IMAP connection logged in as *user* (imaplib, in a thread)."""

        def run() -> Any:
            client = imaplib.IMAP4(*self.server.imap_address, timeout=10)
            try:
                client.login(user, PASSWORD)
                return fn(client)
            finally:
                with contextlib.suppress(Exception):
                    client.logout()

        return threads.deferToThread(run)

    def imap_messages(
        self, user: str, mailbox: str = "INBOX"
    ) -> defer.Deferred[list[email.message.EmailMessage]]:
        """The messages in *user*'s *mailbox*, over IMAP."""

        def fetch(client: imaplib.IMAP4) -> list[email.message.EmailMessage]:
            status, _ = client.select(mailbox, readonly=True)
            if status != "OK":
                return []
            _, data = client.uid("SEARCH", "ALL")
            out = []
            for uid in data[0].split():
                _, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
                raw = parts[0][1]
                out.append(email.message_from_bytes(raw, policy=email.policy.default))
            return out

        return self.imap(user, fetch)

    def imap_flags(self, user: str, subject: str, mailbox: str = "INBOX") -> defer.Deferred[set[str]]:
        """The flags of the message with *subject* in *user*'s *mailbox*, over IMAP."""

        def fetch(client: imaplib.IMAP4) -> set[str]:
            client.select(mailbox, readonly=True)
            _, data = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
            [uid] = data[0].split()
            _, parts = client.uid("FETCH", uid, "(FLAGS)")
            flags = parts[0].decode().split("FLAGS (", 1)[1].split(")", 1)[0]
            return set(flags.split()) - {"\\Recent"}

        return self.imap(user, fetch)

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d
