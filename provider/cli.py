"""The `ferrohsm` command: token set-up and inspection for operators.

It drives the same engine the PKCS#11 module runs, in-process, on the store that
FERROHSM_CONF (or the per-user default) names; `--key-store` on the commands that
open tokens picks another (sqlite, filesystem, memory, or a postgresql:// URI).
"""

import json
import re

import typer
from rich.console import Console
from rich.table import Table

from . import constants as C
from .backends.base import Health
from .backends.engine import status_of
from .config import Config, with_store
from .errors import PKCS11Error
from .library import Library

app = typer.Typer(help="FerroHSM: a software HSM with a PKCS#11 module.", no_args_is_help=True)
out = Console()

CLASS_NAMES = {C.CKO_DATA: "data", C.CKO_CERTIFICATE: "certificate", C.CKO_PUBLIC_KEY: "public key",
               C.CKO_PRIVATE_KEY: "private key", C.CKO_SECRET_KEY: "secret key"}
TOKEN_FLAG_NAMES = {
    C.CKF_TOKEN_INITIALIZED: "initialized", C.CKF_USER_PIN_INITIALIZED: "user PIN set",
    C.CKF_USER_PIN_COUNT_LOW: "user PIN count low", C.CKF_USER_PIN_FINAL_TRY: "user PIN final try",
    C.CKF_USER_PIN_LOCKED: "user PIN LOCKED", C.CKF_SO_PIN_COUNT_LOW: "SO PIN count low",
    C.CKF_SO_PIN_FINAL_TRY: "SO PIN final try", C.CKF_SO_PIN_LOCKED: "SO PIN LOCKED",
}


KEY_STORE = typer.Option(None, "--key-store", metavar="STORE",
                         help="Store to open: sqlite | filesystem | memory | postgres | a postgresql:// URI "
                              "(default: [store] in the configuration).")


def _library(key_store: str | None) -> Library:
    """The engine on the configured store, or on the one --key-store names."""
    try:
        config = Config.load()
        return Library(config if key_store is None else with_store(config, key_store))
    except PKCS11Error as err:
        _fail(err)


def _fail(err: PKCS11Error) -> None:
    out.print(f"[red]error:[/red] {err}")
    raise typer.Exit(1)


