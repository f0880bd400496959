"""Join jcecard's card object to vsmartcard's vpcd reader driver (test peer, not product).

    python vpcd_bridge.py --port PORT --state DIR

Why this lives in tests/: the product talks standard PIV over PC/SC to whatever card
is in the reader; only this emulator needs a bridge and adapters.  vpcd's protocol:
2-byte big-endian length + payload; a 1-byte payload is control (0 power off,
1 power on, 2 reset, 4 send ATR), anything longer an APDU.  We connect to vpcd on
127.0.0.1 only.  The card object outlives vpcd connections, so a pcscd restart keeps
the card's (in-memory) PIV keys; SIGUSR1 pulls the card out of the reader, SIGUSR2
puts it back (same card, same keys), SIGTERM/SIGINT stop.

Adapters making jcecard 0.1.0 answer as SP 800-73-4 says (each one is a gap in the
emulator, none changes what a conformant card would answer):
  A1 SELECT with the full PIV AID (A0000003 08 00001000 0100) is passed on as the 5-byte one;
  A2 the SELECT answer gets its '61' application property template wrapper;
  A3 answers longer than 256 bytes to short APDUs are returned in 61xx chunks + GET RESPONSE;
  A4 RSA GENERAL AUTHENTICATE is the raw RSA private operation on a k-byte block (the
     host pads), with BER lengths > 127 parsed (jcecard assumed DigestInfo/SHA-256);
  A5 ECDSA signs a field-size input (48 bytes for P-384), not only a 32-byte hash;
  A6 ECDH (7C {82 00, 85 point}) is not mistaken for a signature request.
"""

import argparse
import logging
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import jcecard.piv.applet as pa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from jcecard.main import OpenPGPCard

FULL_AID_PREFIX = bytes.fromhex("a000000308")
PREHASH = {20: hashes.SHA1(), 28: hashes.SHA224(), 32: hashes.SHA256(),
           48: hashes.SHA384(), 64: hashes.SHA512()}


def ber(tag: int, value: bytes) -> bytes:
    n = len(value)
    head = bytes([n]) if n < 0x80 else (b"\x81" + bytes([n]) if n < 0x100
                                        else b"\x82" + n.to_bytes(2, "big"))
    return bytes([tag]) + head + value


def ber_items(buf: bytes) -> dict:
    out, i = {}, 0
    while i < len(buf):
        tag, n, i = buf[i], buf[i + 1], i + 2
        if n & 0x80:
            k = n & 0x7F
            n, i = int.from_bytes(buf[i:i + k], "big"), i + k
        out[tag], i = buf[i:i + n], i + n
    return out


def _rsa_general_authenticate(self, apdu):                         # A4
    tags = ber_items(ber_items(apdu.data).get(0x7C, b""))
    block = tags.get(0x81)
    if block is None or 0x82 not in tags:
        return pa.make_response(pa.SW.WRONG_DATA)
    slot = pa.PIVSlot(apdu.p2)
    if slot != pa.PIVSlot.CARD_AUTH and not self.security.pin_verified:
        return pa.make_response(pa.SW.SECURITY_STATUS_NOT_SATISFIED)
    key = self.data_objects.get_key(slot)
    if key is None or not key.is_rsa():
        return pa.make_response(pa.SW.REFERENCED_DATA_NOT_FOUND)
    # the card made this key itself: skip the (slow) consistency check on every use
    priv = serialization.load_der_private_key(key.private_key, None,
                                              unsafe_skip_rsa_key_validation=True).private_numbers()
    n, k = priv.public_numbers.n, (priv.public_numbers.n.bit_length() + 7) // 8
    c = int.from_bytes(block, "big")
    if len(block) != k or c >= n:
        return pa.make_response(pa.SW.WRONG_DATA)
    m1, m2 = pow(c, priv.dmp1, priv.p), pow(c, priv.dmq1, priv.q)    # CRT
    m = m2 + (priv.iqmp * (m1 - m2) % priv.p) * priv.q
    return pa.make_response(pa.SW.SUCCESS, ber(0x7C, ber(0x82, m.to_bytes(k, "big"))))


