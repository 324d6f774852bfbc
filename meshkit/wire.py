"""Protobuf messages assembled from parts already serialised.

The wire format of a message is the concatenation of its fields, in any order, and a repeated or
embedded message field is its tag, its length and the embedded message's bytes. So a message that
embeds a large part (a lead with its explanation) in several events is serialised once and its
bytes are spliced into each event, instead of being copied into each event's object and serialised
again. Parsing the result gives the same message as building it field by field (tested).
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor

_LENGTH_DELIMITED = 2


def varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_tag(descriptor: Descriptor, name: str) -> bytes:
    """The tag of the message field ``name`` of ``descriptor`` (a length-delimited field)."""
    field = descriptor.fields_by_name[name]
    return varint(field.number << 3 | _LENGTH_DELIMITED)


def embedded(tag: bytes, payload: bytes) -> bytes:
    """One occurrence of a length-delimited field: ``tag`` (from :func:`field_tag`), length, payload."""
    return tag + varint(len(payload)) + payload
