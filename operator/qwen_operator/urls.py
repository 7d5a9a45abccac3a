"""HTTP(S) endpoints a QwenService may name, and the admin's allow-list for them (pure).

An allow-list is only as good as its agreement with the client that sends the request: a check that
reads ``http://evil.example\\.allowed.example/`` as a host under ``allowed.example`` while the client
connects to ``evil.example`` admits what it means to refuse. So a URL is parsed once, here, strictly,
into an :class:`Endpoint`; the allow-list judges that Endpoint, and the request is sent to the URL the
Endpoint builds (:meth:`Endpoint.url`), which the client takes as it is (``encoded=True``: no second
parse, no normalisation).

The parse refuses, instead of normalising, anything two parsers could read differently: backslashes,
percent-escapes, user info, a query or fragment, ``.``/``..`` and empty path segments, empty or
over-long host labels, a trailing dot, a host that some resolver would read as a number
(``127.1``, ``0x7f.1``, ``2130706433``), IPv4-mapped IPv6 literals and IPv6 zones, non-ASCII text
and white space. The CRD's pattern (:data:`URL_PATTERN`) refuses most of these at admission; the
operator refuses the rest and says why in the service's status.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from yarl import URL

MAX_URL_LENGTH = 1024
DEFAULT_PORTS = {"http": 80, "https": 443}

_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
# Unreserved characters and most sub-delims: no '.' (below), '%', '@', and no ',' (the allow-list's
# separator in QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS).
_PCHAR = r"[a-zA-Z0-9_~!$&'()*+;=:-]"
_PCHAR_DOT = r"[a-zA-Z0-9._~!$&'()*+;=:-]"
# A path segment that is not '.' or '..' (RE2 and the Rust regex crate have no look-ahead): it starts
# with another character, or with one dot and then another character, or with two dots and then any.
_SEGMENT = rf"(?:{_PCHAR}{_PCHAR_DOT}*|\.{_PCHAR}{_PCHAR_DOT}*|\.\.{_PCHAR_DOT}+)"
# The CRD's pattern for spec.autoscaling.metrics.prometheus.url (Go's RE2 and pydantic's Rust regex
# read it alike): scheme, a host of non-empty labels or a bracketed IPv6 literal, an optional port, and
# a path of non-empty, non-dot segments; no user info, query, fragment, percent-escape or backslash.
URL_PATTERN = (
    rf"^https?://(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[1-9][0-9]{{0,4}})?"
    rf"(?:/{_SEGMENT})*/?$"
)
_URL = re.compile(
    r"^(?P<scheme>[a-z]+)://(?P<host>\[[^\]/]*\]|[^/:\[\]]*)(?::(?P<port>[^/]*))?(?P<path>/.*)?$",
    re.DOTALL,
)
_HOST_LABEL = re.compile(rf"^{_LABEL}$")
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_SEGMENT_RE = re.compile(rf"^{_SEGMENT}$")


class UnsafeURL(ValueError):
    """A URL the operator will not send a request to; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """One parsed http(s) base URL: lower-case host (a DNS name, an IPv4 address, or an IPv6 address
    without brackets), the port (the scheme's default when none was given) and a path without a trailing
    slash (``""`` for the root)."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    def url(self, suffix: str = "") -> URL:
        """The URL the client is given for ``suffix`` (a path under this one, e.g. ``/api/v1/query``),
        taken as it is: the client does not parse or normalise it again."""
        if suffix and (not suffix.startswith("/") or not all(map(_SEGMENT_RE.match, suffix[1:].split("/")))):
            raise ValueError(f"not a plain path: {suffix!r}")
        return URL(f"{self}{suffix}", encoded=True)

    def under(self, prefix: Endpoint) -> bool:
        """Same scheme, host and port, and this path at or below ``prefix``'s (at a segment boundary)."""
        same_origin = (self.scheme, self.host, self.port) == (prefix.scheme, prefix.host, prefix.port)
        return same_origin and (self.path + "/").startswith(prefix.path + "/")


def _host(text: str) -> str:
    """The host, lower-cased, or UnsafeURL."""
    if text.startswith("["):
        try:
            ip = ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise UnsafeURL(f"{text} is not an IPv6 address (zones are not accepted)") from None
        if ip.ipv4_mapped is not None or ip.sixtofour is not None or ip.teredo is not None:
            raise UnsafeURL(f"{text} embeds an IPv4 address: name that address instead")
        return ip.compressed
    host = text.lower()
    if not host:
        raise UnsafeURL("the URL has no host")
    if len(host) > 253:
        raise UnsafeURL("the host name is longer than 253 characters")
    labels = host.split(".")
    if not all(_HOST_LABEL.match(label) for label in labels):
        raise UnsafeURL(
            f"host {host!r} is not a DNS name of non-empty labels of letters, digits and '-' "
            "(at most 63 each, no trailing dot), nor an IP address"
        )
    if _NUMERIC_LABEL.match(labels[-1]):
        try:
            ip4 = ipaddress.IPv4Address(host)
        except ValueError:
            raise UnsafeURL(f"host {host!r} looks like a number some resolvers read as an address") from None
        if str(ip4) != host:  # pragma: no cover - IPv4Address refuses leading zeros and short forms
            raise UnsafeURL(f"host {host!r}: write the address as {ip4}")
    return host


