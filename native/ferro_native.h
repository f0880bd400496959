/* FerroHSM native AES-GCM fast path: shared declarations (see native/README.md).
 *
 * The shim's generated C_* entry points call ferro_fast_<name>() first; a
 * return of FERRO_PASS means "not mine, go to Python". The engine (through
 * pkcs11_shim/native.py) arms and drops state with the ferro_native_* calls.
 * "ferro_pkcs11.h" is generated at build time from pkcs11_shim.cdefs plus the
 * CK* constants of provider.constants. */
#ifndef FERRO_NATIVE_H
#define FERRO_NATIVE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <openssl/evp.h>

#include "ferro_pkcs11.h"

/* nothing here is part of the module's ABI: only the C_* entry points are */
#pragma GCC visibility push(hidden)

#define FERRO_PASS (~(CK_RV)0)
#define FERRO_SLOTS 4096              /* session handle % FERRO_SLOTS; a clash stays in Python */
#define FERRO_CHUNK (1 << 30)         /* EVP lengths are int */

/* How long what the engine armed stays good without asking it again (native/README.md,
 * "The lease"): another process may destroy or change the key, and the engine learns that
 * only when it checks the store's head. CLOCK_MONOTONIC nanoseconds (ferro_now). */
#define FERRO_LEASE_NS 500000000ULL   /* 500 ms */

/* Length limits, checked before any input is read (native/README.md, "Length limits"):
 * SP 800-38D caps a GCM message at 2^39 - 256 bits of text and 2^64 - 1 bits of AAD;
 * no object in C is larger than PTRDIFF_MAX, so a longer length is no buffer's. */
#define FERRO_GCM_MAX (((size_t)1 << 36) - 32)
#define FERRO_GCM_AAD_MAX (((size_t)1 << 61) - 1)
#define FERRO_MAX_INPUT ((size_t)PTRDIFF_MAX)
/* ... and the engine's own cap on one buffer a caller hands in ([limits] max_data_len),
 * set by pkcs11_shim/native.py before anything is armed: a stated length above it is
 * answered as the engine answers it (its *_LEN_RANGE, or the engine decides), unread */

/* a + b into *sum; 0 when it does not fit a size_t. Every sum of lengths goes through it. */
static inline int ferro_add(size_t a, size_t b, size_t *sum)
{
    return !__builtin_add_overflow(a, b, sum);
}

/* CLOCK_MONOTONIC at its coarse resolution (a tick, a few ms), in ns: a vDSO read with
 * no system call, a few ns; the hot path reads it once per call. */
static inline uint64_t ferro_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static inline uint64_t ferro_lease_end(void)
{
    return ferro_now() + FERRO_LEASE_NS;
}

enum { FERRO_ENC, FERRO_DEC, FERRO_MENC, FERRO_MDEC, FERRO_SIGN, FERRO_KINDS };

/* An authorisation the engine granted to this session for one key and one
 * kind of operation, with the key schedule it implies. */
struct ferro_cache {
    CK_OBJECT_HANDLE key;             /* 0: empty */
    EVP_CIPHER_CTX *ctx;              /* key set; per operation only the IV is set */
    size_t iv_len;                    /* the IV length ctx is set up for */
    EVP_PKEY_CTX *sign;               /* FERRO_SIGN: an EC private key, ready to sign */
    size_t half;                      /* FERRO_SIGN: bytes of r (and of s) */
    uint64_t expires;                 /* ferro_now() past this: a repeat init goes to the engine */
    uint64_t grant;                   /* the engine's id of what it armed; 0: uses not counted */
    uint64_t uses;                    /* operations run since the engine last collected them */
};

#define FERRO_PENDING 1024            /* ended entries' counts waiting for the engine */

/* one more operation run on what `c` holds (counted for the engine's audit) */
static inline void ferro_count_use(struct ferro_cache *c)
{
    c->uses++;
}

struct ferro_op {
    int armed;
    int started;                      /* ENC/DEC/SIGN: a multi-part call was made; MENC/MDEC: a message is open */
    int single;                       /* ENC/DEC/SIGN: a single-part call answered a length */
    size_t taken;                     /* ENC, MENC, SIGN: input bytes taken by the op (or open message) */
    CK_RV ended_rv;                   /* what the next call gets after the engine ended it */
    size_t tag_len;
    unsigned char *buf;               /* DEC/MDEC: ciphertext collected until the tag is checked */
    size_t buf_len, buf_cap;
    unsigned long long ctr_next, ctr_end;   /* MENC: IV counter values reserved by the engine */
    unsigned long long ctr_salt;      /* MENC: their block's salt (fields of >= 8 bytes XOR it) */
    uint64_t expires;                 /* ferro_now() past this: the engine rechecks the key first (last: ferro_end_op) */
};

struct ferro_slot {
    pthread_mutex_t lock;
    CK_SESSION_HANDLE owner;          /* 0: free */
    struct ferro_cache cache[FERRO_KINDS];
    struct ferro_op op[FERRO_KINDS];
};

