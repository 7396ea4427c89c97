"""Addresses as the tools print them: a record's raw address bytes (IPv4 in the first 4 of 16) as text,
the address family as 4 or 6, and address:port the way bcc's tools write it ([addr]:port for IPv6, so that
the port cannot be read as part of the address)."""
import socket

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6


def ip_version(family: int) -> int:
    """4 or 6 for a record's AF_INET/AF_INET6."""
    return 4 if family == AF_INET else 6


def ntop(family: int, raw: bytes) -> str:
    """A record's address as text."""
    if family == AF_INET:
        return socket.inet_ntop(AF_INET, raw[:4])
    return socket.inet_ntop(AF_INET6, raw[:16])


def endpoint(version: int, addr: str, port: int) -> str:
    """addr:port, or [addr]:port for IPv6 (`version` 4 or 6, as ip_version gives)."""
    return f"{addr}:{port}" if version == 4 else f"[{addr}]:{port}"


def parse_address(text: str):
    """(family, 16 raw bytes) of an address given on the command line; ValueError if it is none."""
    for af, n in ((AF_INET, 4), (AF_INET6, 16)):
        try:
            return af, socket.inet_pton(af, text).ljust(16, b"\0")
        except OSError:
            pass
    raise ValueError(f"{text!r} is not an IPv4 or IPv6 address")
