"""saga_host.uuid5 against CPython's uuid.uuid5 (which has hashlib)."""

import hashlib
import importlib
import random
import unittest
import uuid

from saga_host.uuid5 import sha1, uuid5

# The module (the package's `uuid5` is the function).
uuid5_module = importlib.import_module("saga_host.uuid5")


class Uuid5Test(unittest.TestCase):
    def test_sha1_matches_known_digests(self):
        # FIPS 180 examples, and lengths around the 55/56/64-byte padding boundaries.
        self.assertEqual(sha1(b"abc").hex(), "a9993e364706816aba3e25717850c26c9cd0d89d")
        self.assertEqual(sha1(b"").hex(), "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        for length in (55, 56, 63, 64, 65, 119, 120, 1000):
            data = bytes(range(256)) * 4
            self.assertEqual(sha1(data[:length]), hashlib.sha1(data[:length]).digest(), length)

    def test_uuid5_matches_cpython_for_many_names(self):
        self.check_many_names()

    def test_uuid5_without_the_native_sha1_matches_cpython(self):
        # Where the interpreter lacks CPython's _sha1, uuid5 falls back to the pure sha1.
        native = uuid5_module._native_sha1
        uuid5_module._native_sha1 = None
        try:
            self.check_many_names()
        finally:
            uuid5_module._native_sha1 = native

    def check_many_names(self):
        generator = random.Random(5)
        namespaces = [uuid.NAMESPACE_DNS, uuid.NAMESPACE_URL, uuid.NAMESPACE_OID, uuid.NAMESPACE_X500]
        names = ["", "a", "attempt/7f1f3b4e-4c39-4fd2-9d0c-2f5b0c8f6a11/0b6f0a5e-12c4-4a8e-9a52-6f7c3f0d9e21", "ünïcødé ✓"]
        for _ in range(500):
            length = generator.randrange(0, 200)
            names.append("".join(chr(generator.randrange(32, 0x2FF)) for _ in range(length)))
        for name in names:
            for namespace in namespaces + [uuid.UUID(int=generator.getrandbits(128))]:
                self.assertEqual(uuid5(namespace, name), uuid.uuid5(namespace, name), (namespace, name))

    def test_bytes_names_are_taken_as_they_are(self):
        name = bytes(range(200))
        expected = uuid.UUID(bytes=hashlib.sha1(uuid.NAMESPACE_OID.bytes + name).digest()[:16], version=5)
        self.assertEqual(uuid5(uuid.NAMESPACE_OID, name), expected)


if __name__ == "__main__":
    unittest.main()
