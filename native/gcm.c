/* AES-GCM over OpenSSL EVP, and the two-call output convention, shared by
 * cipher.c (C_Encrypt*, C_Decrypt*) and message.c (C_EncryptMessage* & co.).
 * Lengths go to EVP in chunks: its lengths are int. */
#include <string.h>
#include <openssl/crypto.h>

#include "ferro_native.h"

#pragma GCC visibility push(hidden)      /* only the C_* entry points are exported */

const EVP_CIPHER *ferro_gcm_cipher(size_t key_len)
{
    switch (key_len) {
    case 16: return EVP_aes_128_gcm();
    case 24: return EVP_aes_192_gcm();
    case 32: return EVP_aes_256_gcm();
    default: return NULL;
    }
}

int ferro_gcm_start(EVP_CIPHER_CTX *ctx, struct ferro_cache *c, const unsigned char *iv, size_t iv_len,
                    const unsigned char *aad, size_t aad_len)
{
    int outl;
    if (c->iv_len != iv_len) {
        if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, (int)iv_len, NULL) != 1)
            return 0;
        c->iv_len = iv_len;
    }
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) != 1)
        return 0;
    while (aad_len) {
        size_t n = aad_len > FERRO_CHUNK ? FERRO_CHUNK : aad_len;
        if (EVP_CipherUpdate(ctx, NULL, &outl, aad, (int)n) != 1)
            return 0;
        aad += n;
        aad_len -= n;
    }
    return 1;
}

int ferro_gcm_update(EVP_CIPHER_CTX *ctx, unsigned char *out, const unsigned char *in, size_t n)
{
    int outl;
    while (n) {
        size_t part = n > FERRO_CHUNK ? FERRO_CHUNK : n;
        if (EVP_CipherUpdate(ctx, out, &outl, in, (int)part) != 1 || (size_t)outl != part)
            return 0;
        in += part;
        out += part;
        n -= part;
    }
    return 1;
}

/* the two-call convention for `need` bytes; CKR_OK with *go set when out can take them */
CK_RV ferro_room(CK_BYTE_PTR out, CK_ULONG_PTR pul, size_t need, int *go)
{
    *go = 0;
    if (out && *pul < need) {
        *pul = need;
        return CKR_BUFFER_TOO_SMALL;
    }
    *pul = need;
    *go = out != NULL;
    return CKR_OK;
}

CK_RV ferro_gcm_fits(const struct ferro_op *op, int kind, size_t n)
{
    int dec = kind == FERRO_DEC || kind == FERRO_MDEC;
    size_t held = !op->started ? 0 : dec ? op->buf_len : op->taken, total;
    if (n <= ferro_max_data_len && ferro_add(held, n, &total) && total <= FERRO_GCM_MAX + (kind == FERRO_DEC ? op->tag_len : 0))
        return CKR_OK;
    return dec ? CKR_ENCRYPTED_DATA_LEN_RANGE : CKR_DATA_LEN_RANGE;
}

int ferro_seal_tail(EVP_CIPHER_CTX *ctx, unsigned char *tag, size_t tag_len)
{
    int outl;
    unsigned char none[16];
    return EVP_CipherFinal_ex(ctx, none, &outl) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, (int)tag_len, tag) == 1;
}

CK_RV ferro_gcm_open(EVP_CIPHER_CTX *ctx, const unsigned char *body, size_t n, const unsigned char *tag,
                     size_t tag_len, unsigned char **plain)
{
    int outl;
    unsigned char *out = malloc(n ? n : 1);
    if (!out)
        return CKR_HOST_MEMORY;
    if (!ferro_gcm_update(ctx, out, body, n)
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, (int)tag_len, (void *)tag) != 1
        || EVP_CipherFinal_ex(ctx, out + n, &outl) != 1) {
        ferro_free_secret(out, n ? n : 1);
        return CKR_ENCRYPTED_DATA_INVALID;
    }
    *plain = out;
    return CKR_OK;
}
