/* Shared by the C checks (abi_check.c, ops_check.c, and through session.h
 * gcm_fast_check.c and msg_check.c): the function list F, and the CHECK/EXPECT
 * report lines ("ok WHAT" or "FAIL WHAT ..."), counted in `failures`. */
#ifndef FERRO_CHECK_H
#define FERRO_CHECK_H

#include <stdio.h>

#include "ferro_pkcs11.h"

static int failures;
static CK_FUNCTION_LIST_3_0 *F;

#define CHECK(what, cond) do { \
        if (cond) printf("ok %s\n", what); \
        else { printf("FAIL %s (line %d)\n", what, __LINE__); failures++; } \
    } while (0)
#define EXPECT(what, call, want) do { \
        CK_RV _rv = (call); \
        if (_rv == (CK_RV)(want)) printf("ok %s\n", what); \
        else { printf("FAIL %s: rv 0x%lx, want 0x%lx (line %d)\n", what, _rv, (CK_RV)(want), __LINE__); \
               failures++; } \
    } while (0)

#endif
