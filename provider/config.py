"""FerroHSM's configuration file, named by FERROHSM_CONF (like SOFTHSM2_CONF).

TOML, every key optional:

    [tokens]
    directory = "~/.local/share/ferrohsm/tokens"   # where the sqlite and filesystem stores keep tokens

    [store]                  # where tokens live; every process on the same store sees one truth
    kind = "sqlite"          # sqlite (one file per token) | filesystem (a directory per token,
                             # a file per object version) | postgres | memory (this process only)
    dsn = ""                 # postgres: a libpq connection string or URI,
                             # e.g. "host=127.0.0.1 port=5432 dbname=ferrohsm user=ferrohsm"
    head_cache = 0.0         # postgres: seconds a process may answer its head check from the
                             # change notifications it received instead of a query; 0 (the
                             # default): every key use asks the server, so another process's
                             # destroy fails the very next *Init; above 0 it fails once the
                             # notification arrived (about 1 ms), at most head_cache later
    anchor = ""              # a [backends.NAME] of type tpm2: anchor each token's record in
                             # that TPM (store/anchor.py): an NV counter per token and a MAC
                             # by a TPM-held key; a record rolled back or edited by whoever
                             # can write the token files (but not use the TPM) is refused
                             # with CKR_DEVICE_ERROR. "" (the default): no anchor - a file
                             # writer can then put back an older token file: forgotten
                             # PIN failures, an old PIN, destroyed objects, used IV counters.
                             # Each token write costs 2-4 TPM commands; a token once
                             # anchored is refused on another TPM or after a TPM clear.

    [log]
    level = "WARNING"        # DEBUG, INFO, WARNING, ERROR
    file = ""                # empty: standard error

    [pin]
    min_length = 6
    max_length = 255
    max_failures = 10        # wrong PINs in a row before the PIN locks
    failure_delay = 0.5      # seconds a PIN check waits after a failure, doubling with each
                             # further one up to 16 times this (8 s); 0: no wait
    kdf_memory = 65536       # Argon2id cost of new PIN wraps (at least 64 MiB, in KiB),
    kdf_time = 3             # passes, and lanes; a PIN wrap below it is wrapped again
    kdf_parallelism = 4      # at that PIN's next login

    [limits]                 # work one call may ask for; above a limit the call is refused
    pbkdf2_max_iterations = 10000000   # CKM_PKCS5_PBKD2 -> CKR_MECHANISM_PARAM_INVALID above
    max_data_len = 67108864  # bytes of one buffer a caller hands in (attribute value, seed,
                             # random length, mechanism parameter field, wrapped key, PIN
                             # buffers are [pin]'s): above -> the function's length code
    max_wrap_len = 16777216  # bytes AES key wrap takes in or gives out (wrap, unwrap, and
                             # C_Encrypt/C_Decrypt with CKM_AES_KEY_WRAP*)
    max_template_attrs = 1024          # CK_ATTRIBUTEs in one template, nested ones counted

    [policy]                 # the engine's key-usage rules
    key_separation = true    # a key never both wraps and decrypts, nor unwraps and encrypts
                             # (schema.py, "Key separation"): such templates are
                             # CKR_TEMPLATE_INCONSISTENT, usages default by what the template
                             # asks, usage attributes only turn off after creation, and the
                             # key-wrap mechanisms do not encrypt/decrypt with a wrapping key.
                             # false: the legacy rules (every usage defaults true, any mix
                             # allowed) for clients that ask for all usages on one key
                             # (python-pkcs11's default capabilities do). It opens Clulow's
                             # attack (wrap a key, decrypt the blob) again: see SECURITY.md.

    [audit]                  # the audit chain of every key use (provider/audit/)
    hmac_key = ""            # the records' HMAC key: "env:NAME" | "file:PATH"; "" (default):
                             # <tokens directory>/audit-hmac.key, 32 random bytes made 0600
                             # at first need (verifying MACs needs it; the signed checkpoints
                             # need only the public key: `ferrohsm audit public-key`)
    file = ""                # also a JSON-lines copy of every record here ("" = none)
    checkpoint_file = ""     # each signed checkpoint also appended here, for an auditor
                             # to keep elsewhere ("" = the store only)
    checkpoint_every = 10000 # a checkpoint after this many records,
    checkpoint_seconds = 60  # or this many seconds, whichever comes first
    retention_days = 0       # prune records older than this (0 = keep them all); the
                             # cut keeps a signed anchor, so the rest still verifies

    [environment]            # what the deployment refuses (provider/environment.py)
    type = "local"           # production (no software fallback, hardware tags enforced, audit
                             # kept >= 90 days) | staging (hardware tags enforced) | development | local

    [server]                 # `ferrohsm serve`: the REST service (provider/service/)
    listen = "127.0.0.1:8443"
    tls_cert = ""            # server certificate chain and key (PEM); required: TLS 1.3
    tls_key = ""             # only (plain HTTP only with --insecure-dev, on loopback)
    client_ca = ""           # CA (PEM) of client certificates: set = mTLS required
    token = ""               # label of the token served ("" = the first initialised one)
    pin = "env:FERROHSM_PIN" # its user PIN source, read once at start: "env:NAME" | "file:PATH"
    jwt_secret_env = "FERROHSM_JWT_SECRET"   # the variable holding the HS256 secret (>= 32 bytes;
                             # may be unset when jwks_file is: HS256 tokens then refused)
    jwks_file = ""           # RS256/ES256/EdDSA public keys (JWKS; kid -> key, alg pinned per
                             # key; re-read when it changes, a bad edit keeps the last good set)
    jwt_issuer = "ferrohsm"  # required `iss` and `aud` of bearer tokens
    jwt_audience = "ferrohsm"
    jwt_max_lifetime = 3600  # exp - iat at most (seconds); jwt_leeway = 30 for clock skew
    roles_claim = "roles"    # administrator | operator | auditor | service
    keys_claim = "keys"      # a service token's keys (names or ids); absent = none
    max_body = 1048576       # bytes; max_header = 8192 (one header line)
    rate = { service = [500, 1000] }   # per-subject token bucket [per second, burst] by
                             # role (defaults: service 500/1000, the others 20/40)

    # Device backends (provider/backends/engine.py), each named; "soft" (the engine's
    # own keys) always exists.  Settings per type:
    [backends.tpm]
    type = "tpm2"
    tcti = "swtpm:path=/run/swtpm/sock"   # or "device:/dev/tpmrm0", ...
    timeout = 10.0                        # seconds per device call
    [backends.card]
    type = "piv"
    reader = "Yubico YubiKey"             # a reader name or its prefix; "" = the first
    management_key = "0102...08"          # hex; default the PIV default 3DES key
    management_key_algorithm = "3des"     # 3des | aes128 | aes192 | aes256
    pin_tries = 3
    [backends.vault]
    type = "pkcs11"                       # any PKCS#11 module: a network HSM, SoftHSM2, FerroHSM
    module = "/opt/hsm/lib/libhsm.so"
    token_label = "ferro"                 # or slot = 3 (a CK_SLOT_ID), not both
    pin = "file:/etc/ferrohsm/vault.pin"  # PIN source: "file:PATH" or "env:VARIABLE"
    security = "hardware"                 # what its keys are: hardware | software (default)
    timeout = 10.0                        # seconds per module call
    env = { LIBHSM_CONF = "/etc/hsm.conf" }   # set before the module's first C_Initialize
    [backends.shsm]
    type = "softhsm"                      # the pkcs11 type preset for SoftHSM2 (security software)
    module = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "ferro"
    pin = "file:/etc/ferrohsm/softhsm.pin"
    conf = ""                             # SOFTHSM2_CONF to use ("" = the environment's)

    # Per token (by label): backend precedence and fallback policy.
    [token."my token"]
    backends = ["tpm", "card"]           # first healthy one holds new key pairs
    fallback = "none"                     # "software": use the engine's keys if none is

A token with no [token.LABEL] table keeps its keys in the engine, as before.

Without FERROHSM_CONF the per-user file $XDG_CONFIG_HOME/ferrohsm/ferrohsm.conf
(~/.config/...) is read if it exists, else the defaults above apply. A FERROHSM_CONF
that names a missing or malformed file is an error, not a silent fallback.
"""

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import constants as C
from . import environment
from .errors import PKCS11Error
from .store.sealing import ARGON2_MAX_KIB, ARGON2_MIN_KIB, Argon2id, PinPolicy

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
STORE_KINDS = ("sqlite", "filesystem", "postgres", "memory")
BACKEND_TYPES = ("soft", "tpm2", "piv", "pkcs11", "softhsm")
FALLBACKS = ("software", "none")


