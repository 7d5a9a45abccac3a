"""A URL a tenant names is judged on the one parse the operator then sends: the allow-list and the HTTP
client never disagree on where a request goes.

The reviewer's reproductions (issue 29) are the first cases; a property test then draws URLs from a
grammar of the tricky parts (backslashes, escapes, dot segments, IPv6, ports, user info, unicode) and
sends every URL the allow-list accepts through aiohttp to recording listeners on 127.0.0.1: the name the
client resolved (or the address it connected to), the port, and the path the listener received must be
the ones the allow-list judged.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import pytest
import re2
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_operator import api, urls

# ------------------------------------------------------------------------------- the reported bypasses


@pytest.mark.parametrize(
    ("url", "entry"),
    [
        ("http://evil.com\\.allowed.com/", "*.allowed.com"),  # urllib3 ends the host at the backslash
        ("http://169.254.169.254\\.allowed.com/", "*.allowed.com"),
        ("https://gw:9090/team-a/../team-b", "https://gw:9090/team-a/"),  # sent as /team-b/...
        ("https://gw:9090/team-a/%2e%2e/team-b", "https://gw:9090/team-a/"),
        ("https://gw:9090/team-a/%2E%2e/team-b", "https://gw:9090/team-a/"),
        ("https://gw:9090/team-a/./../team-b", "https://gw:9090/team-a/"),
        ("https://gw:9090/team-a/.%2e/team-b", "https://gw:9090/team-a/"),
        ("http://ex%61mple.allowed.com/", "*.allowed.com"),  # an escape in the host
        ("http://a..allowed.com/", "*.allowed.com"),  # an empty label
        ("http://a.allowed.com./", "*.allowed.com"),  # a trailing dot
        ("http://evil.com#.allowed.com/", "*.allowed.com"),
        ("http://evil.com?.allowed.com/", "*.allowed.com"),
        ("http://prom.allowed.com@evil.com/", "prom.allowed.com"),
        ("http://evil.com:80@prom.allowed.com/", "prom.allowed.com"),
        ("http://prom.allowed.com\t/", "prom.allowed.com"),
        ("http://prom.allowed.com /", "prom.allowed.com"),
        ("http://prom.allowed.com\n.evil.com/", "*.allowed.com"),
        ("http://\uff50rom.allowed.com/", "*.allowed.com"),  # a full-width p (NFKC folds it to p)
        ("HTTP://prom.allowed.com/", "prom.allowed.com"),
        ("http://prom.allowed.com:080/", "http://prom.allowed.com:80/"),  # leading zero
        ("http://prom.allowed.com:0/", "prom.allowed.com"),
        ("http://prom.allowed.com:65536/", "prom.allowed.com"),
        ("http://prom.allowed.com:/", "prom.allowed.com"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254"),  # an IPv4 inside IPv6
        ("http://[fe80::1%25eth0]/", "*.allowed.com"),  # a zone
        ("http://127.1/", "127.0.0.1"),  # numbers some resolvers read as 127.0.0.1
        ("http://2130706433/", "*.allowed.com"),
        ("http://0x7f.1/", "*.allowed.com"),
        ("http://a.allowed.com.0x7f/", "*.allowed.com"),
        ("https://gw:9090/team-a//team-b", "https://gw:9090/team-a/"),  # an empty segment
    ],
)
def test_a_url_two_parsers_could_read_differently_is_refused(url: str, entry: str) -> None:
    with pytest.raises(urls.UnsafeURL):
        urls.parse(url)
    assert urls.url_allowed(url, [entry]) is False


def test_what_the_allow_list_judges_is_what_is_sent() -> None:
    endpoint = urls.parse("https://GW.team-a.svc:9090/team-a/prom/")
    assert endpoint == urls.Endpoint("https", "gw.team-a.svc", 9090, "/team-a/prom")
    sent = endpoint.url("/api/v1/query")
    assert (sent.raw_host, sent.port, sent.raw_path) == ("gw.team-a.svc", 9090, "/team-a/prom/api/v1/query")
    assert str(urls.parse("http://[0:0::1]:9090")) == "http://[::1]:9090"
    assert urls.parse("https://prom.svc:443/").url().port == 443
    with pytest.raises(ValueError, match="not a plain path"):
        endpoint.url("/../x")


@pytest.mark.parametrize(
    ("url", "entries", "namespace", "expect"),
    [
        ("https://prom.a.svc:9090/", ["team-a=https://prom.a.svc:9090/"], "team-a", True),
        ("https://prom.a.svc:9090/", ["team-a=https://prom.a.svc:9090/"], "team-b", False),
        ("https://prom.a.svc:9090/", ["team-a=*.a.svc", "prom.b.svc"], "team-a", True),
        ("https://prom.a.svc:9090/", ["team-a=*.a.svc", "prom.b.svc"], "team-b", False),
        ("https://prom.b.svc/", ["team-a=*.a.svc", "prom.b.svc"], "team-b", True),  # for every namespace
        ("http://10.0.0.5:9090/x", ["*.svc", "10.0.0.5"], "ns", True),  # an address, named
        ("http://10.0.0.5:9090/x", ["*.0.0.5"], "ns", False),  # a domain entry admits names only
        ("http://[::1]:9090/x", ["http://[::1]:9090/"], "ns", True),
    ],
)
def test_an_entry_may_be_meant_for_one_namespace(
    url: str, entries: list[str], namespace: str, expect: bool
) -> None:
    assert urls.url_allowed(url, entries, namespace) is expect


@pytest.mark.parametrize(
    "entry",
    ["https://gw/a/../b", "*.", "*.a..b", "evil.com\\x", "Team-A=https://x/", "ns=", "http://x?y", "a b"],
)
def test_an_allow_list_entry_that_cannot_be_read_exactly_is_the_admin_s_error(entry: str) -> None:
    with pytest.raises(urls.UnsafeURL, match="allow-list entry"):
        urls.rule(entry)


# ------------------------------------------------------------------------------ the CRD's own pattern

SAFE = [
    "http://prometheus-operated.monitoring.svc:9090",
    "https://prom.team-a.svc:9090/team-a/",
    "http://10.0.0.5:9090/select/0/prometheus",
    "http://[fd00::5]:9090/api/prom",
    "https://thanos-query.svc/prometheus;tenant=a/x~y_z",
]
UNSAFE_FOR_THE_PATTERN = [
    "http://evil.com\\.allowed.com/",
    "https://gw:9090/team-a/../team-b",
    "https://gw:9090/team-a/%2e%2e/team-b",
    "https://gw:9090/team-a/.",
    "http://ex%61mple.com/",
    "http://a..b/",
    "http://a.b./",
    "http://u@h/",
    "http://h/?q",
    "http://h:080/",
    "http://h//x",
    "http://bücher.example/",
]


@pytest.mark.parametrize("url", SAFE)
def test_the_crd_admits_a_plain_url(url: str) -> None:
    assert re2.search(urls.URL_PATTERN, url), "the API server (RE2) refuses it"
    assert api.PrometheusSpec.model_validate({"url": url}).url == url
    urls.parse(url)


@pytest.mark.parametrize("url", UNSAFE_FOR_THE_PATTERN)
def test_the_crd_refuses_what_the_operator_would(url: str) -> None:
    assert not re2.search(urls.URL_PATTERN, url), "the API server (RE2) admits it"
    with pytest.raises(ValueError, match="should match pattern"):
        api.PrometheusSpec.model_validate({"url": url})
    with pytest.raises(urls.UnsafeURL):
        urls.parse(url)


# ------------------------------------------------------------------------------------- property test


class Recorder:
    """HTTP listeners on 127.0.0.1 that record the path and Host header of every request."""

    def __init__(self, count: int) -> None:
        self.seen: list[tuple[int, str, str | None]] = []  # (listener port, path, Host)
        self.servers: list[ThreadingHTTPServer] = []
        owner = self
        for _ in range(count):

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self) -> None:
                    port = self.server.server_address[1]
                    owner.seen.append((int(port), self.path, self.headers.get("Host")))
                    body = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *args: Any) -> None:
                    pass

            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)
        self.ports = [int(s.server_address[1]) for s in self.servers]

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


class RecordingResolver(AbstractResolver):
    """DNS as the client asks it: records every name, and answers 127.0.0.1 for all of them."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append((host, port))
        return [
            ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0)
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder(2)
    yield rec
    rec.close()


