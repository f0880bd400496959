/* A PKCS#11 benchmark client: dlopen()s any module and prints one line per
 * figure, "figure NAME VALUE UNIT". Built and run by benchmarks/run.py.
 *
 *   bench MODULE LABEL PIN crypto SECONDS     AES-256-GCM (session and token keys,
 *                                             1 and 2 threads), C_EncryptMessage,
 *                                             ECDSA P-256, RSA-2048 SHA-256, Ed25519
 *   bench MODULE LABEL PIN populate N         make N token data objects "obj-<i>"
 *   bench MODULE LABEL PIN objects SECONDS    find by label, open+close session,
 *                                             create+destroy a token object
 *   bench MODULE LABEL PIN startup N          with N objects "obj-<i>" on the token: time of
 *                                             load + C_Initialize + open + C_Login less the PIN
 *                                             derivation (a second C_Login), peak RSS, and
 *                                             find-by-label p50/p99 over 2,000 lookups
 *   bench MODULE LABEL PIN login N            C_Login (user) + C_Logout N times on one session:
 *                                             the first C_Login, the median and the slowest
 *   bench MODULE LABEL PIN governed SECONDS   keys labelled "gov-ec" and "gov-aes" (governed keys,
 *                                             made by benchmarks/governed.py) beside plain ones
 *                                             made here: ECDSA P-256 sign on 1 and 8 threads,
 *                                             AES-GCM init+encrypt and C_EncryptMessage, 64 B
 *
 * Every AES-GCM op is C_EncryptInit (a fresh IV) + C_Encrypt, as a client of a
 * token must do per message. A figure the module cannot do prints "n/a". */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ferro_pkcs11.h"

static CK_FUNCTION_LIST *F;                  /* the 2.40 part, every module has it */
static CK_FUNCTION_LIST_3_0 *F3;             /* NULL without PKCS#11 3.0 */
static CK_SLOT_ID SLOT;
static double SECONDS = 1;
static CK_BBOOL YES = CK_TRUE, NO = CK_FALSE;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what, CK_RV rv)
{
    fprintf(stderr, "bench: %s failed: 0x%lx\n", what, rv);
    exit(1);
}

#define CK(call) do { CK_RV _rv = (call); if (_rv != CKR_OK) die(#call, _rv); } while (0)

static void load(const char *path, const char *label)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    CK_RV (*get_iface)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);
    CK_C_INITIALIZE_ARGS init = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    char padded[32];
    if (!h || !(get_list = (void *)dlsym(h, "C_GetFunctionList")))
        die(dlerror(), 0);
    CK(get_list(&F));
    get_iface = (void *)dlsym(h, "C_GetInterface");
    if (get_iface) {
        CK_INTERFACE *it;
        CK_VERSION v30 = {3, 0};
        if (get_iface((CK_UTF8CHAR_PTR)"PKCS 11", &v30, &it, 0) == CKR_OK)
            F3 = it->pFunctionList;
    }
    CK(F->C_Initialize(&init));                 /* threads: the module must lock */
    CK(F->C_GetSlotList(CK_TRUE, slots, &n));
    memset(padded, ' ', 32);
    memcpy(padded, label, strlen(label));
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO info;
        if (F->C_GetTokenInfo(slots[i], &info) == CKR_OK && !memcmp(info.label, padded, 32)) {
            SLOT = slots[i];
            return;
        }
    }
    die("finding the token", 0);
}

