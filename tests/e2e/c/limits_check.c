/* Lengths no buffer can have, on armed (native) operations and on the engine's
 * path alike: the module answers a code at once, reads nothing past the first
 * bytes of the (small, real) input buffer, and stays usable from other threads.
 *
 *   limits_check MODULE LABEL USER_PIN CASE
 *
 * CASE is one of the names in CASES below. The call under test runs in a
 * worker thread; then another thread closes the session and finalizes. A length
 * sum that wraps used to spin forever in the buffer growth holding the slot
 * mutex (so the joins never return: tests/e2e/test_native_limits.py runs this
 * under a timeout) or to memcpy past the heap buffer (a crash). Prints
 * "rv CASE 0x..." for the code the call answered; the test compares it. */
#include <pthread.h>

#include "session.h"

#define HUGE ((CK_ULONG)1 << 63)            /* 2^63: the doubling loop wrapped to 0 here */

static const CK_BYTE KEY[32] = "0123456789abcdef0123456789abcdef";
static CK_BYTE IV[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static CK_GCM_PARAMS GP = {IV, 12, 96, NULL, 0, 128};
static CK_MECHANISM GCM = {CKM_AES_GCM, &GP, sizeof GP};
static CK_MECHANISM GCM_MSG = {CKM_AES_GCM, NULL, 0};
static CK_MECHANISM ECDSA = {CKM_ECDSA, NULL, 0};
static CK_BYTE TAG[16];
static CK_GCM_MESSAGE_PARAMS MP = {IV, 12, 0, CKG_NO_GENERATE, TAG, 128};

static CK_BYTE small[64] = "a small real buffer, shorter than any length stated below.....";
static CK_BYTE out[256];
static CK_ULONG out_len;

static CK_SESSION_HANDLE S;
static CK_OBJECT_HANDLE AES, EC_PRIV, EC_PUB;

static void ec_pair(void)
{
    static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE pub[] = {{CKA_TOKEN, &no, 1}, {CKA_VERIFY, &yes, 1}, {CKA_EC_PARAMS, p256, sizeof p256}};
    CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}};
    EXPECT("EC P-256 key pair", F->C_GenerateKeyPair(S, &gen, pub, 3, priv, 3, &EC_PUB, &EC_PRIV), CKR_OK);
}

/* each case arms its operation (the first init goes to the engine, which hands it
 * to the native path when that is on) and returns the code of the call under test */
static CK_RV decrypt_update_huge(void)
{
    EXPECT("C_DecryptInit", F->C_DecryptInit(S, &GCM, AES), CKR_OK);
    out_len = sizeof out;
    return F->C_DecryptUpdate(S, small, HUGE + 5, out, &out_len);
}

static CK_RV decrypt_update_wrap(void)     /* 20 + (2^64 - 10) wraps to 10: memcpy past the buffer */
{
    EXPECT("C_DecryptInit", F->C_DecryptInit(S, &GCM, AES), CKR_OK);
    out_len = sizeof out;
    EXPECT("C_DecryptUpdate 20", F->C_DecryptUpdate(S, small, 20, out, &out_len), CKR_OK);
    out_len = sizeof out;
    return F->C_DecryptUpdate(S, small, (CK_ULONG)-10, out, &out_len);
}

static CK_RV decrypt_huge(void)
{
    EXPECT("C_DecryptInit", F->C_DecryptInit(S, &GCM, AES), CKR_OK);
    out_len = sizeof out;
    return F->C_Decrypt(S, small, HUGE + 5, out, &out_len);
}

static CK_RV encrypt_wrap(void)            /* n + the tag (16) wraps to 8: fits the buffer */
{
    EXPECT("C_EncryptInit", F->C_EncryptInit(S, &GCM, AES), CKR_OK);
    out_len = sizeof out;
    return F->C_Encrypt(S, small, (CK_ULONG)-8, out, &out_len);
}

static CK_RV encrypt_update_huge(void)
{
    EXPECT("C_EncryptInit", F->C_EncryptInit(S, &GCM, AES), CKR_OK);
    out_len = sizeof out;
    EXPECT("C_EncryptUpdate 20", F->C_EncryptUpdate(S, small, 20, out, &out_len), CKR_OK);
    out_len = sizeof out;
    return F->C_EncryptUpdate(S, small, HUGE + 5, out, &out_len);
}