TRICKY = ["\\", "%2e", "%2E", "%2f", "%5c", "%", "..", ".", "/", "//", "@", ":", "#", "?", "\t", " ", "é",
          "\uff50", "[", "]"]  # fmt: skip


def url_strategy(ports: list[int]) -> st.SearchStrategy[str]:
    """URLs that are mostly plausible, each with a fair chance of one or more tricky parts."""
    hosts = ["prom.allowed.test", "a.allowed.test", "evil.test", "allowed.test", "127.0.0.1",
             "PROM.Allowed.Test", "xn--bcher-kva.allowed.test", "127.1", "[::1]", "[::ffff:127.0.0.1]",
             "2130706433", "0x7f.1"]  # fmt: skip
    plain = ["team-a", "team-b", "api", "prom", "x", "a;b", "~u", "...", ".x"]
    odd = ["..", ".", "", "%2e%2e", "%2E.", ".%2e", "a%2fb", "a\\b", "é"]

    @st.composite
    def build(draw: st.DrawFn) -> str:
        def sometimes(chance: int) -> bool:  # one time in ``chance``
            return draw(st.integers(1, chance)) == 1

        scheme = draw(st.sampled_from(["http", "http", "http", "HTTP", "https"]))
        userinfo = draw(st.sampled_from(["u@", "u:p@"])) if sometimes(10) else ""
        host = draw(st.sampled_from(hosts))
        if sometimes(6):  # something tricky inside or after the host
            cut = draw(st.integers(0, len(host)))
            host = host[:cut] + draw(st.sampled_from(TRICKY)) + host[cut:]
        port = (
            draw(st.sampled_from(["", ":0", ":080", ":x", ":"]))
            if sometimes(8)
            else f":{draw(st.sampled_from(ports))}"
        )
        segments = [
            draw(st.sampled_from(odd)) if sometimes(8) else draw(st.sampled_from(plain))
            for _ in range(draw(st.integers(0, 4)))
        ]
        if segments and sometimes(8):  # a tricky character inside a segment
            segments[-1] += draw(st.sampled_from(TRICKY))
        tail = "/" if sometimes(3) else ""
        return f"{scheme}://{userinfo}{host}{port}{''.join('/' + seg for seg in segments)}{tail}"

    return build()


