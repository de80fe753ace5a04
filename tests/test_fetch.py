"""SSRF-safe file_url fetching (imgsmaller.fetch), tested without any network.

How the tests reach "the internet" without leaving the machine:

* `dns` replaces socket.getaddrinfo: names resolve only to what a test says, and
  every lookup is recorded (numeric hosts are parsed locally, never sent to DNS).
* `net` wraps socket.socket.connect: every connection attempt is recorded, a few
  public-looking addresses are translated to loopback test servers (a test-only NAT),
  and any other non-loopback address is refused without sending a packet.
* `Origin` is a loopback HTTP(S) server that records every connection it accepts
  and answers with scripted raw bytes, so drips, chunked floods, bad lengths and
  compressed bombs are easy to serve.

So "no connection was made" is proven twice: the fetcher never called connect()
for the refused address, and the loopback listener the name was made to point at
accepted nothing. Tests that must fetch from loopback itself say so and pass
allow_private=True; the rest go through the default address check via the NAT.
"""

import gzip
import ipaddress
import shutil
import ssl
import subprocess
import threading
import time

import pytest

from imgsmaller import fetch
from imgsmaller.errors import (
    DomainNotAllowedError,
    DomainNotSetError,
    FetchError,
    PayloadTooLargeError,
    ServiceError,
)

from fakenet import DOMAIN, HOST, PNG, PUBLIC_IP, PUBLIC_IP6, PUBLIC_IP_2, Origin, redirect, respond

pytestmark = pytest.mark.timeout(20)


def get(url, domain=DOMAIN, *, max_bytes=10_000, timeout_s=5.0, allow_private=False):
    return fetch.fetch_image(
        url, allowed_domain=domain, max_bytes=max_bytes, timeout_s=timeout_s,
        allow_private=allow_private,
    )


def refused(error_type, url, **kwargs):
    with pytest.raises(error_type) as caught:
        get(url, **kwargs)
    error = caught.value
    assert 400 <= error.status < 500
    assert error.message and "\n" not in error.message
    return error.message


# ---------------------------------------------------------------- the happy path


def test_an_allowed_public_name_is_fetched_through_the_vetted_address(public_origin, dns, net):
    public_origin.routes["/cat.png"] = respond(200, PNG)
    assert get(f"http://{HOST}/cat.png?size=big") == PNG
    assert dns.lookups == [HOST]
    assert net.attempts == [(PUBLIC_IP, 80)]
    [request] = public_origin.requests
    assert request["target"] == "/cat.png?size=big"
    assert request["headers"]["host"] == HOST
    assert request["headers"]["accept-encoding"] == "identity"


def test_the_domain_itself_upper_case_and_a_trailing_dot_are_allowed(public_origin, dns, net):
    dns.add("example.com", PUBLIC_IP)
    public_origin.routes["/a.png"] = respond(200, PNG)
    assert get("http://EXAMPLE.com./a.png") == PNG
    assert get(f"http://{HOST}:80/a.png") == PNG
    assert public_origin.requests[0]["headers"]["host"] == "example.com"


def test_an_idn_host_is_matched_and_sent_in_its_ascii_form(origin, dns, net):
    dns.add("img.xn--bcher-kva.example", PUBLIC_IP)
    net.route(PUBLIC_IP, 80, origin)
    origin.routes["/a.png"] = respond(200, PNG)
    assert get("http://img.Bücher.example/a.png", "xn--bcher-kva.example") == PNG
    assert origin.requests[0]["headers"]["host"] == "img.xn--bcher-kva.example"


def test_an_ipv6_public_address_is_connected_to_directly(origin, dns, net):
    dns.add(HOST, PUBLIC_IP6)
    net.route(PUBLIC_IP6, 80, origin)
    origin.routes["/a.png"] = respond(200, PNG)
    assert get(f"http://{HOST}/a.png") == PNG
    assert net.attempts == [(PUBLIC_IP6, 80)]


def test_the_next_vetted_address_is_tried_when_one_refuses(origin, dns, net):
    dns.add(HOST, PUBLIC_IP_2, PUBLIC_IP)  # PUBLIC_IP_2 has no route: refused
    net.route(PUBLIC_IP, 80, origin)
    origin.routes["/a.png"] = respond(200, PNG)
    assert get(f"http://{HOST}/a.png") == PNG
    assert net.attempts == [(PUBLIC_IP_2, 80), (PUBLIC_IP, 80)]


