/* Boundary rules on a live token, from C: the two-call output convention,
 * C_GetAttributeValue's per-attribute rules, operation-state rules, mechanism
 * parameter checks, login states.
 *
 *   ops_check MODULE.so LABEL USER_PIN
 *
 * The token LABEL must be initialized with USER_PIN. Prints "ok ..." or
 * "FAIL ..." per check; exit status = failures. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static CK_SLOT_ID find_slot(const char *label)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 0;
    char padded[32];
    memset(padded, ' ', 32);
    memcpy(padded, label, strlen(label));
    EXPECT("C_GetSlotList too small", F->C_GetSlotList(CK_FALSE, slots, &n), CKR_BUFFER_TOO_SMALL);
    CHECK("C_GetSlotList gives the count", n >= 2);
    n = 16;
    EXPECT("C_GetSlotList", F->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO info;
        if (F->C_GetTokenInfo(slots[i], &info) == CKR_OK && !memcmp(info.label, padded, 32))
            return slots[i];
    }
    printf("FAIL no token labelled %s\n", label);
    exit(1);
}

static void digests(CK_SESSION_HANDLE s)
{
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_BYTE out[64];
    CK_ULONG len = 0;
    EXPECT("C_DigestInit(NULL mechanism)", F->C_DigestInit(s, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_DigestInit", F->C_DigestInit(s, &sha), CKR_OK);
    EXPECT("C_Digest length query", F->C_Digest(s, (CK_BYTE_PTR)"abc", 3, NULL, &len), CKR_OK);
    CHECK("length query gives 32", len == 32);
    len = 10;
    EXPECT("C_Digest too small", F->C_Digest(s, (CK_BYTE_PTR)"abc", 3, out, &len), CKR_BUFFER_TOO_SMALL);
    CHECK("too small gives the needed length", len == 32);
    len = sizeof out;
    EXPECT("C_Digest after too small", F->C_Digest(s, (CK_BYTE_PTR)"abc", 3, out, &len), CKR_OK);
    CHECK("SHA-256(abc)", len == 32 && out[0] == 0xba && out[1] == 0x78 && out[31] == 0xad);
    EXPECT("operation ended", F->C_Digest(s, (CK_BYTE_PTR)"abc", 3, out, &len), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT("C_Digest(NULL pulDigestLen)", F->C_DigestInit(s, &sha), CKR_OK);
    EXPECT("NULL pulDigestLen", F->C_DigestFinal(s, out, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("ARGUMENTS_BAD ended the digest", F->C_DigestUpdate(s, (CK_BYTE_PTR)"ab", 2),
           CKR_OPERATION_NOT_INITIALIZED);
    EXPECT("C_DigestInit again", F->C_DigestInit(s, &sha), CKR_OK);
    EXPECT("C_DigestUpdate", F->C_DigestUpdate(s, (CK_BYTE_PTR)"ab", 2), CKR_OK);
    len = sizeof out;
    EXPECT("single-part during multi-part", F->C_Digest(s, (CK_BYTE_PTR)"c", 1, out, &len), CKR_OPERATION_ACTIVE);
    EXPECT("C_DigestUpdate after refusal", F->C_DigestUpdate(s, (CK_BYTE_PTR)"c", 1), CKR_OK);
    len = sizeof out;
    EXPECT("C_DigestFinal", F->C_DigestFinal(s, out, &len), CKR_OK);
    CHECK("multi-part SHA-256(abc)", len == 32 && out[0] == 0xba && out[31] == 0xad);
    EXPECT("C_DigestInit for cancel", F->C_DigestInit(s, &sha), CKR_OK);
    EXPECT("C_SessionCancel(CKF_DIGEST)", F->C_SessionCancel(s, CKF_DIGEST), CKR_OK);
    EXPECT("cancelled digest is gone", F->C_DigestUpdate(s, (CK_BYTE_PTR)"a", 1), CKR_OPERATION_NOT_INITIALIZED);
}

static CK_OBJECT_HANDLE aes_key(CK_SESSION_HANDLE s)
{
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_VALUE_LEN, &len, sizeof len}, {CKA_TOKEN, &no, 1}, {CKA_SENSITIVE, &yes, 1},
        {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}, {CKA_LABEL, "aeskey", 6},
    };
    CK_OBJECT_HANDLE key = 0;
    EXPECT("C_GenerateKey(NULL phKey)", F->C_GenerateKey(s, &gen, tmpl, 6, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_GenerateKey(NULL template, count 6)", F->C_GenerateKey(s, &gen, NULL, 6, &key), CKR_ARGUMENTS_BAD);
    EXPECT("C_GenerateKey AES-256", F->C_GenerateKey(s, &gen, tmpl, 6, &key), CKR_OK);
    return key;
}

static void attributes(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    CK_BYTE value[64], label[64];
    CK_ULONG vlen = 0;
    CK_ATTRIBUTE a[] = {{CKA_VALUE, value, sizeof value}, {CKA_VALUE_LEN, &vlen, sizeof vlen}};
    CK_ATTRIBUTE b[] = {{0x80001234UL, label, sizeof label}, {CKA_LABEL, label, sizeof label}};
    CK_ATTRIBUTE c[] = {{CKA_LABEL, NULL, 0}};
    CK_ATTRIBUTE d[] = {{CKA_LABEL, label, 2}, {CKA_VALUE_LEN, &vlen, sizeof vlen}};
    EXPECT("sensitive attribute", F->C_GetAttributeValue(s, key, a, 2), CKR_ATTRIBUTE_SENSITIVE);
    CHECK("sensitive value unavailable", a[0].ulValueLen == CK_UNAVAILABLE_INFORMATION);
    CHECK("other attribute still filled", a[1].ulValueLen == sizeof vlen && vlen == 32);
    EXPECT("invalid attribute type", F->C_GetAttributeValue(s, key, b, 2), CKR_ATTRIBUTE_TYPE_INVALID);
    CHECK("invalid type unavailable", b[0].ulValueLen == CK_UNAVAILABLE_INFORMATION);
    CHECK("label still filled", b[1].ulValueLen == 6 && !memcmp(label, "aeskey", 6));
    EXPECT("length query", F->C_GetAttributeValue(s, key, c, 1), CKR_OK);
    CHECK("length query gives 6", c[0].ulValueLen == 6);
    vlen = 0;
    EXPECT("attribute buffer too small", F->C_GetAttributeValue(s, key, d, 2), CKR_BUFFER_TOO_SMALL);
    CHECK("too small is unavailable", d[0].ulValueLen == CK_UNAVAILABLE_INFORMATION);
    CHECK("next attribute still filled", vlen == 32);
    EXPECT("bad object handle", F->C_GetAttributeValue(s, 0xdead, c, 1), CKR_OBJECT_HANDLE_INVALID);
}

static void gcm(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    CK_BYTE iv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, aad[3] = {7, 7, 7};
    CK_BYTE ct1[64], ct2[64], pt[64];
    CK_ULONG n1 = 0, n2 = sizeof ct2, np = sizeof pt;
    CK_GCM_PARAMS p30 = {iv, 12, 96, aad, 3, 128};
    CK_GCM_PARAMS_V240 p240 = {iv, 12, aad, 3, 128};
    CK_MECHANISM m30 = {CKM_AES_GCM, &p30, sizeof p30}, m240 = {CKM_AES_GCM, &p240, sizeof p240};
    CK_MECHANISM null_param = {CKM_AES_GCM, NULL, sizeof p30}, short_param = {CKM_AES_GCM, &p30, 7};
    CHECK("CK_GCM_PARAMS layouts are 48 and 40 bytes", sizeof p30 == 48 && sizeof p240 == 40);
    EXPECT("GCM NULL pParameter", F->C_EncryptInit(s, &null_param, key), CKR_ARGUMENTS_BAD);
    EXPECT("GCM parameter of a wrong size", F->C_EncryptInit(s, &short_param, key), CKR_MECHANISM_PARAM_INVALID);
    EXPECT("bad key handle", F->C_EncryptInit(s, &m30, 0xdead), CKR_KEY_HANDLE_INVALID);
    EXPECT("C_EncryptInit GCM (3.0 layout)", F->C_EncryptInit(s, &m30, key), CKR_OK);
    EXPECT("C_Encrypt length query", F->C_Encrypt(s, (CK_BYTE_PTR)"secret", 6, NULL, &n1), CKR_OK);
    CHECK("GCM output is data + tag", n1 == 22);
    n1 = sizeof ct1;
    EXPECT("C_Encrypt GCM", F->C_Encrypt(s, (CK_BYTE_PTR)"secret", 6, ct1, &n1), CKR_OK);
    EXPECT("C_EncryptInit GCM (2.40 layout)", F->C_EncryptInit(s, &m240, key), CKR_OK);
    EXPECT("C_Encrypt GCM 2.40", F->C_Encrypt(s, (CK_BYTE_PTR)"secret", 6, ct2, &n2), CKR_OK);
    CHECK("both layouts read alike", n1 == n2 && !memcmp(ct1, ct2, n1));
    EXPECT("C_DecryptInit GCM", F->C_DecryptInit(s, &m30, key), CKR_OK);
    EXPECT("C_Decrypt GCM", F->C_Decrypt(s, ct1, n1, pt, &np), CKR_OK);
    CHECK("GCM round trip", np == 6 && !memcmp(pt, "secret", 6));
}

static CK_SLOT_ID worker_slot;

static void *worker(void *arg)
{
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_SESSION_HANDLE s;
    CK_BYTE out[32];
    CK_ULONG len;
    long bad = 0;
    if (F->C_OpenSession(worker_slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        return (void *)1L;
    for (int i = 0; i < 200; i++) {
        len = sizeof out;
        bad += F->C_DigestInit(s, &sha) != CKR_OK;
        bad += F->C_Digest(s, (CK_BYTE_PTR)"abc", 3, out, &len) != CKR_OK || out[0] != 0xba;
    }
    bad += F->C_CloseSession(s) != CKR_OK;
    return (void *)bad;
}

static void threads(CK_SLOT_ID slot)
{
    pthread_t t[8];
    long bad = 0;
    void *res;
    worker_slot = slot;
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], &res);
        bad += (long)res;
    }
    CHECK("8 threads x 200 digests in their own sessions", bad == 0);
}

int main(int argc, char **argv)
{
    CK_RV (*get_iface)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);
    CK_INTERFACE *iface;
    CK_SESSION_HANDLE s;
    CK_SESSION_INFO info;
    CK_SLOT_ID slot;
    CK_OBJECT_HANDLE key;
    void *lib;
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODULE LABEL USER_PIN\n", argv[0]);
        return 2;
    }
    lib = dlopen(argv[1], RTLD_LOCAL | RTLD_NOW);
    if (!lib || !(get_iface = dlsym(lib, "C_GetInterface")) || get_iface(NULL, NULL, &iface, 0) != CKR_OK) {
        printf("FAIL load %s\n", dlerror());
        return 1;
    }
    F = iface->pFunctionList;
    EXPECT("C_Initialize", F->C_Initialize(NULL), CKR_OK);
    slot = find_slot(argv[2]);
    EXPECT("C_OpenSession", F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    EXPECT("C_Logout with nobody logged in", F->C_Logout(s), CKR_USER_NOT_LOGGED_IN);
    EXPECT("C_LoginUser with a username", F->C_LoginUser(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3]),
                                                          (CK_UTF8CHAR_PTR)"bob", 3), CKR_ARGUMENTS_BAD);
    EXPECT("C_Login(NULL PIN)", F->C_Login(s, CKU_USER, NULL, 6), CKR_ARGUMENTS_BAD);
    EXPECT("C_LoginUser without username",
           F->C_LoginUser(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3]), NULL, 0), CKR_OK);
    EXPECT("C_GetSessionInfo", F->C_GetSessionInfo(s, &info), CKR_OK);
    CHECK("R/W user functions", info.state == CKS_RW_USER_FUNCTIONS && info.slotID == slot);
    digests(s);
    key = aes_key(s);
    attributes(s, key);
    gcm(s, key);
    threads(slot);
    EXPECT("C_Logout", F->C_Logout(s), CKR_OK);
    EXPECT("C_CloseSession", F->C_CloseSession(s), CKR_OK);
    EXPECT("closed session", F->C_CloseSession(s), CKR_SESSION_HANDLE_INVALID);
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    printf("%d failures\n", failures);
    return failures;
}
