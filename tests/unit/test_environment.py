"""[environment] (provider/environment.py): what production refuses that a laptop allows."""

import pytest

from provider import constants as C
from provider.config import Config
from provider.errors import PKCS11Error
from provider.governance import GovernanceError, governance_of
from provider.governance import record as R
from provider.library import Library
from provider.principal import Principal

from .conftest import USER_PIN, init_token

ALICE = Principal("alice", frozenset({"operator"}), interface="rest")
CAROL = Principal("carol", frozenset({"administrator"}), interface="rest")


def parse(text: str) -> Config:
    return Config.parse(text, "test.conf")


def test_the_default_is_local_and_the_type_is_checked():
    assert parse("").environment == "local"
    assert parse('[environment]\ntype = "production"\n').environment == "production"
    for bad in ('[environment]\ntype = "prod"\n', '[environment]\nkind = "local"\n'):
        with pytest.raises(PKCS11Error, match="environment"):
            parse(bad)


def test_production_refuses_a_software_fallback_and_a_short_audit():
    fallback = ('[backends.tpm]\ntype = "tpm2"\ntcti = "swtpm:port=1"\n'
                '[token.prod]\nbackends = ["tpm"]\nfallback = "software"\n')
    parse(fallback)                                                     # (local: allowed)
    parse('[environment]\ntype = "staging"\n' + fallback)
    with pytest.raises(PKCS11Error, match="fallback"):
        parse('[environment]\ntype = "production"\n' + fallback)
    with pytest.raises(PKCS11Error, match="90 days"):
        parse('[environment]\ntype = "production"\n[audit]\nretention_days = 89\n')
    parse('[environment]\ntype = "production"\n[audit]\nretention_days = 90\n')
    parse('[environment]\ntype = "production"\n[audit]\nretention_days = 0\n')   # 0 keeps every record


@pytest.mark.parametrize("environment, refused", [("production", True), ("staging", True),
                                                  ("development", False), ("local", False)])
def test_a_hardware_tag_on_the_engine_keys(tmp_path, environment, refused):
    conf = tmp_path / "ferrohsm.conf"
    conf.write_text(f'[tokens]\ndirectory = "{tmp_path / "tokens"}"\n[log]\nlevel = "ERROR"\n'
                    f'[pin]\nfailure_delay = 0\n[environment]\ntype = "{environment}"\n')
    lib = Library(Config.parse(conf.read_text(), str(conf)))
    try:
        slot = init_token(lib)
        s = lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
        lib.login(s, C.CKU_USER, USER_PIN)
        gov = governance_of(lib, lib.tokens[slot])
        gov.put_tag(CAROL, R.PolicyTag("hsm", security_level="hardware"))
        if refused:
            with pytest.raises(GovernanceError) as e:
                gov.create_key(ALICE, "k", "ec-p256", ["sign", "verify"], tags=["hsm"])
            assert e.value.code == "failed_precondition" and "hardware tag" in e.value.message
            assert gov.list_keys() == ([], None)
        else:
            assert gov.create_key(ALICE, "k", "ec-p256", ["sign", "verify"], tags=["hsm"]).versions[0].backend == "soft"
        gov.create_key(ALICE, "plain", "ec-p256", ["sign", "verify"])     # no tag: anywhere
    finally:
        lib.finalize()