def test_loopback_is_fetched_only_when_private_fetching_is_allowed(origin, dns, net):
    # The control for every refusal below: the same loopback listener, reached on
    # purpose with allow_private=True, does see the connection.
    dns.add(HOST, "127.0.0.1")
    net.route("127.0.0.1", 80, origin)
    origin.routes["/a.png"] = respond(200, PNG)
    refused(FetchError, f"http://{HOST}/a.png")
    assert origin.connections == 0
    assert get(f"http://{HOST}/a.png", allow_private=True) == PNG
    assert origin.connections == 1


def test_a_body_of_exactly_the_cap_is_returned(public_origin):
    public_origin.routes["/a.png"] = respond(200, b"x" * 1000)
    assert get(f"http://{HOST}/a.png", max_bytes=1000) == b"x" * 1000


def test_the_bytes_are_returned_whatever_the_content_type_says(public_origin):
    # The type is decided later by the bytes: HTML sent as image/png is returned as
    # it is (and then refused by the image sniffer), a PNG sent as text/html works.
    html = b"<!doctype html><title>not an image</title>"
    public_origin.routes["/fake.png"] = respond(200, html, {"Content-Type": "image/png"})
    public_origin.routes["/real"] = respond(200, PNG, {"Content-Type": "text/html"})
    assert get(f"http://{HOST}/fake.png") == html
    assert get(f"http://{HOST}/real") == PNG


def test_proxy_environment_variables_are_ignored(public_origin, other_origin, monkeypatch):
    proxy = f"http://127.0.0.1:{other_origin.address[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    public_origin.routes["/a.png"] = respond(200, PNG)
    assert get(f"http://{HOST}/a.png") == PNG
    assert other_origin.connections == 0


# ---------------------------------------------------------------- the Allowed Domain


@pytest.mark.parametrize("domain", [None, ""])
def test_no_allowed_domain_is_refused_before_anything_else(domain, dns, net):
    with pytest.raises(DomainNotSetError) as caught:
        get(f"http://{HOST}/a.png", domain)
    assert caught.value.status == 403
    assert caught.value.message == (
        "No allowed domain set. Please set your allowed domain in dashboard."
    )
    assert dns.lookups == [] and net.attempts == []


@pytest.mark.parametrize(
    "url",
    [
        "http://evil-example.com/a.png",
        "http://badexample.com/a.png",
        "http://example.com.evil.test/a.png",
        "http://example.co/a.png",
        "http://evil.test#@img.example.com/a.png",
        "http://evil.test?@img.example.com/",
        "http://evil.test/@img.example.com/",
        "http://evil.test/img.example.com",
    ],
)
def test_hosts_outside_the_allowed_domain_are_refused_with_403(url, dns, net):
    assert "not your allowed domain" in refused(DomainNotAllowedError, url)
    assert dns.lookups == [] and net.attempts == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1/",
        "http://localhost/",
        "http://localhost.:80/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "https://10.0.0.1/",
    ],
)
def test_literal_internal_addresses_never_match_a_domain(url, origin, dns, net):
    net.route("127.0.0.1", 80, origin)
    refused(DomainNotAllowedError, url)
    assert dns.lookups == [] and net.attempts == [] and origin.connections == 0


