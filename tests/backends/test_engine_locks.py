"""A hung device holds up only the call that uses it: with swtpm stopped (SIGSTOP) in the
middle of a C_Sign on a TPM-held key, other calls on the same token and on another token
go on (held under the token's lock, they would wait out the backend's 5 s timeout); the
stopped call finishes once the device is back."""

import os
import signal
import threading
import time

from provider import constants as C
from provider.library import Library
from provider.mechanisms.params import Mechanism

from .engine_env import PIN, RW, T, backend_settings, init_token, write_config


def test_hung_tpm_stalls_no_other_call(tmp_path, swtpm):
    write_config(tmp_path, {}, (["soft"], "none"), "other")
    config = write_config(tmp_path, {"tpm": backend_settings("tpm2", {"swtpm": swtpm})}, (["tpm"], "none"),
                          "tpm-token")
    lib = Library(config)
    try:
        tpm_slot, other_slot = init_token(lib, "tpm-token"), init_token(lib, "other")
        signer, same_token = lib.open_session(tpm_slot, RW), lib.open_session(tpm_slot, RW)
        other = lib.open_session(other_slot, RW)
        lib.login(signer, C.CKU_USER, PIN)
        lib.login(other, C.CKU_USER, PIN)
        _, priv = lib.generate_key_pair(signer, Mechanism(C.CKM_EC_KEY_PAIR_GEN),
                                        T(TOKEN=True, EC_PARAMS=bytes.fromhex("06082a8648ce3d030107")),
                                        T(TOKEN=True, PRIVATE=True, SIGN=True, LABEL=b"held"))
        assert lib.get_attribute_value(signer, priv, [C.CKA_FERRO_BACKEND]) == [b"tpm"]
        lib.sign_init(signer, Mechanism(C.CKM_ECDSA), priv)
        result = {}

        def sign():
            t0 = time.monotonic()
            try:
                lib.sign(signer, bytes(32), 64)
                result["rv"] = C.CKR_OK
            except Exception as err:             # PKCS11Error
                result["rv"] = getattr(err, "rv", None)
            result["took"] = time.monotonic() - t0
        os.kill(swtpm.pid, signal.SIGSTOP)
        try:
            worker = threading.Thread(target=sign)
            worker.start()
            time.sleep(0.3)                      # the sign is now waiting on the stopped TPM
            assert worker.is_alive()
            t0 = time.monotonic()
            for session in (same_token, other):  # the same token, and another one
                h = lib.create_object(session, T(CLASS=C.CKO_DATA, LABEL=b"meanwhile", VALUE=b"v"))
                lib.find_objects_init(session, T(LABEL=b"meanwhile"))
                assert lib.find_objects(session, 5) == [h]
                lib.find_objects_final(session)
            lib.get_token_info(tpm_slot)
            meanwhile = time.monotonic() - t0
            assert worker.is_alive() and meanwhile < 1.0, f"other calls waited {meanwhile:.1f} s"
        finally:
            os.kill(swtpm.pid, signal.SIGCONT)
        worker.join(30)
        assert result["rv"] == C.CKR_OK and result["took"] < 5          # answered when the TPM came back
    finally:
        lib.finalize()