static CK_RV sign_update_huge(void)
{
    EXPECT("C_SignInit", F->C_SignInit(S, &ECDSA, EC_PRIV), CKR_OK);
    return F->C_SignUpdate(S, small, HUGE + 5);
}

static CK_RV sign_update_wrap(void)
{
    EXPECT("C_SignInit", F->C_SignInit(S, &ECDSA, EC_PRIV), CKR_OK);
    EXPECT("C_SignUpdate 20", F->C_SignUpdate(S, small, 20), CKR_OK);
    return F->C_SignUpdate(S, small, (CK_ULONG)-10);
}

static CK_RV sign_huge(void)
{
    EXPECT("C_SignInit", F->C_SignInit(S, &ECDSA, EC_PRIV), CKR_OK);
    out_len = sizeof out;
    return F->C_Sign(S, small, HUGE + 5, out, &out_len);
}

/* a message-based operation (encrypting or not) with a message open */
static void open_message(int enc)
{
    EXPECT("C_Message*Init", (enc ? F->C_MessageEncryptInit : F->C_MessageDecryptInit)(S, &GCM_MSG, AES), CKR_OK);
    EXPECT("C_*MessageBegin", (enc ? F->C_EncryptMessageBegin : F->C_DecryptMessageBegin)(S, &MP, sizeof MP, NULL, 0),
           CKR_OK);
}

static CK_RV next_part(int enc, CK_ULONG n, CK_FLAGS flags)
{
    out_len = sizeof out;
    return (enc ? F->C_EncryptMessageNext : F->C_DecryptMessageNext)(S, &MP, sizeof MP, small, n, out, &out_len,
                                                                      flags);
}

static CK_RV message_next_huge(void)
{
    open_message(0);
    return next_part(0, HUGE + 5, 0);
}

static CK_RV message_next_wrap(void)       /* the last part's needed length wrapped to 10 */
{
    open_message(0);
    EXPECT("C_DecryptMessageNext 20", next_part(0, 20, 0), CKR_OK);
    return next_part(0, (CK_ULONG)-10, CKF_END_OF_MESSAGE);
}

static CK_RV decrypt_message_huge(void)
{
    EXPECT("C_MessageDecryptInit", F->C_MessageDecryptInit(S, &GCM_MSG, AES), CKR_OK);
    out_len = sizeof out;
    return F->C_DecryptMessage(S, &MP, sizeof MP, NULL, 0, small, HUGE + 5, out, &out_len);
}

static CK_RV encrypt_message_next_huge(void)   /* 20 + (2^64 - 8) */
{
    open_message(1);
    EXPECT("C_EncryptMessageNext 20", next_part(1, 20, 0), CKR_OK);
    return next_part(1, (CK_ULONG)-8, CKF_END_OF_MESSAGE);
}

/* C_Sign over 2^31 real bytes: raw ECDSA signs the leftmost bits of any length
 * (FIPS 186), so the signature must verify over the first 32 bytes alone */
static CK_RV sign_2g(void)
{
    size_t n = (size_t)1 << 31;
    CK_BYTE *big = calloc(n, 1);
    CK_RV rv;
    if (!big) {
        printf("FAIL calloc 2 GiB\n");
        exit(1);
    }
    memcpy(big, KEY, 32);
    EXPECT("C_SignInit", F->C_SignInit(S, &ECDSA, EC_PRIV), CKR_OK);
    out_len = sizeof out;
    rv = F->C_Sign(S, big, n, out, &out_len);
    free(big);
    if (rv == CKR_OK) {
        EXPECT("C_VerifyInit", F->C_VerifyInit(S, &ECDSA, EC_PUB), CKR_OK);
        EXPECT("signs the leftmost bits", F->C_Verify(S, (CK_BYTE_PTR)KEY, 32, out, out_len), CKR_OK);
    }
    return rv;
}

/* Stated lengths within what the engine's [limits] caps are checked against
 * (max_data_len, 64 MiB by default) but far beyond the real buffer: both paths
 * answer the engine's code for a length above the cap before reading anything
 * (issue 11: the native path read the AAD of a repeat init, the AAD of a message
 * and the input of a call up to GCM's own limits, 2^61 and 2^36 bytes). */
