/* PKCS#11 3.0 message-based AES-GCM on an armed session: C_EncryptMessage,
 * C_EncryptMessageBegin/Next, C_MessageEncryptFinal and the decrypt twins, with
 * CK_GCM_MESSAGE_PARAMS per message. The rules are the engine's (provider/
 * mechanisms/aes.py, GcmMessages), kept the same here:
 *   - parameter: NULL -> CKR_ARGUMENTS_BAD; not a CK_GCM_MESSAGE_PARAMS, IV not
 *     8..128 bytes, tag not 96..128 bits in steps of 8, NULL pIv/pTag ->
 *     CKR_MECHANISM_PARAM_INVALID;
 *   - IV generation (encryption): CKG_NO_GENERATE takes the caller's IV;
 *     CKG_GENERATE / CKG_GENERATE_COUNTER keep the first ulIvFixedBits (a whole
 *     number of bytes) and put a per-key counter, big-endian, in the >= 4 bytes
 *     after them; CKG_GENERATE_RANDOM fills >= 12 bytes after them from the
 *     RNG. The IV used is written back to pIv;
 *   - counter values come in blocks the engine reserves durably for the key
 *     (ferro_py_reserve_iv): a value is never handed out twice; each block has a
 *     random salt that a counter part of >= 8 bytes XORs into its last 8 bytes
 *     (bits 32..63: aes_message.counter_field), so copies of a token differ;
 *   - a length query (NULL output) changes nothing and generates no IV; it
 *     answers the input's length, also for a non-final C_DecryptMessageNext
 *     (which releases nothing: the call with a buffer takes the part and
 *     answers 0); CKR_BUFFER_TOO_SMALL keeps everything as it was;
 *   - lengths are checked before any input is read: text beyond SP 800-38D's
 *     FERRO_GCM_MAX per message is CKR_DATA_LEN_RANGE (encrypting) or
 *     CKR_ENCRYPTED_DATA_LEN_RANGE (decrypting), AAD beyond FERRO_GCM_AAD_MAX
 *     CKR_ARGUMENTS_BAD; the part is not taken;
 *   - an error on one message leaves the message-based operation active (and
 *     an open message open); a message that fails its tag check is closed. */
#include <string.h>
#include <openssl/rand.h>

#include "ferro_native.h"

#pragma GCC visibility push(hidden)      /* only the C_* entry points are exported */

static CK_RV params(CK_VOID_PTR param, CK_ULONG len, CK_GCM_MESSAGE_PARAMS **out)
{
    CK_GCM_MESSAGE_PARAMS *p = param;
    if (!param)
        return CKR_ARGUMENTS_BAD;
    if (len != sizeof *p || !p->pIv || p->ulIvLen < 8 || p->ulIvLen > 128 || !p->pTag
        || p->ulTagBits < 96 || p->ulTagBits > 128 || p->ulTagBits % 8)
        return CKR_MECHANISM_PARAM_INVALID;
    *out = p;
    return CKR_OK;
}

/* The next counter value for the armed MENC op of s. It may let go of the slot
 * lock to ask the engine for more values; *psl is then the retaken lock, or
 * NULL (nothing locked) when the session went away meanwhile. */
static CK_RV next_counter(CK_SESSION_HANDLE s, struct ferro_slot **psl, unsigned long long *value,
                          unsigned long long *salt)
{
    struct ferro_slot *sl = *psl;
    struct ferro_op *op = &sl->op[FERRO_MENC];
    while (op->ctr_next == op->ctr_end) {
        CK_OBJECT_HANDLE key = sl->cache[FERRO_MENC].key;
        unsigned long long start = 0, count = 0, fresh_salt = 0;
        CK_RV rv;
        ferro_unlock(sl);
        rv = ferro_py_reserve_iv(s, key, &start, &count, &fresh_salt);
        *psl = sl = ferro_lock_owned(s);
        if (!sl)
            return CKR_SESSION_HANDLE_INVALID;
        op = &sl->op[FERRO_MENC];
        if (!op->armed || sl->cache[FERRO_MENC].key != key)
            return CKR_OPERATION_NOT_INITIALIZED;
        if (rv != CKR_OK)
            return rv;
        if (!count)
            return CKR_GENERAL_ERROR;
        if (op->ctr_next == op->ctr_end) {
            op->ctr_next = start;
            op->ctr_salt = fresh_salt;
            if (__builtin_add_overflow(start, count, &op->ctr_end))
                op->ctr_end = ~0ULL;              /* never wrap back to values handed out */
        }
    }
    *value = op->ctr_next++;
    *salt = op->ctr_salt;
    return CKR_OK;
}

