"""Importing this module registers every mechanism family (registry._load_families)."""

from . import aes, des3, digest, ec, eddsa, encrypt_data, generic, hmac, kdf, rsa  # noqa: F401
