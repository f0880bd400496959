/* The two-call convention of message-based AES-GCM (C_EncryptMessage,
 * C_DecryptMessage, C_EncryptMessageNext, C_DecryptMessageNext), on both paths:
 * a NULL output buffer answers a sufficient length and changes nothing (no IV,
 * no part taken), CKR_BUFFER_TOO_SMALL keeps the state, the call with a buffer
 * works on its own input. Every call runs in each pattern - plain, NULL then
 * buffer, NULL twice then buffer, too small then right - over messages in 1, 2
 * and 3 parts of odd sizes; every result must equal the one-shot's byte for
 * byte, and a tampered tag must fail at the end in every pattern.
 *
 *   msg_twocall_check MODULE LABEL USER_PIN
 *
 * Run on both paths by test_native_limits.py, which compares the lines. */
#include "session.h"

static const CK_BYTE KEY[32] = "0123456789abcdef0123456789abcdef";
static CK_BYTE MSG[40] = "forty bytes of plaintext, to be sealed..";
static CK_BYTE AAD[4] = "head";
static CK_BYTE IV[12] = {'F', 'I', 'X', 'D', 9, 9, 9, 9, 9, 9, 9, 9};
static CK_BYTE TAG[16];
static CK_GCM_MESSAGE_PARAMS MP = {IV, 12, 0, CKG_NO_GENERATE, TAG, 128};
static CK_MECHANISM GCM = {CKM_AES_GCM, NULL, 0};
static CK_SESSION_HANDLE S;

enum { PLAIN, NULL_THEN, NULL_TWICE, SMALL_THEN, PATTERNS };
static const char *PATTERN[] = {"plain", "null-then-buffer", "null-twice", "small-then-right"};
enum { ENC, DEC, ENC_NEXT, DEC_NEXT };

struct call { int fn; CK_BYTE_PTR in; CK_ULONG n; CK_FLAGS flags; };

static CK_RV invoke(const struct call *c, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    switch (c->fn) {
    case ENC: return F->C_EncryptMessage(S, &MP, sizeof MP, AAD, 4, c->in, c->n, out, pul);
    case DEC: return F->C_DecryptMessage(S, &MP, sizeof MP, AAD, 4, c->in, c->n, out, pul);
    case ENC_NEXT: return F->C_EncryptMessageNext(S, &MP, sizeof MP, c->in, c->n, out, pul, c->flags);
    default: return F->C_DecryptMessageNext(S, &MP, sizeof MP, c->in, c->n, out, pul, c->flags);
    }
}

/* c in pattern `pat`, the real output into out (room for `cap`); *len gets its
 * length. Returns the code of the call with the buffer. */
static CK_RV in_pattern(const struct call *c, int pat, CK_BYTE_PTR out, CK_ULONG cap, CK_ULONG *len,
                        const char *what)
{
    char name[160];
    CK_ULONG asked = 0, again = 0, small = 0;
    CK_RV rv;
    if (pat == NULL_THEN || pat == NULL_TWICE) {
        snprintf(name, sizeof name, "%s %s: query", what, PATTERN[pat]);
        EXPECT(name, invoke(c, NULL, &asked), CKR_OK);
        if (pat == NULL_TWICE) {
            snprintf(name, sizeof name, "%s %s: query again", what, PATTERN[pat]);
            EXPECT(name, invoke(c, NULL, &again), CKR_OK);
            snprintf(name, sizeof name, "%s %s: the same answer", what, PATTERN[pat]);
            CHECK(name, again == asked);
        }
        printf("out %s-%s-asked %lu\n", what, PATTERN[pat], asked);
    }
    if (pat == SMALL_THEN && c->n) {
        rv = invoke(c, out, &small);               /* a 0-byte buffer */
        if (rv == CKR_OK) {                        /* this part outputs nothing: that was the call */
            *len = small;
            return rv;
        }
        snprintf(name, sizeof name, "%s %s: too small", what, PATTERN[pat]);
        CHECK(name, rv == CKR_BUFFER_TOO_SMALL && small > 0);
        asked = small;
    }
    *len = cap;
    rv = invoke(c, out, len);
    if (pat != PLAIN && rv == CKR_OK) {
        snprintf(name, sizeof name, "%s %s: the answer sufficed", what, PATTERN[pat]);
        CHECK(name, *len <= asked);
    }
    return rv;
}