def parse(text: str) -> Endpoint:
    """The one reading of ``text`` the operator acts on; UnsafeURL with the reason otherwise."""
    if len(text) > MAX_URL_LENGTH:
        raise UnsafeURL(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise UnsafeURL("the URL has white space, control or non-ASCII characters (use punycode)")
    for char, what in (("\\", "a backslash"), ("%", "a percent-escape"), ("@", "user info or '@'")):
        if char in text:
            raise UnsafeURL(f"the URL has {what}, which HTTP clients read differently")
    if "?" in text or "#" in text:
        raise UnsafeURL("the URL has a query or a fragment")
    match = _URL.match(text)
    if match is None or match["scheme"] not in DEFAULT_PORTS:
        raise UnsafeURL("the URL must be http://HOST[:PORT][/PATH] or https://... (lower-case scheme)")
    scheme, port_text, path = match["scheme"], match["port"], match["path"] or ""
    host = _host(match["host"])
    port = DEFAULT_PORTS[scheme]
    if port_text is not None:
        if not re.fullmatch(r"[1-9][0-9]{0,4}", port_text) or int(port_text) > 65535:
            raise UnsafeURL(f"port {port_text!r} is not a number from 1 to 65535 (no leading zeros)")
        port = int(port_text)
    path = path.removesuffix("/")
    if path and not all(_SEGMENT_RE.match(seg) for seg in path[1:].split("/")):
        raise UnsafeURL(
            "the path has an empty, '.' or '..' segment, or a character other than letters, digits and "
            "-._~!$&'()*+;=:"
        )
    endpoint = Endpoint(scheme, host, port, path)
    # The client's own parser must read the URL we send exactly as we did (it is given the URL as it is,
    # but a disagreement here means this parse missed a case: refuse rather than guess).
    sent = endpoint.url()
    if (sent.scheme, sent.raw_host, sent.port, sent.raw_path.rstrip("/")) != (scheme, host, port, path):
        raise UnsafeURL("the HTTP client reads this URL differently")  # pragma: no cover
    return endpoint


# ---------------------------------------------------------------------------------- the allow-list


@dataclass(frozen=True)
class Rule:
    """One entry of the admin's allow-list: a URL prefix, a host, or every host under a domain
    (``*.suffix``); with ``namespace``, for that namespace's services only."""

    namespace: str | None
    prefix: Endpoint | None = None
    host: str | None = None
    suffix: str | None = None

    def admits(self, endpoint: Endpoint, namespace: str | None) -> bool:
        if self.namespace is not None and self.namespace != namespace:
            return False
        if self.prefix is not None:
            return endpoint.under(self.prefix)
        if ":" in endpoint.host or _is_ipv4(endpoint.host):  # names only; an address needs a prefix entry
            return self.host == endpoint.host
        if self.suffix is not None:
            return endpoint.host.endswith("." + self.suffix)
        return self.host == endpoint.host


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def rule(entry: str) -> Rule:
    """One allow-list entry: ``[NAMESPACE=]URL-PREFIX``, ``[NAMESPACE=]HOST`` or
    ``[NAMESPACE=]*.DOMAIN``; UnsafeURL (the admin's error) otherwise."""
    text = entry.strip()
    namespace: str | None = None
    head, sep, rest = text.partition("=")
    if sep and "://" not in head:
        if not _NAMESPACE.match(head):
            raise UnsafeURL(f"allow-list entry {entry!r}: {head!r} is not a namespace name")
        namespace, text = head, rest.strip()
    try:
        if "://" in text:
            return Rule(namespace, prefix=parse(text))
        if text.startswith("*."):
            return Rule(namespace, suffix=_host(text[2:]))
        if text.startswith("[") or _is_ipv4(text):
            return Rule(namespace, host=_host(text))
        if text and all(_HOST_LABEL.match(label) for label in text.lower().split(".")):
            return Rule(namespace, host=_host(text))
    except UnsafeURL as exc:
        raise UnsafeURL(f"allow-list entry {entry!r}: {exc}") from None
    raise UnsafeURL(
        f"allow-list entry {entry!r} is not a URL prefix (https://host:port/path), a host name or *.domain"
    )


def rules(entries: Iterable[str]) -> tuple[Rule, ...]:
    return tuple(rule(e) for e in entries if e.strip())


def allowed(endpoint: Endpoint, allow: Sequence[Rule], namespace: str | None = None) -> bool:
    """Whether the admin's allow-list admits ``endpoint`` for a service in ``namespace``."""
    return any(r.admits(endpoint, namespace) for r in allow)


def url_allowed(url: str, entries: Sequence[str], namespace: str | None = None) -> bool:
    """The allow-list's verdict on a URL as text (unparseable or unsafe: refused)."""
    try:
        return allowed(parse(url), rules(entries), namespace)
    except UnsafeURL:
        return False
