/* The per-session table of armed AES-GCM state, what the engine calls to arm
 * and drop it, and the native repeat C_EncryptInit / C_DecryptInit.
 *
 * Locking: one mutex per slot; the fast path never takes the GIL or the
 * engine's lock, and never holds a slot mutex while calling into Python. The
 * engine calls arm/drop/forget under its own lock, so arming and dropping are
 * ordered with every engine event that invalidates state (native/README.md). */
#include <stddef.h>
#include <string.h>
#include <unistd.h>
#include <openssl/crypto.h>

#include "ferro_native.h"

#pragma GCC visibility push(hidden)      /* only the C_* entry points are exported */

int ferro_native_enabled = 0;                  /* set by pkcs11_shim/native.py */
size_t ferro_max_data_len = 0;                 /* [limits] max_data_len, set there too */
static struct ferro_slot slots[FERRO_SLOTS];

/* Counts of entries that ended (dropped, or armed anew under another grant) and the
 * engine has not collected yet: one row per grant. Taken under a slot lock (slot lock,
 * then this one), drained by ferro_native_collect. */
static pthread_mutex_t pending_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ferro_count pending[FERRO_PENDING];
static size_t n_pending;
static uint64_t lost;                          /* uses that found the table full */

static void init_locks(void)
{
    for (int i = 0; i < FERRO_SLOTS; i++)
        pthread_mutex_init(&slots[i].lock, NULL);
    pthread_mutex_init(&pending_lock, NULL);
}

/* the uses `c` ran since the last collection go to the pending table (slot lock held) */
static void flush_uses(struct ferro_cache *c)
{
    size_t i;
    if (!c->grant || !c->uses)
        return;
    pthread_mutex_lock(&pending_lock);
    for (i = 0; i < n_pending && pending[i].grant != c->grant; i++)
        ;
    if (i < n_pending) {
        pending[i].uses += c->uses;
    } else if (n_pending < FERRO_PENDING) {
        pending[n_pending].grant = c->grant;
        pending[n_pending].uses = c->uses;
        pending[n_pending].live = 0;
        n_pending++;
    } else {
        lost += c->uses;
    }
    pthread_mutex_unlock(&pending_lock);
    c->uses = 0;
}

void ferro_set_grant(struct ferro_cache *c, uint64_t grant)
{
    if (c->grant != grant)
        flush_uses(c);
    c->grant = grant;
}

size_t ferro_native_collect(struct ferro_count *out, size_t max, uint64_t *lost_out)
{
    size_t n = 0;
    for (int i = 0; i < FERRO_SLOTS && n < max; i++) {
        struct ferro_slot *sl = &slots[i];
        if (!__atomic_load_n(&sl->owner, __ATOMIC_ACQUIRE))
            continue;                           /* a free slot holds no counted entry */
        pthread_mutex_lock(&sl->lock);
        for (int k = 0; k < FERRO_KINDS && n < max; k++) {
            struct ferro_cache *c = &sl->cache[k];
            if (!c->grant)
                continue;
            out[n].grant = c->grant;
            out[n].uses = c->uses;
            out[n].live = 1;
            c->uses = 0;
            n++;
        }
        pthread_mutex_unlock(&sl->lock);
    }
    pthread_mutex_lock(&pending_lock);
    while (n_pending && n < max)
        out[n++] = pending[--n_pending];
    *lost_out = lost;
    lost = 0;
    pthread_mutex_unlock(&pending_lock);
    return n;
}

static void clear_slot(struct ferro_slot *sl);

/* A forked child must not use (or keep) the parent's keys: another thread may
 * have held a slot mutex at fork(), so locks are made anew, then all is wiped. */
static void atfork_child(void)
{
    init_locks();
    for (int i = 0; i < FERRO_SLOTS; i++)
        clear_slot(&slots[i]);
    n_pending = 0;                              /* the parent's uses are the parent's to report */
    lost = 0;
}

__attribute__((constructor)) static void ferro_native_setup(void)
{
    init_locks();
    pthread_atfork(NULL, NULL, atfork_child);
}

static struct ferro_slot *slot_of(CK_SESSION_HANDLE s)
{
    return &slots[s % FERRO_SLOTS];
}

