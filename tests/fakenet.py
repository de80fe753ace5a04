"""A fake internet on loopback for the file_url tests: DNS, a test-only NAT and recording origins.

Registered as a pytest plugin by conftest.py, so its fixtures (`origin`,
`other_origin`, `dns`, `net`, `public_origin`) reach every test module; its
helpers (`respond`, `redirect`, the addresses) are imported by name.

* `dns` replaces socket.getaddrinfo: names resolve only to what a test says, and
  every lookup is recorded (numeric hosts are parsed locally, never sent to DNS).
* `net` wraps socket.socket.connect: every connection attempt is recorded, a few
  public-looking addresses are translated to loopback test servers (a test-only NAT),
  and any other non-loopback address is refused without sending a packet.
* `Origin` is a loopback HTTP(S) server that records every connection it accepts
  and answers with scripted raw bytes, so drips, chunked floods, bad lengths and
  compressed bombs are easy to serve.
"""

import ipaddress
import socket
import threading

import pytest

# Looks public and passes the address check; `net` sends it to a loopback Origin.
PUBLIC_IP = "93.184.215.14"
PUBLIC_IP_2 = "151.101.1.1"
PUBLIC_IP6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
DOMAIN = "example.com"
HOST = "img.example.com"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect


# ---------------------------------------------------------------- test machinery


def respond(status=200, body=b"", headers=None, reason="OK"):
    """A handler writing one complete HTTP/1.1 response with Content-Length."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    headers = {"Content-Type": "image/png", "Content-Length": str(len(body)), **(headers or {})}
    lines += [f"{name}: {value}" for name, value in headers.items() if value is not None]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def handler(conn, request):
        conn.sendall(raw)

    return handler


def redirect(location, status=302):
    return respond(status, b"", {"Location": location, "Content-Type": "text/plain"}, "Found")


class Origin:
    """A loopback server that records every connection and answers from `routes`."""

    def __init__(self, tls_context=None):
        self.routes = {}
        self.connections = 0
        self.requests = []
        self.server_names = []
        self._tls = tls_context
        if tls_context is not None:
            tls_context.sni_callback = self._record_sni
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(32)
        self.address = self._sock.getsockname()
        self.stopped = threading.Event()
        self._threads = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _record_sni(self, sslsock, name, context):
        self.server_names.append(name)

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue  # stop() shut the listener down to wake this accept
            if self.stopped.is_set():
                conn.close()
                break
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn):
        try:
            conn.settimeout(5)
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, target, _version = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            # Read a body to its end (a POST's): closing with unread bytes makes the kernel send a
            # reset, which can reach the client before the answer does.
            body = data.split(b"\r\n\r\n", 1)[1]
            while len(body) < min(int(headers.get("content-length") or 0), 1 << 20):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                body += chunk
            request = {"method": method, "target": target, "headers": headers, "body": body}
            self.requests.append(request)
            path = target.split("?", 1)[0]
            handler = self.routes.get(path, respond(404, b"not found", reason="Not Found"))
            handler(conn, request)
        except (OSError, ValueError):
            pass  # the fetcher hung up on purpose (cap, deadline) or TLS was refused
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self):
        self.stopped.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        except OSError:
            pass
        self._accepter.join(2)
        self._sock.close()
        for thread in self._threads:
            thread.join(2)


@pytest.fixture
def origin():
    server = Origin()
    yield server
    server.stop()


@pytest.fixture
def other_origin():
    server = Origin()
    yield server
    server.stop()


class FakeDNS:
    def __init__(self):
        self.answers = {}
        self.lookups = []

    def add(self, name, *answers):
        """`answers`: addresses, or one callable returning addresses for each lookup."""
        self.answers[name] = answers

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        self.lookups.append(host)
        name = host.rstrip(".") if isinstance(host, str) else host
        if name not in self.answers:
            try:
                # Numeric forms (2130706433, 0x7f.1, [::1]) parse locally; names never leave.
                return _real_getaddrinfo(
                    host, port, family, type, proto, flags | socket.AI_NUMERICHOST
                )
            except socket.gaierror:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        answers = self.answers[name]
        if len(answers) == 1 and callable(answers[0]):
            answers = answers[0]()
        result = []
        for text in answers:
            address = ipaddress.ip_address(text.split("%")[0])
            if address.version == 4:
                result.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (text, port)))
            else:
                result.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (text, port, 0, 0)))
        return result


@pytest.fixture
def dns(monkeypatch):
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


class FakeNet:
    def __init__(self):
        self.nat = {}
        self.attempts = []

    def route(self, ip, port, server):
        """Connections to (ip, port) reach `server` instead (test-only NAT)."""
        self.nat[(ip, port)] = server.address

    def connect(self, sock, address):
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return _real_connect(sock, address)  # a Unix socket (the job pool's forkserver) never leaves the machine
        self.attempts.append(address[:2])
        target = self.nat.get(address[:2])
        if target is not None:
            if sock.family == socket.AF_INET6:
                target = ("::ffff:" + target[0], target[1], 0, 0)
            return _real_connect(sock, target)
        if ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            return _real_connect(sock, address)
        # Never let a test send a packet off the machine.
        raise ConnectionRefusedError(111, "test network: no route off loopback")


@pytest.fixture
def net(monkeypatch):
    fake = FakeNet()

    def connect(sock, address):
        return fake.connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return fake


@pytest.fixture
def public_origin(origin, dns, net):
    """img.example.com resolves to a public-looking address that reaches `origin`."""
    dns.add(HOST, PUBLIC_IP)
    net.route(PUBLIC_IP, 80, origin)
    return origin
