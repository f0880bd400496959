/* A PKCS#11 driver for tests/e2e/test_output_matrix.py: the built module in a C
 * host, driven by a script of commands on stdin, one answer line per command on
 * stdout, so that one process runs many cases.
 *
 *   output_drive MODULE LABEL USER_PIN < script
 *
 * Commands (numbers in hex, byte strings in hex, "-" for none):
 *   create TYPE:VALUE ...        C_CreateObject              -> "RV HANDLE"
 *   mechs                        C_GetMechanismList + Info   -> "0 MECH:FLAGS,..."
 *   init OP MECH PARAM KEY       C_<OP>Init (KEY "@N": the N-th object created) -> "RV"
 *   call OP FN PATTERN DATA [SIG]                             -> "RV OUT LOG"
 *   huge OP FN N                 FN with a 16-byte input stated as N bytes (C_Verify:
 *                                the signature), a 64-byte output  -> "RV"
 *   nul OP FN                    FN with a NULL pulLen (one, fin) or NULL data
 *                                of length 5 (upd, ver)       -> "RV"
 * OP: E encrypt, D decrypt, S sign, V verify, H digest. FN: one (C_Encrypt,
 * C_Sign, C_Digest, C_Verify with SIG), upd (C_*Update), fin (C_*Final; for V
 * DATA is the signature). PATTERN, for calls with output: plain (a big buffer),
 * null (a NULL-buffer query, then a buffer of exactly the answered length),
 * null2 (two queries, then that buffer), small (a buffer of 0 bytes, then one of
 * the length answered), query (the NULL-buffer query alone). LOG lists each earlier call's "rv:length", or "-".
 * PARAM: - | raw:BYTES | gcm:IV:AAD:TAGBITS | ctr:BITS:CB | ulong:N |
 *        oaep:HASH:MGF:LABEL | pss:HASH:MGF:SALT */
#include "session.h"

#define BIG (1 << 16)

static CK_OBJECT_HANDLE created[4096];    /* "@N" names the N-th object created */
static int n_created;

static CK_BYTE *unhex_new(const char *s, CK_ULONG *n)
{
    size_t len = strcmp(s, "-") ? strlen(s) / 2 : 0;
    CK_BYTE *p = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        sscanf(s + 2 * i, "%2hhx", &p[i]);
    *n = len;
    return p;
}

static void print_hex(const CK_BYTE *p, CK_ULONG n)
{
    if (!n)
        printf("-");
    for (CK_ULONG i = 0; i < n; i++)
        printf("%02x", p[i]);
}

/* the output-returning (or update) call FN of operation OP */
static CK_RV call(char op, const char *fn, CK_BYTE *in, CK_ULONG n, CK_BYTE *out, CK_ULONG *pl, CK_SESSION_HANDLE s)
{
    int one = !strcmp(fn, "one"), upd = !strcmp(fn, "upd");
    switch (op) {
    case 'E': return one ? F->C_Encrypt(s, in, n, out, pl) : upd ? F->C_EncryptUpdate(s, in, n, out, pl)
                                                               : F->C_EncryptFinal(s, out, pl);
    case 'D': return one ? F->C_Decrypt(s, in, n, out, pl) : upd ? F->C_DecryptUpdate(s, in, n, out, pl)
                                                               : F->C_DecryptFinal(s, out, pl);
    case 'S': return one ? F->C_Sign(s, in, n, out, pl) : upd ? F->C_SignUpdate(s, in, n) : F->C_SignFinal(s, out, pl);
    case 'H': return one ? F->C_Digest(s, in, n, out, pl) : upd ? F->C_DigestUpdate(s, in, n)
                                                              : F->C_DigestFinal(s, out, pl);
    case 'V': return upd ? F->C_VerifyUpdate(s, in, n) : F->C_VerifyFinal(s, in, n);
    }
    return CKR_GENERAL_ERROR;
}

static int has_output(char op, const char *fn)
{
    return op != 'V' && !(strcmp(fn, "upd") == 0 && (op == 'S' || op == 'H'));
}

