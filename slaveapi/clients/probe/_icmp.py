"""
ICMP echo packets: building requests, parsing replies, the Internet checksum.

Pure functions over bytes, with no socket and no reactor, so the packets can
be tested on their own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ECHO_REPLY = 0
ECHO_REQUEST = 8

#: What each echo request carries (replies echo it back; it is not relied on).
PAYLOAD = b"slaveapi-probe\x00\x00"


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of C{data}: the ones' complement of its ones'-complement 16-bit sum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    """An ICMP echo request (type 8, code 0) with its checksum."""
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    total = checksum(header + payload)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, total, ident & 0xFFFF, seq & 0xFFFF) + payload


@dataclass(frozen=True)
class EchoReply:
    """The identifier and sequence number of an ICMP echo reply."""

    ident: int
    seq: int


def parse_echo_reply(packet: bytes) -> EchoReply | None:
    """
    The echo reply in C{packet}, or C{None} for anything else (another
    ICMP type, a bad checksum, a truncated packet).

    A raw socket (and a datagram one on some systems) delivers the IPv4
    header too; it is recognised by its version nibble (an ICMP message
    starts with its type, and an echo reply's is 0) and skipped by its
    length field.
    """
    if packet and packet[0] >> 4 == 4:
        header_length = (packet[0] & 0x0F) * 4
        if header_length < 20 or len(packet) < header_length:
            return None
        packet = packet[header_length:]
    if len(packet) < 8:
        return None
    kind, code, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    if kind != ECHO_REPLY or code != 0 or checksum(packet) != 0:
        return None
    return EchoReply(ident, seq)


__all__ = ["ECHO_REPLY", "ECHO_REQUEST", "PAYLOAD", "EchoReply", "checksum", "echo_request", "parse_echo_reply"]
