/* A C client that knows nothing about Python: checks libferrohsm-pkcs11.so's
 * ABI. Built by tests/e2e/test_c_abi.py against a header generated from
 * pkcs11_shim.cdefs and provider.constants ("ferro_pkcs11.h").
 *
 *   abi_check MODULE.so
 *
 * Prints "ok <what>" or "FAIL <what>: ..." per check; exit status = failures. */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define N_240 68
#define N_30 92
#define RACERS 8

static int all_set(void *list, int n)
{
    void **slots = (void **)((char *)list + offsetof(CK_FUNCTION_LIST, C_Initialize));
    for (int i = 0; i < n; i++)
        if (!slots[i])
            return 0;
    return 1;
}

static pthread_barrier_t barrier;
static CK_RV race_rv[RACERS];

static void *racer(void *arg)
{
    long i = (long)arg;
    pthread_barrier_wait(&barrier);
    race_rv[i] = F->C_Initialize(NULL);
    return NULL;
}

static void tables(void *lib)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR) = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(lib, "C_GetFunctionList");
    CK_RV (*get_iface)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) =
        (CK_RV (*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS))dlsym(lib, "C_GetInterface");
    CK_RV (*get_ifaces)(CK_INTERFACE_PTR, CK_ULONG_PTR) =
        (CK_RV (*)(CK_INTERFACE_PTR, CK_ULONG_PTR))dlsym(lib, "C_GetInterfaceList");
    CK_FUNCTION_LIST *l240 = NULL;
    CK_INTERFACE *iface = NULL, list[4];
    CK_VERSION v240 = {2, 40}, v99 = {9, 9};
    CK_ULONG count = 0;

    CHECK("symbols exported", get_list && get_iface && get_ifaces);
    if (!get_list || !get_iface || !get_ifaces)
        exit(1);
    EXPECT("C_GetFunctionList(NULL)", get_list(NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetFunctionList", get_list(&l240), CKR_OK);
    CHECK("2.40 list version", l240->version.major == 2 && l240->version.minor == 40);
    CHECK("2.40 list has no NULL slot", all_set(l240, N_240));
    EXPECT("C_GetInterfaceList(NULL count)", get_ifaces(NULL, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetInterfaceList size query", get_ifaces(NULL, &count), CKR_OK);
    CHECK("two interfaces", count == 2);
    count = 1;
    EXPECT("C_GetInterfaceList too small", get_ifaces(list, &count), CKR_BUFFER_TOO_SMALL);
    count = 4;
    EXPECT("C_GetInterfaceList", get_ifaces(list, &count), CKR_OK);
    CHECK("interfaces named PKCS 11", !strcmp((char *)list[0].pInterfaceName, "PKCS 11")
          && !strcmp((char *)list[1].pInterfaceName, "PKCS 11"));
    EXPECT("C_GetInterface(NULL ppInterface)", get_iface(NULL, NULL, NULL, 0), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetInterface default", get_iface(NULL, NULL, &iface, 0), CKR_OK);
    F = (CK_FUNCTION_LIST_3_0 *)iface->pFunctionList;
    CHECK("default interface is 3.0", F->version.major == 3 && F->version.minor == 0);
    CHECK("3.0 list has no NULL slot", all_set(F, N_30));
    EXPECT("C_GetInterface PKCS 11 2.40", get_iface((CK_UTF8CHAR_PTR)"PKCS 11", &v240, &iface, 0), CKR_OK);
    CHECK("2.40 interface is C_GetFunctionList's", iface->pFunctionList == (void *)l240);
    EXPECT("C_GetInterface unknown name", get_iface((CK_UTF8CHAR_PTR)"Vendor NSS FORK SAFE", NULL, &iface, 0),
           CKR_ARGUMENTS_BAD);
    EXPECT("C_GetInterface unknown version", get_iface(NULL, &v99, &iface, 0), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetInterface fork-safe flag", get_iface(NULL, NULL, &iface, CKF_INTERFACE_FORK_SAFE),
           CKR_ARGUMENTS_BAD);
    CHECK("tables share entry points", (void *)F->C_Sign == (void *)l240->C_Sign);
}

static CK_RV create_mutex(CK_VOID_PTR_PTR m) { *m = NULL; return CKR_OK; }
static CK_RV mutex_op(CK_VOID_PTR m) { return CKR_OK; }

static void init_finalize(void)
{
    CK_INFO info;
    CK_C_INITIALIZE_ARGS args;
    CK_ULONG n = 0;
    int dummy;

    EXPECT("C_GetInfo before init", F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT("C_Finalize before init", F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT("C_Initialize(NULL)", F->C_Initialize(NULL), CKR_OK);
    EXPECT("C_Initialize again", F->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    EXPECT("C_GetInfo(NULL)", F->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetInfo", F->C_GetInfo(&info), CKR_OK);
    CHECK("cryptokiVersion 3.0", info.cryptokiVersion.major == 3 && info.cryptokiVersion.minor == 0);
    CHECK("manufacturerID blank-padded", !memcmp(info.manufacturerID, "FerroHSM ", 9)
          && info.manufacturerID[31] == ' ');
    EXPECT("C_GetSlotList(NULL count)", F->C_GetSlotList(CK_FALSE, NULL, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetSlotList size", F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    CHECK("a free slot exists", n >= 1);
    EXPECT("C_OpenSession(NULL phSession)", F->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, NULL),
           CKR_ARGUMENTS_BAD);
    EXPECT("C_GetOperationState not supported", F->C_GetOperationState(1, NULL, &n), CKR_FUNCTION_NOT_SUPPORTED);
    EXPECT("C_WaitForSlotEvent(NULL pSlot)", F->C_WaitForSlotEvent(0, NULL, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetFunctionStatus not parallel", F->C_GetFunctionStatus(1), CKR_FUNCTION_NOT_PARALLEL);
    EXPECT("C_SignMessage not supported", F->C_SignMessage(1, NULL, 0, NULL, 0, NULL, NULL),
           CKR_FUNCTION_NOT_SUPPORTED);
    EXPECT("C_Finalize(pReserved)", F->C_Finalize(&dummy), CKR_ARGUMENTS_BAD);
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    EXPECT("C_Finalize twice", F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);

    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    EXPECT("C_Initialize(CKF_OS_LOCKING_OK)", F->C_Initialize(&args), CKR_OK);
    EXPECT("C_Finalize after OS locking", F->C_Finalize(NULL), CKR_OK);
    args.pReserved = &dummy;
    EXPECT("C_Initialize(pReserved)", F->C_Initialize(&args), CKR_ARGUMENTS_BAD);
    args.pReserved = NULL;
    args.CreateMutex = (CK_CREATEMUTEX)1;
    EXPECT("C_Initialize(one mutex callback)", F->C_Initialize(&args), CKR_ARGUMENTS_BAD);
    EXPECT("still not initialized", F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    args.CreateMutex = create_mutex;
    args.DestroyMutex = mutex_op;
    args.LockMutex = mutex_op;
    args.UnlockMutex = mutex_op;
    args.flags = 0;
    EXPECT("C_Initialize(app mutexes only)", F->C_Initialize(&args), CKR_CANT_LOCK);
    args.flags = CKF_OS_LOCKING_OK;
    EXPECT("C_Initialize(app mutexes + OS locking)", F->C_Initialize(&args), CKR_OK);
    EXPECT("C_Finalize after app mutexes", F->C_Finalize(NULL), CKR_OK);
}

static void race(void)
{
    pthread_t threads[RACERS];
    int ok = 0, already = 0;
    pthread_barrier_init(&barrier, NULL, RACERS);
    for (long i = 0; i < RACERS; i++)
        pthread_create(&threads[i], NULL, racer, (void *)i);
    for (int i = 0; i < RACERS; i++) {
        pthread_join(threads[i], NULL);
        ok += race_rv[i] == CKR_OK;
        already += race_rv[i] == CKR_CRYPTOKI_ALREADY_INITIALIZED;
    }
    CHECK("racing C_Initialize: exactly one CKR_OK", ok == 1 && already == RACERS - 1);
}

static void forked(void)
{
    CK_INFO info;
    int status = -1;
    pid_t pid;
    EXPECT("parent initialized", F->C_GetInfo(&info), CKR_OK);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        int bad = 0;
        bad |= F->C_GetInfo(&info) != CKR_CRYPTOKI_NOT_INITIALIZED;
        bad |= (F->C_Initialize(NULL) != CKR_OK) << 1;
        bad |= (F->C_GetInfo(&info) != CKR_OK) << 2;
        bad |= (F->C_Finalize(NULL) != CKR_OK) << 3;
        _exit(bad);
    }
    waitpid(pid, &status, 0);
    CHECK("fork: child starts uninitialized and can C_Initialize", WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        printf("  child status %d\n", status);
    EXPECT("parent still initialized after fork", F->C_GetInfo(&info), CKR_OK);
}

int main(int argc, char **argv)
{
    void *lib;
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODULE\n", argv[0]);
        return 2;
    }
    lib = dlopen(argv[1], RTLD_LOCAL | RTLD_NOW);
    if (!lib) {
        printf("FAIL dlopen: %s\n", dlerror());
        return 1;
    }
    tables(lib);
    init_finalize();
    race();
    forked();
    EXPECT("final C_Finalize", F->C_Finalize(NULL), CKR_OK);
    printf("%d failures\n", failures);
    return failures;
}
