/* Bad input through the C ABI (issue 9, "Bad input gets the spec's code"): every
 * case answers the spec's code, never CKR_GENERAL_ERROR, never a crash or hang.
 * Lengths far larger than their buffers are stated on purpose: the module must
 * answer them from the length alone, without reading the buffer.
 *   bad_input_check MODULE LABEL USER_PIN SO_PIN */
#include "session.h"

#pragma GCC diagnostic ignored "-Wunused-function"

#define HUGE_LEN ((CK_ULONG)1 << 40)
#define PIN_2_31 ((CK_ULONG)1 << 31)

static CK_SESSION_HANDLE S;
static CK_BYTE small[64];

static CK_OBJECT_HANDLE gen_secret(CK_MECHANISM_TYPE m, CK_ULONG kt, CK_ULONG len)
{
    CK_MECHANISM mech = {m, NULL, 0};
    CK_ULONG cls = CKO_SECRET_KEY;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    /* every usage on one key: key separation allows that only on a key whose value is readable */
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt},
                        {CKA_VALUE_LEN, &len, sizeof len}, {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1},
                        {CKA_WRAP, &yes, 1}, {CKA_UNWRAP, &yes, 1}, {CKA_DERIVE, &yes, 1},
                        {CKA_EXTRACTABLE, &yes, 1}, {CKA_SENSITIVE, &no, 1}};
    CK_OBJECT_HANDLE h = 0;
    EXPECT("generate a secret key", F->C_GenerateKey(S, &mech, t, sizeof t / sizeof t[0], &h), CKR_OK);
    return h;
}

static void gen_pair(CK_MECHANISM_TYPE m, CK_ATTRIBUTE *pub, CK_ULONG npub, CK_OBJECT_HANDLE *hpub,
                     CK_OBJECT_HANDLE *hpriv)
{
    CK_MECHANISM mech = {m, NULL, 0};
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE priv[] = {{CKA_SIGN, &yes, 1}, {CKA_DECRYPT, &yes, 1}, {CKA_DERIVE, &yes, 1}};
    EXPECT("generate a key pair", F->C_GenerateKeyPair(S, &mech, pub, npub, priv, 3, hpub, hpriv), CKR_OK);
}

