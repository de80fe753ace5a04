"""Allowed Domain rules: normalise and vet a domain, match a host against it (no Flask, no I/O).

An account's Allowed Domain limits which hosts `file_url` may name. The owner also
controls that domain's DNS, so this rule alone protects nothing against server-side
request forgery: `imgsmaller.fetch` checks the resolved addresses. What this module
adds is that a stored domain is always a plausible public DNS name, so a typo or a
trick (a URL, an IP literal, `localhost`, a LAN suffix) is refused when it is set.

Normalisation (used for both domains and URL hosts, so they compare equal):
strip surrounding whitespace, lower-case, drop one trailing dot, IDNA-encode
(UTS #46, non-transitional, the mapping `requests` applies to URLs).
"""

import ipaddress
import re

import idna

from imgsmaller.errors import InvalidRequestError

# Special-use and never-public suffixes (RFC 6761, RFC 6762, RFC 8375, ICANN's
# `.internal` reservation) plus the private suffixes routers and distributions ship.
# Refused as Allowed Domains; the address check in fetch.py is what actually protects.
_RESERVED_SUFFIXES = (
    "localhost",
    "local",
    "localdomain",
    "internal",
    "lan",
    "home.arpa",
    "arpa",
    "invalid",
)

# A DNS name is at most 253 characters in text form, each label 1-63 (RFC 1035).
_MAX_NAME_LENGTH = 253
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# The WHATWG URL "ends in a number" rule: a host whose last label is decimal or
# 0x-hex is parsed as an IPv4 address by browsers and by inet_aton (`127.1`, `0x7f.1`).
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")


class InvalidDomainError(InvalidRequestError):
    """The text given as an Allowed Domain is not an acceptable public domain name."""

    message = "Enter a domain name such as example.com."


def normalize_host(text):
    """Return `text` as a lower-case ASCII DNS name, or raise InvalidDomainError.

    Checks only syntax: no policy (IP-looking names, localhost, …), which is
    `normalize_allowed_domain`'s job. URL hosts go through this before matching.
    """
    if not isinstance(text, str):
        raise InvalidDomainError()
    name = text.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidDomainError()
    try:
        name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        raise InvalidDomainError() from None
    if len(name) > _MAX_NAME_LENGTH:
        raise InvalidDomainError("That domain name is too long.")
    if not all(_LABEL.match(label) for label in name.split(".")):
        raise InvalidDomainError()
    return name


def normalize_allowed_domain(text):
    """Return the canonical form of an Allowed Domain, or raise InvalidDomainError.

    Refuses URLs, hosts with a port, path or user info, IP literals in any
    notation, single labels, `localhost` and private-use suffixes.
    """
    if not isinstance(text, str):
        raise InvalidDomainError()
    raw = text.strip()
    if "://" in raw or "/" in raw or "\\" in raw or "?" in raw or "#" in raw:
        raise InvalidDomainError(
            "Enter only the domain name (such as example.com), not a URL or a path."
        )
    if "@" in raw:
        raise InvalidDomainError("Enter only the domain name, without a user name.")
    if raw.startswith("[") or _is_ip_literal(raw):
        raise InvalidDomainError("The allowed domain must be a domain name, not an IP address.")
    if ":" in raw:
        raise InvalidDomainError("Enter only the domain name, without a port.")
    name = normalize_host(raw)
    labels = name.split(".")
    if _NUMERIC_LABEL.match(labels[-1]) or _is_ip_literal(name):
        raise InvalidDomainError("The allowed domain must be a domain name, not an IP address.")
    if any(name == suffix or name.endswith("." + suffix) for suffix in _RESERVED_SUFFIXES):
        raise InvalidDomainError(
            "The allowed domain must be a public domain name, not localhost or a local network name."
        )
    if len(labels) < 2:
        raise InvalidDomainError(
            "The allowed domain must have at least two labels, such as example.com."
        )
    return name


def host_is_allowed(host, domain):
    """Whether `host` is `domain` or one of its subdomains, after normalising both.

    Label-wise: `cdn.example.com` matches `example.com`; `badexample.com` and
    `example.com.evil.test` do not. Anything malformed matches nothing.
    """
    if not domain:
        return False
    try:
        host = normalize_host(host)
        domain = normalize_host(domain)
    except InvalidDomainError:
        return False
    return host == domain or host.endswith("." + domain)


def _is_ip_literal(text):
    candidate = text.strip().strip("[]").rstrip(".")
    try:
        ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        return False
    return True