static CK_RV make_iv(CK_SESSION_HANDLE s, struct ferro_slot **psl, CK_GCM_MESSAGE_PARAMS *p)
{
    size_t fixed = p->ulIvFixedBits / 8, gen;
    unsigned long long value, salt;
    CK_RV rv;
    if (p->ivGenerator == CKG_NO_GENERATE)
        return CKR_OK;
    if (p->ulIvFixedBits % 8 || fixed > p->ulIvLen)
        return CKR_MECHANISM_PARAM_INVALID;
    gen = p->ulIvLen - fixed;
    if (p->ivGenerator == CKG_GENERATE_RANDOM) {
        if (gen < 12)
            return CKR_MECHANISM_PARAM_INVALID;
        return RAND_bytes(p->pIv + fixed, (int)gen) == 1 ? CKR_OK : CKR_GENERAL_ERROR;
    }
    if (p->ivGenerator != CKG_GENERATE && p->ivGenerator != CKG_GENERATE_COUNTER)
        return CKR_MECHANISM_PARAM_INVALID;
    if (gen < 4)
        return CKR_MECHANISM_PARAM_INVALID;
    if ((rv = next_counter(s, psl, &value, &salt)) != CKR_OK)
        return rv;
    if (gen < 8 && value >> (8 * gen))
        return CKR_MECHANISM_PARAM_INVALID;       /* this IV layout's counter space is used up */
    if (gen >= 8)
        value ^= salt;                            /* as aes_message.counter_field */
    memset(p->pIv + fixed, 0, gen);
    for (size_t i = 0; i < gen && i < 8; i++)
        p->pIv[p->ulIvLen - 1 - i] = (unsigned char)(value >> (8 * i));
    return CKR_OK;
}

static CK_RV fail(struct ferro_op *op)
{
    ferro_end_op(op);
    return CKR_GENERAL_ERROR;
}

static CK_RV leave(struct ferro_slot *sl, CK_RV rv)
{
    if (sl)
        ferro_unlock(sl);
    return rv;
}

static CK_RV open_into(struct ferro_slot *sl, CK_GCM_MESSAGE_PARAMS *p, const unsigned char *body, size_t n,
                       CK_BYTE_PTR out)
{
    unsigned char *plain;
    CK_RV rv;
    ferro_count_use(&sl->cache[FERRO_MDEC]);         /* one message: its tag is checked */
    rv = ferro_gcm_open(sl->cache[FERRO_MDEC].ctx, body, n, p->pTag, p->ulTagBits / 8, &plain);
    if (rv == CKR_OK) {
        if (n)
            memcpy(out, plain, n);
        ferro_free_secret(plain, n ? n : 1);
    }
    return rv;
}

/* C_EncryptMessage / C_DecryptMessage (whole: the message's data in and out in
 * this call) and C_EncryptMessageBegin / C_DecryptMessageBegin (not whole: no
 * in/out/pul): the checks, the parameters, the IV (generated when encrypting),
 * a new GCM message with the AAD; then the whole message, or the op started. */