static void cmd_call(CK_SESSION_HANDLE s, char op, const char *fn, const char *pat, const char *data,
                     const char *sig)
{
    CK_ULONG n, sn, len = 0, q;
    CK_BYTE *in = unhex_new(data, &n), *out = malloc(BIG), *exact;
    CK_RV rv;
    char log[128] = "-";
    if (op == 'V' && !strcmp(fn, "one")) {
        CK_BYTE *sg = unhex_new(sig, &sn);
        rv = F->C_Verify(s, in, n, sg, sn);
        free(sg);
    } else if (!has_output(op, fn)) {
        rv = call(op, fn, in, n, NULL, NULL, s);
    } else if (!strcmp(pat, "plain")) {
        len = BIG;
        rv = call(op, fn, in, n, out, &len, s);
    } else if (!strcmp(pat, "small")) {
        q = 0;
        rv = call(op, fn, in, n, out, &q, s);
        snprintf(log, sizeof log, "%lx:%lu", rv, q);
        len = q;
        if (rv == CKR_BUFFER_TOO_SMALL)
            rv = call(op, fn, in, n, out, &len, s);
    } else {
        int queries = strcmp(pat, "null2") ? 1 : 2, used = 0;
        log[0] = 0;
        rv = CKR_OK;
        for (int i = 0; i < queries && rv == CKR_OK; i++) {
            q = 0;
            rv = call(op, fn, in, n, NULL, &q, s);
            used += snprintf(log + used, sizeof log - used, "%s%lx:%lu", i ? "," : "", rv, q);
        }
        if (rv == CKR_OK && !strcmp(pat, "query")) {
            len = 0;                             /* the query alone */
        } else if (rv == CKR_OK) {
            len = q;
            exact = malloc(q ? q : 1);           /* what a client allocates from the answer */
            rv = call(op, fn, in, n, exact, &len, s);
            if (rv == CKR_OK && len <= q)
                memcpy(out, exact, len);
            free(exact);
        }
    }
    printf("%lx ", rv);
    print_hex(out, rv == CKR_OK && has_output(op, fn) ? len : 0);
    printf(" %s\n", log);
    free(in);
    free(out);
}

/* FN called with a 16-byte input buffer stated as N bytes (for C_Verify: the
 * signature), a 64-byte output: where a check can tell, an error, not a read */
static void cmd_huge(CK_SESSION_HANDLE s, char op, const char *fn, const char *n)
{
    CK_BYTE in[16] = {0}, out[64];
    CK_ULONG len = sizeof out, stated = strtoul(n, NULL, 16);
    CK_RV rv = op == 'V' && !strcmp(fn, "one") ? F->C_Verify(s, in, sizeof in, in, stated)
                                               : call(op, fn, in, stated, out, &len, s);
    printf("%lx\n", rv);
}

static void cmd_nul(CK_SESSION_HANDLE s, char op, const char *fn)
{
    CK_BYTE buf[64];
    CK_RV rv;
    if (!strcmp(fn, "upd") || (op == 'V' && !strcmp(fn, "one")))
        rv = op == 'V' && !strcmp(fn, "one") ? F->C_Verify(s, NULL, 5, buf, 64) : call(op, fn, NULL, 5, buf, NULL, s);
    else if (op == 'V')
        rv = F->C_VerifyFinal(s, NULL, 5);
    else
        rv = call(op, fn, buf, 5, buf, NULL, s);
    printf("%lx\n", rv);
}

/* the mechanism parameter spec -> m (storage in the static structs) */
static void param(const char *spec, CK_MECHANISM *m)
{
    static CK_GCM_PARAMS gcm;
    static CK_AES_CTR_PARAMS ctr;
    static CK_ULONG ul;
    static CK_RSA_PKCS_OAEP_PARAMS oaep;
    static CK_RSA_PKCS_PSS_PARAMS pss;
    static CK_BYTE *bytes[2];
    char a[512], b[512], c[64];
    CK_ULONG n;
    free(bytes[0]), free(bytes[1]);
    bytes[0] = bytes[1] = NULL;
    m->pParameter = NULL;
    m->ulParameterLen = 0;
    if (!strncmp(spec, "raw:", 4)) {
        m->pParameter = bytes[0] = unhex_new(spec + 4, &m->ulParameterLen);
    } else if (sscanf(spec, "gcm:%511[^:]:%511[^:]:%63s", a, b, c) == 3) {
        bytes[0] = unhex_new(a, &gcm.ulIvLen);
        bytes[1] = unhex_new(b, &gcm.ulAADLen);
        gcm.pIv = bytes[0], gcm.ulIvBits = gcm.ulIvLen * 8, gcm.pAAD = bytes[1];
        gcm.ulTagBits = strtoul(c, NULL, 16);
        m->pParameter = &gcm, m->ulParameterLen = sizeof gcm;
    } else if (sscanf(spec, "ctr:%63[^:]:%511s", c, a) == 2) {
        ctr.ulCounterBits = strtoul(c, NULL, 16);
        bytes[0] = unhex_new(a, &n);
        memcpy(ctr.cb, bytes[0], 16);
        m->pParameter = &ctr, m->ulParameterLen = sizeof ctr;
    } else if (sscanf(spec, "ulong:%63s", c) == 1) {
        ul = strtoul(c, NULL, 16);
        m->pParameter = &ul, m->ulParameterLen = sizeof ul;
    } else if (sscanf(spec, "oaep:%63[^:]:%511[^:]:%511s", c, a, b) == 3) {
        oaep.hashAlg = strtoul(c, NULL, 16), oaep.mgf = strtoul(a, NULL, 16), oaep.source = CKZ_DATA_SPECIFIED;
        bytes[0] = unhex_new(b, &oaep.ulSourceDataLen);
        oaep.pSourceData = oaep.ulSourceDataLen ? bytes[0] : NULL;
        m->pParameter = &oaep, m->ulParameterLen = sizeof oaep;
    } else if (sscanf(spec, "pss:%63[^:]:%511[^:]:%511s", c, a, b) == 3) {
        pss.hashAlg = strtoul(c, NULL, 16), pss.mgf = strtoul(a, NULL, 16), pss.sLen = strtoul(b, NULL, 16);
        m->pParameter = &pss, m->ulParameterLen = sizeof pss;
    }
}

