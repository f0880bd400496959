/* CKM_PKCS5_PBKD2 from a 2.x caller (issue 11 item 12): CK_PKCS5_PBKD2_PARAMS, whose
 * ulPasswordLen is a pointer to the length, has the size of the 3.0
 * CK_PKCS5_PBKD2_PARAMS2. The module reads the field as a length; a 2.x pointer must
 * be refused (CKR_MECHANISM_PARAM_INVALID), never read as a length of that many bytes
 * nor dereferenced. The pointers are placed where programs have them: a non-PIE
 * program's data (4 MiB, mapped here at 16 MiB and at 64 KiB, the lowest address
 * Linux maps) and the stack.
 *
 *   pbkd2_check MODULE LABEL USER_PIN       prints "ok ..." / "FAIL ..." lines */
#include <sys/mman.h>

#include "session.h"

static CK_SESSION_HANDLE S;
static CK_BYTE password[65536];
static CK_BYTE salt[8] = "saltsalt";

static CK_RV derive(CK_MECHANISM *m)
{
    CK_ULONG cls = CKO_SECRET_KEY, kt = CKK_GENERIC_SECRET, len = 16;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt},
                        {CKA_VALUE_LEN, &len, sizeof len}};
    CK_OBJECT_HANDLE h = 0;
    return F->C_GenerateKey(S, m, t, 3, &h);
}

/* a 2.x parameter whose length lives at `where` (mapped there when not NULL) */
static void old_params(const char *what, void *where)
{
    CK_ULONG stack_len = 8, *len = &stack_len;
    if (where) {
        len = mmap(where, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (len == MAP_FAILED || (void *)len != where) {
            printf("FAIL %s: cannot map a page at %p\n", what, where);
            failures++;
            return;
        }
        *len = 8;
    }
    CK_PKCS5_PBKD2_PARAMS p = {CKZ_SALT_SPECIFIED, salt, 8, 2, CKP_PKCS5_PBKD2_HMAC_SHA256, NULL, 0,
                               password, len};
    CK_MECHANISM m = {CKM_PKCS5_PBKD2, &p, sizeof p};
    EXPECT(what, derive(&m), CKR_MECHANISM_PARAM_INVALID);
    if (where)
        munmap(where, 4096);
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot;
    setvbuf(stdout, NULL, _IOLBF, 0);     /* every line reaches the report, even before a crash */
    S = start(argc, argv, 4, "LABEL USER_PIN", &slot);
    memset(password, 'p', sizeof password);
    CK_PKCS5_PBKD2_PARAMS2 p = {CKZ_SALT_SPECIFIED, salt, 8, 2, CKP_PKCS5_PBKD2_HMAC_SHA256, NULL, 0,
                                password, 65535};
    CK_MECHANISM m = {CKM_PKCS5_PBKD2, &p, sizeof p};
    EXPECT("PARAMS2, a 65,535-byte password", derive(&m), CKR_OK);
    p.ulPasswordLen = 8;
    EXPECT("PARAMS2, an 8-byte password", derive(&m), CKR_OK);
    p.ulPasswordLen = 65536;
    EXPECT("PARAMS2, a 65,536-byte password (could be a pointer)", derive(&m), CKR_MECHANISM_PARAM_INVALID);
    p.ulPasswordLen = (CK_ULONG)-1;
    EXPECT("PARAMS2, a 2^64-1-byte password", derive(&m), CKR_MECHANISM_PARAM_INVALID);
    old_params("2.x PARAMS, length pointer at 16 MiB (non-PIE data)", (void *)0x1000000);
    old_params("2.x PARAMS, length pointer at 64 KiB (the lowest mappable page)", (void *)0x10000);
    old_params("2.x PARAMS, length pointer on the stack", NULL);
    EXPECT("the module still answers", F->C_CloseSession(S), CKR_OK);
    F->C_Finalize(NULL);
    printf("%d failures\n", failures);
    return failures;
}
