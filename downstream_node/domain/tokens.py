"""Tokens and addresses: Base58Check validation and the create/delete decisions.

A token is 16 random bytes shown as 32 hex characters; the ledger only ever stores its
SHA-256 hash, and lookups compare hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from . import events as ev
from .errors import Refused

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {ch: i for i, ch in enumerate(B58_ALPHABET)}
TOKEN_RE = re.compile(r"^[0-9a-f]{32}\Z")
# Bitcoin-style versions: P2PKH, P2SH, and their testnet forms.
ADDRESS_VERSIONS = {0x00, 0x05, 0x6F, 0xC4}


def b58decode(text: str) -> bytes:
    value = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            raise ValueError(f"{ch!r} is not a Base58 character")
        value = value * 58 + digit
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\x00" * pad + body


def b58encode(data: bytes) -> str:
    value = int.from_bytes(data, "big")
    out = []
    while value:
        value, rem = divmod(value, 58)
        out.append(B58_ALPHABET[rem])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def is_valid_address(address: str) -> bool:
    """A Base58Check address of 25 bytes with a known version and a matching checksum."""
    if not isinstance(address, str) or not 26 <= len(address) <= 35:
        return False
    try:
        raw = b58decode(address)
    except ValueError:
        return False
    if len(raw) != 25 or raw[0] not in ADDRESS_VERSIONS:
        return False
    checksum = hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4]
    return hmac.compare_digest(checksum, raw[21:])


def make_address(payload20: bytes, version: int = 0) -> str:
    """Build a valid address (demo whitelists and tests)."""
    raw = bytes([version]) + payload20
    return b58encode(raw + hashlib.sha256(hashlib.sha256(raw).digest()).digest()[:4])


def new_token() -> str:
    return secrets.token_hex(16)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(token_hash(token), stored_hash)


def redact(token: str) -> str:
    """What logs may show of a token: enough to tell two apart, never enough to use one."""
    return token[:4] + "…" if token else ""


# Any run of 32 or more hex digits may hold a token (a mistyped or padded one included).
HEX_RUN = re.compile(r"[0-9a-fA-F]{32,}")


def redact_hex_runs(text: str) -> str:
    """``text`` with every run that may hold a token cut short (``redact``): for messages
    that quote what a server sent back, such as a page echoing the request's path."""
    return HEX_RUN.sub(lambda m: redact(m.group(0)), text)


@dataclass(frozen=True)
class TokenPolicy:
    require_whitelist: bool = True
    min_balance: Decimal = Decimal(10000)
    max_tokens_per_ip: int = 5
    # Per-IP limits count an IPv6 address by its network of this prefix length: one
    # subscriber is commonly given a whole /64 and can use any address in it.
    ipv6_prefix: int = 64


BALANCE_CHARS = 40  # the whitelist projection's column holds balances as text this long


PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


def balance_problem(text: str) -> str | None:
    """Why ``text`` cannot be a crowdsale balance (a non-negative decimal number that fits
    the whitelist's column), or None when it can."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return "not a decimal number"
    if not value.is_finite() or value < 0:
        return "not a non-negative decimal number"
    if not PLAIN_DECIMAL.fullmatch(text):
        # Decimal also reads " 5 ", "1_000", "1e3" and "+5": the ledger records the text as
        # given, for ever, so only the one plain way of writing a balance is taken.
        return "not written as plain digits with at most one decimal point"
    if len(text) > BALANCE_CHARS:
        return f"longer than {BALANCE_CHARS} characters"
    return None


def plain_address(address: str) -> str:
    """An IPv4 address written IPv4-mapped (``::ffff:10.1.1.1``) as plain IPv4; any other
    text as it is: a dual-stack listener sees IPv4 farmers in the mapped form."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return address


def ip_group(address: str, ipv6_prefix: int = 64) -> str:
    """What a per-IP limit counts ``address`` under: an IPv4 address itself (also when
    IPv4-mapped), an IPv6 address its ``/ipv6_prefix`` network (``2001:db8:1:2::/64``), and
    anything that is no address as it is."""
    try:
        parsed = ipaddress.ip_address(plain_address(address))
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv4Address) or ipv6_prefix >= 128:
        return str(parsed)
    return str(ipaddress.ip_network(f"{parsed}/{ipv6_prefix}", strict=False))


def decide_create_token(
    address: str,
    *,
    token: str,
    ip: str | None,
    balance: Decimal | None,
    tokens_for_ip: int,
    policy: TokenPolicy,
) -> list[ev.DomainEvent]:
    if not is_valid_address(address):
        raise Refused("invalid_address", "the address is not a valid Base58Check address")
    if policy.require_whitelist:
        if balance is None:
            raise Refused("invalid_address", "the address is not on the crowdsale whitelist")
        if balance < policy.min_balance:
            raise Refused(
                "invalid_address",
                f"the address holds less than the minimum of {policy.min_balance}",
            )
    if ip is not None and tokens_for_ip >= policy.max_tokens_per_ip:
        raise Refused(
            "too_many_tokens",
            f"at most {policy.max_tokens_per_ip} tokens may be created per IP address",
        )
    return [ev.TokenCreated(token_hash=token_hash(token), address=address, ip=ip)]


def decide_delete_token(exists: bool, deleted: bool, hashed: str) -> list[ev.DomainEvent]:
    if not exists or deleted:
        raise Refused("no_token", "no such token")
    return [ev.TokenDeleted(token_hash=hashed)]
