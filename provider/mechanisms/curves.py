"""Named curves the EC and EdDSA families accept, and the little DER they need.

CKA_EC_PARAMS names a curve either by its DER OBJECT IDENTIFIER or, as PKCS#11
3.0 allows (CKF_EC_CURVENAME) and several clients send, by a DER
PrintableString curve name. Both forms map to one `Curve`; the attribute keeps
the bytes the client gave. Explicit ECParameters (a SEQUENCE) are refused with
CKR_CURVE_NOT_SUPPORTED, as are curves not in these tables.

CKA_EC_POINT is stored as a DER OCTET STRING wrapping the encoded point (what
SoftHSM2, pkcs11-tool and OpenSSL's libp11 expect); points given to us (imported
keys, the ECDH peer's public data) may be wrapped or raw: the lengths of the two
forms never collide for one curve, so the length tells which it is.
"""

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from .. import constants as C
from ..errors import PKCS11Error

OCTET_STRING, OID, PRINTABLE_STRING, SEQUENCE = 0x04, 0x06, 0x13, 0x30


# --- DER --------------------------------------------------------------------------
def der_tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        head = bytes([n])
    else:
        size = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([0x80 | len(size)]) + size
    return bytes([tag]) + head + body


def der_read(data: bytes, tag: int) -> bytes:
    """The body of the single TLV `data` must be, with tag `tag`; ValueError otherwise."""
    if len(data) < 2 or data[0] != tag:
        raise ValueError("unexpected DER tag")
    n, pos = data[1], 2
    if n & 0x80:
        count = n & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            raise ValueError("bad DER length")
        n, pos = int.from_bytes(data[2:2 + count], "big"), 2 + count
    if len(data) != pos + n:
        raise ValueError("DER length does not match")
    return data[pos:]


def oid_der(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return der_tlv(OID, bytes(body))


def wrap_point(raw: bytes) -> bytes:
    return der_tlv(OCTET_STRING, raw)


# --- curves -------------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    name: str
    oids: tuple          # dotted OIDs that name it; the first is the one we write
    names: tuple         # PrintableString names that name it
    bits: int            # key size reported in CK_MECHANISM_INFO terms
    size: int            # bytes of a scalar / of r and s (Weierstrass), of a key (Edwards)
    make: object         # cryptography curve class (Weierstrass) or private key class (Edwards)
    point_sizes: tuple   # lengths of a raw encoded public point

    @property
    def params(self) -> bytes:
        """CKA_EC_PARAMS we write for keys we build (unwrapped PKCS#8)."""
        return oid_der(self.oids[0])

    def raw_point(self, data: bytes) -> bytes:
        """A public point given raw or as a DER OCTET STRING -> the raw encoding."""
        data = bytes(data)
        if len(data) in self.point_sizes:
            return data
        inner = der_read(data, OCTET_STRING)
        if len(inner) not in self.point_sizes:
            raise ValueError("point length does not fit the curve")
        return inner


def _prime(name, oid, names, bits, make) -> Curve:
    size = (bits + 7) // 8
    return Curve(name, (oid,), names, bits, size, make, (1 + 2 * size, 1 + size))


WEIERSTRASS = (
    _prime("P-256", "1.2.840.10045.3.1.7", ("prime256v1", "secp256r1"), 256, ec.SECP256R1),
    _prime("P-384", "1.3.132.0.34", ("secp384r1",), 384, ec.SECP384R1),
    _prime("P-521", "1.3.132.0.35", ("secp521r1",), 521, ec.SECP521R1),
)
# 1.3.6.1.4.1.11591.15.1 is the GnuPG OID for Ed25519, which OpenSC's tools have sent.
EDWARDS = (
    Curve("Ed25519", ("1.3.101.112", "1.3.6.1.4.1.11591.15.1"), ("edwards25519",), 255, 32,
          ed25519.Ed25519PrivateKey, (32,)),
    Curve("Ed448", ("1.3.101.113",), ("edwards448",), 448, 57, ed448.Ed448PrivateKey, (57,)),
)


def _index(curves) -> dict:
    table = {}
    for curve in curves:
        for oid in curve.oids:
            table[oid_der(oid)] = curve
        for name in curve.names:
            table[der_tlv(PRINTABLE_STRING, name.encode())] = curve
    return table


# CKA_EC_PARAMS bytes -> curve, one table per family
WEIERSTRASS_PARAMS = _index(WEIERSTRASS)
EDWARDS_PARAMS = _index(EDWARDS)


def curve_of(params, table: dict) -> Curve:
    """The curve CKA_EC_PARAMS names, among `table` (WEIERSTRASS_PARAMS or EDWARDS_PARAMS)."""
    if params is None:
        raise PKCS11Error(C.CKR_TEMPLATE_INCOMPLETE, "CKA_EC_PARAMS missing")
    params = bytes(params)
    curve = table.get(params)
    if curve is not None:
        return curve
    for tag in (OID, PRINTABLE_STRING, SEQUENCE):
        try:
            der_read(params, tag)
        except ValueError:
            continue
        raise PKCS11Error(C.CKR_CURVE_NOT_SUPPORTED, "curve not supported")
    raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_EC_PARAMS is not a curve OID or name")