# ---------------------------------------------------------------- URL syntax (422)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://evil.test\\@img.example.com/", "backslash"),
        ("http://img.example.com\\@evil.test/", "backslash"),
        ("http://evil.test@img.example.com/a.png", "user name"),
        ("http://img.example.com@evil.test/a.png", "user name"),
        ("http://user:pass@img.example.com/a.png", "user name"),
        ("http://:@img.example.com/a.png", "user name"),
        ("http://@img.example.com/a.png", "user name"),
        (" http://img.example.com/a.png", "spaces"),
        ("http://img.example.com/a b.png", "spaces"),
        ("http://img.example.com/a.png\n", "spaces"),
        ("http://img.example.com/\ta.png", "spaces"),
        ("http://img.example.com/\x00.png", "control"),
        ("http://img.example.com\u3000/a.png", "spaces"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://img.example.com:70/_INFO", "http or https"),
        ("data:image/png;base64,iVBORw0KGgo=", "http or https"),
        ("ftp://img.example.com/a.png", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("dict://img.example.com:11211/stat", "http or https"),
        ("//img.example.com/a.png", "http or https"),
        ("img.example.com/a.png", "http or https"),
        ("http://img.example.com:6379/", "port"),
        ("http://img.example.com:8080/", "port"),
        ("https://img.example.com:22/", "port"),
        ("http://img.example.com:0/", "port"),
        ("http://img.example.com:99999/", "not a valid URL"),
        ("http://", "not a valid URL"),
        ("http:///a.png", "not a valid URL"),
        ("http:img.example.com", "not a valid URL"),
        ("", "not a valid URL"),
        ("http://img.example.com/" + "a" * 3000, "too long"),
    ],
)
def test_bad_urls_are_refused_with_422_before_any_lookup(url, words, dns, net):
    message = refused(FetchError, url)
    assert words in message
    assert dns.lookups == [] and net.attempts == []


def test_url_checks_come_before_the_domain_check(dns, net):
    # A foreign host on a bad port is a URL error (422), not a domain error (403).
    assert "port" in refused(FetchError, "http://evil.test:6379/")


# ---------------------------------------------------------------- resolved addresses (422)

INTERNAL_ANSWERS = [
    "127.0.0.1",
    "127.5.6.7",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "100.100.100.200",  # Alibaba metadata (CGNAT range)
    "0.0.0.0",
    "0.1.2.3",
    "192.0.0.170",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "fe80::1",
    "fe80::1%1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::a00:1",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "2001:db8::1",
    "100::1",  # discard-only
]


@pytest.mark.parametrize("answer", INTERNAL_ANSWERS)
def test_the_allowed_name_resolving_to_an_internal_address_is_refused(answer, origin, dns, net):
    # The owner controls their DNS: img.example.com is made to point inside. Every
    # loopback form is also routed to a recording listener, which must stay silent.
    dns.add(HOST, answer)
    net.route("127.0.0.1", 80, origin)
    net.route(answer.split("%")[0], 80, origin)
    message = refused(FetchError, f"http://{HOST}/a.png")
    assert "internal" in message
    assert dns.lookups == [HOST]
    assert net.attempts == [] and origin.connections == 0


def test_a_mixed_answer_refuses_the_whole_fetch(origin, dns, net):
    dns.add(HOST, PUBLIC_IP, "127.0.0.1")
    net.route(PUBLIC_IP, 80, origin)
    net.route("127.0.0.1", 80, origin)
    origin.routes["/a.png"] = respond(200, PNG)
    assert "internal" in refused(FetchError, f"http://{HOST}/a.png")
    assert net.attempts == [] and origin.connections == 0


def test_dns_rebinding_gets_nothing_because_the_name_is_resolved_once(origin, other_origin, dns, net):
    answers = iter([[PUBLIC_IP], ["127.0.0.1"], ["127.0.0.1"]])
    dns.add(HOST, lambda: next(answers))
    net.route(PUBLIC_IP, 80, origin)
    net.route("127.0.0.1", 80, other_origin)
    origin.routes["/a.png"] = respond(200, PNG)
    assert get(f"http://{HOST}/a.png") == PNG
    assert dns.lookups == [HOST]
    assert net.attempts == [(PUBLIC_IP, 80)]
    assert other_origin.connections == 0


@pytest.mark.parametrize("numeric", ["2130706433", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.1"])
def test_numeric_host_forms_are_caught_by_the_address_they_resolve_to(numeric, dns):
    # The host string is never parsed as an address: the resolver's answer is judged.
    deadline = fetch._Deadline(5)
    try:
        addresses = fetch._resolve(numeric, 80, deadline)
    finally:
        deadline.cancel()
    assert [sockaddr[0] for _family, sockaddr in addresses] == ["127.0.0.1"]
    with pytest.raises(FetchError):
        fetch._check_addresses(addresses, allow_private=False)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", PUBLIC_IP, "2606:4700:4700::1111", "::ffff:8.8.8.8",
     "64:ff9b::808:808"],
)
def test_public_addresses_pass_the_address_check(address):
    assert fetch.address_is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["2002:808:808::1",  # 6to4 carrying 8.8.8.8
     "2001:0:4136:e378:8000:63bf:f7f7:f7f7"],  # Teredo, public server and client
)
def test_6to4_and_teredo_are_refused_even_when_they_carry_public_addresses(address):
    assert not fetch.address_is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("10.0.0.1", True), ("127.0.0.1", True), ("::1", True), ("fd00::1", True),
     ("192.168.1.20", True), ("100.64.0.1", True), ("fec0::1", True),
     ("169.254.169.254", False), ("0.0.0.0", False), ("::", False), ("224.0.0.1", False),
     ("255.255.255.255", False), ("::ffff:0.0.0.0", False)],
)
def test_allow_private_skips_only_the_address_class_check(address, allowed):
    assert fetch.address_is_public(ipaddress.ip_address(address), allow_private=True) is allowed


