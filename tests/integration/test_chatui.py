"""The chat page (images/chatui/app.py, spec.chatUI) as a person uses it: the real Gradio app, in its own
environment (.venv-chatui, images/chatui/requirements.lock), in front of a local server that streams
OpenAI chat completions as vLLM does, driven in Debian's headless Chromium through chromedriver."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.chatserver import ChatServer
from tests.conftest import ROOT
from tests.fakevllm import free_port

pytestmark = pytest.mark.integration

APP = ROOT / "images" / "chatui" / "app.py"
PYTHON = Path(os.environ.get("QWEN_CHATUI_PYTHON", ROOT / ".venv-chatui" / "bin" / "python"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
USER, PASSWORD, KEY = "ann", "correct horse", "sk-test"
TOKENS = 20  # the answer: "t0 t1 ... t19 ", one token every DELAY seconds
DELAY = 0.1


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the chat page exited: {log.read_text()[-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the chat page did not listen within {within:.0f} s: {log.read_text()[-2000:]}")


@pytest.fixture
def model() -> Iterator[ChatServer]:
    server = ChatServer(model="tiny-qwen", delay=DELAY, api_key=KEY)
    yield server
    server.close()


@contextlib.contextmanager
def _page(model: ChatServer, tmp_path: Path, **more: str) -> Iterator[str]:
    """The chat page on 127.0.0.1, configured as the operator renders it (and ``more``); its URL."""
    assert PYTHON.exists(), f"{PYTHON} not found: make test builds it (make chatui-env)"
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
        "QWEN_CHAT_BASE_URL": f"http://{model.address}/v1",
        "QWEN_CHAT_MODEL": "tiny-qwen",
        "QWEN_CHAT_TITLE": "Qwen chat",
        "QWEN_CHAT_USERNAME": USER,
        # As a Secret made with `kubectl create secret --from-file` of an `echo`ed file holds it.
        "QWEN_CHAT_PASSWORD": PASSWORD + "\n",
        "QWEN_CHAT_API_KEY": KEY,
        "QWEN_CHAT_MAX_TOKENS": str(TOKENS),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        **more,
    }
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(PYTHON), str(APP)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log)
        scheme = "https" if more.get("QWEN_CHAT_TLS_CERT") else "http"
        yield f"{scheme}://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def page(model: ChatServer, tmp_path: Path) -> Iterator[str]:
    with _page(model, tmp_path) as url:
        yield url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,800",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        pytest.fail(
            f"no headless Chromium ({CHROMIUM}, {CHROMEDRIVER}): "
            f"apt-get install chromium chromium-driver ({exc})"
        )
    yield driver
    driver.quit()


def _until(check: object, within: float, what: str) -> object:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")


def _log_in(browser: WebDriver, url: str, user: str, password: str) -> None:
    browser.get(url)
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, "input[type=password]"), 30, "the login form")
    browser.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys(user)
    browser.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(password)
    browser.find_element(By.XPATH, "//button[normalize-space()='Login']").click()


def _input(browser: WebDriver) -> Any:
    """The chat box, once it takes input again (it is disabled while an answer streams)."""
    boxes = _until(
        lambda: [
            b
            for b in browser.find_elements(By.CSS_SELECTOR, "textarea")
            if b.is_displayed() and b.is_enabled()
        ],
        30,
        "the chat box to take input",
    )
    return boxes[0]  # type: ignore[index]


def _answer(browser: WebDriver) -> str:
    bots = browser.find_elements(By.CSS_SELECTOR, "[data-testid=bot]")
    return bots[-1].text if bots else ""


def test_a_person_logs_in_asks_and_sees_the_answer_stream_in(
    page: str, browser: WebDriver, model: ChatServer, tmp_path: Path
) -> None:
    _log_in(browser, page, USER, PASSWORD)
    box = _until(lambda: browser.find_elements(By.CSS_SELECTOR, "textarea"), 30, "the chat box")
    box[0].send_keys("What is vLLM?", Keys.ENTER)  # type: ignore[index]
    # The answer grows token by token while the model streams (one every 0.1 s), then is complete.
    seen: list[str] = []
    final = " ".join(f"t{i}" for i in range(TOKENS))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = _answer(browser).strip()
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if text == final:
            break
        time.sleep(0.05)
    assert seen, "no answer appeared"
    assert seen[-1] == final, seen[-3:]
    partial = [t for t in seen if t != final]
    assert partial, "the answer appeared at once, not streamed"
    assert all(final.startswith(t) for t in partial), partial
    # What reached the model: the served name, the user's message, streaming, the service's API key.
    (body,) = model.bodies
    assert body["model"] == "tiny-qwen"
    assert body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "What is vLLM?"}]
    # Two more turns: each reaches the model with the whole conversation so far.
    answer = final + " "  # as streamed, with the last token's space
    for question in ("And who made you?", "Say that again, shorter."):
        _input(browser).send_keys(question, Keys.ENTER)
        _until(
            lambda q=question: len(model.bodies) == 1 + TURNS.index(q), 15, f"the request for {question!r}"
        )
        _until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=bot]")) == len(model.bodies)
               and _answer(browser).strip() == final, 30, "the answer")  # fmt: skip
    said = [body["messages"] for body in model.bodies]
    first, second, third = TURNS
    assert said[1] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": second},
    ]
    assert said[2] == [*said[1], {"role": "assistant", "content": answer}, {"role": "user", "content": third}]
    shot = Path(os.environ.get("QWEN_CHATUI_SCREENSHOT", tmp_path / "chat-ui.png"))
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


TURNS = ("What is vLLM?", "And who made you?", "Say that again, shorter.")


def test_the_login_refuses_a_wrong_password_is_titled_and_a_person_can_log_out(
    page: str, browser: WebDriver, model: ChatServer
) -> None:
    _log_in(browser, page, USER, "wrong")
    _until(lambda: "Incorrect Credentials" in browser.page_source, 15, "the refusal")
    assert not browser.find_elements(By.CSS_SELECTOR, "textarea"), "the chat is not shown"
    assert model.bodies == [], "nothing reached the model"
    browser.get(page)
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, "input[type=password]"), 30, "the login form")
    assert browser.title == "Qwen chat"
    _log_in(browser, page, USER, PASSWORD)
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, "textarea"), 30, "the chat box")
    browser.find_element(
        By.XPATH, "//a[normalize-space()='Log out'] | //button[normalize-space()='Log out']"
    ).click()
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, "input[type=password]"), 15, "the login form again")
    browser.get(page)  # the session is gone, not only the page
    _until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "input[type=password]"), 15, "the login form on reload"
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "textarea")


def test_a_model_that_is_down_is_explained_and_the_question_kept(
    browser: WebDriver, model: ChatServer, tmp_path: Path
) -> None:
    """The model does not answer (nothing listens at its URL): the page says what to do, keeps the
    question in the conversation, and logs one line, with no traceback."""
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    with _page(model, tmp_path, QWEN_CHAT_BASE_URL=nobody) as url:
        _log_in(browser, url, USER, PASSWORD)
        box = _until(lambda: browser.find_elements(By.CSS_SELECTOR, "textarea"), 30, "the chat box")
        box[0].send_keys("Are you there?", Keys.ENTER)  # type: ignore[index]
        _until(lambda: "Try again in a minute" in browser.page_source, 30, "the explanation")
        users = browser.find_elements(By.CSS_SELECTOR, "[data-testid=user]")
        assert [u.text.strip() for u in users] == ["Are you there?"], "the question is kept"
        assert "127.0.0.1" not in _answer(browser), "the page does not show the internal URL"
        assert "Errno" not in browser.page_source
    log = (tmp_path / "app.log").read_text()
    assert "Traceback" not in log
    assert len([line for line in log.splitlines() if "did not answer" in line]) == 1


def _login(url: str, password: str, source: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> int:
    """POST the login form as the page does, from ``source``; the HTTP status."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, source_address=(source, 0), context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, source_address=(source, 0))
    body = urllib.parse.urlencode({"username": USER, "password": password})
    conn.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def test_failed_logins_are_limited_per_client(page: str, model: ChatServer) -> None:
    """Five wrong passwords in a minute, then the client is answered 429 (even with the right one);
    another client still logs in. The Secret's trailing line end is not part of the password."""
    assert [_login(page, "wrong") for _ in range(5)] == [400] * 5
    assert _login(page, "wrong") == 429
    assert _login(page, PASSWORD) == 429, "the right password does not lift the limit"
    assert _login(page, PASSWORD, source="127.0.0.2") == 200, "another client is not affected"
    assert model.bodies == []


def test_the_page_serves_https_with_its_certificate(model: ChatServer, tmp_path: Path) -> None:
    """With QWEN_CHAT_TLS_CERT/KEY (spec.chatUI.tlsSecretRef), the login is offered over HTTPS only."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with _page(model, tmp_path, QWEN_CHAT_TLS_CERT=str(cert), QWEN_CHAT_TLS_KEY=str(key)) as url:
        assert url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        assert _login(url, PASSWORD, context=trusted) == 200
        plain = url.replace("https://", "http://")
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            _login(plain, PASSWORD)