static CK_RV message_start(int kind, int whole, CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG plen,
                           CK_BYTE_PTR aad, CK_ULONG aad_len, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                           CK_ULONG_PTR pul)
{
    CK_RV rv;
    int go;
    CK_GCM_MESSAGE_PARAMS *p;
    struct ferro_slot *sl = ferro_enter(kind, s, &rv);
    struct ferro_cache *c;
    if (!sl)
        return rv;
    if ((whole && (!pul || (!in && n))) || (!aad && aad_len) || aad_len > FERRO_GCM_AAD_MAX
        || aad_len > ferro_max_data_len)                     /* as the engine: unread */
        return leave(sl, CKR_ARGUMENTS_BAD);
    if (sl->op[kind].started)
        return leave(sl, CKR_OPERATION_ACTIVE);
    if ((rv = params(param, plen, &p)) != CKR_OK || (rv = ferro_gcm_fits(&sl->op[kind], kind, n)) != CKR_OK
        || (whole && ((rv = ferro_room(out, pul, n, &go)) != CKR_OK || !go)))
        return leave(sl, rv);
    if (kind == FERRO_MENC && (rv = make_iv(s, &sl, p)) != CKR_OK)
        return leave(sl, rv);
    c = &sl->cache[kind];
    if (!ferro_gcm_start(c->ctx, c, p->pIv, p->ulIvLen, aad, aad_len))
        return leave(sl, fail(&sl->op[kind]));
    if (!whole) {
        sl->op[kind].started = 1;
        sl->op[kind].buf_len = sl->op[kind].taken = 0;
        return leave(sl, CKR_OK);
    }
    if (kind == FERRO_MDEC)
        return leave(sl, open_into(sl, p, in, n, out));
    ferro_count_use(c);                                     /* one message */
    if (!ferro_gcm_update(c->ctx, out, in, n) || !ferro_seal_tail(c->ctx, p->pTag, p->ulTagBits / 8))
        return leave(sl, fail(&sl->op[kind]));
    return leave(sl, CKR_OK);
}

/* One part of the open message: encrypted at once; or, decrypting, collected
 * (nothing is released before the tag is checked). CKF_END_OF_MESSAGE closes it. */
static CK_RV seal_next(struct ferro_slot *sl, struct ferro_op *op, CK_GCM_MESSAGE_PARAMS *p, CK_BYTE_PTR in,
                       CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul, CK_FLAGS flags)
{
    EVP_CIPHER_CTX *ctx = sl->cache[FERRO_MENC].ctx;
    int go;
    CK_RV rv = ferro_room(out, pul, n, &go);
    if (rv != CKR_OK || !go)
        return rv;
    if (!ferro_gcm_update(ctx, out, in, n))
        return fail(op);
    op->taken += n;                               /* within FERRO_GCM_MAX: message_next checked */
    if (flags & CKF_END_OF_MESSAGE) {
        ferro_count_use(&sl->cache[FERRO_MENC]);         /* one message */
        if (!ferro_seal_tail(ctx, p->pTag, p->ulTagBits / 8))
            return fail(op);
        op->started = 0;
    }
    return CKR_OK;
}

static CK_RV open_next(struct ferro_slot *sl, struct ferro_op *op, CK_GCM_MESSAGE_PARAMS *p, CK_BYTE_PTR in,
                       CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul, CK_FLAGS flags)
{
    int go;
    CK_RV rv;
    if (!(flags & CKF_END_OF_MESSAGE)) {
        if (!out) {
            *pul = n;                             /* a query: enough, though the part releases nothing */
            return CKR_OK;
        }
        *pul = 0;
        return ferro_buf_append(op, in, n) ? CKR_OK : CKR_HOST_MEMORY;
    }
    if ((rv = ferro_room(out, pul, op->buf_len + n, &go)) != CKR_OK || !go)
        return rv;                                /* buf_len + n: message_next checked the sum */
    if (!ferro_buf_append(op, in, n))
        return CKR_HOST_MEMORY;
    rv = open_into(sl, p, op->buf, op->buf_len, out);
    op->started = 0;
    OPENSSL_cleanse(op->buf, op->buf_len);
    op->buf_len = 0;
    return rv;
}

/* C_EncryptMessageNext / C_DecryptMessageNext: the checks, the parameters, then
 * seal_next() or open_next(). */