# Link-local and cloud metadata, refused even with FETCH_ALLOW_PRIVATE=true (issue 14, finding 14).
NEVER_ANSWERS = [
    "169.254.169.254",  # AWS, GCP, Azure, Oracle, DigitalOcean metadata
    "169.254.170.2",  # AWS ECS task metadata
    "169.254.0.1",
    "100.100.100.200",  # Alibaba Cloud metadata
    "192.0.0.192",  # Oracle Cloud metadata
    "168.63.129.16",  # Azure WireServer
    "fe80::1",
    "fe80::a9fe:a9fe%2",
    "febf:ffff::1",  # the top of fe80::/10
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fd20:ce::254",  # Google Cloud metadata over IPv6
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:a9fe:a9fe",
    "::169.254.169.254",  # IPv4-compatible
    "64:ff9b::a9fe:a9fe",  # NAT64
    "2002:a9fe:a9fe::1",  # 6to4
    "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo, client 169.254.169.254 (obfuscated)
]


@pytest.mark.parametrize("answer", NEVER_ANSWERS)
def test_link_local_and_metadata_addresses_are_refused_even_when_private_fetching_is_allowed(
        answer, origin, dns, net):
    dns.add(HOST, answer)
    net.route(answer.split("%")[0], 80, origin)
    origin.routes["/latest/meta-data/"] = respond(200, PNG)
    message = refused(FetchError, f"http://{HOST}/latest/meta-data/", allow_private=True)
    assert "internal or reserved address" in message
    assert net.attempts == [] and origin.connections == 0


def test_private_addresses_are_still_fetched_when_allowed(origin, dns, net):
    # The control for the test above: the same route to a private address works.
    dns.add(HOST, "10.1.2.3")
    net.route("10.1.2.3", 80, origin)
    origin.routes["/a.png"] = respond(200, PNG)
    assert get(f"http://{HOST}/a.png", allow_private=True) == PNG
    assert origin.connections == 1


def test_an_unresolvable_host_is_a_422(dns, net):
    assert "could not be resolved" in refused(FetchError, "http://nowhere.example.com/a.png")
    assert net.attempts == []


def test_a_refused_connection_is_a_422(dns, net):
    dns.add(HOST, PUBLIC_IP)  # no route: the test network refuses it
    assert "Could not connect" in refused(FetchError, f"http://{HOST}/a.png")


# ---------------------------------------------------------------- redirects


def test_redirects_within_the_domain_are_followed_and_rechecked(public_origin, dns, net):
    dns.add("cdn.example.com", PUBLIC_IP)
    public_origin.routes["/one"] = redirect("/two", 301)
    public_origin.routes["/two"] = redirect("http://cdn.example.com/three", 307)
    public_origin.routes["/three"] = redirect("//img.example.com/a.png", 308)
    public_origin.routes["/a.png"] = respond(200, PNG)
    assert get(f"http://{HOST}/one") == PNG
    assert dns.lookups == [HOST, HOST, "cdn.example.com", HOST]
    hosts = [request["headers"]["host"] for request in public_origin.requests]
    assert hosts == [HOST, HOST, "cdn.example.com", HOST]


def test_more_than_three_redirects_are_refused(public_origin):
    for hop in range(5):
        public_origin.routes[f"/{hop}"] = redirect(f"/{hop + 1}")
    public_origin.routes["/5"] = respond(200, PNG)
    assert "more than 3" in refused(FetchError, f"http://{HOST}/0")
    assert len(public_origin.requests) == 4


