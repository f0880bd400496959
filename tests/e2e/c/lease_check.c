/* The native fast path's lease (native/README.md, "The lease"), from two processes on one
 * token directory: one holds native state on a token key, the other destroys the key or
 * clears its CKA_ENCRYPT. Run by tests/e2e/test_native_lease.py, which reads the lines.
 *
 *   lease_check MODULE LABEL USER_PIN ROLE
 *
 * Holders (they make an AES token key, labelled "gcm", print "ready", then call every
 * TICK ms and print "call WHAT NS RV" for each call, NS on CLOCK_MONOTONIC):
 *   hold       session 1: C_MessageEncryptInit, then a C_EncryptMessage per tick;
 *              session 2: C_EncryptInit + C_Encrypt, then a (native) repeat C_EncryptInit
 *              left armed. After "go" on stdin: ticks until the message calls failed twice
 *              (or 3 s), then C_Encrypt and C_EncryptInit on session 2 and
 *              C_MessageEncryptInit on session 1, once each.
 *   hold_init  one session: C_EncryptInit + C_Encrypt per tick, until after "go" an init
 *              fails (or 3 s).
 *   renew      nobody changes the key: for 1.5 s, per tick, a C_EncryptMessage (counter
 *              IV) opened by C_DecryptMessage on another session, a C_EncryptInit +
 *              C_Encrypt, a C_SignInit + C_Sign (raw ECDSA) checked by C_Verify.
 * Changers (log in, find the key by its label, change it, print "changed NS"):
 *   destroy    C_DestroyObject
 *   unencrypt  C_SetAttributeValue CKA_ENCRYPT = false */
#define _GNU_SOURCE
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include "session.h"

static const CK_BYTE KEY[32] = "lease-key-lease-key-lease-key-32";
static CK_BYTE MSG[64] = "sixty-four bytes of plaintext for the lease check, sealed twice.";
static CK_BYTE HASH[32] = "0123456789abcdef0123456789abcdef";
static CK_MECHANISM GCM_MSG = {CKM_AES_GCM, NULL, 0}, ECDSA = {CKM_ECDSA, NULL, 0};

static unsigned long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec;
}

static CK_RV report(const char *what, CK_RV rv)
{
    printf("call %s %llu 0x%lx\n", what, now_ns(), rv);
    fflush(stdout);
    return rv;
}

/* waits up to ms for "go" on stdin; 1 once it came */
static int wait_go(int ms)
{
    static int seen;
    struct pollfd p = {0, POLLIN, 0};
    char line[16];
    if (seen) {
        usleep(ms * 1000);
        return 1;
    }
    if (poll(&p, 1, ms) == 1 && fgets(line, sizeof line, stdin) && !strncmp(line, "go", 2))
        seen = 1;
    return seen;
}

static CK_RV gcm_init(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    static unsigned long counter;
    static CK_BYTE iv[12];
    static CK_GCM_PARAMS p = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof p};
    counter++;
    memcpy(iv + 4, &counter, sizeof counter);
    return F->C_EncryptInit(s, &m, key);
}

static CK_RV gcm_encrypt(CK_SESSION_HANDLE s)
{
    CK_BYTE out[80];
    CK_ULONG n = sizeof out;
    return F->C_Encrypt(s, MSG, sizeof MSG, out, &n);
}

/* one C_EncryptMessage with a counter IV; the IV, ciphertext and tag into the arguments */
static CK_RV seal(CK_SESSION_HANDLE s, CK_BYTE *iv, CK_BYTE *ct, CK_BYTE *tag)
{
    CK_GCM_MESSAGE_PARAMS p = {iv, 12, 32, CKG_GENERATE_COUNTER, tag, 128};
    CK_ULONG n = sizeof MSG;
    memcpy(iv, "LEAS", 4);
    return F->C_EncryptMessage(s, &p, sizeof p, NULL, 0, MSG, sizeof MSG, ct, &n);
}

static void hold(CK_SESSION_HANDLE s1, CK_SESSION_HANDLE s2, CK_OBJECT_HANDLE key, int tick)
{
    CK_BYTE iv[12], ct[64], tag[16];
    unsigned long long go_at = 0;
    int failed = 0;
    EXPECT("C_MessageEncryptInit", report("msginit", F->C_MessageEncryptInit(s1, &GCM_MSG, key)), CKR_OK);
    EXPECT("first C_EncryptMessage", report("msg", seal(s1, iv, ct, tag)), CKR_OK);
    EXPECT("C_EncryptInit", report("init", gcm_init(s2, key)), CKR_OK);
    EXPECT("C_Encrypt", report("encrypt", gcm_encrypt(s2)), CKR_OK);
    EXPECT("repeat C_EncryptInit, left armed", report("init", gcm_init(s2, key)), CKR_OK);
    printf("ready\n");
    fflush(stdout);
    while (failed < 2 && (!go_at || now_ns() - go_at < 3000000000ULL)) {
        if (wait_go(tick) && !go_at)
            go_at = now_ns();
        if (report("msg", seal(s1, iv, ct, tag)) != CKR_OK)
            failed++;
    }
    report("encrypt", gcm_encrypt(s2));
    report("init", gcm_init(s2, key));
    report("msginit", F->C_MessageEncryptInit(s1, &GCM_MSG, key));
}