static CK_RV message_next(int kind, CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG plen, CK_BYTE_PTR in,
                          CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul, CK_FLAGS flags)
{
    CK_RV rv;
    CK_GCM_MESSAGE_PARAMS *p;
    struct ferro_slot *sl = ferro_enter(kind, s, &rv);
    struct ferro_op *op;
    if (!sl)
        return rv;
    op = &sl->op[kind];
    if (!pul || (!in && n))
        return leave(sl, CKR_ARGUMENTS_BAD);
    if (!op->started)
        return leave(sl, CKR_OPERATION_NOT_INITIALIZED);
    if ((rv = params(param, plen, &p)) != CKR_OK || (rv = ferro_gcm_fits(op, kind, n)) != CKR_OK)
        return leave(sl, rv);
    return leave(sl, kind == FERRO_MENC ? seal_next(sl, op, p, in, n, out, pul, flags)
                                        : open_next(sl, op, p, in, n, out, pul, flags));
}

/* --- encryption ------------------------------------------------------------ */
CK_RV ferro_fast_C_EncryptMessage(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG plen, CK_BYTE_PTR aad,
                                  CK_ULONG aad_len, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                                  CK_ULONG_PTR pul)
{
    return message_start(FERRO_MENC, 1, s, param, plen, aad, aad_len, in, n, out, pul);
}

CK_RV ferro_fast_C_EncryptMessageBegin(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG plen, CK_BYTE_PTR aad,
                                       CK_ULONG aad_len)
{
    return message_start(FERRO_MENC, 0, s, param, plen, aad, aad_len, NULL, 0, NULL, NULL);
}

CK_RV ferro_fast_C_EncryptMessageNext(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG plen, CK_BYTE_PTR in,
                                      CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul, CK_FLAGS flags)
{
    return message_next(FERRO_MENC, s, param, plen, in, n, out, pul, flags);
}

static CK_RV message_final(int kind, CK_SESSION_HANDLE s)
{
    CK_RV rv;
    struct ferro_slot *sl = ferro_enter(kind, s, &rv);
    if (!sl)
        return rv;
    ferro_end_op(&sl->op[kind]);
    return leave(sl, CKR_OK);
}

CK_RV ferro_fast_C_MessageEncryptFinal(CK_SESSION_HANDLE s)
{
    return message_final(FERRO_MENC, s);
}

static CK_RV active(int kind, CK_SESSION_HANDLE s)
{
    CK_RV rv = FERRO_PASS;
    struct ferro_slot *sl = ferro_lock_owned(s);
    if (sl) {
        if (sl->op[kind].armed)
            rv = CKR_OPERATION_ACTIVE;
        ferro_unlock(sl);
    }
    return rv;
}

CK_RV ferro_fast_C_MessageEncryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
    return active(FERRO_MENC, s);
}

CK_RV ferro_fast_C_MessageDecryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
    return active(FERRO_MDEC, s);
}

/* --- decryption ------------------------------------------------------------ */
CK_RV ferro_fast_C_DecryptMessage(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG plen, CK_BYTE_PTR aad,
                                  CK_ULONG aad_len, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                                  CK_ULONG_PTR pul)
{
    return message_start(FERRO_MDEC, 1, s, param, plen, aad, aad_len, in, n, out, pul);
}

CK_RV ferro_fast_C_DecryptMessageBegin(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG plen, CK_BYTE_PTR aad,
                                       CK_ULONG aad_len)
{
    return message_start(FERRO_MDEC, 0, s, param, plen, aad, aad_len, NULL, 0, NULL, NULL);
}

CK_RV ferro_fast_C_DecryptMessageNext(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG plen, CK_BYTE_PTR in,
                                      CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul, CK_FLAGS flags)
{
    return message_next(FERRO_MDEC, s, param, plen, in, n, out, pul, flags);
}

CK_RV ferro_fast_C_MessageDecryptFinal(CK_SESSION_HANDLE s)
{
    return message_final(FERRO_MDEC, s);
}
