"""Message digests, and the hash tables other families look hashes up in."""

from cryptography.hazmat.primitives import hashes

from .. import constants as C
from .base import Context, require_param
from .registry import register

# digest mechanism -> cryptography hash class
HASHES = {
    C.CKM_MD5: hashes.MD5,
    C.CKM_SHA_1: hashes.SHA1,
    C.CKM_SHA224: hashes.SHA224,
    C.CKM_SHA256: hashes.SHA256,
    C.CKM_SHA384: hashes.SHA384,
    C.CKM_SHA512: hashes.SHA512,
    C.CKM_SHA3_224: hashes.SHA3_224,
    C.CKM_SHA3_256: hashes.SHA3_256,
    C.CKM_SHA3_384: hashes.SHA3_384,
    C.CKM_SHA3_512: hashes.SHA3_512,
}

# digests C_DigestKey does not run over a key: their collisions are cheap (MD5) or
# practical (SHA-1), and a short digest of a secret key is an offline-checkable tag for it
NOT_FOR_KEYS = frozenset({C.CKM_MD5, C.CKM_SHA_1})

# CK_RSA_PKCS_MGF_TYPE -> the hash mechanism MGF1 uses
MGF1 = {
    C.CKG_MGF1_SHA1: C.CKM_SHA_1,
    C.CKG_MGF1_SHA224: C.CKM_SHA224,
    C.CKG_MGF1_SHA256: C.CKM_SHA256,
    C.CKG_MGF1_SHA384: C.CKM_SHA384,
    C.CKG_MGF1_SHA512: C.CKM_SHA512,
}


def hash_for(mech: int) -> hashes.HashAlgorithm:
    """The hash a parameter names; CKR_MECHANISM_PARAM_INVALID if it names none."""
    require_param(mech in HASHES, "unsupported hash " + C.name_of("CKM_", mech))
    return HASHES[mech]()


class DigestCtx(Context):
    def __init__(self, algorithm):
        self._h = hashes.Hash(algorithm)

    def update(self, data: bytes):
        self._h.update(bytes(data))

    def final(self) -> bytes:
        return self._h.finalize()

    def final_len(self) -> int:
        return self._h.algorithm.digest_size

    def out_len(self, n: int) -> int:
        return self._h.algorithm.digest_size

    def oneshot(self, data: bytes) -> bytes:
        self._h.update(bytes(data))
        return self._h.finalize()


class Digest:
    def __init__(self, algorithm):
        self.algorithm = algorithm

    def digest_init(self, param) -> DigestCtx:
        require_param(param is None, "digest takes no parameter")
        return DigestCtx(self.algorithm())


for _mech, _alg in HASHES.items():
    register(_mech, Digest(_alg))
