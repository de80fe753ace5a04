"""Fetch a `file_url`, or POST to a `callback_url`, without letting either be turned against the server:
the only code that opens outbound connections.

Imports requests (URL preparation only), urllib3, stdlib and imgsmaller.domains /
imgsmaller.errors; never Flask. Callers pass plain values, so it runs in any thread.

Why this is careful: the account owner chooses their Allowed Domain and so controls
its DNS, so the domain rule alone protects nothing (imgproxy CVE-2025-24354, imagor's
redirects, Next.js CVE-2024-34351). Every hop of a fetch goes through these steps:

1. URL checks, on the string the client actually uses: the URL is prepared the way
   `requests` prepares it, then split with `urllib3.util.parse_url`, and the
   connection is built from exactly those parts, so no second parser can disagree
   (`http://evil.test\\@img.example.com/`). http/https only; no user info; no
   backslash, whitespace or control characters; port 80 or 443. -> 422
2. The host (lower-cased, trailing dot dropped, IDNA) must equal the Allowed Domain
   or end with "." + domain. -> 403
3. The name is resolved once and every answer must be a public unicast address;
   one bad answer refuses the whole fetch. IPv6 forms that carry an IPv4 address
   are judged by it: IPv4-mapped and NAT64 (64:ff9b::/96) pass when it is public,
   6to4 and Teredo never pass (deprecated relays). Python's `is_global` is backed
   by explicit IANA special-purpose lists (0.0.0.0/8, 100.64/10, 192.0.0.0/24,
   198.18/15, fc00::/7, fe80::/10, …) and IPv6 must lie in 2000::/3. Numeric
   hosts (`2130706433`, `0x7f.1`, `127.1`) are never parsed here: they are
   refused by what they resolve to. -> 422
4. The TCP connection goes to a vetted address (no second lookup, so DNS rebinding
   has nothing to rebind); Host, TLS SNI and certificate verification use the name.

Redirects are followed by hand, at most MAX_REDIRECTS hops, each one a new hop
through all four steps (Allowed Domain included). Image hosts and CDNs commonly
redirect (http -> https, a bare domain -> www, a signed storage URL), and refusing
them would break ordinary use for no gain once every hop is re-checked.

Bounds: a connect timeout and a per-read idle timeout, plus a total deadline of
`timeout_s` for the whole fetch (DNS, connect, TLS, headers, body, redirects) enforced
by a watchdog that shuts the socket down, so a server dripping a byte a second is cut
off. `Accept-Encoding: identity` is sent and a compressed answer is refused (a gzip
bomb is never inflated). Content-Length is checked first, then the streamed body is
capped at `max_bytes` (413, never a truncated body). Proxy environment variables are
never read: urllib3 connections are made directly (the equivalent of requests'
`trust_env=False`). The bytes are returned as they are; their type is decided later
by their content, not by Content-Type.

A webhook (`post_json`, webhooks.py) takes the same four steps with the field named
`callback_url`, once: no redirect is followed for a POST (a 3xx is handed back as the
answer, and the caller counts it as a failed delivery), and at most
MAX_POST_ANSWER_BYTES of the answer are read, then dropped. `check_callback_url` is
steps 1 and 2 alone, for the request that names the URL: every off-domain or
malformed URL is then a 422 naming callback_url, before any job exists.

`allow_private=True` (setting FETCH_ALLOW_PRIVATE, for self-hosters on a private
network) skips only the address-class check of step 3 for private and loopback
ranges. Refused even then: link-local (169.254.0.0/16, fe80::/10) and the cloud
instance-metadata addresses outside it (_NEVER_V4/_NEVER_V6), in every IPv6 form
that wraps them, because a private image server is never there while instance
credentials are; and the unspecified address (0.0.0.0, ::), multicast and
broadcast, which are never an image host.
"""

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
import urllib.parse

import certifi
import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util import parse_url
from urllib3.util.ssl_match_hostname import CertificateError