static void hold_init(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, int tick)
{
    unsigned long long go_at = 0;
    printf("ready\n");
    fflush(stdout);
    while (!go_at || now_ns() - go_at < 3000000000ULL) {
        if (wait_go(tick) && !go_at)
            go_at = now_ns();
        if (report("init", gcm_init(s, key)) != CKR_OK)
            break;
        report("encrypt", gcm_encrypt(s));
    }
}

static CK_OBJECT_HANDLE ec_pair(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *hpub)
{
    static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE pub[] = {{CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_EC_PARAMS, p256, sizeof p256}};
    CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}};
    CK_OBJECT_HANDLE hpriv = 0;
    EXPECT("EC P-256 key pair", F->C_GenerateKeyPair(s, &gen, pub, 3, priv, 3, hpub, &hpriv), CKR_OK);
    return hpriv;
}

static void renew(CK_SESSION_HANDLE s1, CK_SESSION_HANDLE s2, CK_OBJECT_HANDLE key, int tick)
{
    CK_BYTE iv[12], ct[64], tag[16], plain[64], sig[64];
    CK_OBJECT_HANDLE hpub, hpriv = ec_pair(s2, &hpub);
    unsigned long long end = now_ns() + 1500000000ULL;
    int calls = 0, bad = 0;
    EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(s1, &GCM_MSG, key), CKR_OK);
    EXPECT("C_MessageDecryptInit", F->C_MessageDecryptInit(s2, &GCM_MSG, key), CKR_OK);
    while (now_ns() < end) {
        CK_GCM_MESSAGE_PARAMS p = {iv, 12, 0, CKG_NO_GENERATE, tag, 128};
        CK_ULONG n = sizeof plain;
        bad += report("msg", seal(s1, iv, ct, tag)) != CKR_OK;
        bad += report("msgdec", F->C_DecryptMessage(s2, &p, sizeof p, NULL, 0, ct, sizeof ct, plain, &n)) != CKR_OK;
        bad += n != sizeof MSG || memcmp(plain, MSG, sizeof MSG);
        bad += report("init", gcm_init(s1, key)) != CKR_OK;
        bad += report("encrypt", gcm_encrypt(s1)) != CKR_OK;
        n = sizeof sig;
        bad += report("signinit", F->C_SignInit(s2, &ECDSA, hpriv)) != CKR_OK;
        bad += report("sign", F->C_Sign(s2, HASH, sizeof HASH, sig, &n)) != CKR_OK;
        bad += F->C_VerifyInit(s2, &ECDSA, hpub) != CKR_OK || F->C_Verify(s2, HASH, sizeof HASH, sig, n) != CKR_OK;
        calls++;
        usleep(tick * 1000);
    }
    out_hex("last sealed", ct, sizeof ct);
    printf("rounds %d\n", calls);
    CHECK("every call of 1.5 s of renewed leases succeeded", bad == 0);
}

static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s)
{
    CK_ATTRIBUTE t[] = {{CKA_LABEL, "gcm", 3}};
    CK_OBJECT_HANDLE key = 0;
    CK_ULONG n = 0;
    EXPECT("C_FindObjectsInit", F->C_FindObjectsInit(s, t, 1), CKR_OK);
    EXPECT("C_FindObjects", F->C_FindObjects(s, &key, 1, &n), CKR_OK);
    EXPECT("C_FindObjectsFinal", F->C_FindObjectsFinal(s), CKR_OK);
    CHECK("the key is found", n == 1);
    return key;
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s = start(argc, argv, 5, "LABEL USER_PIN hold|hold_init|renew|destroy|unencrypt", &slot);
    const char *role = argv[4];
    int tick = getenv("LEASE_TICK_MS") ? atoi(getenv("LEASE_TICK_MS")) : 50;
    if (!strcmp(role, "destroy") || !strcmp(role, "unencrypt")) {
        CK_OBJECT_HANDLE key = find_key(s);
        CK_BBOOL no = CK_FALSE;
        CK_ATTRIBUTE t[] = {{CKA_ENCRYPT, &no, 1}};
        if (!strcmp(role, "destroy"))
            EXPECT("C_DestroyObject", F->C_DestroyObject(s, key), CKR_OK);
        else
            EXPECT("C_SetAttributeValue CKA_ENCRYPT", F->C_SetAttributeValue(s, key, t, 1), CKR_OK);
        printf("changed %llu\n", now_ns());
    } else {
        CK_OBJECT_HANDLE key = make_key(s, KEY, sizeof KEY, CK_TRUE);   /* labelled "gcm" */
        CK_SESSION_HANDLE s2 = open_rw(slot);
        if (!strcmp(role, "hold"))
            hold(s, s2, key, tick);
        else if (!strcmp(role, "hold_init"))
            hold_init(s, key, tick);
        else
            renew(s, s2, key, tick);
    }
    F->C_Finalize(NULL);
    return failures ? 1 : 0;
}
