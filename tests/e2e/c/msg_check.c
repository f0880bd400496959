/* PKCS#11 3.0 message-based AES-GCM through the C ABI: C_MessageEncryptInit,
 * C_EncryptMessage, Begin/Next, C_MessageEncryptFinal and the decrypt twins;
 * IV generation (caller's, counter, random) written back to pIv; the counter
 * never repeats for a key, across C_Finalize too; invalidation.
 *
 *   msg_check MODULE LABEL USER_PIN
 *
 * Run on both paths by test_gcm_fast.py, which compares the "ok"/"out" lines. */
#include "session.h"

static const CK_BYTE KEY[32] = "0123456789abcdef0123456789abcdef";
static CK_BYTE MSG[40] = "forty bytes of plaintext, to be sealed..";
static CK_BYTE AAD[4] = "head";
static CK_MECHANISM GCM = {CKM_AES_GCM, NULL, 0};

/* the counter value of an IV with 4 fixed bytes: the low 32 bits of its 8-byte counter part
 * (the high ones XOR the reserved block's random salt) */
static unsigned long long counter_of(const CK_BYTE *iv)
{
    unsigned long long v = 0;
    for (int i = 8; i < 12; i++)
        v = v << 8 | iv[i];
    return v;
}

static CK_BYTE IV[12], TAG[16];
static CK_GCM_MESSAGE_PARAMS MP = {IV, 12, 0, CKG_NO_GENERATE, TAG, 128};

static void set_params(CK_ULONG fixed_bits, CK_ULONG generator)
{
    static const CK_BYTE base[12] = {'F', 'I', 'X', 'D', 9, 9, 9, 9, 9, 9, 9, 9};
    memcpy(IV, base, 12);
    MP = (CK_GCM_MESSAGE_PARAMS){IV, 12, fixed_bits, generator, TAG, 128};
}

static void encrypt(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_BYTE *sealed)
{
    CK_BYTE ct[64], single[64];
    CK_ULONG n = 0, m = sizeof single;
    CK_GCM_PARAMS p = {IV, 12, 96, AAD, 4, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &p, sizeof p};
    unsigned long long c1, c2;
    EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(s, &GCM, key), CKR_OK);
    EXPECT("second init", F->C_MessageEncryptInit(s, &GCM, key), CKR_OPERATION_ACTIVE);
    set_params(0, CKG_NO_GENERATE);
    EXPECT("NULL parameter", F->C_EncryptMessage(s, NULL, 0, AAD, 4, MSG, 40, ct, &n), CKR_ARGUMENTS_BAD);
    EXPECT("parameter size", F->C_EncryptMessage(s, &MP, 40, AAD, 4, MSG, 40, ct, &n),
           CKR_MECHANISM_PARAM_INVALID);
    EXPECT("length query", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, NULL, &n), CKR_OK);
    CHECK("length is the data's", n == 40);
    n = 3;
    EXPECT("too small", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &n), CKR_BUFFER_TOO_SMALL);
    n = sizeof ct;
    EXPECT("C_EncryptMessage", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &n), CKR_OK);
    memcpy(sealed, ct, 40);
    memcpy(sealed + 40, TAG, 16);
    out_hex("message", sealed, 56);
    EXPECT("C_EncryptInit same IV", F->C_EncryptInit(s, &gcm, key), CKR_OK);
    EXPECT("C_Encrypt same IV", F->C_Encrypt(s, MSG, 40, single, &m), CKR_OK);
    CHECK("message = single-part GCM", m == 56 && !memcmp(single, sealed, 56));

    set_params(32, CKG_GENERATE_COUNTER);
    n = sizeof ct;
    EXPECT("counter IV", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &n), CKR_OK);
    CHECK("fixed part kept", !memcmp(IV, "FIXD", 4));
    c1 = counter_of(IV);
    set_params(32, CKG_GENERATE_COUNTER);
    EXPECT("query generates no IV", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, NULL, &n), CKR_OK);
    CHECK("IV untouched by a query", IV[11] == 9);
    EXPECT("counter IV 2", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &n), CKR_OK);
    c2 = counter_of(IV);
    CHECK("counter moves by one", c2 == c1 + 1);
    set_params(96, CKG_GENERATE_COUNTER);
    EXPECT("no room for a counter", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &n),
           CKR_MECHANISM_PARAM_INVALID);
    set_params(0, CKG_GENERATE_RANDOM);
    EXPECT("random IV", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &n), CKR_OK);
    CHECK("random IV written back", memcmp(IV, "FIXD\x09\x09\x09\x09", 8));
    set_params(32, CKG_GENERATE_RANDOM);
    EXPECT("random part too short", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &n),
           CKR_MECHANISM_PARAM_INVALID);
    set_params(0, 7);
    EXPECT("unknown generator", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &n),
           CKR_MECHANISM_PARAM_INVALID);

    set_params(0, CKG_NO_GENERATE);
    EXPECT("C_EncryptMessageBegin", F->C_EncryptMessageBegin(s, &MP, sizeof MP, AAD, 4), CKR_OK);
    n = 0;
    EXPECT("Next query", F->C_EncryptMessageNext(s, &MP, sizeof MP, MSG, 25, NULL, &n, 0), CKR_OK);
    CHECK("Next query gives 25", n == 25);
    EXPECT("C_EncryptMessageNext", F->C_EncryptMessageNext(s, &MP, sizeof MP, MSG, 25, ct, &n, 0), CKR_OK);
    m = sizeof ct;
    EXPECT("one-shot while a message is open",
           F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &m), CKR_OPERATION_ACTIVE);
    m = sizeof ct - 25;
    memset(TAG, 0, 16);
    EXPECT("last C_EncryptMessageNext",
           F->C_EncryptMessageNext(s, &MP, sizeof MP, MSG + 25, 15, ct + 25, &m, CKF_END_OF_MESSAGE), CKR_OK);
    CHECK("Begin/Next = one-shot", n + m == 40 && !memcmp(ct, sealed, 40) && !memcmp(TAG, sealed + 40, 16));
    EXPECT("C_MessageEncryptFinal", F->C_MessageEncryptFinal(s), CKR_OK);
    EXPECT("after final", F->C_EncryptMessage(s, &MP, sizeof MP, AAD, 4, MSG, 40, ct, &n),
           CKR_OPERATION_NOT_INITIALIZED);
}

