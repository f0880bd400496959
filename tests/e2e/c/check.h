/* Shared by the AES-GCM fast-path checks (gcm_fast_check.c, msg_check.c):
 * CHECK/EXPECT report lines, loading the module, a logged-in session, hex. */
#ifndef FERRO_CHECK_H
#define FERRO_CHECK_H

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferro_pkcs11.h"

static int failures;
static CK_FUNCTION_LIST_3_0 *F;

#define CHECK(what, cond) do { \
        if (cond) printf("ok %s\n", what); \
        else { printf("FAIL %s (line %d)\n", what, __LINE__); failures++; } \
    } while (0)
#define EXPECT(what, call, want) do { \
        CK_RV _rv = (call); \
        if (_rv == (CK_RV)(want)) printf("ok %s\n", what); \
        else { printf("FAIL %s: rv 0x%lx, want 0x%lx (line %d)\n", what, _rv, (CK_RV)(want), __LINE__); \
               failures++; } \
    } while (0)

/* "out NAME HEX": deterministic output the test compares between the paths */
static void out_hex(const char *name, const CK_BYTE *p, CK_ULONG n)
{
    printf("out %s ", name);
    for (CK_ULONG i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

static void load(const char *module)
{
    CK_INTERFACE *iface;
    CK_RV (*get)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);
    void *h = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (!h || !(get = (void *)dlsym(h, "C_GetInterface")) || get(NULL, NULL, &iface, 0) != CKR_OK) {
        printf("FAIL cannot load %s: %s\n", module, dlerror());
        exit(1);
    }
    F = iface->pFunctionList;
}

static CK_SLOT_ID find_slot(const char *label)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    char padded[32];
    memset(padded, ' ', 32);
    memcpy(padded, label, strlen(label));
    if (F->C_GetSlotList(CK_FALSE, slots, &n) == CKR_OK)
        for (CK_ULONG i = 0; i < n; i++) {
            CK_TOKEN_INFO info;
            if (F->C_GetTokenInfo(slots[i], &info) == CKR_OK && !memcmp(info.label, padded, 32))
                return slots[i];
        }
    printf("FAIL no token labelled %s\n", label);
    exit(1);
}

static CK_SESSION_HANDLE open_rw(CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE s = 0;
    if (F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) != CKR_OK) {
        printf("FAIL C_OpenSession\n");
        exit(1);
    }
    return s;
}

static CK_OBJECT_HANDLE make_key(CK_SESSION_HANDLE s, const CK_BYTE *value, CK_ULONG len, CK_BBOOL token)
{
    CK_ULONG cls = CKO_SECRET_KEY, kt = CKK_AES;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt}, {CKA_VALUE, (void *)value, len},
        {CKA_TOKEN, &token, 1}, {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}, {CKA_LABEL, "gcm", 3},
    };
    CK_OBJECT_HANDLE key = 0;
    CK_RV rv = F->C_CreateObject(s, t, sizeof t / sizeof t[0], &key);
    if (rv != CKR_OK)
        printf("FAIL C_CreateObject: 0x%lx\n", rv), failures++;
    return key;
}

static CK_ULONG unhex(const char *h, CK_BYTE *out)
{
    CK_ULONG n = 0;
    if (h[0] == '-')
        return 0;
    for (; h[0] && h[1]; h += 2)
        sscanf(h, "%2hhx", &out[n++]);
    return n;
}

#endif