def test_whatever_the_allow_list_accepts_is_exactly_where_the_client_connects(recorder: Recorder) -> None:
    p0, p1 = recorder.ports
    entries = [
        f"http://127.0.0.1:{p0}/team-a/",
        "*.allowed.test",
        "evil.test",
        f"http://prom.allowed.test:{p1}/api/",
    ]
    rules = urls.rules(entries)
    loop = asyncio.new_event_loop()
    resolver = RecordingResolver()
    accepted: list[str] = []

    async def send(endpoint: urls.Endpoint) -> None:
        connector = aiohttp.TCPConnector(resolver=resolver, force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(endpoint.url("/api/v1/query"), allow_redirects=False) as response,
        ):
            assert response.status == 200

    @settings(
        max_examples=600,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(text=url_strategy([p0, p1]))
    def check(text: str) -> None:
        try:
            endpoint = urls.parse(text)
        except urls.UnsafeURL:
            assert not urls.url_allowed(text, entries)
            return
        if not urls.allowed(endpoint, rules) or endpoint.port not in (p0, p1):
            return  # refused, or allowed at a port no listener here has (nothing to connect to)
        accepted.append(text)
        recorder.seen.clear()
        resolver.asked.clear()
        if endpoint.scheme == "https":  # the listeners speak plain HTTP: the TLS handshake fails there
            with pytest.raises(aiohttp.ClientConnectorSSLError):
                loop.run_until_complete(send(endpoint))
            assert resolver.asked == [(endpoint.host, endpoint.port)]
            return
        loop.run_until_complete(send(endpoint))
        ((port, path, host_header),) = recorder.seen
        assert port == endpoint.port
        assert path == endpoint.path + "/api/v1/query"
        if endpoint.host == "127.0.0.1":
            assert resolver.asked == []
        else:
            assert resolver.asked == [(endpoint.host, endpoint.port)]  # the name the client looked up
        assert host_header == endpoint.netloc
        # ... and that host, port and path are inside an entry that admitted them
        assert any(r.admits(urls.Endpoint(endpoint.scheme, endpoint.host, port, path), None) for r in rules)

    try:
        check()
    finally:
        loop.close()
    assert len(set(accepted)) >= 30, f"too few distinct URLs were accepted and sent: {sorted(set(accepted))}"
