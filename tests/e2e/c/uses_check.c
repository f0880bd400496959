/* Counted native uses of governed keys (issue 12), run by tests/e2e/test_native_uses.py,
 * which reads the lines and the token's audit log.
 *
 *   uses_check MODULE TOKEN USER_PIN ROLE KEY N
 *
 * KEY is the label of a (governed) secret key, or "-": a session AES key made here.
 * Roles (each prints "done K" with the number of operations that returned CKR_OK):
 *   messages_close     C_MessageEncryptInit, N x C_EncryptMessage (64 B, random IV),
 *                      C_MessageEncryptFinal, C_CloseSession, then waits for "go" on
 *                      stdin (the test reads the audit), then C_Finalize
 *   messages_finalize  the same with no C_CloseSession: C_Finalize ends it all
 *   single_close       N x (C_EncryptInit + C_Encrypt), C_CloseSession, "go", C_Finalize
 *   hold               C_MessageEncryptInit, a C_EncryptMessage every ms for N ms, then
 *                      "held K" and the context stays open until "go", then C_Finalize
 *   decrypt_hold       one message encrypted (N ignored); "encrypted"; after "go" a
 *                      C_MessageDecryptInit and a C_DecryptMessage of it every 10 ms,
 *                      each "call msg NS RV" (CLOCK_MONOTONIC), "ready" after the first;
 *                      after a second "go", until two calls failed (or 3 s), then one
 *                      more C_MessageDecryptInit ("call init NS RV")
 *   audit_full         C_MessageEncryptInit and N messages; then no file of this process
 *                      may grow (RLIMIT_FSIZE: the audit's JSON-lines file cannot take
 *                      the next record), "limited NS"; a message every ms ("call msg NS RV")
 *                      until two failed (or 3 s), then a C_MessageEncryptInit ("call init") */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "session.h"

static CK_BYTE MSG[64] = "sixty-four bytes of plaintext, counted by the native fast path..";
static CK_MECHANISM GCM = {CKM_AES_GCM, NULL, 0};

static unsigned long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec;
}

static void wait_go(void)
{
    char line[16];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, "go", 2))
        printf("FAIL no go\n"), failures++;
}

/* the first object with this label and class CKO_SECRET_KEY */
static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s, const char *label)
{
    CK_ULONG cls = CKO_SECRET_KEY, n = 0;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE key = 0;
    if (F->C_FindObjectsInit(s, t, 2) != CKR_OK || F->C_FindObjects(s, &key, 1, &n) != CKR_OK || n != 1)
        printf("FAIL no key %s\n", label), failures++;
    F->C_FindObjectsFinal(s);
    return key;
}

/* one 64-byte message with a random IV; iv/tag written back */
static CK_RV message(CK_SESSION_HANDLE s, CK_BYTE *iv, CK_BYTE *tag, CK_BYTE *out)
{
    CK_GCM_MESSAGE_PARAMS p = {iv, 12, 0, CKG_GENERATE_RANDOM, tag, 128};
    CK_ULONG n = sizeof MSG;
    return F->C_EncryptMessage(s, &p, sizeof p, NULL, 0, MSG, sizeof MSG, out, &n);
}

static CK_RV single(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, unsigned long i)
{
    CK_BYTE iv[12] = {0}, out[80];
    CK_GCM_PARAMS p = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof p};
    CK_ULONG n = sizeof out;
    CK_RV rv;
    memcpy(iv + 4, &i, sizeof i);
    if ((rv = F->C_EncryptInit(s, &m, key)) != CKR_OK)
        return rv;
    return F->C_Encrypt(s, MSG, sizeof MSG, out, &n);
}

static void report(const char *what, CK_RV rv)
{
    printf("call %s %llu 0x%lx\n", what, now_ns(), rv);
    fflush(stdout);
}