static void seal_one(CK_BYTE *sealed)
{
    CK_ULONG n;
    char what[64];
    for (int pat = 0; pat < PATTERNS; pat++) {
        struct call c = {ENC, MSG, 40, 0};
        CK_BYTE ct[64];
        memset(TAG, 0, 16);
        snprintf(what, sizeof what, "C_EncryptMessage");
        EXPECT(what, in_pattern(&c, pat, ct, sizeof ct, &n, what), CKR_OK);
        if (pat == PLAIN) {
            memcpy(sealed, ct, 40);
            memcpy(sealed + 40, TAG, 16);
            out_hex("sealed", sealed, 56);
        }
        snprintf(what, sizeof what, "C_EncryptMessage %s = plain", PATTERN[pat]);
        CHECK(what, n == 40 && !memcmp(ct, sealed, 40) && !memcmp(TAG, sealed + 40, 16));
    }
}

static const CK_ULONG SPLITS[3][3] = {{40}, {17, 23}, {7, 13, 20}};

static void seal_parts(const CK_BYTE *sealed)
{
    char what[96];
    for (int split = 0; split < 3; split++)
        for (int pat = 0; pat < PATTERNS; pat++) {
            CK_BYTE ct[64];
            CK_ULONG at = 0, n;
            memset(TAG, 0, 16);
            EXPECT("C_EncryptMessageBegin", F->C_EncryptMessageBegin(S, &MP, sizeof MP, AAD, 4), CKR_OK);
            for (int i = 0; i <= split; i++) {
                struct call c = {ENC_NEXT, MSG + at, SPLITS[split][i], i == split ? CKF_END_OF_MESSAGE : 0};
                snprintf(what, sizeof what, "C_EncryptMessageNext %d/%d", i + 1, split + 1);
                EXPECT(what, in_pattern(&c, pat, ct + at, sizeof ct - at, &n, what), CKR_OK);
                at += n;
            }
            snprintf(what, sizeof what, "%d-part message %s = one-shot", split + 1, PATTERN[pat]);
            CHECK(what, at == 40 && !memcmp(ct, sealed, 40) && !memcmp(TAG, sealed + 40, 16));
        }
}

static void open_one(const CK_BYTE *sealed)
{
    char what[96];
    for (int tamper = 0; tamper < 2; tamper++)
        for (int pat = 0; pat < PATTERNS; pat++) {
            struct call c = {DEC, (CK_BYTE_PTR)sealed, 40, 0};
            CK_BYTE pt[64];
            CK_ULONG n;
            memcpy(TAG, sealed + 40, 16);
            TAG[5] ^= tamper;
            memset(pt, 0xA5, sizeof pt);
            snprintf(what, sizeof what, "C_DecryptMessage%s", tamper ? " tampered" : "");
            EXPECT(what, in_pattern(&c, pat, pt, sizeof pt, &n, what), tamper ? CKR_ENCRYPTED_DATA_INVALID : CKR_OK);
            snprintf(what, sizeof what, "C_DecryptMessage%s %s", tamper ? " tampered releases nothing" : " = plaintext",
                     PATTERN[pat]);
            CHECK(what, tamper ? pt[0] == 0xA5 : n == 40 && !memcmp(pt, MSG, 40));
        }
}