def test_a_redirect_to_a_foreign_domain_is_refused_with_403(public_origin, other_origin, dns, net):
    dns.add("evil.test", PUBLIC_IP_2)
    net.route(PUBLIC_IP_2, 80, other_origin)
    public_origin.routes["/a.png"] = redirect("http://evil.test/a.png")
    assert "redirected" in refused(DomainNotAllowedError, f"http://{HOST}/a.png")
    assert "evil.test" not in dns.lookups and other_origin.connections == 0


@pytest.mark.parametrize(
    "location",
    ["http://127.0.0.1/a.png", "http://[::1]/", "http://169.254.169.254/latest/meta-data/",
     "http://localhost/", "http://2130706433/"],
)
def test_a_redirect_to_a_loopback_literal_is_refused(location, public_origin, other_origin, net):
    net.route("127.0.0.1", 80, other_origin)
    public_origin.routes["/a.png"] = redirect(location)
    refused(DomainNotAllowedError, f"http://{HOST}/a.png")
    assert net.attempts == [(PUBLIC_IP, 80)] and other_origin.connections == 0


def test_a_redirect_to_an_allowed_name_resolving_inside_is_refused(public_origin, other_origin, dns, net):
    dns.add("internal.example.com", "127.0.0.1")
    net.route("127.0.0.1", 80, other_origin)
    public_origin.routes["/a.png"] = redirect("http://internal.example.com/a.png")
    assert "internal" in refused(FetchError, f"http://{HOST}/a.png")
    assert net.attempts == [(PUBLIC_IP, 80)] and other_origin.connections == 0


@pytest.mark.parametrize(
    ("location", "words"),
    [("file:///etc/passwd", "http or https"), ("gopher://img.example.com/", "http or https"),
     ("http://img.example.com:6379/", "port"), ("http://evil.test\\@img.example.com/", "backslash"),
     ("http://x@img.example.com/", "user name")],
)
def test_redirect_targets_get_the_url_checks(location, words, public_origin, net):
    public_origin.routes["/a.png"] = redirect(location)
    assert words in refused(FetchError, f"http://{HOST}/a.png")
    assert net.attempts == [(PUBLIC_IP, 80)]


def test_a_redirect_without_location_is_a_422(public_origin):
    public_origin.routes["/a.png"] = respond(302, b"", {"Content-Type": "text/plain"})
    assert "without a Location" in refused(FetchError, f"http://{HOST}/a.png")


# ---------------------------------------------------------------- status and body


@pytest.mark.parametrize("status", [400, 403, 404, 500, 503])
def test_an_error_status_from_the_origin_is_a_422(status, public_origin):
    public_origin.routes["/a.png"] = respond(status, b"nope", reason="Nope")
    assert f"HTTP {status}" in refused(FetchError, f"http://{HOST}/a.png")


@pytest.mark.parametrize("status", [204, 206, 304])
def test_other_non_200_statuses_are_a_422(status, public_origin):
    public_origin.routes["/a.png"] = respond(status, b"", reason="Other")
    assert f"HTTP {status}" in refused(FetchError, f"http://{HOST}/a.png")


