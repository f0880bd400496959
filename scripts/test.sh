#!/usr/bin/env bash
# Set up, then run every test: engine unit tests in-process, and end-to-end tests
# through the built module with real clients (pkcs11-tool, python-pkcs11), backend tests
# against real peers (swtpm, pcscd), and the conformance runners (OpenSSL, p11-kit,
# GnuTLS, Java, NSS, PyKCS11) side by side with SoftHSM2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests conformance "$@"
