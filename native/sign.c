/* CKM_ECDSA (raw: the caller hashes) with an EC private key, natively: the
 * engine checks C_SignInit as for AES-GCM (session, login, key, CKA_SIGN,
 * allowed mechanisms; never a key with CKA_ALWAYS_AUTHENTICATE) and arms the
 * session with the key; a repeat C_SignInit with the same key is native too,
 * under the same authorisation cache and invalidation (native/README.md).
 *
 * As in the engine (mechanisms/ec.py): the signature is r || s, each the
 * order's length; data longer than the order is cut to its leftmost bits
 * (FIPS 186), which is what OpenSSL's ECDSA does with a raw input; so only
 * the first `half` bytes are ever read or kept, whatever the length (C_Sign of
 * 2^31 bytes signs as the engine does; OpenSSL's ECDSA lengths are int).
 * C_SignUpdate keeps those and C_SignFinal signs them (a single-part mechanism
 * taking multi-part calls, as SoftHSM2 does). A length, or a total over the
 * Updates, above FERRO_MAX_INPUT is no buffer's: CKR_DATA_LEN_RANGE, and the
 * operation ends. The signature's length is the curve's, so a length query or
 * a too-small buffer signs nothing and changes nothing; the call with the
 * buffer signs its own input. As in the engine, NULL arguments end the
 * operation, and a multi-part call after a single-part length answer (or the
 * reverse) is CKR_OPERATION_ACTIVE. */
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>

#include "ferro_native.h"

#pragma GCC visibility push(hidden)      /* only the C_* entry points are exported */

/* An EC private key from CKA_EC_PARAMS (a named curve's OID) and CKA_VALUE. */
static EVP_PKEY *ec_key(const unsigned char *params, size_t params_len, const unsigned char *value, size_t n)
{
    const unsigned char *p = params;
    ASN1_OBJECT *oid = d2i_ASN1_OBJECT(NULL, &p, (long)params_len);
    int nid = oid ? OBJ_obj2nid(oid) : NID_undef;
    const char *group = nid != NID_undef ? OBJ_nid2sn(nid) : NULL;
    BIGNUM *d = BN_secure_new();
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *prm = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *pkey = NULL;
    if (group && d && bld && pc && BN_bin2bn(value, (int)n, d)
        && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0)
        && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d)
        && (prm = OSSL_PARAM_BLD_to_param(bld)) && EVP_PKEY_fromdata_init(pc) == 1)
        EVP_PKEY_fromdata(pc, &pkey, EVP_PKEY_KEYPAIR, prm);
    ASN1_OBJECT_free(oid);
    BN_clear_free(d);
    OSSL_PARAM_free(prm);                        /* its BN copy is in secure memory too */
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pc);
    return pkey;
}

int ferro_native_arm_sign(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const unsigned char *value,
                          size_t value_len, const unsigned char *ec_params, size_t params_len, uint64_t grant)
{
    struct ferro_slot *sl = ferro_claim(s, FERRO_SIGN);
    struct ferro_cache *c;
    int ok = 0;
    if (!sl)
        return -1;
    c = &sl->cache[FERRO_SIGN];
    if (c->key != key || !c->sign) {
        EVP_PKEY *pkey = ec_key(ec_params, params_len, value, value_len);
        ferro_drop_cache(c);
        if (pkey) {
            c->sign = EVP_PKEY_CTX_new(pkey, NULL);
            c->half = (size_t)(EVP_PKEY_get_bits(pkey) + 7) / 8;
            EVP_PKEY_free(pkey);                 /* the context keeps its own reference */
            if (c->sign && EVP_PKEY_sign_init(c->sign) == 1)
                c->key = key;
            else
                ferro_drop_cache(c);
        }
    }
    if (c->sign) {
        ferro_set_grant(c, grant);
        ferro_end_op(&sl->op[FERRO_SIGN]);
        sl->op[FERRO_SIGN].armed = 1;
        sl->op[FERRO_SIGN].expires = c->expires = ferro_lease_end();
        ok = 1;
    }
    ferro_unlock(sl);
    return ok ? 0 : -1;
}