def test_a_content_length_over_the_cap_is_refused_before_the_body(public_origin):
    def handler(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
        conn.sendall(PNG)
        public_origin.stopped.wait(3)  # a fetcher that read on would hang here

    public_origin.routes["/a.png"] = handler
    started = time.monotonic()
    message = refused(PayloadTooLargeError, f"http://{HOST}/a.png", max_bytes=10 * 1024 * 1024)
    assert "10 MB" in message
    assert time.monotonic() - started < 1.5


def test_a_chunked_body_over_the_cap_is_cut_off(public_origin):
    sent = []

    def handler(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 4096
        for _ in range(10_000):  # 40 MB if nobody stops it
            conn.sendall(b"1000\r\n" + chunk + b"\r\n")
            sent.append(len(chunk))
        conn.sendall(b"0\r\n\r\n")

    public_origin.routes["/a.png"] = handler
    refused(PayloadTooLargeError, f"http://{HOST}/a.png", max_bytes=100_000)
    assert sum(sent) < 5_000_000


def test_a_body_without_length_over_the_cap_is_cut_off(public_origin):
    def handler(conn, request):
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b"x" * 4096)

    public_origin.routes["/a.png"] = handler
    refused(PayloadTooLargeError, f"http://{HOST}/a.png", max_bytes=50_000)


def test_a_lying_content_length_is_caught_by_the_streamed_cap(public_origin):
    public_origin.routes["/a.png"] = respond(200, b"x" * 5000, {"Content-Length": "10"})
    # Only the declared 10 bytes are read as this response; never a truncated image.
    assert get(f"http://{HOST}/a.png", max_bytes=100) == b"x" * 10


def test_a_truncated_body_is_a_422(public_origin):
    def handler(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + PNG)

    public_origin.routes["/a.png"] = handler
    assert "incomplete" in refused(FetchError, f"http://{HOST}/a.png")


@pytest.mark.parametrize("value", ["-1", "abc", "10, 20", "1e3"])
def test_a_malformed_content_length_is_a_422(value, public_origin):
    def handler(conn, request):
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n".encode() + PNG)

    public_origin.routes["/a.png"] = handler
    refused(FetchError, f"http://{HOST}/a.png")


def test_an_empty_body_is_a_422(public_origin):
    public_origin.routes["/a.png"] = respond(200, b"")
    assert "empty" in refused(FetchError, f"http://{HOST}/a.png")


def test_a_gzip_bomb_is_never_inflated(public_origin):
    bomb = gzip.compress(b"\x00" * (50 * 1024 * 1024))  # about 50 KB on the wire
    public_origin.routes["/bomb.png"] = respond(200, bomb, {"Content-Encoding": "gzip"})
    public_origin.routes["/plain.png"] = respond(200, bomb)
    assert "compressed" in refused(FetchError, f"http://{HOST}/bomb.png", max_bytes=1_000_000)
    # Without the header the bytes come back exactly as sent, still compressed.
    assert get(f"http://{HOST}/plain.png", max_bytes=1_000_000) == bomb


def test_a_compressed_transfer_encoding_is_refused(public_origin):
    def handler(conn, request):
        body = gzip.compress(PNG)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                     + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")

    public_origin.routes["/a.png"] = handler
    assert "Transfer-Encoding" in refused(FetchError, f"http://{HOST}/a.png")


# ---------------------------------------------------------------- time limits


def test_a_server_dripping_the_body_is_cut_off_at_the_deadline(public_origin):
    def handler(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            conn.sendall(b"x")
            time.sleep(0.1)  # well under any per-read timeout

    public_origin.routes["/a.png"] = handler
    started = time.monotonic()
    assert "timed out" in refused(FetchError, f"http://{HOST}/a.png", timeout_s=1.0)
    assert time.monotonic() - started < 2.0


def test_a_server_dripping_the_headers_is_cut_off_at_the_deadline(public_origin):
    def handler(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):
            conn.sendall(b"X-Slow: y\r\n")
            time.sleep(0.1)

    public_origin.routes["/a.png"] = handler
    started = time.monotonic()
    assert "timed out" in refused(FetchError, f"http://{HOST}/a.png", timeout_s=1.0)
    assert time.monotonic() - started < 2.0


def test_a_silent_server_is_cut_off_at_the_deadline(public_origin):
    public_origin.routes["/a.png"] = lambda conn, request: public_origin.stopped.wait(3)
    started = time.monotonic()
    assert "timed out" in refused(FetchError, f"http://{HOST}/a.png", timeout_s=0.5)
    assert time.monotonic() - started < 1.5


def test_a_server_silent_longer_than_the_idle_timeout_is_cut_off(public_origin, monkeypatch):
    monkeypatch.setattr(fetch, "READ_IDLE_TIMEOUT_S", 0.3)
    public_origin.routes["/a.png"] = lambda conn, request: public_origin.stopped.wait(3)
    started = time.monotonic()
    assert "sent nothing for 0.3 seconds" in refused(FetchError, f"http://{HOST}/a.png")
    assert time.monotonic() - started < 1.5


def test_a_slow_dns_answer_counts_against_the_deadline(dns, net):
    def slow():
        time.sleep(2)
        return [PUBLIC_IP]

    dns.add(HOST, slow)
    started = time.monotonic()
    assert "timed out" in refused(FetchError, f"http://{HOST}/a.png", timeout_s=0.5)
    assert time.monotonic() - started < 1.5
    assert net.attempts == []


def test_redirect_hops_share_one_deadline(public_origin):
    def slow_redirect(conn, request):
        time.sleep(0.4)
        redirect("/" + str(int(request["target"][1:]) + 1))(conn, request)

    for hop in range(3):
        public_origin.routes[f"/{hop}"] = slow_redirect
    public_origin.routes["/3"] = respond(200, PNG)
    started = time.monotonic()
    assert "timed out" in refused(FetchError, f"http://{HOST}/0", timeout_s=1.0)
    assert time.monotonic() - started < 2.0


def test_no_watchdog_thread_outlives_a_fetch(public_origin):
    public_origin.routes["/a.png"] = respond(200, PNG)
    before = threading.active_count()
    for _ in range(5):
        get(f"http://{HOST}/a.png", timeout_s=30)
    time.sleep(0.1)
    assert threading.active_count() <= before + 1  # the origin's last handler may linger


def test_every_error_is_a_service_error_with_a_public_message():
    # The API renders these; nothing else may escape fetch_image.
    assert issubclass(FetchError, ServiceError) and FetchError.status == 422
    assert DomainNotAllowedError.status == 403 and PayloadTooLargeError.status == 413


# ---------------------------------------------------------------- TLS



def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA and two leaf certificates: img.example.com and other.example.net."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    path = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=ImgSmaller Test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=path)
    for name in ("img.example.com", "other.example.net"):
        (path / f"{name}.ext").write_text(
            f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        )
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=path)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=path)
    return path


