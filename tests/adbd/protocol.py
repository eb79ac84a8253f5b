"""The ADB wire protocol, device side: packets, the sync sub-protocol, and adb's RSA auth check.

Reference: AOSP packages/modules/adb/protocol.txt and SYNC.TXT. A packet is a 24-byte header
(command, arg0, arg1, data length, data checksum, command ^ 0xffffffff, little-endian uint32s)
followed by the payload. Checksums are the byte sum of the payload; peers that negotiate
version 0x01000001 or later may send 0 and skip the check.
"""

from __future__ import annotations

import base64
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

VERSION_MIN = 0x01000000
VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD = 256 * 1024
MAX_PAYLOAD_V1 = 4 * 1024

AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
TOKEN_SIZE = 20
SYNC_DATA_MAX = 64 * 1024

HEADER = struct.Struct("<6I")


def cmd_word(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


CNXN, AUTH, OPEN, OKAY, WRTE, CLSE = (cmd_word(c) for c in
                                      (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"WRTE", b"CLSE"))
NAMES = {v: k for k, v in {"CNXN": CNXN, "AUTH": AUTH, "OPEN": OPEN, "OKAY": OKAY,
                           "WRTE": WRTE, "CLSE": CLSE}.items()}


class ProtocolError(Exception):
    """The peer sent something a real adbd would reject."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


def pack(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return HEADER.pack(command, arg0, arg1, len(data), checksum(data),
                       command ^ 0xFFFFFFFF) + data


def unpack_header(raw: bytes) -> tuple[int, int, int, int, int]:
    command, arg0, arg1, length, crc, magic = HEADER.unpack(raw)
    if magic != command ^ 0xFFFFFFFF or command not in NAMES:
        raise ProtocolError(f"bad packet header {raw.hex()}")
    return command, arg0, arg1, length, crc


def parse_adb_public_key(blob: bytes) -> rsa.RSAPublicKey:
    """Decode adb's public key format: base64 of {len, n0inv, n[], rr[], e} plus ' user@host'.

    The modulus is stored as little-endian 32-bit words (libcrypto_utils/android_pubkey.cpp).
    """
    b64 = blob.split(b"\0")[0].split(b" ")[0]
    raw = base64.b64decode(b64)
    words = struct.unpack_from("<I", raw, 0)[0]
    nbytes = words * 4
    if len(raw) != 8 + 2 * nbytes + 4:
        raise ProtocolError("malformed adb public key")
    n = int.from_bytes(raw[8:8 + nbytes], "little")
    e = struct.unpack_from("<I", raw, 8 + 2 * nbytes)[0]
    return rsa.RSAPublicNumbers(e, n).public_key()


def verify_token(key: rsa.RSAPublicKey, token: bytes, signature: bytes) -> bool:
    """adb signs the 20-byte token as if it were a SHA-1 digest (RSA_sign(NID_sha1, ...))."""
    try:
        key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        return True
    except Exception:
        return False


def sync_header(ident: bytes, value: int) -> bytes:
    return ident + struct.pack("<I", value)
