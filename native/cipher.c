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

CK_RV ferro_fast_C_Encrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    CK_RV rv;
    int go;
    struct ferro_slot *sl = ferro_enter(FERRO_ENC, s, &rv);
    struct ferro_op *op;
    if (!sl)
        return rv;
    op = &sl->op[FERRO_ENC];
    if (!pul || (!in && n))
        rv = CKR_ARGUMENTS_BAD;
    else if (op->started)
        rv = CKR_OPERATION_ACTIVE;
    else if ((rv = ferro_room(out, pul, n + op->tag_len, &go)) == CKR_OK && go) {
        EVP_CIPHER_CTX *ctx = sl->cache[FERRO_ENC].ctx;
        if (!ferro_gcm_update(ctx, out, in, n) || !ferro_seal_tail(ctx, out + n, op->tag_len))
            rv = CKR_GENERAL_ERROR;
        ferro_end_op(op);
    }
    ferro_unlock(sl);
    return rv;
}

CK_RV ferro_fast_C_EncryptUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                                 CK_ULONG_PTR pul)
{
    CK_RV rv;
    int go;
    struct ferro_slot *sl = ferro_enter(FERRO_ENC, s, &rv);
    struct ferro_op *op;
    if (!sl)
        return rv;
    op = &sl->op[FERRO_ENC];
    if (!pul || (!in && n)) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        op->started = 1;
        if ((rv = ferro_room(out, pul, n, &go)) == CKR_OK && go
            && !ferro_gcm_update(sl->cache[FERRO_ENC].ctx, out, in, n)) {
            rv = CKR_GENERAL_ERROR;
            ferro_end_op(op);
        }
    }
    ferro_unlock(sl);
    return rv;
}

CK_RV ferro_fast_C_EncryptFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    CK_RV rv;
    int go;
    struct ferro_slot *sl = ferro_enter(FERRO_ENC, s, &rv);
    struct ferro_op *op;
    if (!sl)
        return rv;
    op = &sl->op[FERRO_ENC];
    if (!pul)
        rv = CKR_ARGUMENTS_BAD;
    else if ((rv = ferro_room(out, pul, op->tag_len, &go)) == CKR_OK && go) {
        if (!ferro_seal_tail(sl->cache[FERRO_ENC].ctx, out, op->tag_len))
            rv = CKR_GENERAL_ERROR;
        ferro_end_op(op);
    }
    ferro_unlock(sl);
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

CK_RV ferro_fast_C_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    CK_RV rv;
    struct ferro_slot *sl = ferro_enter(FERRO_DEC, s, &rv);
    struct ferro_op *op;
    if (!sl)
        return rv;
    op = &sl->op[FERRO_DEC];
    if (!pul || (!in && n))
        rv = CKR_ARGUMENTS_BAD;
    else if (op->started)
        rv = CKR_OPERATION_ACTIVE;
    else if ((rv = open_all(sl, in, n)) == CKR_OK)
        rv = deliver(op, out, pul);
    else
        ferro_end_op(op);
    ferro_unlock(sl);
    return rv;
}

/* Collects ciphertext, returns no plaintext. Like the engine, a length query
 * takes the data and the next call with a buffer then takes none. */
CK_RV ferro_fast_C_DecryptUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out,
                                 CK_ULONG_PTR pul)
{
    CK_RV rv;
    struct ferro_slot *sl = ferro_enter(FERRO_DEC, s, &rv);
    struct ferro_op *op;
    if (!sl)
        return rv;
    op = &sl->op[FERRO_DEC];
    rv = CKR_OK;
    if (!pul || (!in && n)) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        op->started = 1;
        if (op->skip_next)
            op->skip_next = out == NULL;
        else if (!ferro_buf_append(op, in, n))
            rv = CKR_HOST_MEMORY;
        else
            op->skip_next = out == NULL;
        if (rv == CKR_OK)
            *pul = 0;
        else
            ferro_end_op(op);
    }
    ferro_unlock(sl);
    return rv;
}

CK_RV ferro_fast_C_DecryptFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    CK_RV rv;
    struct ferro_slot *sl = ferro_enter(FERRO_DEC, s, &rv);
    struct ferro_op *op;
    if (!sl)
        return rv;
    op = &sl->op[FERRO_DEC];
    if (!pul)
        rv = CKR_ARGUMENTS_BAD;
    else if ((rv = open_all(sl, op->buf, op->buf_len)) == CKR_OK)
        rv = deliver(op, out, pul);
    else
        ferro_end_op(op);
    ferro_unlock(sl);
    return rv;
}