@dataclass(frozen=True)
class TokenPolicy:
    backends: tuple          # backend names, in order of preference
    fallback: str = "none"   # one of FALLBACKS


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


@dataclass(frozen=True)
class Limits:
    """The [limits] table. Each answer a caller gets above a limit is the spec's code
    for that input (listed where the limit is checked), never CKR_GENERAL_ERROR."""
    pbkdf2_max_iterations: int = 10_000_000
    max_data_len: int = 64 << 20
    max_wrap_len: int = 16 << 20
    max_template_attrs: int = 1024

    @classmethod
    def parse(cls, table: dict, source: str) -> "Limits":
        unknown = set(table) - set(cls.__dataclass_fields__)
        values = {k: table[k] for k in cls.__dataclass_fields__ if k in table}
        if unknown or any(type(v) is not int or v < 1 for v in values.values()):
            raise PKCS11Error(C.CKR_GENERAL_ERROR,
                              f"{source}: [limits] takes positive integers {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


@dataclass(frozen=True)
class Policy:
    """The [policy] table: the engine's key-usage rules (issue 14 adds more keys)."""
    key_separation: bool = True

    @classmethod
    def parse(cls, table: dict, source: str) -> "Policy":
        fields = cls.__dataclass_fields__
        if set(table) - set(fields) or any(type(table[k]) is not bool for k in table):
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: [policy] takes booleans {sorted(fields)}")
        return cls(**table)


@dataclass(frozen=True)
class AuditSettings:
    """The [audit] table (see the module docstring; provider/audit/__init__.py reads it)."""
    hmac_key: str = ""
    file: str = ""
    checkpoint_file: str = ""
    checkpoint_every: int = 10_000
    checkpoint_seconds: float = 60.0
    retention_days: int = 0

    @classmethod
    def parse(cls, table: dict, source: str) -> "AuditSettings":
        fields = cls.__dataclass_fields__
        bad = set(table) - set(fields)
        for name in ("hmac_key", "file", "checkpoint_file"):
            bad |= {name} if name in table and not isinstance(table[name], str) else set()
        key = table.get("hmac_key", "")
        if key and key.partition(":")[0] not in ("env", "file"):
            bad.add("hmac_key")
        every, secs, days = (table.get(k, getattr(cls, k)) for k in ("checkpoint_every", "checkpoint_seconds",
                                                                      "retention_days"))
        if type(every) is not int or every < 1:
            bad.add("checkpoint_every")
        if type(secs) not in (int, float) or not 0 < secs <= 86400:
            bad.add("checkpoint_seconds")
        if type(days) is not int or days < 0:
            bad.add("retention_days")
        if bad:
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: [audit] {sorted(bad)}: hmac_key = \"env:NAME\" | "
                                                   "\"file:PATH\", file and checkpoint_file paths, checkpoint_every "
                                                   ">= 1, checkpoint_seconds 0..86400, retention_days >= 0")
        return cls(**{**table, "checkpoint_seconds": float(secs)})


