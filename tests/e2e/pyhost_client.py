"""A tiny ctypes PKCS#11 client for tests/e2e/test_python_hosts.py: the scenarios
run it in a subprocess (any Python, Debian's too), so it imports nothing of
ours - what it needs of the spec is spelled out here."""

import ctypes
import gc
import sys

from ctypes import Structure, byref, c_ubyte, c_ulong, c_void_p

CKR_OK, CKR_GENERAL_ERROR = 0, 0x5
CKF_RW_SESSION, CKF_SERIAL_SESSION = 0x2, 0x4
CKU_USER = 1
CKA_TOKEN, CKA_ENCRYPT, CKA_SIGN, CKA_VALUE_LEN, CKA_EC_PARAMS = 0x1, 0x104, 0x108, 0x161, 0x180
CKM_EC_KEY_PAIR_GEN, CKM_ECDSA, CKM_AES_KEY_GEN, CKM_AES_GCM = 0x1040, 0x1041, 0x1080, 0x1087
CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA, CKM_HKDF_DERIVE = 0x1055, 0x1057, 0x402A
P256 = bytes.fromhex("06082a8648ce3d030107")


class Attribute(Structure):
    _fields_ = [("type", c_ulong), ("pValue", c_void_p), ("ulValueLen", c_ulong)]


class Mechanism(Structure):
    _fields_ = [("mechanism", c_ulong), ("pParameter", c_void_p), ("ulParameterLen", c_ulong)]


class GcmParams(Structure):
    _fields_ = [("pIv", c_void_p), ("ulIvLen", c_ulong), ("ulIvBits", c_ulong),
                ("pAAD", c_void_p), ("ulAADLen", c_ulong), ("ulTagBits", c_ulong)]


def check(rv, what):
    if rv != CKR_OK:
        raise AssertionError(f"{what}: 0x{rv:x}")


class Module:
    """One dlopen()ed copy of the module, driven through its exported C_* symbols."""

    def __init__(self, path):
        self.path = path
        self.dll = ctypes.CDLL(path)
        self.keep = []        # buffers an armed operation points into

    def __getattr__(self, name):            # C_x: the copy's exported function
        if not name.startswith("C_"):
            raise AttributeError(name)
        fn = getattr(self.dll, name)
        fn.restype = c_ulong
        return fn

    def unload(self):
        import _ctypes
        _ctypes.dlclose(self.dll._handle)
        del self.dll

    def template(self, *pairs):
        attrs = (Attribute * len(pairs))()
        for attr, (kind, value) in zip(attrs, pairs):
            buf = ctypes.create_string_buffer(value, len(value))
            self.keep.append(buf)
            attr.type, attr.pValue, attr.ulValueLen = kind, ctypes.cast(buf, c_void_p), len(value)
        return attrs

    def slot(self):
        n = c_ulong(0)
        check(self.C_GetSlotList(1, None, byref(n)), "C_GetSlotList")
        slots = (c_ulong * n.value)()
        check(self.C_GetSlotList(1, slots, byref(n)), "C_GetSlotList")
        return slots[0]

    def mechanisms(self, slot):
        n = c_ulong(0)
        check(self.C_GetMechanismList(c_ulong(slot), None, byref(n)), "C_GetMechanismList")
        mechs = (c_ulong * n.value)()
        check(self.C_GetMechanismList(c_ulong(slot), mechs, byref(n)), "C_GetMechanismList")
        return list(mechs)

    def login(self, pin):
        """C_Initialize, a logged-in R/W session: its handle."""
        check(self.C_Initialize(None), "C_Initialize")
        session = c_ulong(0)
        check(self.C_OpenSession(c_ulong(self.slot()), CKF_RW_SESSION | CKF_SERIAL_SESSION, None, None,
                                 byref(session)), "C_OpenSession")
        check(self.C_Login(session, CKU_USER, pin, len(pin)), "C_Login")
        return session.value

    def aes_key(self, session):
        yes, no = b"\x01", b"\x00"
        tpl = self.template((CKA_TOKEN, no), (CKA_ENCRYPT, yes), (CKA_VALUE_LEN, bytes(c_ulong(32))))
        mech, key = Mechanism(CKM_AES_KEY_GEN, None, 0), c_ulong(0)
        check(self.C_GenerateKey(c_ulong(session), byref(mech), tpl, len(tpl), byref(key)), "C_GenerateKey")
        return key.value

    def ec_key(self, session):
        yes, no = b"\x01", b"\x00"
        pub = self.template((CKA_TOKEN, no), (CKA_EC_PARAMS, P256))
        priv = self.template((CKA_TOKEN, no), (CKA_SIGN, yes))
        mech, hpub, hpriv = Mechanism(CKM_EC_KEY_PAIR_GEN, None, 0), c_ulong(0), c_ulong(0)
        check(self.C_GenerateKeyPair(c_ulong(session), byref(mech), pub, len(pub), priv, len(priv),
                                     byref(hpub), byref(hpriv)), "C_GenerateKeyPair")
        return hpriv.value

    def gcm_init(self, session, key):
        iv = ctypes.create_string_buffer(b"\x07" * 12, 12)
        params = GcmParams(ctypes.cast(iv, c_void_p), 12, 96, None, 0, 128)
        mech = Mechanism(CKM_AES_GCM, ctypes.cast(byref(params), c_void_p), ctypes.sizeof(params))
        self.keep += [iv, params]
        check(self.C_EncryptInit(c_ulong(session), byref(mech), c_ulong(key)), "C_EncryptInit")

    def encrypt(self, session, data):
        out, n = (c_ubyte * (len(data) + 16))(), c_ulong(len(data) + 16)
        check(self.C_Encrypt(c_ulong(session), data, len(data), out, byref(n)), "C_Encrypt")
        return bytes(out[:n.value])

    def sign_init(self, session, key):
        mech = Mechanism(CKM_ECDSA, None, 0)
        check(self.C_SignInit(c_ulong(session), byref(mech), c_ulong(key)), "C_SignInit")

    def sign(self, session, digest):
        out, n = (c_ubyte * 64)(), c_ulong(64)
        check(self.C_Sign(c_ulong(session), digest, len(digest), out, byref(n)), "C_Sign")
        return bytes(out[:n.value])

    def use(self, pin):
        """Log in, run AES-GCM and ECDSA once each, then leave both armed again:
        (session, aes key, ec key)."""
        session = self.login(pin)
        aes, ec = self.aes_key(session), self.ec_key(session)
        self.gcm_init(session, aes)
        assert len(self.encrypt(session, b"sixteen bytes!!!")) == 32
        self.sign_init(session, ec)
        assert len(self.sign(session, b"\x01" * 32)) == 64
        self.gcm_init(session, aes)
        self.sign_init(session, ec)
        return session, aes, ec

    def finalize(self):
        check(self.C_Finalize(None), "C_Finalize")


def walk():
    """What pytest does to format a failure, and more: touch every module and
    every object the garbage collector tracks (cffi's types and libraries too)."""
    for name, mod in list(sys.modules.items()):
        repr(mod)
        for attr in ("__file__", "__spec__", "__name__", "__loader__", "__path__"):
            repr(getattr(mod, attr, None))
    for obj in gc.get_objects():
        if isinstance(obj, (dict, list, tuple, set, frozenset)):
            continue                   # their items are walked themselves
        repr(obj)
        type(obj).__name__
        if type(obj).__name__ == "CType":
            obj.cname, obj.kind
    gc.collect()