static CK_SESSION_HANDLE session(const char *pin)
{
    CK_SESSION_HANDLE s;
    CK(F->C_OpenSession(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    if (pin) {
        CK_RV rv = F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
            die("C_Login", rv);
    }
    return s;
}

/* --- timing --------------------------------------------------------------- */
typedef int (*op_fn)(CK_SESSION_HANDLE s, void *arg);     /* 0 = ok */

struct run { op_fn fn; CK_SESSION_HANDLE s; void *arg; double until; long ops; int bad; };

static void *loop(void *p)
{
    struct run *r = p;
    while (now() < r->until)
        for (int i = 0; i < 8; i++, r->ops++)
            r->bad |= r->fn(r->s, r->arg);
    return NULL;
}

/* ops per second of fn on `threads` sessions at once (each a thread) */
#define MAX_THREADS 8

static double rate(op_fn fn, CK_SESSION_HANDLE *s, void *arg, int threads)
{
    struct run r[MAX_THREADS];
    pthread_t t[MAX_THREADS];
    double t0 = now();
    long ops = 0;
    for (int i = 0; i < threads; i++) {
        r[i] = (struct run){fn, s[i], arg, t0 + SECONDS, 0, 0};
        pthread_create(&t[i], NULL, loop, &r[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        if (r[i].bad)
            return -1;
        ops += r[i].ops;
    }
    return ops / (now() - t0);
}

static void figure(const char *name, double value, const char *unit)
{
    if (value < 0)
        printf("figure %s n/a %s\n", name, unit);
    else
        printf("figure %s %.6g %s\n", name, value, unit);
    fflush(stdout);
}

/* --- AES-GCM ------------------------------------------------------------- */
struct gcm { CK_OBJECT_HANDLE key; CK_ULONG len; CK_BYTE *in; };

static int gcm_op(CK_SESSION_HANDLE s, void *arg)
{
    struct gcm *g = arg;
    static __thread CK_BYTE *out;
    static __thread unsigned long counter;
    CK_BYTE iv[12] = {0};
    CK_GCM_PARAMS p = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof p};
    CK_ULONG n = g->len + 16;
    if (!out) {
        out = malloc((1 << 20) + 16);
        counter = (unsigned long)pthread_self() << 20;   /* threads never share an IV */
    }
    counter++;
    memcpy(iv + 4, &counter, sizeof counter);
    return F->C_EncryptInit(s, &m, g->key) != CKR_OK || F->C_Encrypt(s, g->in, g->len, out, &n) != CKR_OK;
}

static int msg_op(CK_SESSION_HANDLE s, void *arg)
{
    struct gcm *g = arg;
    CK_BYTE iv[12] = {0}, tag[16], out[64];
    CK_GCM_MESSAGE_PARAMS p = {iv, 12, 32, CKG_GENERATE_COUNTER, tag, 128};
    CK_ULONG n = sizeof out;
    return F3->C_EncryptMessage(s, &p, sizeof p, NULL, 0, g->in, 64, out, &n) != CKR_OK;
}

static CK_OBJECT_HANDLE aes_key(CK_SESSION_HANDLE s, CK_BBOOL token)
{
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_ATTRIBUTE t[] = {{CKA_VALUE_LEN, &len, sizeof len}, {CKA_TOKEN, &token, 1}, {CKA_ENCRYPT, &YES, 1},
                        {CKA_SENSITIVE, &YES, 1}, {CKA_PRIVATE, &YES, 1}};
    CK_OBJECT_HANDLE k;
    CK(F->C_GenerateKey(s, &gen, t, 5, &k));
    return k;
}

static void gcm_figures(CK_SESSION_HANDLE *s)
{
    static const CK_ULONG sizes[] = {64, 4096, 1 << 20};
    static const char *names[] = {"64", "4k", "1m"};
    CK_BYTE *in = calloc(1, 1 << 20);
    char name[64];
    for (int token = 0; token < 2; token++) {
        struct gcm g = {aes_key(s[0], token ? CK_TRUE : CK_FALSE), 0, in};
        for (int threads = 1; threads <= 2; threads++) {
            if (threads == 2 && !token)
                continue;
            for (int i = 0; i < 3; i++) {
                double r;
                g.len = sizes[i];
                r = rate(gcm_op, s, &g, threads);
                snprintf(name, sizeof name, "gcm_%s_%s%s", names[i], token ? "token" : "session",
                         threads == 2 ? "_2t" : "");
                if (i == 2)
                    figure(name, r < 0 ? r : r * sizes[i] / 1e6, "MB/s");
                else
                    figure(name, r, "ops/s");
            }
        }
        if (!token) {
            CK_MECHANISM m = {CKM_AES_GCM, NULL, 0};
            int ok = F3 && F3->C_MessageEncryptInit(s[0], &m, g.key) == CKR_OK;
            figure("encrypt_message_64_session", ok ? rate(msg_op, s, &g, 1) : -1, "ops/s");
            if (ok)
                F3->C_MessageEncryptFinal(s[0]);
        }
    }
    free(in);
}

/* --- signatures ---------------------------------------------------------------- */
struct sig { CK_MECHANISM mech; CK_OBJECT_HANDLE key; CK_ULONG len; };

static int sign_op(CK_SESSION_HANDLE s, void *arg)
{
    struct sig *g = arg;
    CK_BYTE data[64] = "thirty-two bytes of message hash", out[1024];
    CK_ULONG n = sizeof out;
    return F->C_SignInit(s, &g->mech, g->key) != CKR_OK || F->C_Sign(s, data, g->len, out, &n) != CKR_OK;
}

static CK_OBJECT_HANDLE key_pair(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE type, CK_ATTRIBUTE *pub, CK_ULONG npub)
{
    CK_MECHANISM gen = {type, NULL, 0};
    CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &YES, 1}, {CKA_SIGN, &YES, 1}, {CKA_PRIVATE, &YES, 1},
                           {CKA_SENSITIVE, &YES, 1}};
    CK_OBJECT_HANDLE hpub, hpriv;
    if (F->C_GenerateKeyPair(s, &gen, pub, npub, priv, 4, &hpub, &hpriv) != CKR_OK)
        return 0;
    return hpriv;
}

static void sign_figures(CK_SESSION_HANDLE *s)
{
    static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static CK_BYTE ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
    CK_ULONG bits = 2048;
    CK_BYTE e[] = {1, 0, 1};
    CK_ATTRIBUTE ec[] = {{CKA_TOKEN, &YES, 1}, {CKA_VERIFY, &YES, 1}, {CKA_EC_PARAMS, p256, sizeof p256}};
    CK_ATTRIBUTE ed[] = {{CKA_TOKEN, &YES, 1}, {CKA_VERIFY, &YES, 1}, {CKA_EC_PARAMS, ed25519, sizeof ed25519}};
    CK_ATTRIBUTE rsa[] = {{CKA_TOKEN, &YES, 1}, {CKA_VERIFY, &YES, 1}, {CKA_MODULUS_BITS, &bits, sizeof bits},
                          {CKA_PUBLIC_EXPONENT, e, 3}};
    struct sig g = {{CKM_ECDSA, NULL, 0}, key_pair(s[0], CKM_EC_KEY_PAIR_GEN, ec, 3), 32};
    figure("ecdsa_p256_sign", g.key ? rate(sign_op, s, &g, 1) : -1, "ops/s");
    g = (struct sig){{CKM_SHA256_RSA_PKCS, NULL, 0}, key_pair(s[0], CKM_RSA_PKCS_KEY_PAIR_GEN, rsa, 4), 64};
    figure("rsa2048_sha256_sign", g.key ? rate(sign_op, s, &g, 1) : -1, "ops/s");
    g = (struct sig){{CKM_EDDSA, NULL, 0}, key_pair(s[0], CKM_EC_EDWARDS_KEY_PAIR_GEN, ed, 3), 64};
    figure("ed25519_sign", g.key ? rate(sign_op, s, &g, 1) : -1, "ops/s");
}

/* --- governed keys (benchmarks/governed.py) ------------------------------------- */
static CK_OBJECT_HANDLE labelled(CK_SESSION_HANDLE s, CK_ULONG cls, const char *label)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE h = 0;
    CK_ULONG n = 0;
    CK(F->C_FindObjectsInit(s, t, 2));
    CK(F->C_FindObjects(s, &h, 1, &n));
    CK(F->C_FindObjectsFinal(s));
    if (n != 1)
        die(label, 0);
    return h;
}

