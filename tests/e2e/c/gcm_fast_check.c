/* The native fast path through the C ABI: AES-GCM NIST vectors, the buffer and
 * operation rules, raw ECDSA, invalidation of armed operations, two threads on
 * two sessions, fork().
 *
 *   gcm_fast_check MODULE LABEL USER_PIN VECTORS
 *
 * Run once with the native fast path (default) and once with FERROHSM_NATIVE=0
 * (the Python engine): every "ok"/"out" line must be the same (test_gcm_fast.py).
 * VECTORS: lines "E key iv aad pt ct tag" / "D key iv aad ct tag pt-or-FAIL", hex,
 * "-" for empty. Prints "rate N" (init+encrypt of 64 B per second) last. */
#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "session.h"

static CK_ULONG unhex(const char *h, CK_BYTE *out)
{
    CK_ULONG n = 0;
    if (h[0] == '-')
        return 0;
    for (; h[0] && h[1]; h += 2)
        sscanf(h, "%2hhx", &out[n++]);
    return n;
}

static const CK_BYTE KEY[32] = "0123456789abcdef0123456789abcdef";
static CK_BYTE IV[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static CK_BYTE AAD[5] = "head";
static CK_GCM_PARAMS P = {IV, 12, 96, AAD, 4, 128};
static CK_MECHANISM M = {CKM_AES_GCM, &P, sizeof P};
static CK_BYTE MSG[40] = "forty bytes of plaintext, to be sealed..";

static void vectors(CK_SESSION_HANDLE s, const char *path)
{
    static char line[20000];
    static CK_BYTE key[32], iv[128], aad[128], pt[128], ct[128], tag[16], out[256];
    char kind, f[6][4096];
    int n = 0, bad = 0;
    FILE *fp = fopen(path, "r");
    while (fp && fgets(line, sizeof line, fp)) {
        CK_ULONG kl, il, al, pl, cl, tl, ol = sizeof out;
        CK_OBJECT_HANDLE k;
        CK_GCM_PARAMS p;
        CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof p};
        CK_RV rv;
        if (sscanf(line, "%c %s %s %s %s %s %s", &kind, f[0], f[1], f[2], f[3], f[4], f[5]) != 7)
            continue;
        kl = unhex(f[0], key), il = unhex(f[1], iv), al = unhex(f[2], aad);
        k = make_key(s, key, kl, CK_FALSE);
        p = (CK_GCM_PARAMS){iv, il, il * 8, aad, al, 0};
        if (kind == 'E') {
            pl = unhex(f[3], pt), cl = unhex(f[4], ct), tl = unhex(f[5], tag);
            p.ulTagBits = tl * 8;
            rv = F->C_EncryptInit(s, &m, k);
            if (rv == CKR_OK)
                rv = F->C_Encrypt(s, pt, pl, out, &ol);
            bad += rv != CKR_OK || ol != cl + tl || memcmp(out, ct, cl) || memcmp(out + cl, tag, tl);
        } else {
            int fail = !strcmp(f[5], "FAIL");
            cl = unhex(f[3], ct), tl = unhex(f[4], tag), pl = fail ? 0 : unhex(f[5], pt);
            memcpy(ct + cl, tag, tl);
            p.ulTagBits = tl * 8;
            memset(out, 0xA5, sizeof out);
            rv = F->C_DecryptInit(s, &m, k);
            if (rv == CKR_OK)
                rv = F->C_Decrypt(s, ct, cl + tl, out, &ol);
            if (fail)
                bad += rv != CKR_ENCRYPTED_DATA_INVALID || out[0] != 0xA5 || ol != sizeof out;
            else
                bad += rv != CKR_OK || ol != pl || memcmp(out, pt, pl);
        }
        F->C_DestroyObject(s, k);
        n++;
    }
    if (fp)
        fclose(fp);
    printf("%s NIST vectors: %d run, %d wrong\n", n > 500 && !bad ? "ok" : "FAIL", n, bad);
    failures += !(n > 500 && !bad);
}