ROLES = ("administrator", "operator", "auditor", "service")     # provider/service/roles.py
DEFAULT_RATES = {"administrator": (20.0, 40), "operator": (20.0, 40), "auditor": (20.0, 40),
                 "service": (500.0, 1000)}


@dataclass(frozen=True)
class ServerSettings:
    """The [server] table of `ferrohsm serve` (provider/service): where it listens, its
    TLS files (TLS 1.3 only; plain HTTP only on loopback with --insecure-dev), the token
    it serves and the PIN source that unlocks it once at start, the JWT check (an HS256
    secret read from the environment variable named here, never from the file), and the
    per-role token-bucket rates ({role = [per_second, burst]})."""
    listen: str = "127.0.0.1:8443"
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    token: str = ""                         # token label ("": the first initialised token)
    pin: str = ""                           # "env:NAME" | "file:PATH"
    jwt_secret_env: str = "FERROHSM_JWT_SECRET"
    jwks_file: str = ""                     # RS256/ES256/EdDSA public keys (a JWKS, reloaded when it changes)
    jwt_issuer: str = "ferrohsm"
    jwt_audience: str = "ferrohsm"
    jwt_max_lifetime: int = 3600            # seconds between iat and exp, at most
    jwt_leeway: int = 30
    roles_claim: str = "roles"
    keys_claim: str = "keys"                # a service token's keys (names or ids)
    max_body: int = 1 << 20
    max_header: int = 8192
    rate: dict = field(default_factory=lambda: dict(DEFAULT_RATES))

    @classmethod
    def parse(cls, table: dict, source: str) -> "ServerSettings":
        fields = cls.__dataclass_fields__
        bad = set(table) - set(fields)
        for name, f in fields.items():
            if name in table and name != "rate" and type(table[name]) is not type(getattr(cls, name)):
                bad.add(name)
        pin = table.get("pin", "")
        if isinstance(pin, str) and pin and pin.partition(":")[0] not in ("env", "file"):
            bad.add("pin")
        for name in ("jwt_max_lifetime", "max_body", "max_header"):
            if type(table.get(name, 1)) is int and table.get(name, 1) < 1:
                bad.add(name)
        rate = dict(DEFAULT_RATES)
        given = table.get("rate", {})
        if not isinstance(given, dict):
            bad.add("rate")
            given = {}
        for role, value in given.items():
            if role not in ROLES or not isinstance(value, list) or len(value) != 2 \
                    or type(value[0]) not in (int, float) or type(value[1]) is not int or value[0] <= 0 or value[1] < 1:
                bad.add("rate")
            else:
                rate[role] = (float(value[0]), value[1])
        if bad:
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: [server] {sorted(bad)}: listen \"HOST:PORT\", tls_cert/"
                                                   "tls_key/client_ca paths, pin = \"env:NAME\" | \"file:PATH\", "
                                                   "positive integer limits, rate = {ROLE = [per_second, burst]}")
        return cls(**{**table, "rate": rate})


