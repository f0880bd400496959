/* Shared by the AES-GCM fast-path checks (gcm_fast_check.c, msg_check.c), over
 * check.h: loading the module, a logged-in session, AES keys, "out" lines. */
#ifndef FERRO_SESSION_H
#define FERRO_SESSION_H

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

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

/* main's start: argv is PROGRAM MODULE LABEL USER_PIN, then what `usage` names
 * after MODULE (argc must be `want`); the module loaded and initialized, the
 * token LABEL's slot in *slot, a R/W session on it logged in as the user. */
static CK_SESSION_HANDLE start(int argc, char **argv, int want, const char *usage, CK_SLOT_ID *slot)
{
    CK_SESSION_HANDLE s;
    if (argc != want) {
        fprintf(stderr, "usage: %s MODULE %s\n", argv[0], usage);
        exit(2);
    }
    load(argv[1]);
    EXPECT("C_Initialize", F->C_Initialize(NULL), CKR_OK);
    *slot = find_slot(argv[2]);
    s = open_rw(*slot);
    EXPECT("C_Login", F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3])), CKR_OK);
    return s;
}

#endif
