"""FerroHSM's configuration file, named by FERROHSM_CONF (like SOFTHSM2_CONF).

TOML, every key optional:

    [tokens]
    directory = "~/.local/share/ferrohsm/tokens"   # one SQLite database per token

    [log]
    level = "WARNING"        # DEBUG, INFO, WARNING, ERROR
    file = ""                # empty: standard error

    [pin]
    min_length = 4
    max_length = 255
    max_failures = 10        # wrong PINs in a row before the PIN locks

Without FERROHSM_CONF the per-user file $XDG_CONFIG_HOME/ferrohsm/ferrohsm.conf
(~/.config/...) is read if it exists, else the defaults above apply. A FERROHSM_CONF
that names a missing or malformed file is an error, not a silent fallback.
"""

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import constants as C
from .errors import PKCS11Error

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


@dataclass(frozen=True)
class Config:
    token_dir: Path
    log_level: str = "WARNING"
    log_file: str = ""
    pin_min: int = 4
    pin_max: int = 255
    pin_max_failures: int = 10
    source: str = "(defaults)"

    @staticmethod
    def default_path() -> Path:
        return _xdg("XDG_CONFIG_HOME", ".config") / "ferrohsm" / "ferrohsm.conf"

    @classmethod
    def load(cls) -> "Config":
        named = os.environ.get("FERROHSM_CONF")
        path = Path(named) if named else cls.default_path()
        if not path.exists():
            if named:
                raise PKCS11Error(C.CKR_GENERAL_ERROR, f"FERROHSM_CONF names a missing file: {path}")
            return cls(token_dir=_xdg("XDG_DATA_HOME", ".local/share") / "ferrohsm" / "tokens")
        return cls.parse(path.read_text(), str(path))

    @classmethod
    def parse(cls, text: str, source: str) -> "Config":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: {exc}") from None
        tokens, log, pin = data.get("tokens", {}), data.get("log", {}), data.get("pin", {})
        default_dir = _xdg("XDG_DATA_HOME", ".local/share") / "ferrohsm" / "tokens"
        token_dir = Path(os.path.expanduser(tokens.get("directory", str(default_dir))))
        if not token_dir.is_absolute():  # relative to the config file, as a user expects
            token_dir = Path(source).resolve().parent / token_dir
        conf = cls(
            token_dir=token_dir,
            log_level=str(log.get("level", "WARNING")).upper(),
            log_file=str(log.get("file", "")),
            pin_min=int(pin.get("min_length", 4)),
            pin_max=int(pin.get("max_length", 255)),
            pin_max_failures=int(pin.get("max_failures", 10)),
            source=source,
        )
        if conf.log_level not in LOG_LEVELS:
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: log level must be one of {LOG_LEVELS}")
        if not (1 <= conf.pin_min <= conf.pin_max) or conf.pin_max_failures < 1:
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: bad [pin] limits")
        return conf
