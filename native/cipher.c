/* C_Encrypt / C_EncryptUpdate / C_EncryptFinal and the decrypt twins for an
 * armed AES-GCM operation, with the rules of the engine's Session.run:
 *   - NULL pul*Len, or NULL input with a nonzero length: CKR_ARGUMENTS_BAD, the
 *     operation stays;
 *   - a single-part call after an Update: CKR_OPERATION_ACTIVE, it stays;
 *   - NULL output: the length, CKR_OK; too small: the length and
 *     CKR_BUFFER_TOO_SMALL; both keep the operation. Encryption output depends
 *     only on the input, so a length query computes nothing; decryption is done
 *     (tag checked) at the first call that needs it and the plaintext is held
 *     until a big enough buffer comes, as the engine does;
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
    if (!ferro_gcm_update(ctx, out, in, n) || (part != UPDATE && !ferro_seal_tail(ctx, out + n, op->tag_len)))
        rv = CKR_GENERAL_ERROR;
    op->taken += n;                             /* within FERRO_GCM_MAX: run() checked */
    if (part != UPDATE || rv != CKR_OK)
        ferro_end_op(op);
    return rv;
}

/* --- decryption ------------------------------------------------------------ */
/* Check the tag of body||tag (n bytes) once; the plaintext waits in op->pending. */
static CK_RV open_all(struct ferro_slot *sl, const unsigned char *data, size_t n)
{
    struct ferro_op *op = &sl->op[FERRO_DEC];
    CK_RV rv;
    if (op->has_pending)
        return CKR_OK;
    if (n < op->tag_len)
        return CKR_ENCRYPTED_DATA_LEN_RANGE;
    rv = ferro_gcm_open(sl->cache[FERRO_DEC].ctx, data, n - op->tag_len, data + n - op->tag_len,
                        op->tag_len, &op->pending);
    if (rv == CKR_OK) {
        op->pending_len = n - op->tag_len;
        op->has_pending = 1;
    }
    return rv;
}

static CK_RV deliver(struct ferro_op *op, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    int go;
    CK_RV rv = ferro_room(out, pul, op->pending_len, &go);
    if (rv == CKR_OK && go) {
        if (op->pending_len)
            memcpy(out, op->pending, op->pending_len);
        ferro_end_op(op);
    }
    return rv;
}

/* An Update collects ciphertext and returns no plaintext. Like the engine, a
 * length query takes the data and the next call with a buffer then takes none.
 * A single-part call opens its input, a Final what the Updates collected. */
static CK_RV open_part(struct ferro_slot *sl, int part, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                       CK_ULONG_PTR pul)
{
    struct ferro_op *op = &sl->op[FERRO_DEC];
    CK_RV rv = CKR_OK;
    if (part != UPDATE) {
        if ((rv = part == FINAL ? open_all(sl, op->buf, op->buf_len) : open_all(sl, in, n)) == CKR_OK)
            return deliver(op, out, pul);
    } else if (op->skip_next) {
        op->skip_next = out == NULL;
    } else if (!ferro_buf_append(op, in, n)) {
        rv = CKR_HOST_MEMORY;
    } else {
        op->skip_next = out == NULL;
    }
    if (rv == CKR_OK)
        *pul = 0;
    else
        ferro_end_op(op);
    return rv;
}

/* --- both ------------------------------------------------------------------ */
/* The checks every call makes, then seal_part() or open_part(): NULL pul, or
 * NULL input with a nonzero length, is CKR_ARGUMENTS_BAD; a single-part call after an
 * Update is CKR_OPERATION_ACTIVE; an Update marks the operation started. */
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
    } else if (part == SINGLE && op->started) {
        rv = CKR_OPERATION_ACTIVE;
    } else if ((rv = ferro_gcm_fits(op, kind, n)) != CKR_OK) {
        ferro_end_op(op);                       /* before any sum with n, before reading in */
    } else {
        if (part == UPDATE)
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