from imgsmaller.addresses import address_is_public
from imgsmaller.domains import InvalidDomainError, host_is_allowed, normalize_host
from imgsmaller.errors import (
    DomainNotAllowedError,
    DomainNotSetError,
    FetchError,
    PayloadTooLargeError,
)

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048
# The TCP connect alone never gets more than this; the total deadline still applies.
CONNECT_TIMEOUT_S = 5.0
# Longest silence tolerated between two reads; the total deadline still applies.
READ_IDLE_TIMEOUT_S = 10.0
ALLOWED_PORTS = {80, 443}
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
CHUNK_SIZE = 64 * 1024
USER_AGENT = "ImgSmaller/1.0 (image fetcher)"
# A webhook receiver's answer is not used (only its status is); this much is read, then dropped.
MAX_POST_ANSWER_BYTES = 4096

def fetch_image(url, *, allowed_domain, max_bytes, timeout_s, allow_private=False):
    """Return the body at `url`, or raise a ServiceError (403, 413 or 422) saying why not.

    `allowed_domain` is the account's normalised Allowed Domain (None or "" if unset);
    `max_bytes` the size cap; `timeout_s` the total deadline for the whole fetch,
    redirects included; `allow_private` lets internal addresses through (see above).
    """
    if not allowed_domain:
        raise DomainNotSetError()
    # Steps 1 and 2 of the first hop cost nothing, so they come before any thread.
    target = _check_hop(url, allowed_domain, first=True)
    deadline = _Deadline(timeout_s)
    try:
        for hop in range(MAX_REDIRECTS + 1):
            if hop:
                target = _check_hop(url, allowed_domain, first=False)
            addresses = _resolve(target.host, target.port, deadline)
            _check_addresses(addresses, allow_private)
            body_or_location = _get(target, addresses, max_bytes, deadline)
            if isinstance(body_or_location, bytes):
                return body_or_location
            url = urllib.parse.urljoin(target.url, body_or_location)
        raise FetchError(f"The file_url redirected more than {MAX_REDIRECTS} times.")
    finally:
        deadline.cancel()


def check_callback_url(url, allowed_domain):
    """Steps 1 and 2 for a callback_url: the URL as it will be requested, or FetchError (422) naming callback_url."""
    return _check_callback(url, allowed_domain).url


def _check_callback(url, allowed_domain):
    if not allowed_domain:
        raise FetchError("A callback_url needs an allowed domain: set yours in the dashboard.")
    target = _check_url(url, "callback_url")
    if not host_is_allowed(target.host, allowed_domain):
        raise FetchError("The callback_url host is not your allowed domain or one of its subdomains.")
    return target


def post_json(url, body, headers, *, allowed_domain, timeout_s, allow_private=False):
    """POST `body` (JSON bytes) to the callback_url `url`; return the answer's HTTP status.

    Steps 1-4 as for a fetch, with `timeout_s` for all of it; a redirect is not followed
    (its 3xx status is returned). FetchError (422) says why nothing was delivered.
    """
    target = _check_callback(url, allowed_domain)
    deadline = _Deadline(timeout_s, "callback_url", "Delivering to")
    try:
        addresses = _resolve(target.host, target.port, deadline)
        _check_addresses(addresses, allow_private, "callback_url")
        headers = {**headers, "Content-Type": "application/json", "Content-Length": str(len(body))}
        return _exchange(target, addresses, deadline, "POST", headers, body,
                         lambda response: _drain(response, deadline))
    finally:
        deadline.cancel()


def _drain(response, deadline):
    """A POST's answer is its status: at most MAX_POST_ANSWER_BYTES of the body are read, then dropped.

    Once the status line and headers have come, a body that drips, breaks off or never ends
    changes nothing (the deadline still bounds the wait)."""
    received = 0
    try:
        while received < MAX_POST_ANSWER_BYTES and not deadline.expired:
            chunk = response.read(MAX_POST_ANSWER_BYTES - received, decode_content=False)
            if not chunk:
                break
            received += len(chunk)
    except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError):
        pass
    return response.status