static void rules(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    CK_BYTE one[64], parts[64], pt[64];
    CK_ULONG n = 0, a, b, c;
    memset(pt, 0xA5, sizeof pt);
    EXPECT("C_EncryptInit", F->C_EncryptInit(s, &M, key), CKR_OK);
    EXPECT("second C_EncryptInit", F->C_EncryptInit(s, &M, key), CKR_OPERATION_ACTIVE);
    EXPECT("C_Encrypt NULL pulLen", F->C_Encrypt(s, MSG, 40, one, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("ARGUMENTS_BAD ended it", F->C_Encrypt(s, MSG, 40, one, &n), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT("C_EncryptInit again", F->C_EncryptInit(s, &M, key), CKR_OK);
    EXPECT("C_Encrypt length query", F->C_Encrypt(s, MSG, 40, NULL, &n), CKR_OK);
    CHECK("length is data + tag", n == 56);
    n = 10;
    EXPECT("C_Encrypt too small", F->C_Encrypt(s, MSG, 40, one, &n), CKR_BUFFER_TOO_SMALL);
    CHECK("too small gives the length", n == 56);
    n = sizeof one;
    EXPECT("C_Encrypt", F->C_Encrypt(s, MSG, 40, one, &n), CKR_OK);
    out_hex("single", one, n);
    EXPECT("ended", F->C_Encrypt(s, MSG, 40, one, &n), CKR_OPERATION_NOT_INITIALIZED);

    EXPECT("C_EncryptInit multi-part", F->C_EncryptInit(s, &M, key), CKR_OK);
    a = 0;
    EXPECT("C_EncryptUpdate query", F->C_EncryptUpdate(s, MSG, 17, NULL, &a), CKR_OK);
    CHECK("update query gives 17", a == 17);
    a = sizeof parts;
    EXPECT("C_EncryptUpdate", F->C_EncryptUpdate(s, MSG, 17, parts, &a), CKR_OK);
    b = sizeof parts - a;
    EXPECT("C_EncryptUpdate 2", F->C_EncryptUpdate(s, MSG + 17, 23, parts + a, &b), CKR_OK);
    n = sizeof one;
    EXPECT("C_Encrypt during multi-part", F->C_Encrypt(s, MSG, 40, one, &n), CKR_OPERATION_ACTIVE);
    c = 4;
    EXPECT("C_EncryptFinal too small", F->C_EncryptFinal(s, parts + a + b, &c), CKR_BUFFER_TOO_SMALL);
    CHECK("final needs the tag", c == 16);
    EXPECT("C_EncryptFinal", F->C_EncryptFinal(s, parts + a + b, &c), CKR_OK);
    CHECK("multi-part = single-part", a + b + c == 56 && !memcmp(parts, one, 56));

    EXPECT("C_DecryptInit", F->C_DecryptInit(s, &M, key), CKR_OK);
    a = sizeof pt;
    EXPECT("C_DecryptUpdate", F->C_DecryptUpdate(s, one, 30, pt, &a), CKR_OK);
    CHECK("update releases nothing", a == 0 && pt[0] == 0xA5);
    a = sizeof pt;
    EXPECT("C_DecryptUpdate 2", F->C_DecryptUpdate(s, one + 30, 26, pt, &a), CKR_OK);
    a = 5;
    EXPECT("C_DecryptFinal too small", F->C_DecryptFinal(s, pt, &a), CKR_BUFFER_TOO_SMALL);
    CHECK("too small gives 40, releases nothing", a == 40 && pt[0] == 0xA5);
    EXPECT("C_DecryptFinal", F->C_DecryptFinal(s, pt, &a), CKR_OK);
    CHECK("round trip", a == 40 && !memcmp(pt, MSG, 40));

    memset(pt, 0xA5, sizeof pt);
    one[50] ^= 1;
    EXPECT("C_DecryptInit bad tag", F->C_DecryptInit(s, &M, key), CKR_OK);
    a = sizeof pt;
    EXPECT("bad tag", F->C_Decrypt(s, one, 56, pt, &a), CKR_ENCRYPTED_DATA_INVALID);
    CHECK("bad tag releases nothing", pt[0] == 0xA5 && a == sizeof pt);
    EXPECT("bad tag ends it", F->C_Decrypt(s, one, 56, pt, &a), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT("C_DecryptInit bad tag multi", F->C_DecryptInit(s, &M, key), CKR_OK);
    EXPECT("C_DecryptUpdate bad", F->C_DecryptUpdate(s, one, 56, pt, &a), CKR_OK);
    a = sizeof pt;
    EXPECT("bad tag at final", F->C_DecryptFinal(s, pt, &a), CKR_ENCRYPTED_DATA_INVALID);
    CHECK("final releases nothing", pt[0] == 0xA5);
    EXPECT("C_DecryptInit short", F->C_DecryptInit(s, &M, key), CKR_OK);
    EXPECT("shorter than the tag", F->C_Decrypt(s, one, 10, pt, &a), CKR_ENCRYPTED_DATA_LEN_RANGE);
    EXPECT("C_EncryptInit cancel", F->C_EncryptInit(s, &M, key), CKR_OK);
    EXPECT("C_SessionCancel", F->C_SessionCancel(s, CKF_ENCRYPT), CKR_OK);
    EXPECT("cancelled", F->C_EncryptFinal(s, one, &n), CKR_OPERATION_NOT_INITIALIZED);
    P.ulTagBits = 64;
    EXPECT("64-bit tag refused", F->C_EncryptInit(s, &M, key), CKR_MECHANISM_PARAM_INVALID);
    P.ulTagBits = 96;
    n = sizeof one;
    EXPECT("96-bit tag", F->C_EncryptInit(s, &M, key), CKR_OK);
    EXPECT("C_Encrypt 96", F->C_Encrypt(s, MSG, 40, one, &n), CKR_OK);
    out_hex("tag96", one, n);
    P.ulTagBits = 128;
}

static void invalidation(CK_SLOT_ID slot, CK_SESSION_HANDLE s, const char *pin)
{
    CK_BYTE out[64];
    CK_ULONG n = sizeof out;
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE label = {CKA_LABEL, "renamed", 7}, enc = {CKA_ENCRYPT, &no, 1};
    CK_SESSION_HANDLE other = open_rw(slot);
    CK_OBJECT_HANDLE key = make_key(s, KEY, 32, CK_TRUE);

    EXPECT("armed, then key renamed", F->C_EncryptInit(s, &M, key), CKR_OK);
    EXPECT("C_SetAttributeValue(CKA_LABEL)", F->C_SetAttributeValue(other, key, &label, 1), CKR_OK);
    EXPECT("changed key ends the op", F->C_Encrypt(s, MSG, 40, out, &n), CKR_KEY_HANDLE_INVALID);
    EXPECT("then not initialized", F->C_Encrypt(s, MSG, 40, out, &n), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT("C_EncryptInit again", F->C_EncryptInit(s, &M, key), CKR_OK);
    EXPECT("C_Encrypt again", F->C_Encrypt(s, MSG, 40, out, &n), CKR_OK);
    EXPECT("C_SetAttributeValue(CKA_ENCRYPT false)", F->C_SetAttributeValue(other, key, &enc, 1), CKR_OK);
    EXPECT("no stale grant", F->C_EncryptInit(s, &M, key), CKR_KEY_FUNCTION_NOT_PERMITTED);

    key = make_key(s, KEY, 32, CK_TRUE);
    EXPECT("armed, then key destroyed", F->C_DecryptInit(s, &M, key), CKR_OK);
    EXPECT("C_DestroyObject", F->C_DestroyObject(other, key), CKR_OK);
    EXPECT("destroyed key ends the op", F->C_Decrypt(s, out, 56, out, &n), CKR_KEY_HANDLE_INVALID);
    EXPECT("destroyed key refused", F->C_DecryptInit(s, &M, key), CKR_KEY_HANDLE_INVALID);

    key = make_key(s, KEY, 32, CK_TRUE);
    EXPECT("armed on a session, then it closes", F->C_EncryptInit(other, &M, key), CKR_OK);
    EXPECT("C_CloseSession", F->C_CloseSession(other), CKR_OK);
    EXPECT("closed session", F->C_Encrypt(other, MSG, 40, out, &n), CKR_SESSION_HANDLE_INVALID);

    EXPECT("armed, then logout", F->C_EncryptInit(s, &M, key), CKR_OK);
    EXPECT("C_Logout", F->C_Logout(s), CKR_OK);
    EXPECT("logout ends the op", F->C_Encrypt(s, MSG, 40, out, &n), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT("private key gone", F->C_EncryptInit(s, &M, key), CKR_KEY_HANDLE_INVALID);
    EXPECT("C_Login", F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
}

/* raw ECDSA: native after the engine's first init; signatures checked by C_Verify */
static void ecdsa(CK_SESSION_HANDLE s)
{
    static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, m = {CKM_ECDSA, NULL, 0};
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE pub[] = {{CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_EC_PARAMS, p256, sizeof p256}};
    CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}};
    CK_OBJECT_HANDLE hpub = 0, hpriv = 0;
    CK_BYTE hash[32] = "0123456789abcdef0123456789abcdef", sig[80];
    CK_ULONG n;
    EXPECT("EC P-256 key pair", F->C_GenerateKeyPair(s, &gen, pub, 3, priv, 3, &hpub, &hpriv), CKR_OK);
    for (int i = 0; i < 3; i++) {
        n = 0;
        EXPECT("C_SignInit ECDSA", F->C_SignInit(s, &m, hpriv), CKR_OK);
        EXPECT("second C_SignInit", F->C_SignInit(s, &m, hpriv), CKR_OPERATION_ACTIVE);
        EXPECT("C_Sign length query", F->C_Sign(s, hash, 32, NULL, &n), CKR_OK);
        CHECK("r || s is 64 bytes", n == 64);
        n = 10;
        EXPECT("C_Sign too small", F->C_Sign(s, hash, 32, sig, &n), CKR_BUFFER_TOO_SMALL);
        n = sizeof sig;
        EXPECT("C_Sign", F->C_Sign(s, hash, 32, sig, &n), CKR_OK);
        EXPECT("C_VerifyInit", F->C_VerifyInit(s, &m, hpub), CKR_OK);
        EXPECT("the signature verifies", F->C_Verify(s, hash, 32, sig, n), CKR_OK);
    }
    EXPECT("C_SignInit multi-part", F->C_SignInit(s, &m, hpriv), CKR_OK);
    EXPECT("C_SignUpdate", F->C_SignUpdate(s, hash, 20), CKR_OK);
    EXPECT("C_SignUpdate 2", F->C_SignUpdate(s, hash + 20, 12), CKR_OK);
    n = sizeof sig;
    EXPECT("C_Sign during multi-part", F->C_Sign(s, hash, 32, sig, &n), CKR_OPERATION_ACTIVE);
    EXPECT("C_SignFinal", F->C_SignFinal(s, sig, &n), CKR_OK);
    EXPECT("C_VerifyInit 2", F->C_VerifyInit(s, &m, hpub), CKR_OK);
    EXPECT("multi-part signature verifies", F->C_Verify(s, hash, 32, sig, n), CKR_OK);
    EXPECT("armed, then key destroyed", F->C_SignInit(s, &m, hpriv), CKR_OK);
    EXPECT("C_DestroyObject", F->C_DestroyObject(s, hpriv), CKR_OK);
    EXPECT("destroyed key ends the sign", F->C_Sign(s, hash, 32, sig, &n), CKR_KEY_HANDLE_INVALID);
    EXPECT("destroyed key refused", F->C_SignInit(s, &m, hpriv), CKR_KEY_HANDLE_INVALID);
}

struct worker { CK_SESSION_HANDLE s; CK_OBJECT_HANDLE key; const CK_BYTE *want; int bad, n; };

static void *work(void *arg)
{
    struct worker *w = arg;
    CK_BYTE out[64];
    for (int i = 0; i < w->n; i++) {
        CK_ULONG n = sizeof out;
        w->bad += F->C_EncryptInit(w->s, &M, w->key) != CKR_OK
            || F->C_Encrypt(w->s, MSG, 40, out, &n) != CKR_OK || n != 56 || memcmp(out, w->want, 56);
    }
    return NULL;
}

static void threads(CK_SLOT_ID slot, CK_OBJECT_HANDLE key)
{
    CK_BYTE want[64];
    CK_ULONG n = sizeof want;
    struct worker w[2];
    pthread_t t[2];
    struct timespec t0, t1;
    CK_SESSION_HANDLE s = open_rw(slot);
    F->C_EncryptInit(s, &M, key);
    F->C_Encrypt(s, MSG, 40, want, &n);
    for (int i = 0; i < 2; i++)
        w[i] = (struct worker){open_rw(slot), key, want, 0, 3000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, work, &w[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK("2 threads on 2 sessions agree", w[0].bad + w[1].bad == 0);
    printf("rate %.0f\n", 6000 / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9));
}

/* sessions 4096 apart share a native slot: the second stays on the engine's path, alike */
static void slot_clash(CK_SLOT_ID slot, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    static CK_SESSION_HANDLE opened[4100];
    CK_BYTE a[64], b[64];
    CK_ULONG na = sizeof a, nb = sizeof b;
    int n = 0;
    EXPECT("armed in the first session", F->C_EncryptInit(s, &M, key), CKR_OK);
    do
        opened[n] = open_rw(slot);
    while (opened[n++] % 4096 != s % 4096 && n < 4100);
    CHECK("a session sharing the slot", opened[n - 1] % 4096 == s % 4096);
    EXPECT("init in the clashing session", F->C_EncryptInit(opened[n - 1], &M, key), CKR_OK);
    EXPECT("encrypt in the clashing session", F->C_Encrypt(opened[n - 1], MSG, 40, b, &nb), CKR_OK);
    EXPECT("encrypt in the first session", F->C_Encrypt(s, MSG, 40, a, &na), CKR_OK);
    CHECK("both agree", na == nb && !memcmp(a, b, na));
    while (n)
        F->C_CloseSession(opened[--n]);
}

/* a forked child holds none of the parent's armed state; the parent's goes on */
static void forked(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    CK_BYTE out[64];
    CK_ULONG n = sizeof out;
    int status = -1;
    pid_t pid;
    EXPECT("armed, then fork()", F->C_EncryptInit(s, &M, key), CKR_OK);
    fflush(stdout);
    pid = fork();
    if (pid == 0)
        _exit(F->C_Encrypt(s, MSG, 40, out, &n) == CKR_CRYPTOKI_NOT_INITIALIZED ? 0 : 1);
    waitpid(pid, &status, 0);
    CHECK("the child gets CKR_CRYPTOKI_NOT_INITIALIZED", WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT("the parent's operation goes on", F->C_Encrypt(s, MSG, 40, out, &n), CKR_OK);
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE key;
    CK_BYTE out[64];
    CK_ULONG n = sizeof out;
    s = start(argc, argv, 5, "LABEL USER_PIN VECTORS", &slot);
    vectors(s, argv[4]);
    key = make_key(s, KEY, 32, CK_TRUE);
    rules(s, key);
    ecdsa(s);
    invalidation(slot, s, argv[3]);
    key = make_key(s, KEY, 32, CK_TRUE);      /* the logout gave private objects new handles */
    threads(slot, key);
    forked(s, key);
    slot_clash(slot, s, key);
    EXPECT("armed, then C_Finalize", F->C_EncryptInit(s, &M, key), CKR_OK);
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    EXPECT("after C_Finalize", F->C_Encrypt(s, MSG, 40, out, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
    printf("%d failures\n", failures);
    return failures;
}
