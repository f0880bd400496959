"""The [server] table: defaults, rate overrides, and every malformed value refused at
load with a message naming the key (never silently defaulted)."""

import pytest

from provider.config import DEFAULT_RATES, Config
from provider.errors import PKCS11Error


def parse(text):
    return Config.parse(text, "test.conf").server


def test_defaults_and_overrides():
    s = parse("")
    assert s.listen == "127.0.0.1:8443" and s.jwt_secret_env == "FERROHSM_JWT_SECRET" and s.rate == DEFAULT_RATES
    s = parse('[server]\nlisten = "[::1]:9000"\npin = "file:/p"\nrate = { auditor = [2.5, 5] }\n')
    assert s.listen == "[::1]:9000" and s.rate["auditor"] == (2.5, 5) and s.rate["service"] == DEFAULT_RATES["service"]


@pytest.mark.parametrize("line, key", [
    ("listen = 8443", "listen"),
    ('pin = "1234"', "pin"),
    ("jwt_max_lifetime = 0", "jwt_max_lifetime"),
    ('max_body = "big"', "max_body"),
    ("rate = { root = [1, 1] }", "rate"),
    ("rate = { service = [0, 1] }", "rate"),
    ("rate = { service = [1] }", "rate"),
    ("rate = 5", "rate"),
    ("tls = true", "tls"),
])
def test_bad_values_refused(line, key):
    with pytest.raises(PKCS11Error) as e:
        parse(f"[server]\n{line}\n")
    assert f"'{key}'" in str(e.value)