/* sign data into out (2 * half bytes), or the two-call answer; ends the op unless kept */
static CK_RV sign(struct ferro_slot *sl, const unsigned char *data, size_t n, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    struct ferro_cache *c = &sl->cache[FERRO_SIGN];
    unsigned char der[256];
    size_t der_len = sizeof der;
    const unsigned char *p = der;
    ECDSA_SIG *sig = NULL;
    int go;
    CK_RV rv = ferro_room(out, pul, 2 * c->half, &go);
    if (rv != CKR_OK || !go)
        return rv;
    rv = CKR_GENERAL_ERROR;
    ferro_count_use(c);
    if (EVP_PKEY_sign(c->sign, der, &der_len, data ? data : der, n < c->half ? n : c->half) == 1
        && (sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len))
        && BN_bn2binpad(ECDSA_SIG_get0_r(sig), out, (int)c->half) > 0
        && BN_bn2binpad(ECDSA_SIG_get0_s(sig), out + c->half, (int)c->half) > 0)
        rv = CKR_OK;
    ECDSA_SIG_free(sig);
    ferro_end_op(&sl->op[FERRO_SIGN]);
    return rv;
}

CK_RV ferro_fast_C_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
    CK_RV rv = FERRO_PASS;
    struct ferro_slot *sl;
    if (!ferro_native_enabled || !(sl = ferro_lock_owned(s)))
        return FERRO_PASS;
    if (sl->op[FERRO_SIGN].armed) {
        rv = CKR_OPERATION_ACTIVE;
    } else if (m && m->mechanism == CKM_ECDSA && !m->pParameter && !m->ulParameterLen
               && sl->cache[FERRO_SIGN].sign && sl->cache[FERRO_SIGN].key == key
               && !sl->cache[FERRO_SIGN].grant                 /* a governed init: the gate's record */
               && ferro_now() < sl->cache[FERRO_SIGN].expires) {
        ferro_end_op(&sl->op[FERRO_SIGN]);
        sl->op[FERRO_SIGN].armed = 1;
        sl->op[FERRO_SIGN].expires = sl->cache[FERRO_SIGN].expires;
        rv = CKR_OK;
    }
    ferro_unlock(sl);
    return rv;
}

/* Which call: C_Sign, C_SignUpdate (no output, no pul) or C_SignFinal (no input). */
enum { SINGLE, UPDATE, FINAL };

static CK_RV run(int part, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    CK_RV rv;
    struct ferro_slot *sl = ferro_enter(FERRO_SIGN, s, &rv);
    struct ferro_op *op;
    size_t total, keep;
    if (!sl)
        return rv;
    op = &sl->op[FERRO_SIGN];
    keep = sl->cache[FERRO_SIGN].half - op->buf_len;   /* what the signature still reads */
    if ((part != UPDATE && !pul) || (!in && n)) {
        rv = CKR_ARGUMENTS_BAD;                  /* ends the operation, as every error does */
        ferro_end_op(op);
    } else if (part == SINGLE ? op->started : op->single) {
        rv = CKR_OPERATION_ACTIVE;               /* refused; a Final always ends it (Session.run) */
        if (part == FINAL)
            ferro_end_op(op);
    } else if (!ferro_add(op->taken, n, &total) || total > FERRO_MAX_INPUT) {
        rv = CKR_DATA_LEN_RANGE;
        ferro_end_op(op);
    } else if (part == SINGLE) {
        op->single = 1;
        rv = sign(sl, in, n, out, pul);
    } else if (part == FINAL) {
        rv = sign(sl, op->buf, op->buf_len, out, pul);
    } else if (ferro_buf_append(op, in, n < keep ? n : keep)) {
        op->taken = total;
        op->started = 1;
        rv = CKR_OK;
    } else {
        rv = CKR_HOST_MEMORY;
        ferro_end_op(op);
    }
    ferro_unlock(sl);
    return rv;
}

CK_RV ferro_fast_C_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    return run(SINGLE, s, in, n, out, pul);
}

CK_RV ferro_fast_C_SignUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG n)
{
    return run(UPDATE, s, in, n, NULL, NULL);
}

CK_RV ferro_fast_C_SignFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR pul)
{
    return run(FINAL, s, NULL, 0, out, pul);
}