static void decrypt(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const CK_BYTE *sealed)
{
    CK_BYTE pt[64];
    CK_ULONG n = sizeof pt, m;
    EXPECT("C_MessageDecryptInit", F->C_MessageDecryptInit(s, &GCM, key), CKR_OK);
    set_params(0, CKG_NO_GENERATE);
    memcpy(TAG, sealed + 40, 16);
    EXPECT("C_DecryptMessage", F->C_DecryptMessage(s, &MP, sizeof MP, AAD, 4, (CK_BYTE_PTR)sealed, 40, pt, &n),
           CKR_OK);
    CHECK("plaintext back", n == 40 && !memcmp(pt, MSG, 40));
    TAG[3] ^= 1;
    memset(pt, 0xA5, sizeof pt);
    EXPECT("bad tag", F->C_DecryptMessage(s, &MP, sizeof MP, AAD, 4, (CK_BYTE_PTR)sealed, 40, pt, &n),
           CKR_ENCRYPTED_DATA_INVALID);
    CHECK("bad tag releases nothing", pt[0] == 0xA5);
    TAG[3] ^= 1;
    EXPECT("C_DecryptMessageBegin", F->C_DecryptMessageBegin(s, &MP, sizeof MP, AAD, 4), CKR_OK);
    EXPECT("Next length query",
           F->C_DecryptMessageNext(s, &MP, sizeof MP, (CK_BYTE_PTR)sealed, 30, NULL, &n, 0), CKR_OK);
    CHECK("a query answers the part's length and takes nothing", n == 30);
    EXPECT("Next", F->C_DecryptMessageNext(s, &MP, sizeof MP, (CK_BYTE_PTR)sealed, 30, pt, &n, 0), CKR_OK);
    CHECK("nothing released early", n == 0 && pt[0] == 0xA5);
    m = 10;
    EXPECT("last Next too small",
           F->C_DecryptMessageNext(s, &MP, sizeof MP, (CK_BYTE_PTR)sealed + 30, 10, pt, &m, CKF_END_OF_MESSAGE),
           CKR_BUFFER_TOO_SMALL);
    CHECK("needs 40, releases nothing", m == 40 && pt[0] == 0xA5);
    EXPECT("last Next",
           F->C_DecryptMessageNext(s, &MP, sizeof MP, (CK_BYTE_PTR)sealed + 30, 10, pt, &m, CKF_END_OF_MESSAGE),
           CKR_OK);
    CHECK("Begin/Next plaintext", m == 40 && !memcmp(pt, MSG, 40));
    EXPECT("C_DecryptMessageBegin bad", F->C_DecryptMessageBegin(s, &MP, sizeof MP, NULL, 0), CKR_OK);
    m = sizeof pt;
    memset(pt, 0xA5, sizeof pt);
    EXPECT("bad tag (no AAD)",
           F->C_DecryptMessageNext(s, &MP, sizeof MP, (CK_BYTE_PTR)sealed, 40, pt, &m, CKF_END_OF_MESSAGE),
           CKR_ENCRYPTED_DATA_INVALID);
    CHECK("bad tag at Next releases nothing", pt[0] == 0xA5);
    EXPECT("message closed", F->C_DecryptMessageNext(s, &MP, sizeof MP, (CK_BYTE_PTR)sealed, 1, pt, &m, 0),
           CKR_OPERATION_NOT_INITIALIZED);
    EXPECT("C_SessionCancel(CKF_MESSAGE_DECRYPT)", F->C_SessionCancel(s, CKF_MESSAGE_DECRYPT), CKR_OK);
    EXPECT("cancelled", F->C_MessageDecryptFinal(s), CKR_OPERATION_NOT_INITIALIZED);
}