static void decrypt_hold(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    CK_BYTE iv[12], tag[16], ct[64], plain[64];
    int failed = 0, second = 0;
    unsigned long long until = 0;
    EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(s, &GCM, key), CKR_OK);
    EXPECT("C_EncryptMessage", message(s, iv, tag, ct), CKR_OK);
    EXPECT("C_MessageEncryptFinal", F->C_MessageEncryptFinal(s), CKR_OK);
    printf("encrypted\n");
    fflush(stdout);
    wait_go();
    EXPECT("C_MessageDecryptInit", F->C_MessageDecryptInit(s, &GCM, key), CKR_OK);
    for (;;) {
        CK_GCM_MESSAGE_PARAMS p = {iv, 12, 0, CKG_NO_GENERATE, tag, 128};
        CK_ULONG n = sizeof plain;
        CK_RV rv = F->C_DecryptMessage(s, &p, sizeof p, NULL, 0, ct, sizeof ct, plain, &n);
        struct pollfd in = {0, POLLIN, 0};
        report("msg", rv);
        if (rv == CKR_OK && memcmp(plain, MSG, sizeof MSG))
            printf("FAIL plaintext\n"), failures++;
        if (!second) {
            printf("ready\n");
            fflush(stdout);
            second = 1;
        }
        if (second == 1 && poll(&in, 1, 0) == 1) {
            wait_go();
            second = 2;
            until = now_ns() + 3000000000ULL;
        }
        if (second == 2 && ((failed += rv != CKR_OK) >= 2 || now_ns() > until))
            break;
        usleep(10000);
    }
    report("init", F->C_MessageDecryptInit(s, &GCM, key));
}

static void audit_full(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, unsigned long n)
{
    CK_BYTE iv[12], tag[16], out[64];
    struct rlimit none = {0, RLIM_INFINITY};
    unsigned long long until;
    int failed = 0;
    EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(s, &GCM, key), CKR_OK);
    for (unsigned long i = 0; i < n; i++)
        if (message(s, iv, tag, out) != CKR_OK)
            printf("FAIL message %lu\n", i), failures++;
    signal(SIGXFSZ, SIG_IGN);                   /* a write past the limit: EFBIG */
    if (setrlimit(RLIMIT_FSIZE, &none))
        printf("FAIL setrlimit\n"), failures++;
    printf("limited %llu\n", now_ns());
    until = now_ns() + 3000000000ULL;
    while (failed < 2 && now_ns() < until) {
        CK_RV rv = message(s, iv, tag, out);
        report("msg", rv);
        failed += rv != CKR_OK;
        usleep(1000);
    }
    report("init", F->C_MessageEncryptInit(s, &GCM, key));
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s = start(argc, argv, 7, "TOKEN USER_PIN ROLE KEY N", &slot);
    const char *role = argv[4];
    static const CK_BYTE value[32] = "plain session key, not governed!";
    CK_OBJECT_HANDLE key = strcmp(argv[5], "-") ? find_key(s, argv[5]) : make_key(s, value, 32, CK_FALSE);
    unsigned long n = strtoul(argv[6], NULL, 10), ok = 0, i;
    CK_BYTE iv[12], tag[16], out[64];
    int close_it = !strcmp(role, "messages_close") || !strcmp(role, "single_close");
    if (!strncmp(role, "messages_", 9)) {
        EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(s, &GCM, key), CKR_OK);
        for (i = 0; i < n; i++)
            ok += message(s, iv, tag, out) == CKR_OK;
        EXPECT("C_MessageEncryptFinal", F->C_MessageEncryptFinal(s), CKR_OK);
    } else if (!strcmp(role, "single_close")) {
        for (i = 0; i < n; i++)
            ok += single(s, key, i + 1) == CKR_OK;
    } else if (!strcmp(role, "hold")) {
        unsigned long long end = now_ns() + n * 1000000ULL;
        EXPECT("C_MessageEncryptInit", F->C_MessageEncryptInit(s, &GCM, key), CKR_OK);
        while (now_ns() < end) {
            ok += message(s, iv, tag, out) == CKR_OK;
            usleep(1000);
        }
        printf("held %lu\n", ok);
        fflush(stdout);
        wait_go();
    } else if (!strcmp(role, "audit_full")) {
        audit_full(s, key, n);
    } else if (!strcmp(role, "decrypt_hold")) {
        decrypt_hold(s, key);
    } else {
        printf("FAIL role %s\n", role);
        return 2;
    }
    if (close_it)
        EXPECT("C_CloseSession", F->C_CloseSession(s), CKR_OK);
    printf("done %lu\n", ok);
    fflush(stdout);
    if (close_it)
        wait_go();
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    printf("%s\n", failures ? "FAILED" : "finalized");
    return failures != 0;
}