/* slots.c */
struct ferro_slot *ferro_lock_owned(CK_SESSION_HANDLE s);   /* locked slot owned by s, or NULL */
/* The locked slot if `kind` is armed in session s (its lease renewed by the engine
 * first if it ran out: ferro_py_recheck, called with no slot lock held); else NULL
 * with *rv = FERRO_PASS, or the code the engine left when it ended the operation
 * (given once), or the engine's answer to a recheck that failed (the op ended). */
struct ferro_slot *ferro_enter(int kind, CK_SESSION_HANDLE s, CK_RV *rv);
struct ferro_slot *ferro_claim(CK_SESSION_HANDLE s, int kind);   /* locked, owned by s, kind idle */
void ferro_drop_cache(struct ferro_cache *c);
void ferro_set_grant(struct ferro_cache *c, uint64_t grant);      /* earlier uses go to the pending table */
void ferro_unlock(struct ferro_slot *sl);
void ferro_end_op(struct ferro_op *op);
int ferro_buf_append(struct ferro_op *op, const unsigned char *p, size_t n);
void ferro_free_secret(unsigned char *p, size_t n);

/* gcm.c */
const EVP_CIPHER *ferro_gcm_cipher(size_t key_len);                             /* NULL: not 16/24/32 */
int ferro_gcm_start(EVP_CIPHER_CTX *ctx, struct ferro_cache *c, const unsigned char *iv, size_t iv_len,
                    const unsigned char *aad, size_t aad_len);
int ferro_gcm_update(EVP_CIPHER_CTX *ctx, unsigned char *out, const unsigned char *in, size_t n);
CK_RV ferro_room(CK_BYTE_PTR out, CK_ULONG_PTR pul, size_t need, int *go);   /* two-call convention */
/* CKR_OK if n more bytes keep the op (or open message) of `kind` within FERRO_GCM_MAX
 * (plus the tag for FERRO_DEC); else CKR_DATA_LEN_RANGE / CKR_ENCRYPTED_DATA_LEN_RANGE */
CK_RV ferro_gcm_fits(const struct ferro_op *op, int kind, size_t n);
int ferro_seal_tail(EVP_CIPHER_CTX *ctx, unsigned char *tag, size_t tag_len);  /* GCM final + tag */
/* open (decrypt + check tag) `n` bytes of body into a fresh buffer; CKR_OK or CKR_ENCRYPTED_DATA_INVALID */
CK_RV ferro_gcm_open(EVP_CIPHER_CTX *ctx, const unsigned char *body, size_t n, const unsigned char *tag,
                     size_t tag_len, unsigned char **plain);

/* called by the engine (pkcs11_shim/native.py); 0 = armed, else it stays in Python.
 * pkcs11_shim/build.py reads the lines between the two NATIVE_API markers into its
 * cffi declarations: the one place they are written. */
/* NATIVE_API begin */
/* A count of uses the engine collects (ferro_native_collect): `live` 1 for an entry
 * still armed (uses since the last collection), 0 for one that ended (its last uses). */
struct ferro_count {
    uint64_t grant;
    uint64_t uses;
    int live;
};
extern int ferro_native_enabled;
extern size_t ferro_max_data_len;
int ferro_native_arm(CK_SESSION_HANDLE s, int kind, CK_OBJECT_HANDLE key, const unsigned char *key_bytes,
                     size_t key_len, const unsigned char *iv, size_t iv_len, const unsigned char *aad,
                     size_t aad_len, size_t tag_len, uint64_t grant);
int ferro_native_arm_sign(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const unsigned char *value,
                          size_t value_len, const unsigned char *ec_params, size_t params_len, uint64_t grant);
/* Moves into out (room for max) the counts of live counted entries since the last
 * collection (zeroed) and of ended ones (drained); returns how many; *lost: uses that
 * found the pending table full since the last collection (the engine then drops all). */
size_t ferro_native_collect(struct ferro_count *out, size_t max, uint64_t *lost);
void ferro_native_drop_session(CK_SESSION_HANDLE s);
void ferro_native_drop_key(CK_OBJECT_HANDLE key, CK_RV ended_rv);
void ferro_native_drop_all(void);
void ferro_native_forget(CK_SESSION_HANDLE s, int kind);
int ferro_native_cancel(CK_SESSION_HANDLE s, int kind);
/* NATIVE_API end */

/* the engine reserves IV counter values for a key (an extern "Python+C" callback) */
CK_RV ferro_py_reserve_iv(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, unsigned long long *start,
                          unsigned long long *count, unsigned long long *salt);
/* the engine checks the store's head and that `key` still names a key the session
 * sees (an extern "Python+C" callback): CKR_OK renews a lease that ran out */
CK_RV ferro_py_recheck(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key);

#pragma GCC visibility pop
#endif