def _check_hop(url, allowed_domain, *, first):
    """Steps 1 and 2 for one hop: a _Target, or FetchError (422) / DomainNotAllowedError (403)."""
    target = _check_url(url)
    if not host_is_allowed(target.host, allowed_domain):
        if first:
            raise DomainNotAllowedError()
        raise DomainNotAllowedError(
            "The file_url redirected to a host that is not your allowed domain "
            "or one of its subdomains."
        )
    return target


class _Target:
    """The parts of a checked URL, taken from the parser the connection uses."""

    def __init__(self, url, scheme, host, port, request_uri, host_header):
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port
        self.request_uri = request_uri
        self.host_header = host_header


def _check_url(url, what="file_url"):
    """Step 1: return a _Target for `url`, or raise FetchError (422); `what` names the field in messages."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError(f"The {what} is not a valid URL.")
    if len(url) > MAX_URL_LENGTH:
        raise FetchError(f"The {what} is too long (at most {MAX_URL_LENGTH} characters).")
    if "\\" in url or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise FetchError(
            f"The {what} must not contain spaces, control characters or backslashes."
        )
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in DEFAULT_PORTS:
        raise FetchError(f"The {what} must use http or https.")
    try:
        raw = parse_url(url)
        prepared = requests.PreparedRequest()
        prepared.prepare_url(url, None)
        parts = parse_url(prepared.url)
    except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError):
        raise FetchError(f"The {what} is not a valid URL.") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise FetchError(f"The {what} must use http or https.")
    authority = url.split("//", 1)[1] if "//" in url else ""
    authority = authority.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if parts.auth is not None or raw.auth is not None or "@" in authority:
        raise FetchError(f"The {what} must not contain a user name or password.")
    if not parts.host:
        raise FetchError(f"The {what} is not a valid URL.")
    port = parts.port if parts.port is not None else DEFAULT_PORTS[parts.scheme]
    # requests drops a ":0" port while preparing: judge the port as written too.
    if port not in ALLOWED_PORTS or (raw.port is not None and raw.port not in ALLOWED_PORTS):
        raise FetchError(f"The {what} may only use port 80 or 443.")
    try:
        host = normalize_host(parts.host)
    except InvalidDomainError:
        # An IP literal such as [::1] lands here: it can never be the Allowed Domain.
        host = parts.host.lower()
    host_header = host if port == DEFAULT_PORTS[parts.scheme] else f"{host}:{port}"
    return _Target(prepared.url, parts.scheme, host, port, parts.request_uri, host_header)


def _resolve(host, port, deadline):
    """Step 3a: the one DNS lookup for this hop, bounded by the deadline."""
    outcome = {}

    def lookup():
        try:
            # The name as given, like every HTTP client: a numeric form such as
            # 0x7f.1 becomes 127.0.0.1 here and is refused by what it resolved to.
            outcome["answer"] = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError) as error:
            outcome["error"] = error

    # getaddrinfo cannot be cancelled; a daemon thread lets the deadline win.
    thread = threading.Thread(target=lookup, name="fetch-resolve", daemon=True)
    thread.start()
    thread.join(deadline.remaining())
    if thread.is_alive():
        raise deadline.error()
    answer = [
        (family, sockaddr)
        for family, _type, _proto, _name, sockaddr in outcome.get("answer") or ()
        if family in (socket.AF_INET, socket.AF_INET6)
    ]
    if not answer:
        raise FetchError(f"The {deadline.what} host could not be resolved.")
    unique = []
    for entry in answer:
        if entry not in unique:
            unique.append(entry)
    return unique


def _check_addresses(addresses, allow_private, what="file_url"):
    """Step 3b: refuse the fetch if any resolved address is not a public destination."""
    for _family, sockaddr in addresses:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if not address_is_public(address, allow_private=allow_private):
            log.info("%s refused: host resolves to %s", what, address)
            raise FetchError(
                f"The {what} host resolves to an internal or reserved address, "
                "which is not allowed."
            )


def _get(target, addresses, max_bytes, deadline):
    """Step 4: GET from a vetted address; return the body (bytes) or a Location (str)."""
    headers = {
        "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.1",
        "Accept-Encoding": "identity",
    }
    return _exchange(target, addresses, deadline, "GET", headers, None,
                     lambda response: _read_response(response, max_bytes, deadline))


def _exchange(target, addresses, deadline, method, headers, body, read):
    """Step 4 for any method: one request to a vetted address; `read(response)` is the answer.

    Every failure is a FetchError naming `deadline.what` (a 413 from `read` passes through)."""
    what = deadline.what
    conn = None
    try:
        conn = _connect(target, addresses, deadline)
        conn.request(
            method,
            target.request_uri,
            body=body,
            headers={"Host": target.host_header, "User-Agent": USER_AGENT, **headers, "Connection": "close"},
            preload_content=False,
            decode_content=False,
        )
        conn.timeout = min(READ_IDLE_TIMEOUT_S, deadline.remaining())
        response = conn.getresponse()
        try:
            return read(response)
        finally:
            response.close()
    except (FetchError, PayloadTooLargeError):
        raise
    except (ssl.SSLCertVerificationError, CertificateError):
        if deadline.expired:
            raise deadline.error() from None
        raise FetchError(f"The {what} host's TLS certificate could not be verified.") from None
    except ssl.SSLError:
        if deadline.expired:
            raise deadline.error() from None
        raise FetchError(f"Could not make a TLS connection to the {what} host.") from None
    except (TimeoutError, urllib3.exceptions.TimeoutError):
        if deadline.expired or deadline.remaining() < 0.05:
            raise deadline.error() from None
        raise FetchError(
            f"The {what} server sent nothing for {READ_IDLE_TIMEOUT_S:g} seconds."
        ) from None
    except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError, ValueError) as error:
        if deadline.expired:
            raise deadline.error() from None
        if isinstance(error, _ConnectFailed):
            raise FetchError(f"Could not connect to the {what} host.") from None
        log.info("%s %s failed: %r", what, method, error)
        raise FetchError(f"The {what} server sent an invalid or incomplete response.") from None
    finally:
        deadline.release()
        if conn is not None:
            conn.close_all()


def _read_response(response, max_bytes, deadline):
    status = response.status
    if status in REDIRECT_STATUSES:
        location = response.headers.get("Location")
        if not location:
            raise FetchError("The file_url server sent a redirect without a Location.")
        return location
    if status >= 400:
        raise FetchError(f"The file_url server answered HTTP {status}.")
    if status != 200:
        raise FetchError(f"The file_url server answered HTTP {status} instead of 200.")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError(
            "The file_url server sent a compressed response (Content-Encoding); "
            "the image must be served uncompressed."
        )
    transfer = response.headers.get("Transfer-Encoding", "").strip().lower()
    if transfer not in ("", "chunked"):
        raise FetchError(
            "The file_url server sent a compressed response (Transfer-Encoding); "
            "the image must be served uncompressed."
        )
    declared = _content_length(response.headers)
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes)
    chunks = []
    received = 0
    while True:
        # Asking for one byte past the cap tells "exactly the cap" from "over it".
        chunk = response.read(min(CHUNK_SIZE, max_bytes + 1 - received), decode_content=False)
        if deadline.expired:
            raise deadline.error()
        if not chunk:
            break
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    if declared is not None and received != declared:
        raise FetchError("The file_url server sent an invalid or incomplete response.")
    if not received:
        raise FetchError("The file_url server sent an empty response.")
    return b"".join(chunks)


def _content_length(headers):
    """The declared body length, None when absent; FetchError when malformed or conflicting."""
    values = headers.getlist("Content-Length")
    if not values or "chunked" in headers.get("Transfer-Encoding", "").lower():
        return None
    lengths = {part.strip() for value in values for part in value.split(",")}
    if len(lengths) != 1 or not next(iter(lengths)).isdigit():
        raise FetchError("The file_url server sent an invalid Content-Length.")
    return int(next(iter(lengths)))


def _too_large(max_bytes):
    return PayloadTooLargeError.for_limit(max_bytes)


class _ConnectFailed(OSError):
    """No vetted address accepted a TCP connection."""


def _connect(target, addresses, deadline):
    if target.scheme == "https":
        conn = _PinnedHTTPSConnection(
            target.host,
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            ssl_context=_tls_context(),
        )
    else:
        conn = _PinnedHTTPConnection(target.host, target.port)
    conn.pinned_addresses = addresses
    conn.deadline = deadline
    conn.timeout = min(CONNECT_TIMEOUT_S, deadline.remaining())
    try:
        conn.connect()
    except BaseException:
        conn.close_all()
        raise
    return conn


def _tls_context():
    """Certificate and host name verification against certifi's CA bundle (tests replace this)."""
    context = ssl.create_default_context(cafile=certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _PinnedMixin:
    """Connect to the vetted addresses only, never to whatever the name resolves to now."""

    pinned_addresses = ()
    deadline = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # http.client's responses, kept so they are closed even when urllib3 fails
        # while wrapping one (a conflicting Content-Length raises in its constructor).
        self.raw_responses = []
        self.response_class = self._new_raw_response

    def _new_raw_response(self, *args, **kwargs):
        response = http.client.HTTPResponse(*args, **kwargs)
        self.raw_responses.append(response)
        return response

    def close_all(self):
        """Close the connection and every response read from it (not `close`:
        http.client calls that itself while handing a response over)."""
        for response in self.raw_responses:
            response.close()
        self.raw_responses.clear()
        self.close()

    def _new_conn(self):
        last_error = None
        for family, sockaddr in self.pinned_addresses:
            if self.deadline.expired:
                break
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(min(self.timeout, self.deadline.remaining()))
                self.deadline.watch(sock)
                sock.connect(sockaddr)
            except OSError as error:
                sock.close()
                last_error = error
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        if self.deadline.expired:
            raise self.deadline.error()
        if isinstance(last_error, TimeoutError) and self.deadline.remaining() < 0.05:
            raise self.deadline.error()
        if isinstance(last_error, TimeoutError):
            raise FetchError(f"Could not connect to the {self.deadline.what} host (connection timed out).")
        raise _ConnectFailed(str(last_error))


class _PinnedHTTPConnection(_PinnedMixin, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_PinnedMixin, HTTPSConnection):
    pass


class _Deadline:
    """The total time budget of one fetch; when it runs out, watched sockets are shut down.

    Per-read timeouts restart with every byte, so only a watchdog stops a server
    that drips one byte at a time (through the headers, the TLS handshake or the body).
    """

    def __init__(self, seconds, what="file_url", doing="Fetching"):
        self.seconds = seconds
        self.what, self.doing = what, doing  # for messages: "Fetching the file_url timed out ..."
        self.ends = time.monotonic() + seconds
        self.expired = False
        # Duplicates of the watched descriptors, owned here: TLS wrapping detaches
        # the original socket object, and a descriptor number alone could be reused
        # by another socket once the connection is closed. shutdown() on a duplicate
        # stops the one underlying connection, plain or TLS, at any stage.
        self._sockets = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self):
        return max(0.0, self.ends - time.monotonic())

    def error(self):
        return FetchError(f"{self.doing} the {self.what} timed out after {self.seconds:g} seconds.")

    def watch(self, sock):
        with self._lock:
            if self.expired:
                raise self.error()
            self._sockets.append(sock.dup())

    def release(self):
        """Close this hop's duplicates; the fetch closes its own sockets."""
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def cancel(self):
        self.release()
        self._timer.cancel()

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    # Wakes the fetching thread's blocked recv (it sees EOF).
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
