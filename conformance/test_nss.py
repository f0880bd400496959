"""NSS tools (libnss3-tools: modutil, certutil) against the module, in a fresh NSS database
per module. NSS asks C_GetInterface for the fork-safe interface first and passes
CKF_OS_LOCKING_OK | CKF_LIBRARY_CANT_CREATE_OS_THREADS to C_Initialize.
"""

import os
import re

import pytest

from conformance.common import run, self_signed_cert

SUITE = "nss"
NAME = "ferro-conformance"


@pytest.fixture(scope="module")
def nss(module):
    db = module.path("nssdb")
    db.mkdir()
    pw, noise = module.path("nss.pw"), module.path("nss.noise")
    pw.write_text(module.pin + "\n")
    noise.write_bytes(os.urandom(64))
    env = dict(module.env, NSS_DEFAULT_DB_TYPE="sql")
    run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], env)
    return {"db": f"sql:{db}", "env": env, "pw": str(pw), "noise": str(noise)}


def certutil(module, nss, *args, **kw):
    return run(["certutil", "-d", nss["db"], "-f", nss["pw"], *args], nss["env"], input="",
               **kw)


def test_modutil_add(module, nss):
    run(["modutil", "-dbdir", nss["db"], "-add", NAME, "-libfile", module.lib, "-force"],
        nss["env"])


def test_modutil_list(module, nss):
    out = run(["modutil", "-dbdir", nss["db"], "-list"], nss["env"]).stdout
    assert NAME in out and module.lib in out, out
    out = run(["modutil", "-dbdir", nss["db"], "-list", NAME], nss["env"]).stdout
    assert re.search(rf"^\s*Token Name: {re.escape(module.label)}\s*$", out, re.M), out


def test_certutil_lists_token_certificate(module, nss):
    _, der = self_signed_cert(module, "nss-import", cn="nss import")
    module.tool("--write-object", der, "--type", "cert", "--id", "4e", "--label", "nss-import")
    out = certutil(module, nss, "-L", "-h", "all").stdout
    assert f"{module.label}:nss-import" in out, out


def test_certutil_request_with_token_key(module, nss):
    req = module.path("nss.csr")
    certutil(module, nss, "-R", "-h", module.label, "-k", "ec", "-q", "nistp256",
             "-s", "CN=nss request", "-o", req, "-a", "-z", nss["noise"])
    out = run(["openssl", "req", "-in", req, "-noout", "-verify", "-subject"], module.env)
    assert "verify OK" in out.stderr and "CN = nss request" in out.stdout, out
    # one key line per token key, "< 0> ec   <id>  ..." (the output also says "Checking")
    keys = certutil(module, nss, "-K", "-h", module.label).stdout
    assert re.search(r"^<\s*\d+>\s+ec\s", keys, re.M), keys


@pytest.mark.parametrize("kind,extra", [("rsa", ["-g", "2048"]), ("ec", ["-q", "nistp256"])])
def test_certutil_self_signed_with_token_key(module, nss, kind, extra):
    nick = f"nss-self-{kind}"
    certutil(module, nss, "-S", "-h", module.label, "-n", nick, "-s", f"CN=nss self {kind}",
             "-x", "-t", "CT,,", "-k", kind, *extra, "-z", nss["noise"], "-v", "12")
    out = certutil(module, nss, "-L", "-h", module.label).stdout
    assert f"{module.label}:{nick}" in out, out
    pem = certutil(module, nss, "-L", "-h", module.label, "-n", f"{module.label}:{nick}",
                   "-a").stdout
    cert = module.path(f"{nick}.pem")
    cert.write_text(pem)
    out = run(["openssl", "verify", "-CAfile", cert, cert], module.env).stdout
    assert out.strip() == f"{cert}: OK", out
    # the certificate is a token object now, visible to a second client
    assert nick in module.tool("--list-objects", "--type", "cert").stdout
