/* C_Encrypt / C_EncryptUpdate / C_EncryptFinal and the decrypt twins for an
 * armed AES-GCM operation, with the rules of the engine's Session.run:
 *   - NULL pul*Len, or NULL input with a nonzero length: CKR_ARGUMENTS_BAD, which
 *     ends the operation (the spec: every error but the two-call answers does);
 *   - a single-part call after an Update, or an Update after a single-part
 *     length answer: CKR_OPERATION_ACTIVE, the operation stays; a Final then
 *     is CKR_OPERATION_ACTIVE too, and ends it (a Final always does);
 *   - NULL output: the length, CKR_OK; too small: the length and
 *     CKR_BUFFER_TOO_SMALL; both change nothing (no input taken, nothing
 *     computed): every output length follows from the input lengths, so only
 *     the call with a big enough buffer does the work, on its own input;
 *   - decryption releases nothing before the tag is checked; a bad tag is
 *     CKR_ENCRYPTED_DATA_INVALID; any error but BUFFER_TOO_SMALL ends the op. */
#include <string.h>

#include "ferro_native.h"

#pragma GCC visibility push(hidden)      /* only the C_* entry points are exported */

/* Which call of an operation: C_Encrypt, C_EncryptUpdate or C_EncryptFinal (and
 * the decrypt twins). A Final is run with no input (NULL, 0). */
enum { SINGLE, UPDATE, FINAL };

/* --- encryption ------------------------------------------------------------ */
/* Output depends only on the input: n bytes for an Update, n + the tag for a
 * single-part call, the tag for a Final. */
static CK_RV seal_part(struct ferro_slot *sl, int part, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                       CK_ULONG_PTR pul)
{
    struct ferro_op *op = &sl->op[FERRO_ENC];
    EVP_CIPHER_CTX *ctx = sl->cache[FERRO_ENC].ctx;
    int go;
    CK_RV rv = ferro_room(out, pul, part == UPDATE ? n : n + op->tag_len, &go);
    if (rv != CKR_OK || !go)
        return rv;
    if (part != UPDATE)
        ferro_count_use(&sl->cache[FERRO_ENC]);      /* one operation: its tag is made */
    if (!ferro_gcm_update(ctx, out, in, n) || (part != UPDATE && !ferro_seal_tail(ctx, out + n, op->tag_len)))
        rv = CKR_GENERAL_ERROR;
    op->taken += n;                             /* within FERRO_GCM_MAX: run() checked */
    if (part != UPDATE || rv != CKR_OK)
        ferro_end_op(op);
    return rv;
}

/* --- decryption ------------------------------------------------------------ */
/* Open (decrypt, check the tag) body||tag of n bytes into out: the plaintext is
 * made in a buffer of our own and copied out only once the tag held. */
static CK_RV open_into(struct ferro_slot *sl, const unsigned char *data, size_t n, CK_BYTE_PTR out)
{
    struct ferro_op *op = &sl->op[FERRO_DEC];
    unsigned char *plain;
    size_t body = n - op->tag_len;
    CK_RV rv;
    ferro_count_use(&sl->cache[FERRO_DEC]);          /* one operation: its tag is checked */
    rv = ferro_gcm_open(sl->cache[FERRO_DEC].ctx, data, body, data + body, op->tag_len, &plain);
    if (rv == CKR_OK) {
        if (body)
            memcpy(out, plain, body);
        ferro_free_secret(plain, body ? body : 1);
    }
    return rv;
}

/* Every length is known from the input lengths: an Update releases nothing (its
 * query answers at least its input's length, as SoftHSM2), a single-part call
 * or a Final n - tag bytes; only the call with a big enough buffer takes its
 * input (an Update) or opens (single-part, Final). */
static CK_RV open_part(struct ferro_slot *sl, int part, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                       CK_ULONG_PTR pul)
{
    struct ferro_op *op = &sl->op[FERRO_DEC];
    const unsigned char *data = part == FINAL ? op->buf : in;
    size_t len = part == FINAL ? op->buf_len : n;
    CK_RV rv;
    if (part == UPDATE) {
        if (!out) {
            *pul = n;
            return CKR_OK;
        }
        if (!ferro_buf_append(op, in, n)) {
            ferro_end_op(op);
            return CKR_HOST_MEMORY;
        }
        *pul = 0;
        return CKR_OK;
    }
    if (len < op->tag_len) {
        ferro_end_op(op);
        return CKR_ENCRYPTED_DATA_LEN_RANGE;
    }
    if (!out || *pul < len - op->tag_len) {         /* *pul is written only on success */
        rv = out ? CKR_BUFFER_TOO_SMALL : CKR_OK;
        *pul = len - op->tag_len;
        return rv;
    }
    if ((rv = open_into(sl, data, len, out)) == CKR_OK)
        *pul = len - op->tag_len;
    ferro_end_op(op);
    return rv;
}

/* --- both ------------------------------------------------------------------ */
/* The checks every call makes, then seal_part() or open_part(): NULL pul, or
 * NULL input with a nonzero length, is CKR_ARGUMENTS_BAD and ends the operation;
 * a single-part call after a multi-part one, or a multi-part call after a
 * single-part length answer, is CKR_OPERATION_ACTIVE and leaves it. */
static CK_RV run(int kind, int part, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                 CK_ULONG_PTR pul)
{
    CK_RV rv;
    struct ferro_slot *sl = ferro_enter(kind, s, &rv);
    struct ferro_op *op;
    if (!sl)
        return rv;
    op = &sl->op[kind];
    if (!pul || (!in && n)) {
        rv = CKR_ARGUMENTS_BAD;
        ferro_end_op(op);
    } else if (part == SINGLE ? op->started : op->single) {
        rv = CKR_OPERATION_ACTIVE;               /* refused; a Final always ends it (Session.run) */
        if (part == FINAL)
            ferro_end_op(op);
    } else if ((rv = ferro_gcm_fits(op, kind, n)) != CKR_OK) {
        ferro_end_op(op);                       /* before any sum with n, before reading in */
    } else {
        if (part == SINGLE)
            op->single = 1;
        else
            op->started = 1;
        rv = kind == FERRO_ENC ? seal_part(sl, part, in, n, out, pul) : open_part(sl, part, in, n, out, pul);
    }
    ferro_unlock(sl);
    return rv;
}

CK_RV ferro_fast_C_Encrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    return run(FERRO_ENC, SINGLE, s, in, n, out, pul);
}

CK_RV ferro_fast_C_EncryptUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                                 CK_ULONG_PTR pul)
{
    return run(FERRO_ENC, UPDATE, s, in, n, out, pul);
}

CK_RV ferro_fast_C_EncryptFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    return run(FERRO_ENC, FINAL, s, NULL, 0, out, pul);
}

CK_RV ferro_fast_C_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    return run(FERRO_DEC, SINGLE, s, in, n, out, pul);
}

CK_RV ferro_fast_C_DecryptUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                                 CK_ULONG_PTR pul)
{
    return run(FERRO_DEC, UPDATE, s, in, n, out, pul);
}

CK_RV ferro_fast_C_DecryptFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    return run(FERRO_DEC, FINAL, s, NULL, 0, out, pul);
}