static void open_parts(const CK_BYTE *sealed)
{
    char what[96];
    for (int tamper = 0; tamper < 2; tamper++)
        for (int split = 0; split < 3; split++)
            for (int pat = 0; pat < PATTERNS; pat++) {
                CK_BYTE pt[64];
                CK_ULONG at = 0, got = 0, n;
                CK_RV rv = CKR_OK;
                memcpy(TAG, sealed + 40, 16);
                TAG[5] ^= tamper;
                memset(pt, 0xA5, sizeof pt);
                EXPECT("C_DecryptMessageBegin", F->C_DecryptMessageBegin(S, &MP, sizeof MP, AAD, 4), CKR_OK);
                for (int i = 0; i <= split; i++) {
                    int last = i == split;
                    struct call c = {DEC_NEXT, (CK_BYTE_PTR)sealed + at, SPLITS[split][i],
                                     last ? CKF_END_OF_MESSAGE : 0};
                    snprintf(what, sizeof what, "C_DecryptMessageNext %d/%d%s", i + 1, split + 1,
                             tamper ? " tampered" : "");
                    rv = in_pattern(&c, pat, pt + got, sizeof pt - got, &n, what);
                    EXPECT(what, rv, last && tamper ? CKR_ENCRYPTED_DATA_INVALID : CKR_OK);
                    at += SPLITS[split][i];
                    if (rv == CKR_OK)
                        got += n;
                }
                snprintf(what, sizeof what, "%d-part %s %s", split + 1,
                         tamper ? "tampered releases nothing" : "= plaintext", PATTERN[pat]);
                CHECK(what, tamper ? pt[0] == 0xA5 && got == 0 : got == 40 && !memcmp(pt, MSG, 40));
                n = sizeof pt;
                EXPECT("the message is closed",
                       F->C_DecryptMessageNext(S, &MP, sizeof MP, (CK_BYTE_PTR)sealed, 1, pt, &n, 0),
                       CKR_OPERATION_NOT_INITIALIZED);
            }
}

/* errors but CKR_BUFFER_TOO_SMALL: the message rules of both paths (aes_message.py):
 * a part refused for its arguments is not taken and the message stays open */
static void errors(const CK_BYTE *sealed)
{
    CK_BYTE pt[64];
    CK_ULONG n = sizeof pt;
    memcpy(TAG, sealed + 40, 16);
    EXPECT("C_DecryptMessageBegin", F->C_DecryptMessageBegin(S, &MP, sizeof MP, AAD, 4), CKR_OK);
    EXPECT("Next: NULL pulLen",
           F->C_DecryptMessageNext(S, &MP, sizeof MP, (CK_BYTE_PTR)sealed, 17, pt, NULL, 0), CKR_ARGUMENTS_BAD);
    EXPECT("Next: parameter size",
           F->C_DecryptMessageNext(S, &MP, 3, (CK_BYTE_PTR)sealed, 17, pt, &n, 0), CKR_MECHANISM_PARAM_INVALID);
    EXPECT("Next", F->C_DecryptMessageNext(S, &MP, sizeof MP, (CK_BYTE_PTR)sealed, 17, pt, &n, 0), CKR_OK);
    n = sizeof pt;
    EXPECT("last Next", F->C_DecryptMessageNext(S, &MP, sizeof MP, (CK_BYTE_PTR)sealed + 17, 23, pt, &n,
                                                CKF_END_OF_MESSAGE), CKR_OK);
    CHECK("refused parts were not taken", n == 40 && !memcmp(pt, MSG, 40));
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot;
    CK_OBJECT_HANDLE key;
    CK_BYTE sealed[56];
    S = start(argc, argv, 4, "LABEL USER_PIN", &slot);
    key = make_key(S, KEY, 32, CK_FALSE);
    EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(S, &GCM, key), CKR_OK);
    seal_one(sealed);
    seal_parts(sealed);
    EXPECT("C_MessageEncryptFinal", F->C_MessageEncryptFinal(S), CKR_OK);
    EXPECT("C_MessageDecryptInit", F->C_MessageDecryptInit(S, &GCM, key), CKR_OK);
    open_one(sealed);
    open_parts(sealed);
    errors(sealed);
    EXPECT("C_MessageDecryptFinal", F->C_MessageDecryptFinal(S), CKR_OK);
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    printf("%d failures\n", failures);
    return failures;
}