def _tls_origin(pki, name):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    return Origin(tls_context=context)


@pytest.fixture
def trust_test_ca(pki, monkeypatch):
    def context():
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    monkeypatch.setattr(fetch, "_tls_context", context)


def test_https_uses_the_name_for_sni_and_the_certificate(pki, trust_test_ca, dns, net):
    server = _tls_origin(pki, "img.example.com")
    try:
        dns.add(HOST, PUBLIC_IP)
        net.route(PUBLIC_IP, 443, server)
        server.routes["/a.png"] = respond(200, PNG)
        assert get(f"https://{HOST}/a.png") == PNG
        assert server.server_names == [HOST]
        assert server.requests[0]["headers"]["host"] == HOST
        assert net.attempts == [(PUBLIC_IP, 443)]
    finally:
        server.stop()


def test_https_with_a_certificate_for_another_name_is_refused(pki, trust_test_ca, dns, net):
    server = _tls_origin(pki, "other.example.net")
    try:
        dns.add(HOST, PUBLIC_IP)
        net.route(PUBLIC_IP, 443, server)
        server.routes["/a.png"] = respond(200, PNG)
        assert "certificate" in refused(FetchError, f"https://{HOST}/a.png")
        assert server.requests == []
    finally:
        server.stop()


def test_https_with_an_untrusted_certificate_is_refused(pki, dns, net):
    # Default trust store (certifi): the test CA is unknown.
    server = _tls_origin(pki, "img.example.com")
    try:
        dns.add(HOST, PUBLIC_IP)
        net.route(PUBLIC_IP, 443, server)
        assert "certificate" in refused(FetchError, f"https://{HOST}/a.png")
        assert server.requests == []
    finally:
        server.stop()


def test_a_server_dripping_the_tls_handshake_is_cut_off(dns, net):
    server = Origin()
    try:
        dns.add(HOST, PUBLIC_IP)
        net.route(PUBLIC_IP, 443, server)

        # A plain-TCP server that accepts and never answers the TLS handshake.
        def stall(conn):
            server.stopped.wait(3)
            conn.close()

        server._serve = stall
        started = time.monotonic()
        assert "timed out" in refused(FetchError, f"https://{HOST}/a.png", timeout_s=1.0)
        assert time.monotonic() - started < 2.0
    finally:
        server.stop()


def test_https_to_a_server_that_does_not_speak_tls_is_a_422(origin, dns, net):
    dns.add(HOST, PUBLIC_IP)
    net.route(PUBLIC_IP, 443, origin)

    def plain_http(conn):  # answers the ClientHello the way a plain HTTP server does
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    origin._serve = plain_http
    assert "TLS" in refused(FetchError, f"https://{HOST}/a.png")


