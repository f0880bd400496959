"""What an X.509 certificate object's attributes can be read from its DER value,
so a client that stores just CKA_VALUE gets CKA_SUBJECT, CKA_ISSUER,
CKA_SERIAL_NUMBER and CKA_PUBLIC_KEY_INFO filled in (the client's own values,
if given, win)."""

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import constants as C
from .errors import PKCS11Error


def der_integer(value: int) -> bytes:
    """DER encoding of an INTEGER (CKA_SERIAL_NUMBER holds the whole TLV)."""
    body = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    return b"\x02" + der_length(len(body)) + body


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def x509_fields(der: bytes | None) -> dict:
    if der is None:
        return {}
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VALUE is not a DER X.509 certificate") from None
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        C.CKA_SUBJECT: cert.subject.public_bytes(),
        C.CKA_ISSUER: cert.issuer.public_bytes(),
        C.CKA_SERIAL_NUMBER: der_integer(cert.serial_number),
        C.CKA_PUBLIC_KEY_INFO: spki,
    }