struct ferro_slot *ferro_lock_owned(CK_SESSION_HANDLE s)
{
    struct ferro_slot *sl = slot_of(s);
    if (!s)
        return NULL;
    pthread_mutex_lock(&sl->lock);
    if (sl->owner == s)
        return sl;
    pthread_mutex_unlock(&sl->lock);
    return NULL;
}

void ferro_unlock(struct ferro_slot *sl)
{
    pthread_mutex_unlock(&sl->lock);
}

static void drop_cache(struct ferro_cache *c);

/* The lease of the armed op of `kind` ran out: the engine checks the store's head and
 * the key (ferro_py_recheck) with no slot lock held, for it may drop native state
 * meanwhile (ferro_native_drop_key, even from within the recheck). Then the slot is
 * locked again: NULL if the session went (the engine answers), or the recheck failed
 * on the op it was asked about (which ends, *rv its code); else the locked slot, its
 * op renewed, or ended meanwhile (ferro_enter gives the ended_rv), or armed anew. */
static struct ferro_slot *recheck(int kind, CK_SESSION_HANDLE s, struct ferro_slot *sl, CK_RV *rv)
{
    CK_OBJECT_HANDLE key = sl->cache[kind].key;
    CK_RV checked;
    ferro_unlock(sl);
    checked = ferro_py_recheck(s, key);
    if (!(sl = ferro_lock_owned(s)))
        return NULL;
    if (sl->op[kind].armed && sl->cache[kind].key == key) {
        if (checked != CKR_OK) {
            ferro_end_op(&sl->op[kind]);
            drop_cache(&sl->cache[kind]);
            ferro_unlock(sl);
            *rv = checked;
            return NULL;
        }
        sl->op[kind].expires = sl->cache[kind].expires = ferro_lease_end();
    }
    return sl;
}

struct ferro_slot *ferro_enter(int kind, CK_SESSION_HANDLE s, CK_RV *rv)
{
    struct ferro_slot *sl = ferro_lock_owned(s);
    *rv = FERRO_PASS;
    if (!sl)
        return NULL;
    if (sl->op[kind].armed && ferro_now() >= sl->op[kind].expires && !(sl = recheck(kind, s, sl, rv)))
        return NULL;
    if (sl->op[kind].armed)
        return sl;
    if (sl->op[kind].ended_rv) {
        *rv = sl->op[kind].ended_rv;
        sl->op[kind].ended_rv = 0;
    }
    pthread_mutex_unlock(&sl->lock);
    return NULL;
}

