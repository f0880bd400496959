#!/usr/bin/env bash
# Set up everything FerroHSM needs on a Debian machine, idempotently:
# system packages (apt-get, only those missing), a virtual environment in .venv,
# and `pip install .` (which builds libferrohsm-pkcs11.so). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(python3 python3-venv python3-dev gcc pkg-config libssl-dev opensc openssl softhsm2
          swtpm swtpm-tools tpm2-tools libtss2-dev pcscd vsmartcard-vpcd libpcsclite-dev systemd
          libengine-pkcs11-openssl p11-kit gnutls-bin libnss3-tools openjdk-17-jdk-headless
          python3-cryptography python3-cffi-backend postgresql
          prometheus wrk)   # wrk: benchmarks/service.py; promtool: tests/service checks /metrics with `promtool check metrics`
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The module embeds the interpreter .venv is made from, and a C host run by any
# user loads it from there: Debian's /usr/bin/python3 (home /usr) is readable by
# everyone, a pyenv under /root is not. PYTHON=... overrides.
PY=${PYTHON:-/usr/bin/python3}
base() { "$1" -c 'import sys; print(sys.base_prefix)'; }
if [ -x .venv/bin/python ] && [ "$(base .venv/bin/python)" != "$(base "$PY")" ]; then
  echo "==> .venv was made from $(base .venv/bin/python), not $PY: recreating it"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating virtual environment .venv from $PY"
  "$PY" -m venv .venv
fi
echo "==> installing FerroHSM into .venv (builds the PKCS#11 module)"
.venv/bin/python -m pip install -q --upgrade pip wheel     # wheel: the e2e fixture reinstalls with --no-build-isolation
.venv/bin/python -m pip install -q ".[test,postgres,service]"   # postgres: the [store] kind = "postgres" driver; service: ferrohsm serve
.venv/bin/python -m pip install -q -r conformance/requirements.txt
.venv/bin/python -m pip install -q -r requirements-backends.txt
echo "==> module: $(.venv/bin/ferrohsm module-path)"
# the upstream python-pkcs11 tests the conformance runner executes (download only, no build)
.venv/bin/python scripts/fetch_upstream_tests.py || [ "${CI:-}" != true ]
