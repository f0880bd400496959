"""The configuration file: the [limits] and [policy] tables, and [pin]'s lengths, KDF cost and failure delay."""

import pytest

from provider import constants as C
from provider.config import Config, Limits
from provider.errors import PKCS11Error
from provider.store.sealing import Argon2id, PinPolicy


def test_limits_default():
    conf = Config.parse("", "test")
    assert conf.limits == Limits()
    assert conf.limits.pbkdf2_max_iterations == 10_000_000


def test_limits_set():
    conf = Config.parse("[limits]\npbkdf2_max_iterations = 1000\nmax_wrap_len = 4096\n", "test")
    assert conf.limits.pbkdf2_max_iterations == 1000
    assert conf.limits.max_wrap_len == 4096
    assert conf.limits.max_data_len == Limits().max_data_len


@pytest.mark.parametrize("table", ["pbkdf2_max_iterations = 0", "max_data_len = -1",
                                   'max_wrap_len = "big"', "unknown = 3"])
def test_limits_refused(table):
    with pytest.raises(PKCS11Error) as err:
        Config.parse(f"[limits]\n{table}\n", "test")
    assert err.value.rv == C.CKR_GENERAL_ERROR


def test_policy_key_separation_defaults_on():
    assert Config.parse("", "test").policy.key_separation is True
    assert Config.parse("[policy]\nkey_separation = false\n", "test").policy.key_separation is False


@pytest.mark.parametrize("table", ['key_separation = "no"', "key_separation = 0", "unknown = true"])
def test_policy_refused(table):
    with pytest.raises(PKCS11Error) as err:
        Config.parse(f"[policy]\n{table}\n", "test")
    assert err.value.rv == C.CKR_GENERAL_ERROR


def test_pin_defaults():
    conf = Config.parse("", "test")
    assert conf.pin_min == 6
    assert conf.pin_policy == PinPolicy(Argon2id(65536, 3, 4), 0.5)


def test_pin_kdf_and_delay_set():
    conf = Config.parse("[pin]\nkdf_memory = 131072\nkdf_time = 2\nkdf_parallelism = 2\nfailure_delay = 0\n",
                        "test")
    assert conf.pin_policy == PinPolicy(Argon2id(131072, 2, 2), 0.0)


@pytest.mark.parametrize("table", ["kdf_memory = 65535", "kdf_memory = 8388608", "kdf_time = 0",
                                   "kdf_parallelism = 0", 'kdf_time = "3"', "failure_delay = -1",
                                   "failure_delay = 9"])
def test_pin_kdf_refused(table):
    with pytest.raises(PKCS11Error) as err:
        Config.parse(f"[pin]\n{table}\n", "test")
    assert err.value.rv == C.CKR_GENERAL_ERROR


def test_audit_table():
    from provider.config import AuditSettings, Config
    assert Config.parse("", "t").audit == AuditSettings()
    conf = Config.parse('[audit]\nhmac_key = "file:/k"\nfile = "/var/log/a.jsonl"\ncheckpoint_every = 500\n'
                        'checkpoint_seconds = 5\nretention_days = 90\n', "t")
    assert conf.audit == AuditSettings("file:/k", "/var/log/a.jsonl", "", 500, 5.0, 90)
    for bad in ('hmac_key = "plain"', "checkpoint_every = 0", "checkpoint_seconds = -1", "retention_days = 1.5",
                'file = 3', "unknown = 1"):
        with pytest.raises(PKCS11Error, match=r"\[audit\]"):
            Config.parse(f"[audit]\n{bad}\n", "t")