def _label(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip()


def _find_slot(lib: Library, label: str | None, slot: int | None) -> int:
    for sid in lib.get_slot_list(True):
        info = lib.get_token_info(sid)
        if (slot is not None and sid == slot) or (label is not None and _label(info["label"]) == label):
            return sid
    raise PKCS11Error(C.CKR_SLOT_ID_INVALID, f"no token with label {label!r}" if label else f"no slot {slot}")


@app.command("serve")
def serve(insecure_dev: bool = typer.Option(False, "--insecure-dev",
                                            help="Plain HTTP, on a loopback address only (development).")):
    r"""Run the REST service (the \[server] table of the configuration) until SIGTERM/SIGINT."""
    try:
        from .service.serve import Service
        service = Service(Config.load(), insecure_dev=insecure_dev)
    except PKCS11Error as err:
        _fail(err)
    scheme = "http" if insecure_dev else "https"
    out.print(f"ferrohsm: serving on {scheme}://{service.host}:{service.port}", highlight=False)
    service.run()


@app.command("jwt")
def make_jwt(
    sub: str = typer.Option(..., "--sub", help="The subject (who the token is for)."),
    roles: list[str] = typer.Option(..., "--role", help="administrator | operator | auditor | service (repeatable)."),
    keys: list[str] = typer.Option(None, "--key", help="For a service token: a key name or id it may use (repeatable)."),
    ttl: int = typer.Option(900, help="Lifetime in seconds (at most [server] jwt_max_lifetime)."),
):
    r"""Print an HS256 bearer token for the service, signed with the secret in the variable
    \[server] jwt_secret_env names, with its issuer and audience. For first steps and tests:
    production deployments issue tokens from their identity provider (a JWKS, \[server] jwks_file).

    Example: ferrohsm jwt --sub alice --role operator"""
    import os
    import time
    import uuid

    import jwt
    settings = Config.load().server
    secret = os.environ.get(settings.jwt_secret_env, "")
    if len(secret.encode()) < 32:
        out.print(f"error: {settings.jwt_secret_env} must hold the service's HS256 secret (at least 32 bytes)",
                  markup=False)
        raise typer.Exit(2)
    if not 0 < ttl <= settings.jwt_max_lifetime:
        out.print(f"error: --ttl must be 1..{settings.jwt_max_lifetime}", markup=False)
        raise typer.Exit(2)
    now = int(time.time())
    claims = {"sub": sub, settings.roles_claim: roles, "iss": settings.jwt_issuer, "aud": settings.jwt_audience,
              "iat": now, "nbf": now, "exp": now + ttl, "jti": uuid.uuid4().hex}
    if keys:
        claims[settings.keys_claim] = keys
    print(jwt.encode(claims, secret.encode(), algorithm="HS256"))


@app.command("init-token")
def init_token(
    label: str = typer.Option(..., help="Token label (up to 32 bytes)."),
    so_pin: str = typer.Option(..., prompt=True, hide_input=True, help="Security officer PIN."),
    pin: str = typer.Option(..., prompt=True, hide_input=True, help="User PIN."),
    slot: int = typer.Option(None, help="Slot to (re)initialize; default: the free slot."),
    key_store: str = KEY_STORE,
):
    """Initialize a token (the free slot by default) and set its user PIN."""
    raw = label.encode()
    if len(raw) > 32:
        out.print("[red]error:[/red] the label is longer than 32 bytes")
        raise typer.Exit(2)
    lib = _library(key_store)
    try:
        target = lib.free_slot if slot is None else slot
        lib.init_token(target, so_pin.encode(), raw.ljust(32, b" "))
        session = lib.open_session(target, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
        lib.login(session, C.CKU_SO, so_pin.encode())
        lib.init_pin(session, pin.encode())
        lib.close_session(session)
        out.print(f"Token [bold]{label}[/bold] initialized in slot {target} "
                  f"(serial {lib.get_token_info(target)['serial_number']}).")
    except PKCS11Error as err:
        _fail(err)
    finally:
        lib.finalize()


@app.command("list-slots")
def list_slots(key_store: str = KEY_STORE):
    """Show every slot and its token."""
    lib = _library(key_store)
    table = Table("slot", "label", "serial", "state")
    for sid in lib.get_slot_list(True):
        info = lib.get_token_info(sid)
        flags = [name for bit, name in TOKEN_FLAG_NAMES.items() if info["flags"] & bit]
        table.add_row(str(sid), _label(info["label"]) or "-", info["serial_number"] or "-",
                      ", ".join(flags) if flags else "free (not initialized)")
    lib.finalize()
    out.print(table)


@app.command("list-objects")
def list_objects(
    label: str = typer.Option(None, "--token", help="Token label."),
    slot: int = typer.Option(None, help="Slot id (instead of --token)."),
    pin: str = typer.Option(None, help="User PIN, to list private objects too."),
    key_store: str = KEY_STORE,
):
    """List a token's objects (private ones only with --pin)."""
    if label is None and slot is None:
        out.print("[red]error:[/red] give --token LABEL or --slot N")
        raise typer.Exit(2)
    lib = _library(key_store)
    try:
        sid = _find_slot(lib, label, slot)
        session = lib.open_session(sid, C.CKF_SERIAL_SESSION)
        if pin is not None:
            lib.login(session, C.CKU_USER, pin.encode())
        lib.find_objects_init(session, [])
        handles = lib.find_objects(session, 1 << 30)
        lib.find_objects_final(session)
        table = Table("handle", "class", "key type", "label", "id", "flags")
        wanted = [C.CKA_CLASS, C.CKA_KEY_TYPE, C.CKA_LABEL, C.CKA_ID, C.CKA_PRIVATE, C.CKA_SENSITIVE,
                  C.CKA_EXTRACTABLE]
        for h in handles:
            cls, ktype, lab, oid, priv, sens, extr = lib.get_attribute_value(session, h, wanted)
            cls = int.from_bytes(cls, "little")
            kname = C.name_of("CKK_", int.from_bytes(ktype, "little"))[4:] if isinstance(ktype, bytes) else ""
            flags = [n for n, v in (("private", priv), ("sensitive", sens), ("extractable", extr))
                     if isinstance(v, bytes) and v == b"\x01"]
            table.add_row(str(h), CLASS_NAMES.get(cls, hex(cls)), kname, _label(lab),
                          oid.hex() if isinstance(oid, bytes) else "", ", ".join(flags))
        out.print(table)
    except PKCS11Error as err:
        _fail(err)
    finally:
        lib.finalize()


@app.command("unlock-pin")
def unlock_pin(
    label: str = typer.Option(..., "--token", help="Token label."),
    so: bool = typer.Option(False, "--so", help="The SO PIN (default: the user PIN)."),
    pin: str = typer.Option(..., prompt=True, hide_input=True, help="The locked PIN."),
    key_store: str = KEY_STORE,
):
    """Unlock a locked PIN, given that PIN: for the owner of the token's store.

    The PIN is checked as a login checks it, except that a locked PIN is checked too;
    the right one clears the failure count (a wrong one counts).  It runs with this
    user's access to the store, and writes it: whoever can write the token files could
    reset the counter in them anyway, so this gives nothing to anyone else.  The SO PIN
    has no other way back (C_InitToken needs it); a user PIN can also be set anew by
    the SO (C_InitPIN)."""
    lib = _library(key_store)
    try:
        sid = _find_slot(lib, label, None)
        lib.tokens[sid].store.unlock_pin(C.CKU_SO if so else C.CKU_USER, pin.encode())
        out.print(f"The {'SO' if so else 'user'} PIN of token [bold]{label}[/bold] is unlocked.")
    except PKCS11Error as err:
        _fail(err)
    finally:
        lib.finalize()


@app.command("module-path")
def module_path():
    """Print the absolute path of the PKCS#11 module, to give to clients."""
    from pkcs11_shim import module_path as path
    print(path())


@app.command("show-config")
def show_config():
    """Show the configuration in force and where it came from."""
    try:
        conf = Config.load()
    except PKCS11Error as err:
        _fail(err)
    table = Table("setting", "value")
    for name, value in (("config file", conf.source), ("token directory", str(conf.token_dir)),
                        ("log level", conf.log_level), ("log file", conf.log_file or "(standard error)"),
                        ("PIN length", f"{conf.pin_min}..{conf.pin_max}"),
                        ("PIN tries before lock", str(conf.pin_max_failures)),
                        ("PIN KDF (new wraps)", conf.pin_policy.kdf.text()),
                        ("wait after a failed PIN", f"{conf.pin_policy.failure_delay:g} s, doubling, at most "
                                                    f"{conf.pin_policy.delay(5):g} s"),
                        ("store", conf.store_kind + (f" ({_dsn_shown(conf.store_dsn)})" if conf.store_dsn else ""))):
        table.add_row(name, value)
    out.print(table)


def _dsn_shown(dsn: str) -> str:
    """A DSN without its password."""
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", dsn))


@app.command("backends")
def backends(key_store: str = KEY_STORE):
    """Show each configured backend, its health and what it can do, and each token's policy."""
    lib = _library(key_store)
    try:
        table = Table("backend", "type", "class", "health", "capabilities")
        colour = {"available": "green", "degraded": "yellow", "unavailable": "red"}
        for name, btype, kind, ok, reason, caps, degraded in lib.backends.probe():
            by_op = {}
            for op, key_kind in sorted(caps):
                by_op.setdefault(op, []).append(key_kind)
            status = status_of(Health(ok, reason, degraded))
            table.add_row(name, btype, kind, f"[{colour[status]}]{status}[/{colour[status]}] " + reason,
                          "\n".join(f"{op}: {', '.join(k)}" for op, k in by_op.items()))
        out.print(table)
        policies = Table("token", "precedence", "fallback")
        for label, policy in lib.config.token_policies.items():
            policies.add_row(label, " > ".join(policy.backends), policy.fallback)
        out.print(policies)
    finally:
        lib.finalize()


@app.command("migrate-key")
def migrate_key(
    from_token: str = typer.Option(..., help="Source token label."),
    to_token: str = typer.Option(..., help="Destination token label."),
    key_id: str = typer.Option(..., "--id", help="CKA_ID of the private key, hex."),
    approver: str = typer.Option(..., help="Who approved the move (recorded in the log)."),
    from_pin: str = typer.Option(..., prompt=True, hide_input=True, help="Source user PIN."),
    to_pin: str = typer.Option(..., prompt=True, hide_input=True, help="Destination user PIN."),
    key_store: str = KEY_STORE,
):
    """Copy a key to another token's backend (wrap, hash check, test signature); the source
    key stays.  Every attempt is appended to migrations.jsonl in the token directory."""
    from .migrate import migrate_key as run
    lib = _library(key_store)
    try:
        record = run(lib, from_token, from_pin.encode(), to_token, to_pin.encode(),
                     bytes.fromhex(key_id), approver)
    finally:
        lib.finalize()
    table = Table("field", "value")
    for name in ("outcome", "reason", "sha256_source", "sha256_destination", "test_signature"):
        if name in record:
            table.add_row(name, str(record[name]))
    table.add_row("source", json.dumps(record["source"]))
    table.add_row("destination", json.dumps(record["destination"]))
    out.print(table)
    if record["outcome"] != "ok":
        raise typer.Exit(1)


# --- governed keys (provider/governance/) -------------------------------------------------------
key_app = typer.Typer(help="Governed keys: migration between backends.", no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("migrate")
def key_migrate(
    key: str = typer.Argument(..., help="The governed key's name or id."),
    to: str = typer.Option(..., "--to", help="Destination backend (a [backends.NAME] of the configuration)."),
    label: str = typer.Option(..., "--token", help="Label of the token that holds the key."),
    actor: str = typer.Option(..., help="Who asks (the principal the audit and the approval record)."),
    approval: str = typer.Option(None, help="The approved dual-control approval to execute."),
    pin: str = typer.Option(..., prompt=True, hide_input=True, help="The token's user PIN."),
    key_store: str = KEY_STORE,
):
    """Move a governed key's versions to another backend through governance: dual-controlled
    where its tags ask (the first call prints the pending approval, exit 2), audited, the
    source copies kept 30 days. Prints the migration record (exit 1 if it failed)."""
    from .governance import GovernanceError, governance_of
    from .principal import Principal
    lib = _library(key_store)
    try:
        slot = _find_slot(lib, label, None)
        lib.login(lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION), C.CKU_USER, pin.encode())
        gov = governance_of(lib, lib.tokens[slot])
        migration = gov.migrate(Principal(actor, frozenset({"operator"}), interface="cli"), key, to,
                                approval_id=approval)
    except PKCS11Error as err:
        _fail(err)
    except GovernanceError as err:
        out.print(f"[red]{err.code}:[/red] {err.message}")
        if err.approval is not None:
            out.print(f"approval {err.approval.id}: {len(err.approval.approvals)} of {err.approval.quorum} "
                      "approvals; run again with --approval once it is approved")
        raise typer.Exit(2 if err.code == "approval_required" else 1)
    finally:
        lib.finalize()
    table = Table("field", "value")
    for name in ("id", "key_id", "status", "destination_backend", "approval_id", "source_erase_at"):
        table.add_row(name, str(getattr(migration, name)))
    for moved in migration.versions:
        table.add_row(f"v{moved.number}", f"{moved.source_backend} -> {migration.destination_backend}, "
                      f"sha256 {moved.sha256_source}, proof {moved.proof}")
    out.print(table)


# --- the audit log (provider/audit/) ----------------------------------------------------------
audit_app = typer.Typer(help="The audit log: verify, export, checkpoint, prune.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _audit_token(lib: Library, label: str | None, slot: int | None):
    if label is None and slot is None:
        out.print("[red]error:[/red] give --token LABEL or --slot N")
        raise typer.Exit(2)
    return lib.tokens[_find_slot(lib, label, slot)]


def _read_public_key(spec: str) -> bytes:
    """--public-key: the key's 64 hex digits, or a file holding them."""
    import os
    text = open(spec).read().strip() if os.path.exists(spec) else spec.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        out.print("[red]error:[/red] --public-key takes an Ed25519 public key as 64 hex digits (or a file of them)")
        raise typer.Exit(2)
    return key


@audit_app.command("verify")
def audit_verify(
    file: str = typer.Option(None, "--file", help="An export (JSON lines) to verify, offline."),
    checkpoints: str = typer.Option(None, help="The checkpoint file to verify against (default with --file: "
                                               "none; from a token: the store's checkpoints)."),
    public_key: str = typer.Option(None, help="The checkpoint key (64 hex digits or a file): "
                                              "`ferrohsm audit public-key`."),
    hmac_key: str = typer.Option(None, help="Also check the records' HMACs: file:PATH | env:NAME."),
    label: str = typer.Option(None, "--token", help="Verify this token's log in the store instead of --file."),
    slot: int = typer.Option(None, help="Slot id (instead of --token)."),
    key_store: str = KEY_STORE,
):
    """Verify an audit log (chain, MACs, signed checkpoints, Merkle roots); report the
    first record that does not verify. Exit status 1 if one does not."""
    from .audit import verify
    from .audit import verifier as V
    from .backends.factory import _pin_source
    key = _read_public_key(public_key) if public_key else None
    mac_key = _pin_source(hmac_key) if hmac_key else None
    try:
        if file is not None:
            report = verify(V.lines_of(file), V.checkpoints_of_file(checkpoints) if checkpoints else [], key, mac_key)
        else:
            lib = _library(key_store)
            try:
                store = _audit_token(lib, label, slot).store
                cps = V.checkpoints_of_file(checkpoints) if checkpoints else V.checkpoints_of_store(store)
                report = verify(V.rows_of(store), cps, key, mac_key)
            finally:
                lib.finalize()
    except (OSError, ValueError) as exc:
        out.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    except PKCS11Error as err:
        _fail(err)
    for note in report.notes:
        out.print(f"note: {note}")
    out.print(report.text())
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    output: str = typer.Option(..., "--out", help="Write the records here (JSON lines)."),
    checkpoints_out: str = typer.Option(None, help="Also write the checkpoints here."),
    label: str = typer.Option(None, "--token", help="Token label."),
    slot: int = typer.Option(None, help="Slot id (instead of --token)."),
    key_store: str = KEY_STORE,
):
    """Export a token's audit log (and its checkpoints) for `ferrohsm audit verify --file`."""
    from .audit import verifier as V
    from .audit.record import line_of
    lib = _library(key_store)
    try:
        store = _audit_token(lib, label, slot).store
        count = 0
        with open(output, "wb") as f:
            for mac, body in V.rows_of(store):
                f.write(line_of(mac, body))
                count += 1
        if checkpoints_out:
            with open(checkpoints_out, "wb") as f:
                f.write(b"".join(cp.line() for cp in V.checkpoints_of_store(store)))
    except PKCS11Error as err:
        _fail(err)
    finally:
        lib.finalize()
    out.print(f"{count} records written to {output}")


@audit_app.command("public-key")
def audit_public_key(
    label: str = typer.Option(None, "--token", help="Token label."),
    slot: int = typer.Option(None, help="Slot id (instead of --token)."),
    key_store: str = KEY_STORE,
):
    """Print the token's checkpoint public key (hex), for `ferrohsm audit verify --public-key`."""
    from .audit.checkpoint import public_key_of
    lib = _library(key_store)
    try:
        key = public_key_of(_audit_token(lib, label, slot))
    except PKCS11Error as err:
        _fail(err)
    finally:
        lib.finalize()
    if key is None:
        out.print("[red]error:[/red] this token has no checkpoint key yet (made at its first checkpoint)")
        raise typer.Exit(1)
    print(key.hex())


def _logged_in_audit(lib: Library, label, slot, pin: str):
    from .audit import open_audit
    token = _audit_token(lib, label, slot)
    session = lib.open_session(token.slot_id, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
    lib.login(session, C.CKU_USER, pin.encode())
    return token, open_audit(lib.config, token.store, token)


@audit_app.command("checkpoint")
def audit_checkpoint(
    label: str = typer.Option(None, "--token", help="Token label."),
    slot: int = typer.Option(None, help="Slot id (instead of --token)."),
    pin: str = typer.Option(..., prompt=True, hide_input=True, help="User PIN (the checkpoint key is private)."),
    key_store: str = KEY_STORE,
):
    """Sign a checkpoint at the log's head now."""
    lib = _library(key_store)
    try:
        _, audit = _logged_in_audit(lib, label, slot, pin)
        made = audit.checkpoint()
    except PKCS11Error as err:
        _fail(err)
    finally:
        lib.finalize()
    out.print("no new records since the last checkpoint" if made is None else
              f"checkpoint at record {made.seq}: root {made.root.hex()}")


@audit_app.command("prune")
def audit_prune(
    label: str = typer.Option(None, "--token", help="Token label."),
    slot: int = typer.Option(None, help="Slot id (instead of --token)."),
    retention_days: int = typer.Option(None, "--audit-retention-days",
                                       help="Keep this many days (default: [audit] retention_days)."),
    pin: str = typer.Option(..., prompt=True, hide_input=True, help="User PIN (a checkpoint is signed)."),
    key_store: str = KEY_STORE,
):
    """Delete records older than the retention, keeping a signed anchor at the cut."""
    lib = _library(key_store)
    try:
        days = lib.config.audit.retention_days if retention_days is None else retention_days
        if days <= 0:
            out.print("retention is 0 (keep everything): nothing pruned")
            return
        _, audit = _logged_in_audit(lib, label, slot, pin)
        deleted = audit.prune(days)
    except PKCS11Error as err:
        _fail(err)
    finally:
        lib.finalize()
    out.print(f"{deleted} records pruned")