static void message_figure(const char *name, CK_SESSION_HANDLE *s, struct gcm *g)
{
    CK_MECHANISM m = {CKM_AES_GCM, NULL, 0};
    int ok = F3 && F3->C_MessageEncryptInit(s[0], &m, g->key) == CKR_OK;
    figure(name, ok ? rate(msg_op, s, g, 1) : -1, "ops/s");
    if (ok)
        F3->C_MessageEncryptFinal(s[0]);
}

static void governed_figures(CK_SESSION_HANDLE *s)
{
    static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_ATTRIBUTE ec[] = {{CKA_TOKEN, &YES, 1}, {CKA_VERIFY, &YES, 1}, {CKA_EC_PARAMS, p256, sizeof p256}};
    CK_BYTE *in = calloc(1, 64);
    struct sig g = {{CKM_ECDSA, NULL, 0}, labelled(s[0], CKO_PRIVATE_KEY, "gov-ec"), 32};
    struct sig plain = {{CKM_ECDSA, NULL, 0}, key_pair(s[0], CKM_EC_KEY_PAIR_GEN, ec, 3), 32};
    struct gcm gov = {labelled(s[0], CKO_SECRET_KEY, "gov-aes"), 64, in};
    struct gcm ungov = {aes_key(s[0], CK_TRUE), 64, in};
    figure("governed_ecdsa_p256_sign", rate(sign_op, s, &g, 1), "ops/s");
    figure("governed_ecdsa_p256_sign_8t", rate(sign_op, s, &g, 8), "ops/s");
    figure("plain_ecdsa_p256_sign", rate(sign_op, s, &plain, 1), "ops/s");
    figure("governed_gcm_64", rate(gcm_op, s, &gov, 1), "ops/s");
    figure("plain_gcm_64", rate(gcm_op, s, &ungov, 1), "ops/s");
    message_figure("governed_encrypt_message_64", s, &gov);
    message_figure("plain_encrypt_message_64", s, &ungov);
    free(in);
}