static void cmd_init(CK_SESSION_HANDLE s, char op, const char *mech, const char *spec, const char *key)
{
    CK_MECHANISM m = {strtoul(mech, NULL, 16), NULL, 0};
    CK_OBJECT_HANDLE k = key[0] == '@' ? created[atoi(key + 1) % 4096] : strtoul(key, NULL, 16);
    CK_RV rv = CKR_GENERAL_ERROR;
    param(spec, &m);
    switch (op) {
    case 'E': rv = F->C_EncryptInit(s, &m, k); break;
    case 'D': rv = F->C_DecryptInit(s, &m, k); break;
    case 'S': rv = F->C_SignInit(s, &m, k); break;
    case 'V': rv = F->C_VerifyInit(s, &m, k); break;
    case 'H': rv = F->C_DigestInit(s, &m); break;
    }
    printf("%lx\n", rv);
}

static void cmd_create(CK_SESSION_HANDLE s, char *rest)
{
    CK_ATTRIBUTE t[32];
    CK_ULONG n = 0;
    CK_OBJECT_HANDLE h = 0;
    CK_RV rv;
    for (char *tok = strtok(rest, " \n"); tok && n < 32; tok = strtok(NULL, " \n")) {
        char *colon = strchr(tok, ':');
        if (!colon)
            continue;
        *colon = 0;
        t[n].type = strtoul(tok, NULL, 16);
        t[n].pValue = unhex_new(colon + 1, &t[n].ulValueLen);
        n++;
    }
    rv = F->C_CreateObject(s, t, n, &h);
    created[n_created++ % 4096] = h;
    printf("%lx %lx\n", rv, h);
    for (CK_ULONG i = 0; i < n; i++)
        free(t[i].pValue);
}

static void cmd_mechs(CK_SLOT_ID slot)
{
    CK_MECHANISM_TYPE list[512];
    CK_ULONG n = 512;
    CK_RV rv = F->C_GetMechanismList(slot, list, &n);
    printf("%lx ", rv);
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++) {
        CK_MECHANISM_INFO info;
        F->C_GetMechanismInfo(slot, list[i], &info);
        printf("%s%lx:%lx", i ? "," : "", list[i], info.flags);
    }
    printf("\n");
}

int main(int argc, char **argv)
{
    static char line[1 << 20];
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s = start(argc, argv, 4, "LABEL USER_PIN < script", &slot);
    if (failures)
        return 1;
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        char w[6][1 << 16];
        int k;
        if (!strncmp(line, "create ", 7)) {
            cmd_create(s, line + 7);
            continue;
        }
        for (int i = 0; i < 6; i++)
            strcpy(w[i], "-");
        k = sscanf(line, "%15s %65535s %65535s %65535s %65535s %65535s", w[0], w[1], w[2], w[3], w[4], w[5]);
        if (k < 1)
            continue;
        if (!strcmp(w[0], "mechs"))
            cmd_mechs(slot);
        else if (!strcmp(w[0], "init"))
            cmd_init(s, w[1][0], w[2], w[3], w[4]);
        else if (!strcmp(w[0], "call"))
            cmd_call(s, w[1][0], w[2], w[3], w[4], w[5]);
        else if (!strcmp(w[0], "huge"))
            cmd_huge(s, w[1][0], w[2], w[3]);
        else if (!strcmp(w[0], "nul"))
            cmd_nul(s, w[1][0], w[2]);
        else
            printf("? %s\n", w[0]);
        fflush(stdout);
    }
    F->C_Finalize(NULL);
    return 0;
}
