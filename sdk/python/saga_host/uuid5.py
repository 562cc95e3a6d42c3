"""Name-based UUIDs (RFC 4122 version 5) that work inside a component.

componentize-py's Python has no `hashlib`, so `uuid.uuid5` fails there with "No module named
'hashlib'". This takes the SHA-1 that version 5 is defined by from CPython's built-in `_sha1`
module, which hashlib wraps, and computes it in plain Python where that is missing too. The
built-in one cut the tutorial's Attempt handler from 4.9 to 3.9 ms a call (the plain one is
meant for uuid5's short names only, not as a general-purpose hash).
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


try:
    # CPython's own SHA-1, when the interpreter was built with it.
    from _sha1 import sha1 as _native_sha1
except ImportError:
    _native_sha1 = None


def uuid5(namespace: UUID, name: str | bytes) -> UUID:
    """What `uuid.uuid5(namespace, name)` returns, without hashlib."""
    if isinstance(name, str):
        name = name.encode("utf-8")
    data = namespace.bytes + name
    digest = _native_sha1(data).digest() if _native_sha1 else sha1(data)
    return UUID(bytes=digest[:16], version=5)
