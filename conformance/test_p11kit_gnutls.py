"""p11-kit registration and GnuTLS (p11tool, certtool) against the module.

p11-kit reads per-user module configs from ~/.config/pkcs11/modules/ but skips them in a
program whose uid is 0, and writing /etc/pkcs11 is off limits. So when the tests run as root,
every client of this suite runs in a new user namespace (`unshare --user`): there getuid() is
the overflow uid, so p11-kit reads HOME's config, while file access stays root's (the tokens
and the module's Python install under /root remain readable). Running as a real unprivileged
user instead (setpriv nobody) cannot load FerroHSM when its Python lives under /root: see
README.md.
SoftHSM2 is registered system-wide by its Debian package and p11-kit merges modules by
library, so for SoftHSM2 our entry names a private copy of libsofthsm2.so: the proof that
*our* entry was loaded is its name and module path in `p11-kit list-modules`.
"""

import os
import re
import shutil

import pytest

from conformance.common import run

SUITE = "p11kit-gnutls"
ENTRY = "ferro-conformance"


@pytest.fixture(scope="module", autouse=True)
def registered(module):
    """Register the module in a per-user p11-kit config under the token's private HOME."""
    lib = module.lib
    if module.name == "softhsm2":
        lib = str(module.path("libsofthsm2-conformance.so"))
        shutil.copy(os.path.realpath(module.lib), lib)
    mods = module.tmp / "home" / ".config" / "pkcs11" / "modules"
    mods.mkdir(parents=True, exist_ok=True)
    (mods / f"{ENTRY}.module").write_text(f"module: {lib}\n")
    module.facts["registered_lib"] = lib
    if os.geteuid() == 0 and run(["unshare", "--user", "true"], module.env,
                                 check=False).returncode:
        pytest.skip("running as root and user namespaces are unavailable: p11-kit would "
                    "ignore the per-user module config")


def as_user(module, *cmd, check=True):
    prefix = ["unshare", "--user"] if os.geteuid() == 0 else []
    env = dict(module.env, GNUTLS_PIN=module.pin, GNUTLS_SO_PIN=module.so_pin)
    return run(prefix + list(cmd), env, cwd=module.tmp, check=check)


def p11tool(module, *args, **kw):
    return as_user(module, "p11tool", "--provider", module.lib, *args, **kw)


def test_p11kit_lists_our_module_and_token(module):
    out = as_user(module, "p11-kit", "list-modules").stdout
    blocks = re.split(r"^(?=\S)", out, flags=re.M)
    ours = [b for b in blocks if b.startswith(f"{ENTRY}:")]
    assert ours, f"{ENTRY} not listed (user config not loaded?):\n{out}"
    assert ours[0].splitlines()[0].split(":", 1)[1].strip() == module.facts["registered_lib"]
    assert f"token: {module.label}" in ours[0], ours[0]


def test_p11kit_uri_names_token(module):
    """p11tool through the p11-kit registration (no --provider): the token URI is listed."""
    out = as_user(module, "p11tool", "--list-tokens").stdout
    assert "token=Conf%20Token" in out, out


def test_p11tool_list_mechanisms(module):
    out = p11tool(module, "--list-mechanisms", module.uri()).stdout
    assert "CKM_RSA_PKCS" in out and "CKM_ECDSA" in out, out


@pytest.mark.parametrize("algo,extra,label", [
    ("RSA", ["--bits", "2048"], "gnutls-rsa"), ("ECDSA", ["--curve", "secp256r1"], "gnutls-ec")])
def test_p11tool_generate_privkey(module, algo, extra, label):
    out = p11tool(module, "--login", f"--generate-privkey={algo}", *extra, f"--label={label}",
                  "--outder", module.uri()).stdout
    listing = p11tool(module, "--login", "--list-privkeys", module.uri()).stdout
    assert f"object={label}" in listing, out + listing


def test_p11tool_list_all_login(module):
    out = p11tool(module, "--login", "--list-all", module.uri()).stdout
    assert "Type: Private key" in out and "gnutls-" in out, out


@pytest.mark.parametrize("label", ["gnutls-rsa", "gnutls-ec"])
def test_certtool_self_signed(module, label):
    tmpl = module.path(f"{label}.tmpl")
    tmpl.write_text(f'cn = "certtool {label}"\nexpiration_days = 7\nca\nsigning_key\n'
                    "cert_signing_key\n")
    key = module.uri(object=label, type="private")
    cert = module.path(f"{label}.crt")
    as_user(module, "certtool", "--provider", module.lib, "--generate-self-signed",
            "--load-privkey", key, "--load-pubkey", module.uri(object=label, type="public"),
            "--template", tmpl, "--outfile", cert)
    out = run(["openssl", "verify", "-CAfile", cert, cert], module.env).stdout
    assert out.strip() == f"{cert}: OK", out
    # stored back on the token and listed with the key's id
    p11tool(module, "--login", "--write", f"--label={label}-cert", f"--load-certificate={cert}",
            module.uri())
    assert f"object={label}-cert" in p11tool(module, "--list-all-certs", module.uri()).stdout
