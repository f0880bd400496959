"""A Library whose token's keys live in one backend, for the engine-level backend tests.

`make_env` writes a FerroHSM config naming the backend and a token policy, makes the
token (SO PIN, user PIN = the PIV card's PIN, so one PIN opens both) and returns it."""

from dataclasses import dataclass

import pytest

from provider import attrtypes
from provider import constants as C
from provider.config import Config
from provider.errors import PKCS11Error
from provider.library import Library
from provider.mechanisms.params import Mechanism

SO_PIN, PIN = b"so-12345678", b"123456"       # 123456: jcecard's PIV PIN
RW = C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION
P256 = bytes.fromhex("06082a8648ce3d030107")
P384 = bytes.fromhex("06052b81040022")
P521 = bytes.fromhex("06052b81040023")
# kind -> (mechanism, public template, private template extras)
KEYGEN = {
    "ec-p256": (C.CKM_EC_KEY_PAIR_GEN, dict(EC_PARAMS=P256), dict(DERIVE=True)),
    "ec-p384": (C.CKM_EC_KEY_PAIR_GEN, dict(EC_PARAMS=P384), dict(DERIVE=True)),
    "rsa-2048": (C.CKM_RSA_PKCS_KEY_PAIR_GEN, dict(MODULUS_BITS=2048), dict(DECRYPT=True)),
}


def T(**attrs) -> list:
    return [(getattr(C, "CKA_" + k), attrtypes.encode(getattr(C, "CKA_" + k), v))
            for k, v in attrs.items()]


def rv(fn, *args) -> int:
    try:
        fn(*args)
    except PKCS11Error as e:
        return e.rv
    return C.CKR_OK


def backend_settings(name: str, peers: dict) -> str:
    """The [backends.NAME] body for one of soft, softhsm, pkcs11 (a second FerroHSM as the
    remote module), tpm2, piv."""
    table = {
        "soft": lambda: 'type = "soft"\n',
        "softhsm": lambda: peers["softhsm"].settings(),
        "pkcs11": lambda: peers["ferro_remote"].settings(),
        "tpm2": lambda: f'type = "tpm2"\ntcti = "{peers["swtpm"].tcti}"\ntimeout = 5.0\n',
        "piv": lambda: f'type = "piv"\nreader = "{peers["pcsc"].reader}"\ntimeout = 5.0\n',
    }
    return table[name]()


def write_config(path, backends: dict, policy: tuple, label: str, log_file=None) -> Config:
    """backends: name -> settings body; policy: (names, fallback)."""
    text = f'[tokens]\ndirectory = "{path / "tokens"}"\n[pin]\nmax_failures = 3\n'
    text += f'[log]\nlevel = "INFO"\nfile = "{log_file or path / "ferrohsm.log"}"\n'
    for name, body in backends.items():
        text += f"[backends.{name}]\n{body}"
    names = ", ".join(f'"{n}"' for n in policy[0])
    text += f'[token."{label}"]\nbackends = [{names}]\nfallback = "{policy[1]}"\n'
    conf = path / "ferrohsm.conf"
    conf.write_text(text)
    return Config.parse(text, str(conf))


def init_token(lib: Library, label: str) -> int:
    slot = lib.free_slot
    lib.init_token(slot, SO_PIN, label.encode().ljust(32, b" "))
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_SO, SO_PIN)
    lib.init_pin(s, PIN)
    lib.close_session(s)
    return slot


@dataclass
class Env:
    lib: Library
    slot: int
    session: int
    name: str

    def keypair(self, kind: str, label: str = "", key_id: bytes = b"", token=True, **priv):
        mech, pub_t, priv_t = KEYGEN[kind]
        return self.lib.generate_key_pair(
            self.session, Mechanism(mech), T(TOKEN=token, ID=key_id, **pub_t),
            T(TOKEN=token, PRIVATE=True, SIGN=True, LABEL=label.encode(), ID=key_id,
              **priv_t, **priv))

    def attr(self, handle: int, cka: int):
        return self.lib.get_attribute_value(self.session, handle, [cka])[0]

    def find(self, **attrs) -> list:
        self.lib.find_objects_init(self.session, T(**attrs))
        try:
            return self.lib.find_objects(self.session, 100)
        finally:
            self.lib.find_objects_final(self.session)


def skip_unless(name: str, skips: dict, test: str) -> None:
    reason = skips.get((name, test))
    if reason:
        pytest.skip(f"{name}: {reason}")
