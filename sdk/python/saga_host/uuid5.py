"""Name-based UUIDs (RFC 4122 version 5) that work inside a component.

componentize-py's Python has no `hashlib`, so `uuid.uuid5` fails there with "No module named
'hashlib'". This computes the SHA-1 that version 5 is defined by in plain Python. It is only
meant for uuid5 (short names, a few per call), not as a general-purpose hash.
"""

from uuid import UUID

_MASK = 0xFFFFFFFF


def _rotate_left(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (32 - bits))) & _MASK


def sha1(data: bytes) -> bytes:
    """The SHA-1 digest of `data` (FIPS 180-4), 20 bytes."""
    length_in_bits = (len(data) * 8).to_bytes(8, "big")
    padding = b"\x80" + b"\x00" * ((55 - len(data)) % 64)
    message = data + padding + length_in_bits
    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
    for start in range(0, len(message), 64):
        block = message[start : start + 64]
        words = [int.from_bytes(block[i : i + 4], "big") for i in range(0, 64, 4)]
        for i in range(16, 80):
            words.append(_rotate_left(words[i - 3] ^ words[i - 8] ^ words[i - 14] ^ words[i - 16], 1))
        a, b, c, d, e = state
        for i, word in enumerate(words):
            if i < 20:
                f, k = (b & c) | (~b & d), 0x5A827999
            elif i < 40:
                f, k = b ^ c ^ d, 0x6ED9EBA1
            elif i < 60:
                f, k = (b & c) | (b & d) | (c & d), 0x8F1BBCDC
            else:
                f, k = b ^ c ^ d, 0xCA62C1D6
            a, b, c, d, e = (_rotate_left(a, 5) + f + e + k + word) & _MASK, a, _rotate_left(b, 30), c, d
        state = [(x + y) & _MASK for x, y in zip(state, (a, b, c, d, e))]
    return b"".join(x.to_bytes(4, "big") for x in state)


def uuid5(namespace: UUID, name: str | bytes) -> UUID:
    """What `uuid.uuid5(namespace, name)` returns, without hashlib."""
    if isinstance(name, str):
        name = name.encode("utf-8")
    return UUID(bytes=sha1(namespace.bytes + name)[:16], version=5)