def _patch_applet():
    ga, sign = pa.PIVApplet._handle_general_authenticate, pa.PIVApplet._sign_data

    def general_authenticate(self, apdu):
        if apdu.p1 in (0x06, 0x07) and apdu.p2 != pa.PIVSlot.MANAGEMENT_KEY:
            return _rsa_general_authenticate(self, apdu)
        tags = ber_items(ber_items(apdu.data).get(0x7C, b""))
        if 0x85 in tags:                                           # A6
            apdu.data = ber(0x7C, ber(0x85, tags[0x85]))
        return ga(self, apdu)

    def sign_data(self, key_data, data):                          # A5
        if key_data.is_rsa() or len(data) not in PREHASH:
            return sign(self, key_data, data)
        priv = serialization.load_der_private_key(key_data.private_key, None)
        der = priv.sign(data, ec.ECDSA(Prehashed(PREHASH[len(data)])))
        return pa.make_response(pa.SW.SUCCESS, ber(0x7C, ber(0x82, der)))

    pa.PIVApplet._handle_general_authenticate = general_authenticate
    pa.PIVApplet._sign_data = sign_data


class Adapter:
    """APDU-level adapters A1-A3 around the card object."""

    def __init__(self, card):
        self.card, self.pending = card, b""

    def apdu(self, m: bytes) -> bytes:
        if m[1] == 0xC0 and self.pending:                         # A3: GET RESPONSE
            return self._chunk(self.pending)
        self.pending = b""
        is_select = m[1] == 0xA4 and m[2] == 0x04 and len(m) > 5
        if is_select and m[5:10] == FULL_AID_PREFIX and m[4] > 5:  # A1
            m = m[:4] + b"\x05" + FULL_AID_PREFIX + b"\x00"
        r = self.card.process_apdu(m)
        data, sw = r[:-2], r[-2:]
        if is_select and sw == b"\x90\x00" and data[:1] == b"\x4f":  # A2
            data = ber(0x61, data)
        short = len(m) <= 5 or m[4] != 0
        if short and len(data) > 256 and sw == b"\x90\x00":
            return self._chunk(data)
        return data + sw

    def _chunk(self, data: bytes) -> bytes:
        head, self.pending = data[:256], data[256:]
        if self.pending:
            return head + bytes([0x61, min(len(self.pending), 256) & 0xFF])
        return head + b"\x90\x00"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--state", type=Path, required=True)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("jcecard").setLevel(logging.ERROR)
    _patch_applet()
    a.state.mkdir(parents=True, exist_ok=True)
    card = OpenPGPCard(storage_path=a.state)
    stop, inserted = threading.Event(), threading.Event()
    inserted.set()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: inserted.clear())
    signal.signal(signal.SIGUSR2, lambda *_: inserted.set())
    adapter = Adapter(card)
    try:
        while not stop.is_set():
            if not inserted.is_set():
                time.sleep(0.05)
                continue
            try:
                s = socket.create_connection(("127.0.0.1", a.port), timeout=1)
            except OSError:
                time.sleep(0.1)                # vpcd listens once pcscd has loaded it
                continue
            with s:
                serve(s, card, adapter, lambda: stop.is_set() or not inserted.is_set())
            card.power_off()                   # pulled out or reader gone: security state lost
    finally:
        card.save_state()


def serve(s, card, adapter, done):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(0.2)

    def recv(n):
        b = b""
        while len(b) < n:
            # vpcd writes length and body separately: without QUICKACK every APDU
            # waits for a delayed ACK (~40 ms).
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            try:
                c = s.recv(n - len(b))
            except socket.timeout:
                if done():
                    raise EOFError from None
                continue
            if not c:
                raise EOFError
            b += c
        return b

    control = {0: card.power_off, 1: card.power_on, 2: card.reset}
    try:
        while True:
            (n,) = struct.unpack(">H", recv(2))
            m = recv(n)
            if n == 1 and m[0] in control:
                control[m[0]]()
            elif n == 1 and m[0] == 4:
                s.sendall(struct.pack(">H", len(card.get_atr())) + card.get_atr())
            elif n > 1:
                r = adapter.apdu(m)
                s.sendall(struct.pack(">H", len(r)) + r)
    except (EOFError, OSError):
        pass


if __name__ == "__main__":
    main()