#define STATED ((CK_ULONG)1 << 30)               /* 1 GiB: above max_data_len, below GCM's caps */
static CK_BYTE IV2[12] = {2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static CK_BYTE IV3[12] = {3, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static CK_GCM_PARAMS GP_AAD = {IV2, 12, 96, small, STATED, 128};
static CK_GCM_MESSAGE_PARAMS MP3 = {IV3, 12, 0, CKG_NO_GENERATE, TAG, 128};

static CK_RV repeat_init_aad_stated(void)   /* the second init is the native path's own */
{
    CK_MECHANISM m = {CKM_AES_GCM, &GP_AAD, sizeof GP_AAD};
    EXPECT("C_EncryptInit", F->C_EncryptInit(S, &GCM, AES), CKR_OK);
    out_len = sizeof out;
    EXPECT("C_Encrypt", F->C_Encrypt(S, small, 16, out, &out_len), CKR_OK);
    return F->C_EncryptInit(S, &m, AES);
}

static CK_RV encrypt_message_aad_stated(void)
{
    EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(S, &GCM_MSG, AES), CKR_OK);
    out_len = sizeof out;
    return F->C_EncryptMessage(S, &MP3, sizeof MP3, small, STATED, small, 16, out, &out_len);
}

static CK_RV stated_input(int enc)          /* an output buffer big enough: only the input lies */
{
    CK_BYTE *big = malloc(STATED + 64);
    CK_ULONG big_len = STATED + 64;
    CK_RV rv;
    if (!big) {
        printf("FAIL malloc 1 GiB\n");
        exit(1);
    }
    EXPECT("C_*Init", (enc ? F->C_EncryptInit : F->C_DecryptInit)(S, &GCM, AES), CKR_OK);
    rv = (enc ? F->C_Encrypt : F->C_Decrypt)(S, small, STATED, big, &big_len);
    free(big);
    return rv;
}

static CK_RV encrypt_input_stated(void) { return stated_input(1); }
static CK_RV decrypt_input_stated(void) { return stated_input(0); }

static const struct { const char *name; CK_RV (*run)(void); } CASES[] = {
    {"repeat_init_aad_stated", repeat_init_aad_stated},
    {"encrypt_message_aad_stated", encrypt_message_aad_stated},
    {"encrypt_input_stated", encrypt_input_stated}, {"decrypt_input_stated", decrypt_input_stated},
    {"decrypt_update_huge", decrypt_update_huge}, {"decrypt_update_wrap", decrypt_update_wrap},
    {"decrypt_huge", decrypt_huge}, {"encrypt_wrap", encrypt_wrap},
    {"encrypt_update_huge", encrypt_update_huge}, {"sign_update_huge", sign_update_huge},
    {"sign_update_wrap", sign_update_wrap}, {"sign_huge", sign_huge},
    {"message_next_huge", message_next_huge}, {"message_next_wrap", message_next_wrap},
    {"decrypt_message_huge", decrypt_message_huge}, {"encrypt_message_next_huge", encrypt_message_next_huge},
    {"sign_2g", sign_2g},
};

static CK_RV (*chosen)(void);
static CK_RV answered;

static void *call(void *arg)
{
    (void)arg;
    answered = chosen();
    return NULL;
}

static void *close_all(void *arg)
{
    (void)arg;
    EXPECT("C_CloseSession from another thread", F->C_CloseSession(S), CKR_OK);
    EXPECT("C_Finalize from another thread", F->C_Finalize(NULL), CKR_OK);
    return NULL;
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot;
    pthread_t t;
    const char *name = argc == 5 ? argv[4] : "";
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        if (!strcmp(CASES[i].name, name))
            chosen = CASES[i].run;
    if (!chosen) {
        fprintf(stderr, "usage: %s MODULE LABEL USER_PIN CASE (unknown case '%s')\n", argv[0], name);
        return 2;
    }
    (void)out_hex;
    S = start(argc, argv, 5, "LABEL USER_PIN CASE", &slot);
    AES = make_key(S, KEY, 32, CK_FALSE);
    ec_pair();
    pthread_create(&t, NULL, call, NULL);
    pthread_join(t, NULL);
    printf("rv %s 0x%lx\n", name, answered);
    fflush(stdout);
    pthread_create(&t, NULL, close_all, NULL);
    pthread_join(t, NULL);
    printf("%d failures\n", failures);
    return failures;
}
