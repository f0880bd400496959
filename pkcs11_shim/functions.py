"""The one table of PKCS#11 functions, in CK_FUNCTION_LIST_3_0 order.

The first 68 rows are the 2.40 CK_FUNCTION_LIST; the rest are the 3.0 additions.
From this table the build generates the function-pointer structs, the
`extern "Python"` declarations, the exported C_* entry points and the two static
function lists. Each row: (name, how it is implemented, C parameter list).

How:
  PY  the C entry point boots Python once and calls the @ffi.def_extern handler
      `py_<name>` (pkcs11_shim/handlers_*.py);
  C   written by hand in C (build.py) - needs no Python;
  NS  a C stub returning CKR_FUNCTION_NOT_SUPPORTED. Used for the functions the
      spec lets a token leave out and SoftHSM2 leaves out too: operation state,
      the dual-function updates and message-based sign/verify. (The legacy
      parallel functions are PY: they answer CKR_FUNCTION_NOT_PARALLEL.)
"""

import re

PY, C, NS = "py", "c", "ns"

_S = "CK_SESSION_HANDLE hSession"

FUNCTIONS = [
    ("C_Initialize", PY, "CK_VOID_PTR pInitArgs"),
    ("C_Finalize", PY, "CK_VOID_PTR pReserved"),
    ("C_GetInfo", PY, "CK_INFO_PTR pInfo"),
    ("C_GetFunctionList", C, "CK_FUNCTION_LIST_PTR_PTR ppFunctionList"),
    ("C_GetSlotList", PY, "CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount"),
    ("C_GetSlotInfo", PY, "CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo"),
    ("C_GetTokenInfo", PY, "CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo"),
    ("C_GetMechanismList", PY, "CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount"),
    ("C_GetMechanismInfo", PY, "CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo"),
    ("C_InitToken", PY, "CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel"),
    ("C_InitPIN", PY, f"{_S}, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen"),
    ("C_SetPIN", PY, f"{_S}, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen"),
    ("C_OpenSession", PY, "CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify, "
                          "CK_SESSION_HANDLE_PTR phSession"),
    ("C_CloseSession", PY, _S),
    ("C_CloseAllSessions", PY, "CK_SLOT_ID slotID"),
    ("C_GetSessionInfo", PY, f"{_S}, CK_SESSION_INFO_PTR pInfo"),
    ("C_GetOperationState", NS, f"{_S}, CK_BYTE_PTR pOperationState, CK_ULONG_PTR pulOperationStateLen"),
    ("C_SetOperationState", NS, f"{_S}, CK_BYTE_PTR pOperationState, CK_ULONG ulOperationStateLen, "
                                "CK_OBJECT_HANDLE hEncryptionKey, CK_OBJECT_HANDLE hAuthenticationKey"),
    ("C_Login", PY, f"{_S}, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen"),
    ("C_Logout", PY, _S),
    ("C_CreateObject", PY, f"{_S}, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject"),
    ("C_CopyObject", PY, f"{_S}, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, "
                         "CK_OBJECT_HANDLE_PTR phNewObject"),
    ("C_DestroyObject", PY, f"{_S}, CK_OBJECT_HANDLE hObject"),
    ("C_GetObjectSize", PY, f"{_S}, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize"),
    ("C_GetAttributeValue", PY, f"{_S}, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount"),
    ("C_SetAttributeValue", PY, f"{_S}, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount"),
    ("C_FindObjectsInit", PY, f"{_S}, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount"),
    ("C_FindObjects", PY, f"{_S}, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount, "
                          "CK_ULONG_PTR pulObjectCount"),
    ("C_FindObjectsFinal", PY, _S),
    ("C_EncryptInit", PY, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey"),
    ("C_Encrypt", PY, f"{_S}, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData, "
                      "CK_ULONG_PTR pulEncryptedDataLen"),
    ("C_EncryptUpdate", PY, f"{_S}, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, "
                            "CK_ULONG_PTR pulEncryptedPartLen"),
    ("C_EncryptFinal", PY, f"{_S}, CK_BYTE_PTR pLastEncryptedPart, CK_ULONG_PTR pulLastEncryptedPartLen"),
    ("C_DecryptInit", PY, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey"),
    ("C_Decrypt", PY, f"{_S}, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData, "
                      "CK_ULONG_PTR pulDataLen"),
    ("C_DecryptUpdate", PY, f"{_S}, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, "
                            "CK_ULONG_PTR pulPartLen"),
    ("C_DecryptFinal", PY, f"{_S}, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen"),
    ("C_DigestInit", PY, f"{_S}, CK_MECHANISM_PTR pMechanism"),
    ("C_Digest", PY, f"{_S}, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen"),
    ("C_DigestUpdate", PY, f"{_S}, CK_BYTE_PTR pPart, CK_ULONG ulPartLen"),
    ("C_DigestKey", PY, f"{_S}, CK_OBJECT_HANDLE hKey"),
    ("C_DigestFinal", PY, f"{_S}, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen"),
    ("C_SignInit", PY, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey"),
    ("C_Sign", PY, f"{_S}, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, "
                   "CK_ULONG_PTR pulSignatureLen"),
    ("C_SignUpdate", PY, f"{_S}, CK_BYTE_PTR pPart, CK_ULONG ulPartLen"),
    ("C_SignFinal", PY, f"{_S}, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen"),
    ("C_SignRecoverInit", NS, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey"),
    ("C_SignRecover", NS, f"{_S}, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, "
                          "CK_ULONG_PTR pulSignatureLen"),
    ("C_VerifyInit", PY, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey"),
    ("C_Verify", PY, f"{_S}, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, "
                     "CK_ULONG ulSignatureLen"),
    ("C_VerifyUpdate", PY, f"{_S}, CK_BYTE_PTR pPart, CK_ULONG ulPartLen"),
    ("C_VerifyFinal", PY, f"{_S}, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen"),
    ("C_VerifyRecoverInit", NS, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey"),
    ("C_VerifyRecover", NS, f"{_S}, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen, CK_BYTE_PTR pData, "
                            "CK_ULONG_PTR pulDataLen"),
    ("C_DigestEncryptUpdate", NS, f"{_S}, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, "
                                  "CK_ULONG_PTR pulEncryptedPartLen"),
    ("C_DecryptDigestUpdate", NS, f"{_S}, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, "
                                  "CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen"),
    ("C_SignEncryptUpdate", NS, f"{_S}, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, "
                                "CK_ULONG_PTR pulEncryptedPartLen"),
    ("C_DecryptVerifyUpdate", NS, f"{_S}, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, "
                                  "CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen"),
    ("C_GenerateKey", PY, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, "
                          "CK_OBJECT_HANDLE_PTR phKey"),
    ("C_GenerateKeyPair", PY, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate, "
                              "CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate, "
                              "CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey, "
                              "CK_OBJECT_HANDLE_PTR phPrivateKey"),
    ("C_WrapKey", PY, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey, "
                      "CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen"),
    ("C_UnwrapKey", PY, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey, "
                        "CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate, "
                        "CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey"),
    ("C_DeriveKey", PY, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey, CK_ATTRIBUTE_PTR pTemplate, "
                        "CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey"),
    ("C_SeedRandom", PY, f"{_S}, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen"),
    ("C_GenerateRandom", PY, f"{_S}, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen"),
    ("C_GetFunctionStatus", PY, _S),
    ("C_CancelFunction", PY, _S),
    ("C_WaitForSlotEvent", PY, "CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved"),
    # --- PKCS#11 3.0 -------------------------------------------------------------
    ("C_GetInterfaceList", C, "CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount"),
    ("C_GetInterface", C, "CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion, "
                          "CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags"),
    ("C_LoginUser", PY, f"{_S}, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, "
                        "CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen"),
    ("C_SessionCancel", PY, f"{_S}, CK_FLAGS flags"),
]

_MSG = [
    ("Encrypt", "CK_BYTE_PTR pPlaintext, CK_ULONG ulPlaintextLen, CK_BYTE_PTR pCiphertext, "
                "CK_ULONG_PTR pulCiphertextLen",
     "CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen",
     "CK_BYTE_PTR pPlaintextPart, CK_ULONG ulPlaintextPartLen, CK_BYTE_PTR pCiphertextPart, "
     "CK_ULONG_PTR pulCiphertextPartLen, CK_FLAGS flags"),
    ("Decrypt", "CK_BYTE_PTR pCiphertext, CK_ULONG ulCiphertextLen, CK_BYTE_PTR pPlaintext, "
                "CK_ULONG_PTR pulPlaintextLen",
     "CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen",
     "CK_BYTE_PTR pCiphertextPart, CK_ULONG ulCiphertextPartLen, CK_BYTE_PTR pPlaintextPart, "
     "CK_ULONG_PTR pulPlaintextPartLen, CK_FLAGS flags"),
    ("Sign", "CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen",
     None,
     "CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen"),
    ("Verify", "CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen",
     None,
     "CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen"),
]

_P = f"{_S}, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen"
for _op, _one, _begin, _next in _MSG:
    _how = PY if _begin else NS          # message-based encrypt/decrypt (issue 4); sign/verify: not yet
    FUNCTIONS += [
        (f"C_Message{_op}Init", _how, f"{_S}, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey"),
        (f"C_{_op}Message", _how, f"{_P}, {_begin + ', ' if _begin else ''}{_one}"),
        (f"C_{_op}MessageBegin", _how, f"{_P}{', ' + _begin if _begin else ''}"),
        (f"C_{_op}MessageNext", _how, f"{_P}, {_next}"),
        (f"C_Message{_op}Final", _how, _S),
    ]

# PY functions whose C entry point first asks the native fast path (AES-GCM, ECDSA)
# (native/, `ferro_fast_<name>`); it answers, or passes the call on to Python.
FAST = {f"C_{op}{part}" for op in ("Encrypt", "Decrypt", "Sign") for part in ("Init", "", "Update", "Final")} | {
    name for op in ("Encrypt", "Decrypt") for name in (
        f"C_Message{op}Init", f"C_{op}Message", f"C_{op}MessageBegin", f"C_{op}MessageNext",
        f"C_Message{op}Final")}

V240_COUNT = 68          # CK_FUNCTION_LIST is the first 68 rows
assert len(FUNCTIONS) == 92, len(FUNCTIONS)


def arg_names(params: str) -> list[str]:
    """'CK_ULONG a, CK_BYTE_PTR b' -> ['a', 'b']"""
    return [re.search(r"(\w+)\s*$", p).group(1) for p in params.split(",")]


def arg_types(params: str) -> list[str]:
    return [re.sub(r"\s*\w+\s*$", "", p.strip()) for p in params.split(",")]


def python_functions() -> list[str]:
    return [name for name, how, _ in FUNCTIONS if how == PY]
