"""ISO 7816-4 transport over PC/SC (pyscard's thin `smartcard.scard` layer).

One reader, one shared card connection.  `command()` sends short APDUs, splits
data longer than 255 bytes with command chaining (CLA bit 0x10), collects 61xx
answers with GET RESPONSE and repeats a 6Cxx-refused command with the right Le.
PC/SC failures raise CardError(rc); `ckr()` maps them to CK_RV.  The caller runs
everything on a DeviceWorker, so a hung pcscd costs a bounded wait.
`tlv` / `parse_tlv` build and read the BER-TLV that card commands carry.
"""

from __future__ import annotations

from contextlib import contextmanager

from smartcard import scard as S

from .. import constants as C

PCSC_CKR = {
    S.SCARD_W_REMOVED_CARD: C.CKR_DEVICE_REMOVED,
    S.SCARD_E_NO_SMARTCARD: C.CKR_TOKEN_NOT_PRESENT,
    S.SCARD_W_UNPOWERED_CARD: C.CKR_TOKEN_NOT_PRESENT,
    S.SCARD_W_UNRESPONSIVE_CARD: C.CKR_TOKEN_NOT_PRESENT,
    S.SCARD_E_UNKNOWN_READER: C.CKR_TOKEN_NOT_PRESENT,
    S.SCARD_E_READER_UNAVAILABLE: C.CKR_TOKEN_NOT_PRESENT,
    S.SCARD_E_NO_READERS_AVAILABLE: C.CKR_TOKEN_NOT_PRESENT,
    S.SCARD_W_RESET_CARD: C.CKR_DEVICE_REMOVED,
    S.SCARD_E_NO_SERVICE: C.CKR_DEVICE_ERROR,
    S.SCARD_E_SERVICE_STOPPED: C.CKR_DEVICE_ERROR,
    S.SCARD_E_TIMEOUT: C.CKR_DEVICE_ERROR,
}


class CardError(Exception):
    def __init__(self, rc: int, what: str):
        self.rc = rc
        super().__init__(f"{what}: {S.SCardGetErrorMessage(rc).strip()} ({rc & 0xFFFFFFFF:#010x})")

    def ckr(self) -> int:
        return PCSC_CKR.get(self.rc, C.CKR_DEVICE_ERROR)


def _check(rc: int, what: str) -> None:
    if rc != S.SCARD_S_SUCCESS:
        raise CardError(rc, what)


class CardLink:
    def __init__(self, reader: str | None = None):
        self.want = reader            # a reader name, or a prefix of one; None: the first
        self.reader: str | None = None
        self._ctx = self._card = self._proto = None

    @property
    def connected(self) -> bool:
        return self._card is not None

    def open(self) -> None:
        self.close()
        rc, ctx = S.SCardEstablishContext(S.SCARD_SCOPE_USER)
        _check(rc, "SCardEstablishContext")
        self._ctx = ctx
        try:
            rc, readers = S.SCardListReaders(ctx, [])
            if rc == S.SCARD_E_NO_READERS_AVAILABLE or not readers:
                raise CardError(S.SCARD_E_NO_READERS_AVAILABLE, "SCardListReaders")
            _check(rc, "SCardListReaders")
            match = [r for r in readers if self.want is None or r.startswith(self.want)]
            if not match:
                raise CardError(S.SCARD_E_UNKNOWN_READER, f"reader {self.want!r}")
            self.reader = match[0]
            rc, card, proto = S.SCardConnect(ctx, self.reader, S.SCARD_SHARE_SHARED,
                                             S.SCARD_PROTOCOL_T0 | S.SCARD_PROTOCOL_T1)
            _check(rc, f"SCardConnect {self.reader}")
            self._card, self._proto = card, proto
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        card, ctx, self._card, self._ctx = self._card, self._ctx, None, None
        if card is not None:
            S.SCardDisconnect(card, S.SCARD_LEAVE_CARD)   # errors: the handle is gone anyway
        if ctx is not None:
            S.SCardReleaseContext(ctx)

    @contextmanager
    def transaction(self):
        """Other PC/SC clients (OpenSC, ...) may not interleave with our APDUs."""
        _check(S.SCardBeginTransaction(self._card), "SCardBeginTransaction")
        try:
            yield
        finally:
            if self._card is not None:
                S.SCardEndTransaction(self._card, S.SCARD_LEAVE_CARD)

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        if self._card is None:
            raise CardError(S.SCARD_E_INVALID_HANDLE, "not connected")
        rc, resp = S.SCardTransmit(self._card, self._proto, list(apdu))
        _check(rc, "SCardTransmit")
        if len(resp) < 2:
            raise CardError(S.SCARD_F_COMM_ERROR, "short answer")
        return bytes(resp[:-2]), (resp[-2] << 8) | resp[-1]

    def command(self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"",
                le: bool = True) -> tuple[bytes, int]:
        """Send one command (chained if long); return (answer data, final SW)."""
        while len(data) > 255:
            part, data = data[:255], data[255:]
            _, sw = self.transmit(bytes([cla | 0x10, ins, p1, p2, len(part)]) + part)
            if sw != 0x9000:
                return b"", sw
        head = bytes([cla, ins, p1, p2])
        body = (bytes([len(data)]) + data) if data else b""
        apdu = head + body + (b"\x00" if le else b"")
        out, sw = self.transmit(apdu)
        if sw >> 8 == 0x6C:                            # wrong Le: the card says which
            out, sw = self.transmit(head + body + bytes([sw & 0xFF]))
        for _ in range(256):                           # 61xx: more data waiting
            if sw >> 8 != 0x61:
                break
            more, sw = self.transmit(bytes([0x00, 0xC0, 0x00, 0x00, sw & 0xFF]))
            out += more
        return out, sw


def tlv(tag: int, value: bytes) -> bytes:
    t = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    n = len(value)
    head = bytes([n]) if n < 0x80 else (b"\x81" + bytes([n]) if n < 0x100
                                        else b"\x82" + n.to_bytes(2, "big"))
    return t + head + value


def parse_tlv(buf: bytes) -> dict:
    """BER-TLV with 1- or 2-byte tags; the first occurrence of a tag wins."""
    out, i = {}, 0
    while i < len(buf):
        tag, i = buf[i], i + 1
        if tag & 0x1F == 0x1F:
            tag, i = (tag << 8) | buf[i], i + 1
        n, i = buf[i], i + 1
        if n & 0x80:
            k = n & 0x7F
            n, i = int.from_bytes(buf[i:i + k], "big"), i + k
        out.setdefault(tag, buf[i:i + n])
        i += n
    return out
