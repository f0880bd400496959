"""AES key wrap as CKM_AES_KEY_WRAP / _PAD use it (cryptography's keywrap, which
from cryptography 42 on is OpenSSL's wrap in C; before, a Python loop at about
0.7 s per MiB - issue 9): it is the native one, the RFC 3394 and RFC 5649
vectors hold, and integrity failures raise InvalidUnwrap."""

import types

import pytest
from cryptography.hazmat.primitives import keywrap

KEK = bytes.fromhex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")

RFC3394 = [  # (KEK, key data, wrapped) RFC 3394 §4.1, 4.2, 4.3, 4.6
    (KEK[:16], KEY[:16], "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"),
    (KEK[:24], KEY[:16], "96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D"),
    (KEK, KEY[:16], "64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7"),
    (KEK, KEY, "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"),
]
RFC5649_KEK = bytes.fromhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
RFC5649 = [  # RFC 5649 §6
    ("c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"),
    ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
]


@pytest.mark.parametrize("kek,key,wrapped", RFC3394)
def test_rfc3394_vectors(kek, key, wrapped):
    assert keywrap.aes_key_wrap(kek, key).hex().upper() == wrapped
    assert keywrap.aes_key_unwrap(kek, bytes.fromhex(wrapped)) == key


@pytest.mark.parametrize("key,wrapped", RFC5649)
def test_rfc5649_vectors(key, wrapped):
    assert keywrap.aes_key_wrap_with_padding(RFC5649_KEK, bytes.fromhex(key)).hex() == wrapped
    assert keywrap.aes_key_unwrap_with_padding(RFC5649_KEK, bytes.fromhex(wrapped)) == bytes.fromhex(key)


def test_key_wrap_is_native_code():
    """No Python loop: each of the four functions is a builtin (Rust over OpenSSL)."""
    for fn in (keywrap.aes_key_wrap, keywrap.aes_key_unwrap, keywrap.aes_key_wrap_with_padding, keywrap.aes_key_unwrap_with_padding):
        assert isinstance(fn, types.BuiltinFunctionType), fn


def test_tampered_wrap_is_invalid_unwrap():
    wrapped = bytearray(keywrap.aes_key_wrap(KEK, KEY))
    wrapped[3] ^= 1
    with pytest.raises(keywrap.InvalidUnwrap):
        keywrap.aes_key_unwrap(KEK, bytes(wrapped))
    padded = bytearray(keywrap.aes_key_wrap_with_padding(KEK, b"abc"))
    padded[-1] ^= 1
    with pytest.raises(keywrap.InvalidUnwrap):
        keywrap.aes_key_unwrap_with_padding(KEK, bytes(padded))
    with pytest.raises(keywrap.InvalidUnwrap):
        keywrap.aes_key_unwrap(KEK, b"\0" * 20)