void ferro_free_secret(unsigned char *p, size_t n)
{
    if (p) {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

void ferro_end_op(struct ferro_op *op)
{
    ferro_free_secret(op->buf, op->buf_cap);
    /* The hot path ends an op on every call: gcc clears the fields before the lease
     * with a few vector stores, where the whole (larger) struct became a `rep stos`
     * (measured: the lease then cost 11% of a 64-byte GCM op, this way 5%). */
    memset(op, 0, offsetof(struct ferro_op, expires));
    op->expires = 0;
}

static void drop_cache(struct ferro_cache *c)
{
    flush_uses(c);                              /* its last uses wait for the engine */
    EVP_CIPHER_CTX_free(c->ctx);                /* the GCM provider clears its key schedule */
    EVP_PKEY_CTX_free(c->sign);                 /* and its key: EC keys clear their scalar */
    memset(c, 0, sizeof *c);
}

void ferro_drop_cache(struct ferro_cache *c)
{
    drop_cache(c);
}

static void clear_slot(struct ferro_slot *sl)
{
    for (int k = 0; k < FERRO_KINDS; k++) {
        ferro_end_op(&sl->op[k]);
        drop_cache(&sl->cache[k]);
    }
    __atomic_store_n(&sl->owner, 0, __ATOMIC_RELEASE);
}

/* 0 (nothing changed) when the total does not fit a size_t or memory is short;
 * callers check their mechanism's limit first, so that is CKR_HOST_MEMORY */
int ferro_buf_append(struct ferro_op *op, const unsigned char *p, size_t n)
{
    size_t need;
    if (!ferro_add(op->buf_len, n, &need))
        return 0;
    if (need > op->buf_cap) {
        size_t cap = op->buf_cap ? op->buf_cap : 256;
        unsigned char *grown;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        grown = malloc(cap);
        if (!grown)
            return 0;
        if (op->buf_len)
            memcpy(grown, op->buf, op->buf_len);
        ferro_free_secret(op->buf, op->buf_cap);
        op->buf = grown;
        op->buf_cap = cap;
    }
    if (n)
        memcpy(op->buf + op->buf_len, p, n);
    op->buf_len += n;
    return 1;
}

static int new_cache(struct ferro_cache *c, CK_OBJECT_HANDLE key, const unsigned char *key_bytes,
                     size_t key_len, int enc)
{
    const EVP_CIPHER *cipher = ferro_gcm_cipher(key_len);
    drop_cache(c);
    if (!cipher || !(c->ctx = EVP_CIPHER_CTX_new()))
        return 0;
    if (EVP_CipherInit_ex(c->ctx, cipher, NULL, key_bytes, NULL, enc) != 1) {
        drop_cache(c);
        return 0;
    }
    c->key = key;
    c->iv_len = 12;                             /* OpenSSL's default */
    return 1;
}

/* --- what the engine calls ------------------------------------------------ */
struct ferro_slot *ferro_claim(CK_SESSION_HANDLE s, int kind)
{
    struct ferro_slot *sl = slot_of(s);
    if (!s || kind < 0 || kind >= FERRO_KINDS)
        return NULL;
    pthread_mutex_lock(&sl->lock);
    if ((sl->owner && sl->owner != s) || sl->op[kind].armed) {
        pthread_mutex_unlock(&sl->lock);        /* another live session has this slot */
        return NULL;
    }
    __atomic_store_n(&sl->owner, s, __ATOMIC_RELEASE);
    return sl;
}

int ferro_native_arm(CK_SESSION_HANDLE s, int kind, CK_OBJECT_HANDLE key, const unsigned char *key_bytes,
                     size_t key_len, const unsigned char *iv, size_t iv_len, const unsigned char *aad,
                     size_t aad_len, size_t tag_len, uint64_t grant)
{
    struct ferro_slot *sl = ferro_claim(s, kind);
    struct ferro_cache *c;
    struct ferro_op *op;
    int ok = 0, enc = kind == FERRO_ENC || kind == FERRO_MENC;
    if (!sl)
        return -1;
    if (kind == FERRO_SIGN)
        goto out;                               /* ferro_native_arm_sign's */
    c = &sl->cache[kind];
    op = &sl->op[kind];
    if ((c->key != key || !c->ctx) && !new_cache(c, key, key_bytes, key_len, enc))
        goto out;
    if (kind == FERRO_ENC || kind == FERRO_DEC) {
        if (!ferro_gcm_start(c->ctx, c, iv, iv_len, aad, aad_len)) {
            drop_cache(c);
            goto out;
        }
    }
    ferro_set_grant(c, grant);
    ferro_end_op(op);
    op->armed = 1;
    op->tag_len = tag_len;
    op->expires = c->expires = ferro_lease_end();   /* the engine just checked it all */
    ok = 1;
out:
    pthread_mutex_unlock(&sl->lock);
    return ok ? 0 : -1;
}

void ferro_native_drop_session(CK_SESSION_HANDLE s)
{
    struct ferro_slot *sl = ferro_lock_owned(s);
    if (sl) {
        clear_slot(sl);
        ferro_unlock(sl);
    }
}

void ferro_native_drop_key(CK_OBJECT_HANDLE key, CK_RV ended_rv)
{
    for (int i = 0; i < FERRO_SLOTS; i++) {
        struct ferro_slot *sl = &slots[i];
        /* Only ferro_native_arm makes a free slot owned, and it runs under the
         * engine's lock as this does: a free slot cannot become owned meanwhile. */
        if (!__atomic_load_n(&sl->owner, __ATOMIC_ACQUIRE))
            continue;
        pthread_mutex_lock(&sl->lock);
        for (int k = 0; sl->owner && k < FERRO_KINDS; k++) {
            if (sl->cache[k].key != key)
                continue;
            if (sl->op[k].armed) {
                ferro_end_op(&sl->op[k]);
                sl->op[k].ended_rv = ended_rv;
            }
            drop_cache(&sl->cache[k]);
        }
        pthread_mutex_unlock(&sl->lock);
    }
}

void ferro_native_drop_all(void)
{
    for (int i = 0; i < FERRO_SLOTS; i++) {
        pthread_mutex_lock(&slots[i].lock);
        clear_slot(&slots[i]);
        pthread_mutex_unlock(&slots[i].lock);
    }
}

/* The engine is about to run an init of `kind` itself: the session's cached
 * authorisation for that kind no longer says what the engine holds. */
void ferro_native_forget(CK_SESSION_HANDLE s, int kind)
{
    struct ferro_slot *sl = ferro_lock_owned(s);
    if (sl) {
        if (!sl->op[kind].armed)
            drop_cache(&sl->cache[kind]);
        sl->op[kind].ended_rv = 0;
        ferro_unlock(sl);
    }
}

int ferro_native_cancel(CK_SESSION_HANDLE s, int kind)
{
    int had = 0;
    struct ferro_slot *sl = ferro_lock_owned(s);
    if (sl) {
        had = sl->op[kind].armed;
        ferro_end_op(&sl->op[kind]);
        ferro_unlock(sl);
    }
    return had;
}

/* --- native repeat init ------------------------------------------------------
 * Allowed only when this session holds a cached authorisation for this kind and
 * this key (the engine granted it on an earlier init and nothing that could
 * change the answer has happened since: every such event drops the cache), its
 * lease has not run out (another process's change reaches us only through the
 * engine's look at the store) and the parameters are ones the engine would
 * accept; anything else goes to Python. A governed key's grant (c->grant) is never
 * repeated here: each of its *Init is the gate's audit record (issue 12). */
static int gcm_params(CK_MECHANISM_PTR m, const unsigned char **iv, size_t *iv_len, const unsigned char **aad,
                      size_t *aad_len, size_t *tag_len)
{
    CK_ULONG tag_bits;
    if (!m || m->mechanism != CKM_AES_GCM || !m->pParameter)
        return 0;
    if (m->ulParameterLen == sizeof(CK_GCM_PARAMS)) {
        CK_GCM_PARAMS *p = m->pParameter;
        *iv = p->pIv; *iv_len = p->ulIvLen; *aad = p->pAAD; *aad_len = p->ulAADLen; tag_bits = p->ulTagBits;
    } else if (m->ulParameterLen == sizeof(CK_GCM_PARAMS_V240)) {
        CK_GCM_PARAMS_V240 *p = m->pParameter;
        *iv = p->pIv; *iv_len = p->ulIvLen; *aad = p->pAAD; *aad_len = p->ulAADLen; tag_bits = p->ulTagBits;
    } else {
        return 0;
    }
    if (!*iv || *iv_len < 8 || *iv_len > 128 || (*aad_len && !*aad) || *aad_len > FERRO_GCM_AAD_MAX
        || *aad_len > ferro_max_data_len)
        return 0;                               /* the engine answers for these */
    if (tag_bits < 96 || tag_bits > 128 || tag_bits % 8)
        return 0;
    *tag_len = tag_bits / 8;
    return 1;
}

static CK_RV fast_init(int kind, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
    const unsigned char *iv, *aad;
    size_t iv_len, aad_len, tag_len;
    struct ferro_slot *sl;
    struct ferro_op *op;
    struct ferro_cache *c;
    CK_RV rv = FERRO_PASS;
    if (!ferro_native_enabled || !(sl = ferro_lock_owned(s)))
        return FERRO_PASS;
    op = &sl->op[kind];
    c = &sl->cache[kind];
    if (op->armed) {
        rv = CKR_OPERATION_ACTIVE;
    } else if (c->ctx && c->key == key && !c->grant && ferro_now() < c->expires
               && gcm_params(m, &iv, &iv_len, &aad, &aad_len, &tag_len)) {
        if (ferro_gcm_start(c->ctx, c, iv, iv_len, aad, aad_len)) {
            ferro_end_op(op);
            op->armed = 1;
            op->tag_len = tag_len;
            op->expires = c->expires;           /* no later than the authorisation's lease */
            rv = CKR_OK;
        } else {
            drop_cache(c);                      /* let the engine decide */
        }
    }
    ferro_unlock(sl);
    return rv;
}

CK_RV ferro_fast_C_EncryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
    return fast_init(FERRO_ENC, s, m, key);
}

CK_RV ferro_fast_C_DecryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
    return fast_init(FERRO_DEC, s, m, key);
}