/* --- objects ----------------------------------------------------------------- */
static int create_data(CK_SESSION_HANDLE s, const char *label, CK_OBJECT_HANDLE *h)
{
    CK_ULONG cls = CKO_DATA;
    CK_BYTE value[32] = "a value of thirty-two bytes.....";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_TOKEN, &YES, 1}, {CKA_PRIVATE, &NO, 1},
                        {CKA_LABEL, (void *)label, strlen(label)}, {CKA_VALUE, value, sizeof value}};
    return F->C_CreateObject(s, t, 5, h) != CKR_OK;
}

static int find_op(CK_SESSION_HANDLE s, void *arg)
{
    static __thread unsigned i;
    long total = *(long *)arg;
    char label[32];
    CK_ATTRIBUTE t = {CKA_LABEL, label, 0};
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = 0;
    t.ulValueLen = snprintf(label, sizeof label, "obj-%ld", (long)((i++ * 7919UL) % total));
    return F->C_FindObjectsInit(s, &t, 1) != CKR_OK || F->C_FindObjects(s, h, 2, &n) != CKR_OK
        || F->C_FindObjectsFinal(s) != CKR_OK || n != 1;
}

static int open_close_op(CK_SESSION_HANDLE unused, void *arg)
{
    CK_SESSION_HANDLE s;
    return F->C_OpenSession(SLOT, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK || F->C_CloseSession(s) != CKR_OK;
}

static int create_destroy_op(CK_SESSION_HANDLE s, void *arg)
{
    CK_OBJECT_HANDLE h;
    return create_data(s, "scratch", &h) || F->C_DestroyObject(s, h) != CKR_OK;
}

static void object_figures(CK_SESSION_HANDLE *s)
{
    char name[64];
    long total = 0;
    CK_ULONG cls = CKO_DATA, n = 0;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof cls};
    CK_OBJECT_HANDLE *all = malloc(100000 * sizeof *all);
    CK(F->C_FindObjectsInit(s[0], &t, 1));
    CK(F->C_FindObjects(s[0], all, 100000, &n));
    CK(F->C_FindObjectsFinal(s[0]));
    free(all);
    total = (long)n;
    snprintf(name, sizeof name, "find_label_%ld", total);
    figure(name, 1e6 / rate(find_op, s, &total, 1), "us/lookup");
    snprintf(name, sizeof name, "open_close_session_%ld", total);
    figure(name, rate(open_close_op, s, NULL, 1), "ops/s");
    snprintf(name, sizeof name, "create_destroy_token_object_%ld", total);
    figure(name, rate(create_destroy_op, s, NULL, 1), "ops/s");
}

