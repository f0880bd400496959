#!/usr/bin/env bash
# Set up, then show FerroHSM at work through a real PKCS#11 client (pkcs11-tool):
# make a token, list mechanisms, generate an EC key on the token, sign with it,
# and verify the signature with OpenSSL. Uses a throw-away token directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

DEMO=$(mktemp -d /tmp/ferrohsm-demo.XXXX)
trap 'rm -rf "$DEMO"' EXIT
printf '[tokens]\ndirectory = "%s/tokens"\n' "$DEMO" > "$DEMO/ferrohsm.conf"
export FERROHSM_CONF=$DEMO/ferrohsm.conf
FERRO=.venv/bin/ferrohsm
MOD=$($FERRO module-path)
P11=(pkcs11-tool --module "$MOD")
PIN=123456

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
step "ferrohsm init-token --label demo"
$FERRO init-token --label demo --so-pin 12345678 --pin $PIN
$FERRO list-slots
step "pkcs11-tool --list-slots"
"${P11[@]}" --list-token-slots
step "pkcs11-tool --list-mechanisms"
"${P11[@]}" --token-label demo --list-mechanisms
step "generate an EC P-256 key pair on the token"
"${P11[@]}" --token-label demo --login --pin $PIN --keypairgen --key-type EC:prime256v1 --id 01 --label demo-ec
step "sign a message with ECDSA-SHA256 on the token"
echo "FerroHSM signs this." > "$DEMO/msg"
"${P11[@]}" --token-label demo --login --pin $PIN --sign --id 01 -m ECDSA-SHA256 \
  --signature-format openssl -i "$DEMO/msg" -o "$DEMO/sig"
step "verify the signature with OpenSSL, using the public key read from the token"
"${P11[@]}" --token-label demo --read-object --type pubkey --id 01 -o "$DEMO/pub.der"
openssl pkey -pubin -inform DER -in "$DEMO/pub.der" -out "$DEMO/pub.pem"
openssl dgst -sha256 -verify "$DEMO/pub.pem" -signature "$DEMO/sig" "$DEMO/msg"
step "objects on the token"
$FERRO list-objects --token demo --pin $PIN