def test_a_server_dripping_a_tls_record_is_cut_off_at_the_deadline(dns, net):
    # Every byte arrives well within the per-read timeout; only the total deadline
    # can stop this, and it must work inside the TLS layer too.
    server = Origin()
    try:
        dns.add(HOST, PUBLIC_IP)
        net.route(PUBLIC_IP, 443, server)

        def drip_handshake(conn):
            conn.recv(4096)  # the ClientHello
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a 16 KB handshake record follows...
            for _ in range(50):
                if server.stopped.wait(0.1):
                    break
                conn.sendall(b"\x00")
            conn.close()

        server._serve = drip_handshake
        started = time.monotonic()
        assert "timed out" in refused(FetchError, f"https://{HOST}/a.png", timeout_s=1.0)
        assert time.monotonic() - started < 2.0
    finally:
        server.stop()


def test_an_https_server_dripping_the_body_is_cut_off_at_the_deadline(pki, trust_test_ca, dns, net):
    server = _tls_origin(pki, "img.example.com")
    try:
        dns.add(HOST, PUBLIC_IP)
        net.route(PUBLIC_IP, 443, server)

        def drip(conn, request):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                if server.stopped.wait(0.1):
                    break
                conn.sendall(b"x")

        server.routes["/a.png"] = drip
        started = time.monotonic()
        assert "timed out" in refused(FetchError, f"https://{HOST}/a.png", timeout_s=1.0)
        assert time.monotonic() - started < 2.0
    finally:
        server.stop()


# ---------------------------------------------------------------- POST (webhooks)


def post(url, body=b'{"status": "done"}', domain=DOMAIN, **kwargs):
    return fetch.post_json(url, body, {"ImgSmaller-Signature": "t=1,v1=00"}, allowed_domain=domain,
                           timeout_s=kwargs.pop("timeout_s", 5.0), **kwargs)


def test_a_webhook_post_goes_to_the_vetted_public_address_over_https(pki, trust_test_ca, dns, net):
    server = _tls_origin(pki, "img.example.com")
    try:
        dns.add(HOST, PUBLIC_IP)
        net.route(PUBLIC_IP, 443, server)
        server.routes["/hook"] = respond(204, b"", {"Content-Type": None})
        assert post(f"https://{HOST}/hook") == 204
        [request] = server.requests
        assert request["method"] == "POST" and request["headers"]["host"] == HOST
        assert request["headers"]["content-type"] == "application/json"
        assert request["headers"]["imgsmaller-signature"] == "t=1,v1=00"
        assert server.server_names == [HOST] and net.attempts == [(PUBLIC_IP, 443)]
    finally:
        server.stop()


def test_a_webhook_post_does_not_follow_a_redirect_it_returns_it(public_origin, dns):
    public_origin.routes["/hook"] = redirect("http://img.example.com/elsewhere", 307)
    assert post(f"http://{HOST}/hook") == 307
    assert [request["target"] for request in public_origin.requests] == ["/hook"]


def test_a_webhook_post_reads_a_bounded_part_of_an_endless_answer(public_origin):
    def endless(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(10_000):
            conn.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")

    public_origin.routes["/hook"] = endless
    assert post(f"http://{HOST}/hook") == 200


@pytest.mark.parametrize(("url", "error_type", "words"), [
    (f"http://{HOST}:8080/hook", FetchError, "port 80 or 443"),
    ("http://evil.test/hook", FetchError, "not your allowed domain"),
    (f"http://user@{HOST}/hook", FetchError, "user name"),
])
def test_a_webhook_post_refuses_what_a_fetch_refuses_naming_callback_url(dns, net, url, error_type, words):
    with pytest.raises(error_type) as raised:
        post(url)
    assert words in raised.value.message and "callback_url" in raised.value.message
    assert dns.lookups == [] and net.attempts == []


def test_a_webhook_post_to_an_internal_address_is_refused_before_connecting(origin, dns, net):
    dns.add(HOST, "10.0.0.7")
    net.route("10.0.0.7", 80, origin)
    with pytest.raises(FetchError, match="callback_url host resolves to an internal"):
        post(f"http://{HOST}/hook")
    assert origin.connections == 0 and net.attempts == []


def test_a_webhook_post_without_an_allowed_domain_is_refused(dns, net):
    with pytest.raises(FetchError, match="needs an allowed domain"):
        post(f"http://{HOST}/hook", domain=None)