static CK_CHAR COPY_LABEL[] = "msg copy";

/* a new C_Initialize (a new process would do the same) continues past the counter
 * of the key's lineage: here its token copy, made before the key was destroyed */
static unsigned long long counter_after_restart(CK_SLOT_ID *slot, CK_SESSION_HANDLE *s, const char *label,
                                                const char *pin, CK_OBJECT_HANDLE *key)
{
    CK_BYTE ct[64];
    CK_ULONG n = sizeof ct, found = 0;
    CK_ATTRIBUTE by_label = {CKA_LABEL, COPY_LABEL, sizeof COPY_LABEL - 1};
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    EXPECT("C_Initialize again", F->C_Initialize(NULL), CKR_OK);
    *slot = find_slot(label);
    *s = open_rw(*slot);
    EXPECT("C_Login", F->C_Login(*s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
    EXPECT("C_FindObjectsInit", F->C_FindObjectsInit(*s, &by_label, 1), CKR_OK);
    EXPECT("C_FindObjects", F->C_FindObjects(*s, key, 1, &found), CKR_OK);
    EXPECT("C_FindObjectsFinal", F->C_FindObjectsFinal(*s), CKR_OK);
    CHECK("the copy is there", found == 1);
    EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(*s, &GCM, *key), CKR_OK);
    set_params(32, CKG_GENERATE);
    EXPECT("counter IV after restart", F->C_EncryptMessage(*s, &MP, sizeof MP, NULL, 0, MSG, 40, ct, &n), CKR_OK);
    return counter_of(IV);
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s, other;
    CK_OBJECT_HANDLE key;
    CK_BYTE sealed[56], ct[64];
    CK_ULONG n = sizeof ct;
    unsigned long long before, after;
    s = start(argc, argv, 4, "LABEL USER_PIN", &slot);
    key = make_key(s, KEY, 32, CK_TRUE);
    encrypt(s, key, sealed);
    decrypt(s, key, sealed);
    before = counter_of(IV);          /* the last generated one was random: take a fresh counter */
    EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(s, &GCM, key), CKR_OK);
    set_params(32, CKG_GENERATE_COUNTER);
    EXPECT("counter IV", F->C_EncryptMessage(s, &MP, sizeof MP, NULL, 0, MSG, 40, ct, &n), CKR_OK);
    before = counter_of(IV);
    other = open_rw(slot);
    {
        CK_ATTRIBUTE label = {CKA_LABEL, COPY_LABEL, sizeof COPY_LABEL - 1};
        CK_OBJECT_HANDLE copy;
        EXPECT("C_CopyObject (shares the counter)", F->C_CopyObject(other, key, &label, 1, &copy), CKR_OK);
    }
    EXPECT("C_DestroyObject while armed", F->C_DestroyObject(other, key), CKR_OK);
    EXPECT("destroyed key ends it", F->C_EncryptMessage(s, &MP, sizeof MP, NULL, 0, MSG, 40, ct, &n),
           CKR_KEY_HANDLE_INVALID);
    after = counter_after_restart(&slot, &s, argv[2], argv[3], &key);
    CHECK("a counter value is never handed out twice", after > before);
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    printf("%d failures\n", failures);
    return failures;
}