@dataclass(frozen=True)
class Config:
    token_dir: Path
    log_level: str = "WARNING"
    log_file: str = ""
    pin_min: int = 6
    pin_max: int = 255
    pin_max_failures: int = 10
    pin_policy: PinPolicy = PinPolicy()     # PIN KDF and failure delay (store/sealing.py)
    source: str = "(defaults)"
    backends: dict = field(default_factory=lambda: {"soft": {"type": "soft"}})
    token_policies: dict = field(default_factory=dict)    # token label -> TokenPolicy
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)
    store_kind: str = "sqlite"
    store_dsn: str = ""
    store_head_cache: float = 0.0
    store_anchor: str = ""       # a [backends.NAME] of type tpm2, or ""
    audit: AuditSettings = field(default_factory=AuditSettings)
    environment: str = "local"   # [environment] type (provider/environment.py)
    server: ServerSettings = field(default_factory=ServerSettings)

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
            pin_min=int(pin.get("min_length", 6)),
            pin_max=int(pin.get("max_length", 255)),
            pin_max_failures=int(pin.get("max_failures", 10)),
            pin_policy=_pin_policy(pin, source),
            source=source,
            limits=Limits.parse(data.get("limits", {}), source),
            policy=Policy.parse(data.get("policy", {}), source),
            audit=AuditSettings.parse(data.get("audit", {}), source),
            environment=environment.parse(data.get("environment", {}), source),
            server=ServerSettings.parse(data.get("server", {}), source),
            **_store(data.get("store", {}), source),
            **_backends(data, source),
        )
        if conf.log_level not in LOG_LEVELS:
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: log level must be one of {LOG_LEVELS}")
        if conf.store_anchor and conf.backends.get(conf.store_anchor, {}).get("type") != "tpm2":
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: [store] anchor must name a [backends.NAME] "
                                                   "of type tpm2")
        if not (1 <= conf.pin_min <= conf.pin_max) or conf.pin_max_failures < 1:
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: bad [pin] limits")
        environment.check(conf)
        return conf