static long rss_kib(const char *field)
{
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, strlen(field)))
            kib = atol(line + strlen(field));
    if (f)
        fclose(f);
    return kib;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void startup_figures(const char *module, const char *label, const char *pin, long total)
{
    enum { LOOKUPS = 2000 };
    static double took[LOOKUPS];
    double t0 = now(), t_login, t_kdf;
    CK_SESSION_HANDLE s;
    load(module, label);
    s = session(pin);
    t_login = now() - t0;
    CK(F->C_Logout(s));
    t0 = now();
    CK(F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)));
    t_kdf = now() - t0;
    figure("startup_login_less_kdf", (t_login - t_kdf) * 1e3, "ms");
    figure("login_kdf", t_kdf * 1e3, "ms");
    figure("startup_rss", rss_kib("VmRSS:") / 1024.0, "MiB");
    for (int i = 0; i < LOOKUPS; i++) {
        t0 = now();
        if (find_op(s, &total))
            die("find by label", 0);
        took[i] = (now() - t0) * 1e6;
    }
    qsort(took, LOOKUPS, sizeof *took, by_value);
    figure("find_p50", took[LOOKUPS / 2], "us");
    figure("find_p99", took[LOOKUPS * 99 / 100], "us");
    figure("peak_rss", rss_kib("VmHWM:") / 1024.0, "MiB");
}

static void login_figures(const char *module, const char *label, const char *pin, long rounds)
{
    static double took[1000];
    CK_SESSION_HANDLE s;
    if (rounds < 1 || rounds > 1000)
        die("login rounds must be 1..1000", 0);
    load(module, label);
    s = session(NULL);
    for (long i = 0; i < rounds; i++) {
        double t0 = now();
        CK(F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)));
        took[i] = (now() - t0) * 1e3;
        CK(F->C_Logout(s));
    }
    figure("login_first", took[0], "ms");
    qsort(took, rounds, sizeof *took, by_value);
    figure("login_p50", took[rounds / 2], "ms");
    figure("login_max", took[rounds - 1], "ms");
}

int main(int argc, char **argv)
{
    CK_SESSION_HANDLE s[MAX_THREADS];
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODULE LABEL PIN crypto|populate|objects|startup|login|governed SECONDS|N\n",
                argv[0]);
        return 2;
    }
    if (!strcmp(argv[4], "login")) {
        login_figures(argv[1], argv[2], argv[3], atol(argv[5]));
        F->C_Finalize(NULL);
        return 0;
    }
    if (!strcmp(argv[4], "startup")) {
        startup_figures(argv[1], argv[2], argv[3], atol(argv[5]));
        F->C_Finalize(NULL);
        return 0;
    }
    load(argv[1], argv[2]);
    s[0] = session(argv[3]);
    for (int i = 1; i < MAX_THREADS; i++)
        s[i] = session(NULL);                 /* the login is per token */
    if (!strcmp(argv[4], "populate")) {
        char label[32];
        CK_OBJECT_HANDLE h;
        for (long i = 0; i < atol(argv[5]); i++) {
            snprintf(label, sizeof label, "obj-%ld", i);
            if (create_data(s[0], label, &h))
                die("C_CreateObject", 0);
        }
    } else {
        SECONDS = atof(argv[5]);
        if (!strcmp(argv[4], "crypto")) {
            gcm_figures(s);
            sign_figures(s);
        } else if (!strcmp(argv[4], "governed")) {
            governed_figures(s);
        } else {
            object_figures(s);
        }
    }
    F->C_Finalize(NULL);
    return 0;
}