/* ---- nested templates: a wrap template that holds itself, and one too deep ---- */
static void templates(CK_OBJECT_HANDLE aes, CK_OBJECT_HANDLE base)
{
    CK_ATTRIBUTE self[1];
    CK_ATTRIBUTE chain[5][1];
    CK_ULONG cls = CKO_SECRET_KEY, kt = CKK_AES, len = 16;
    CK_BYTE value[16] = {1};
    CK_OBJECT_HANDLE h = 0, hpriv = 0;
    CK_BYTE wrapped[24] = {0};
    CK_BYTE ecp[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_KEY_DERIVATION_STRING_DATA sd = {small, 16};
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0}, ec = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0}, ed = {CKM_AES_ECB_ENCRYPT_DATA, &sd, sizeof sd};

    self[0].type = CKA_WRAP_TEMPLATE; self[0].pValue = self; self[0].ulValueLen = sizeof self;
    CK_ATTRIBUTE create[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt},
                             {CKA_VALUE, value, 16}, self[0]};
    CK_ATTRIBUTE keygen[] = {{CKA_VALUE_LEN, &len, sizeof len}, self[0]};
    CK_ATTRIBUTE ecpub[] = {{CKA_EC_PARAMS, ecp, sizeof ecp}, self[0]};
    CK_ATTRIBUTE unwrap[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt}, self[0]};

    EXPECT("self-referencing wrap template: C_CreateObject",
           F->C_CreateObject(S, create, 4, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("self-referencing wrap template: C_CopyObject",
           F->C_CopyObject(S, aes, self, 1, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("self-referencing wrap template: C_SetAttributeValue",
           F->C_SetAttributeValue(S, aes, self, 1), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("self-referencing wrap template: C_FindObjectsInit",
           F->C_FindObjectsInit(S, self, 1), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("self-referencing wrap template: C_GenerateKey",
           F->C_GenerateKey(S, &gen, keygen, 2, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("self-referencing wrap template: C_GenerateKeyPair (public)",
           F->C_GenerateKeyPair(S, &ec, ecpub, 2, NULL, 0, &h, &hpriv), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("self-referencing wrap template: C_GenerateKeyPair (private)",
           F->C_GenerateKeyPair(S, &ec, ecpub, 1, self, 1, &h, &hpriv), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("self-referencing wrap template: C_UnwrapKey",
           F->C_UnwrapKey(S, &kw, aes, wrapped, sizeof wrapped, unwrap, 3, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("self-referencing wrap template: C_DeriveKey",
           F->C_DeriveKey(S, &ed, base, self, 1, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    self[0].type = CKA_UNWRAP_TEMPLATE;
    EXPECT("self-referencing unwrap template: C_CreateObject",
           F->C_CreateObject(S, (create[3] = self[0], create), 4, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    self[0].type = CKA_DERIVE_TEMPLATE;
    EXPECT("self-referencing derive template: C_FindObjectsInit",
           F->C_FindObjectsInit(S, self, 1), CKR_ATTRIBUTE_VALUE_INVALID);

    for (int i = 0; i < 5; i++) {        /* five distinct arrays, each holding the next */
        chain[i][0].type = CKA_WRAP_TEMPLATE;
        chain[i][0].pValue = i < 4 ? chain[i + 1] : NULL;
        chain[i][0].ulValueLen = i < 4 ? sizeof chain[i + 1] : 0;
    }
    EXPECT("templates nested five deep: C_FindObjectsInit",
           F->C_FindObjectsInit(S, chain[0], 1), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("templates nested three deep are fine: C_FindObjectsInit",
           F->C_FindObjectsInit(S, chain[2], 1), CKR_OK);
    F->C_FindObjectsFinal(S);
}

/* ---- lengths far beyond their buffers, answered from the length alone ---- */
static void lengths(CK_OBJECT_HANDLE aes)
{
    CK_ULONG cls = CKO_DATA;
    CK_OBJECT_HANDLE h = 0;
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_ATTRIBUTE label[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, small, HUGE_LEN}};
    CK_ATTRIBUTE bigclass[] = {{CKA_CLASS, &cls, HUGE_LEN}};
    CK_ATTRIBUTE unknown[] = {{0x7fff0001UL, small, HUGE_LEN}};

    EXPECT("CKA_LABEL of 2^40 stated bytes", F->C_CreateObject(S, label, 2, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("CKA_CLASS of 2^40 stated bytes", F->C_CreateObject(S, bigclass, 1, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("unknown attribute of 2^40 stated bytes", F->C_CreateObject(S, unknown, 1, &h),
           CKR_ATTRIBUTE_TYPE_INVALID);
    EXPECT("C_FindObjectsInit, unknown attribute of 2^40 bytes", F->C_FindObjectsInit(S, unknown, 1), CKR_OK);
    F->C_FindObjectsFinal(S);
    EXPECT("template of 2^40 attributes", F->C_CreateObject(S, label, HUGE_LEN, &h), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetAttributeValue of 2^40 attributes", F->C_GetAttributeValue(S, aes, label, HUGE_LEN),
           CKR_ARGUMENTS_BAD);
    EXPECT("C_CreateObject on a bad session", F->C_CreateObject(0xdead, label, 2, &h), CKR_SESSION_HANDLE_INVALID);
    EXPECT("C_SeedRandom of 2^40 bytes", F->C_SeedRandom(S, small, HUGE_LEN), CKR_ARGUMENTS_BAD);
    EXPECT("C_SeedRandom on a bad session", F->C_SeedRandom(0xdead, small, HUGE_LEN), CKR_SESSION_HANDLE_INVALID);
    EXPECT("C_GenerateRandom of 2^40 bytes", F->C_GenerateRandom(S, small, HUGE_LEN), CKR_ARGUMENTS_BAD);
    EXPECT("C_UnwrapKey of 2^40 wrapped bytes",
           F->C_UnwrapKey(S, &kw, aes, small, HUGE_LEN, label, 1, &h), CKR_WRAPPED_KEY_LEN_RANGE);
    EXPECT("C_UnwrapKey NULL wrapped key", F->C_UnwrapKey(S, &kw, aes, NULL, 24, label, 1, &h), CKR_ARGUMENTS_BAD);
    EXPECT("C_CreateObject NULL template", F->C_CreateObject(S, NULL, 1, &h), CKR_ARGUMENTS_BAD);
    EXPECT("C_CreateObject NULL handle out", F->C_CreateObject(S, label, 1, NULL), CKR_ARGUMENTS_BAD);
}

/* ---- PINs: 2^31 stated bytes are CKR_PIN_LEN_RANGE at once ---- */
static void pins(CK_SLOT_ID slot)
{
    CK_BYTE label[32];
    memset(label, ' ', 32);
    EXPECT("C_Login PIN of 2^31 bytes", F->C_Login(S, CKU_USER, small, PIN_2_31), CKR_PIN_LEN_RANGE);
    EXPECT("C_Login SO PIN of 2^31 bytes", F->C_Login(S, CKU_SO, small, PIN_2_31), CKR_PIN_LEN_RANGE);
    EXPECT("C_LoginUser PIN of 2^31 bytes", F->C_LoginUser(S, CKU_USER, small, PIN_2_31, NULL, 0),
           CKR_PIN_LEN_RANGE);
    EXPECT("C_InitPIN PIN of 2^31 bytes", F->C_InitPIN(S, small, PIN_2_31), CKR_PIN_LEN_RANGE);
    EXPECT("C_SetPIN old PIN of 2^31 bytes", F->C_SetPIN(S, small, PIN_2_31, small, 8), CKR_PIN_LEN_RANGE);
    EXPECT("C_SetPIN new PIN of 2^31 bytes", F->C_SetPIN(S, small, 8, small, PIN_2_31), CKR_PIN_LEN_RANGE);
    EXPECT("C_InitToken SO PIN of 2^31 bytes", F->C_InitToken(slot, small, PIN_2_31, label), CKR_PIN_LEN_RANGE);
    EXPECT("C_Login PIN of 2^31 bytes, bad session", F->C_Login(0xdead, CKU_USER, small, PIN_2_31),
           CKR_SESSION_HANDLE_INVALID);
    EXPECT("C_Login NULL PIN", F->C_Login(S, CKU_USER, NULL, 6), CKR_ARGUMENTS_BAD);
}

/* ---- mechanism parameters at lengths 0, 1, sizeof-1, sizeof+1 and garbage ---- */
enum how { ENC, SIGN, DERIVE, GENKEY };

static CK_RV use(enum how how, CK_MECHANISM *m, CK_OBJECT_HANDLE key)
{
    CK_ULONG cls = CKO_SECRET_KEY, kt = CKK_GENERIC_SECRET, len = 16;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt},
                        {CKA_VALUE_LEN, &len, sizeof len}};
    CK_OBJECT_HANDLE h = 0;
    CK_RV rv;
    switch (how) {
    case ENC:
        if ((rv = F->C_EncryptInit(S, m, key)) == CKR_OK)
            F->C_SessionCancel(S, CKF_ENCRYPT);
        return rv;
    case SIGN:
        if ((rv = F->C_SignInit(S, m, key)) == CKR_OK)
            F->C_SessionCancel(S, CKF_SIGN);
        return rv;
    case DERIVE:
        return F->C_DeriveKey(S, m, key, t, 3, &h);
    default:
        return F->C_GenerateKey(S, m, t, 3, &h);
    }
}

static void param_case(const char *name, enum how how, CK_MECHANISM_TYPE type, CK_ULONG size,
                       CK_OBJECT_HANDLE key, int garbage_ok)
{
    static CK_BYTE buf[256];
    CK_ULONG lens[] = {0, 1, size - 1, size + 1};
    char what[160];
    for (int i = 0; i < 4; i++) {
        CK_MECHANISM m = {type, lens[i] ? buf : NULL, lens[i]};
        memset(buf, 0xa5, sizeof buf);
        snprintf(what, sizeof what, "%s parameter of %lu bytes", name, lens[i]);
        /* CKM_EDDSA's parameter is optional: none is pure Ed25519 */
        EXPECT(what, use(how, &m, key), type == CKM_EDDSA && !lens[i] ? CKR_OK : CKR_MECHANISM_PARAM_INVALID);
    }
    CK_MECHANISM m = {type, buf, size};
    memset(buf, 0xa5, sizeof buf);                 /* every field, length and pointer, garbage */
    snprintf(what, sizeof what, "%s parameter of garbage", name);
    if (garbage_ok) {
        CK_RV rv = use(how, &m, key);
        CHECK(what, rv != CKR_GENERAL_ERROR);
    } else {
        EXPECT(what, use(how, &m, key), CKR_MECHANISM_PARAM_INVALID);
    }
}

static void params(CK_OBJECT_HANDLE aes, CK_OBJECT_HANDLE generic)
{
    CK_OBJECT_HANDLE rsa_pub, rsa_priv, ec_pub, ec_priv, ed_pub, ed_priv;
    CK_ULONG bits = 2048;
    CK_BYTE e[] = {1, 0, 1};
    CK_BBOOL yes = CK_TRUE;
    CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BYTE ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
    CK_ATTRIBUTE rsa[] = {{CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_PUBLIC_EXPONENT, e, 3},
                          {CKA_ENCRYPT, &yes, 1}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE ec[] = {{CKA_EC_PARAMS, p256, sizeof p256}};
    CK_ATTRIBUTE ed[] = {{CKA_EC_PARAMS, ed25519, sizeof ed25519}};
    gen_pair(CKM_RSA_PKCS_KEY_PAIR_GEN, rsa, 4, &rsa_pub, &rsa_priv);
    gen_pair(CKM_EC_KEY_PAIR_GEN, ec, 1, &ec_pub, &ec_priv);
    gen_pair(CKM_EC_EDWARDS_KEY_PAIR_GEN, ed, 1, &ed_pub, &ed_priv);

    param_case("CKM_RSA_PKCS_OAEP", ENC, CKM_RSA_PKCS_OAEP, sizeof(CK_RSA_PKCS_OAEP_PARAMS), rsa_pub, 0);
    param_case("CKM_RSA_PKCS_PSS", SIGN, CKM_RSA_PKCS_PSS, sizeof(CK_RSA_PKCS_PSS_PARAMS), rsa_priv, 0);
    param_case("CKM_SHA256_RSA_PKCS_PSS", SIGN, CKM_SHA256_RSA_PKCS_PSS, sizeof(CK_RSA_PKCS_PSS_PARAMS), rsa_priv, 0);
    param_case("CKM_ECDH1_DERIVE", DERIVE, CKM_ECDH1_DERIVE, sizeof(CK_ECDH1_DERIVE_PARAMS), ec_priv, 0);
    param_case("CKM_ECDH1_COFACTOR_DERIVE", DERIVE, CKM_ECDH1_COFACTOR_DERIVE, sizeof(CK_ECDH1_DERIVE_PARAMS),
               ec_priv, 0);
    param_case("CKM_EDDSA", SIGN, CKM_EDDSA, sizeof(CK_EDDSA_PARAMS), ed_priv, 0);
    param_case("CKM_AES_GCM", ENC, CKM_AES_GCM, sizeof(CK_GCM_PARAMS), aes, 0);
    param_case("CKM_AES_CTR", ENC, CKM_AES_CTR, sizeof(CK_AES_CTR_PARAMS), aes, 0);
    param_case("CKM_AES_CBC IV", ENC, CKM_AES_CBC, 16, aes, 1);
    param_case("CKM_AES_CBC_PAD IV", ENC, CKM_AES_CBC_PAD, 16, aes, 1);
    param_case("CKM_AES_ECB_ENCRYPT_DATA", DERIVE, CKM_AES_ECB_ENCRYPT_DATA,
               sizeof(CK_KEY_DERIVATION_STRING_DATA), aes, 0);
    param_case("CKM_AES_CBC_ENCRYPT_DATA", DERIVE, CKM_AES_CBC_ENCRYPT_DATA,
               sizeof(CK_AES_CBC_ENCRYPT_DATA_PARAMS), aes, 0);
    param_case("CKM_HKDF_DERIVE", DERIVE, CKM_HKDF_DERIVE, sizeof(CK_HKDF_PARAMS), generic, 0);
    param_case("CKM_PKCS5_PBKD2", GENKEY, CKM_PKCS5_PBKD2, sizeof(CK_PKCS5_PBKD2_PARAMS2), 0, 0);
    param_case("CKM_SHA256_HMAC_GENERAL", SIGN, CKM_SHA256_HMAC_GENERAL, sizeof(CK_ULONG), generic, 1);
}

/* ---- PBKDF2: iteration cap, a 65,535-byte password, nothing longer ---- */
static void pbkdf2(void)
{
    static CK_BYTE password[65536];
    CK_BYTE salt[8] = "saltsalt";
    CK_PKCS5_PBKD2_PARAMS2 p = {CKZ_SALT_SPECIFIED, salt, 8, 0xffffffffUL, CKP_PKCS5_PBKD2_HMAC_SHA256,
                                NULL, 0, password, sizeof password};
    CK_MECHANISM m = {CKM_PKCS5_PBKD2, &p, sizeof p};
    memset(password, 'p', sizeof password);
    EXPECT("PBKDF2 with 2^32-1 iterations", use(GENKEY, &m, 0), CKR_MECHANISM_PARAM_INVALID);
    p.iterations = 0x7fffffffUL;
    EXPECT("PBKDF2 with 2^31-1 iterations", use(GENKEY, &m, 0), CKR_MECHANISM_PARAM_INVALID);
    p.iterations = 0;
    EXPECT("PBKDF2 with 0 iterations", use(GENKEY, &m, 0), CKR_MECHANISM_PARAM_INVALID);
    p.iterations = 2;
    p.ulPasswordLen = 65535;
    EXPECT("PBKD2_PARAMS2 with a 65,535-byte password", use(GENKEY, &m, 0), CKR_OK);
    p.ulPasswordLen = 65536;     /* could be a 2.x pointer: refused (pkcs11_shim/mechparams.py) */
    EXPECT("PBKD2_PARAMS2 with a 65,536-byte password", use(GENKEY, &m, 0), CKR_MECHANISM_PARAM_INVALID);
    p.ulPasswordLen = HUGE_LEN;
    EXPECT("PBKD2_PARAMS2 with a 2^40-byte password", use(GENKEY, &m, 0), CKR_MECHANISM_PARAM_INVALID);
    CK_ULONG len = 8;
    CK_PKCS5_PBKD2_PARAMS old = {CKZ_SALT_SPECIFIED, salt, 8, 2, CKP_PKCS5_PBKD2_HMAC_SHA256,
                                 NULL, 0, password, &len};
    CK_MECHANISM m2 = {CKM_PKCS5_PBKD2, &old, sizeof old};
    EXPECT("2.x PBKD2_PARAMS (a pointer to the length) is refused, never dereferenced",
           use(GENKEY, &m2, 0), CKR_MECHANISM_PARAM_INVALID);
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot;
    setvbuf(stdout, NULL, _IOLBF, 0);     /* every line reaches the report, even before a crash */
    S = start(argc, argv, 5, "LABEL USER_PIN SO_PIN", &slot);
    CK_OBJECT_HANDLE aes = gen_secret(CKM_AES_KEY_GEN, CKK_AES, 16);
    CK_OBJECT_HANDLE generic = gen_secret(CKM_GENERIC_SECRET_KEY_GEN, CKK_GENERIC_SECRET, 32);
    templates(aes, aes);
    lengths(aes);
    pins(slot);
    params(aes, generic);
    pbkdf2();
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    printf("%d failures\n", failures);
    return failures != 0;
}