def _pin_policy(table: dict, source: str) -> PinPolicy:
    """[pin]'s KDF cost and failure delay: Argon2id of at least 64 MiB, a delay of 0..8 s."""
    base = PinPolicy()
    kdf = Argon2id(table.get("kdf_memory", base.kdf.memory_kib), table.get("kdf_time", base.kdf.time_cost),
                   table.get("kdf_parallelism", base.kdf.parallelism))
    delay = table.get("failure_delay", base.failure_delay)
    if any(type(v) is not int for v in (kdf.memory_kib, kdf.time_cost, kdf.parallelism)) \
            or kdf.memory_kib < ARGON2_MIN_KIB or not kdf.sane() \
            or type(delay) not in (int, float) or not 0 <= delay <= 8:
        raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: [pin] kdf_memory must be {ARGON2_MIN_KIB}.."
                                               f"{ARGON2_MAX_KIB} KiB, kdf_time 1..64, kdf_parallelism 1..64, "
                                               "failure_delay 0..8 seconds")
    return PinPolicy(kdf, float(delay))


def _store(table: dict, source: str) -> dict:
    kind, dsn, cache = table.get("kind", "sqlite"), table.get("dsn", ""), table.get("head_cache", 0.0)
    anchor = table.get("anchor", "")
    if set(table) - {"kind", "dsn", "head_cache", "anchor"} or kind not in STORE_KINDS \
            or not isinstance(dsn, str) or not isinstance(anchor, str) \
            or type(cache) not in (int, float) or not 0 <= cache <= 60:
        raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: [store] takes kind = one of {STORE_KINDS}, dsn, "
                                               "head_cache = 0..60 seconds, and anchor = a tpm2 backend's name")
    if kind == "postgres" and not dsn:
        raise PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: [store] kind = \"postgres\" needs a dsn")
    return {"store_kind": kind, "store_dsn": dsn, "store_head_cache": float(cache), "store_anchor": anchor}


def with_store(config: "Config", spec: str) -> "Config":
    """`config` with the store a --key-store flag names: a kind (sqlite, filesystem,
    memory), or a PostgreSQL URI (postgresql://...) for kind postgres."""
    from dataclasses import replace
    if spec.startswith(("postgresql://", "postgres://")):
        return replace(config, store_kind="postgres", store_dsn=spec)
    if spec not in STORE_KINDS:
        raise PKCS11Error(C.CKR_GENERAL_ERROR, f"--key-store takes one of {STORE_KINDS} or a postgresql:// URI")
    if spec == "postgres" and not config.store_dsn:
        raise PKCS11Error(C.CKR_GENERAL_ERROR, "--key-store postgres needs [store] dsn in the configuration")
    return replace(config, store_kind=spec)


def _backends(data: dict, source: str) -> dict:
    """The [backends.NAME] and [token.LABEL] tables, checked."""
    def bad(why):
        return PKCS11Error(C.CKR_GENERAL_ERROR, f"{source}: {why}")
    backends = {"soft": {"type": "soft"}}
    for name, settings in data.get("backends", {}).items():
        if not isinstance(settings, dict) or settings.get("type") not in BACKEND_TYPES:
            raise bad(f"[backends.{name}] needs type = one of {BACKEND_TYPES}")
        backends[name] = dict(settings)
    policies = {}
    for label, table in data.get("token", {}).items():
        names, fallback = tuple(table.get("backends", ())), table.get("fallback", "none")
        unknown = [n for n in names if n not in backends]
        if not names or unknown:
            raise bad(f"[token.{label!r}] backends must name configured backends {unknown}")
        if fallback not in FALLBACKS:
            raise bad(f"[token.{label!r}] fallback must be one of {FALLBACKS}")
        policies[label] = TokenPolicy(names, fallback)
    return {"backends": backends, "token_policies": policies}
