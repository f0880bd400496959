/* C_WaitForSlotEvent, C_GetFunctionStatus and C_CancelFunction through the
 * built module: slot_event_check MODULE COMMAND LABEL. COMMAND (run with
 * system(), another process) makes a token labelled LABEL in the token
 * directory while a thread is blocked in C_WaitForSlotEvent(0); then a blocked
 * wait is ended by C_Finalize from the main thread. Joins are bounded, so a
 * hang is a FAIL, not a stuck test. */
#define _GNU_SOURCE
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "session.h"

struct wait { CK_RV rv; CK_SLOT_ID slot; pthread_t thread; };

static void *waiter(void *arg)
{
    struct wait *w = arg;
    w->rv = F->C_WaitForSlotEvent(0, &w->slot, NULL);
    return NULL;
}

static void start_wait(struct wait *w)
{
    w->rv = (CK_RV)-1;
    w->slot = (CK_SLOT_ID)-1;
    pthread_create(&w->thread, NULL, waiter, w);
}

static void join_wait(struct wait *w)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    if (pthread_timedjoin_np(w->thread, NULL, &until) != 0) {
        printf("FAIL blocked C_WaitForSlotEvent never returned\n");
        fflush(stdout);
        _exit(1);
    }
}

int main(int argc, char **argv)
{
    CK_SLOT_ID slot = 0;
    CK_TOKEN_INFO info;
    struct wait w;
    char padded[32];
    int dummy;

    if (argc != 4) {
        printf("FAIL usage: %s MODULE COMMAND LABEL\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    load(argv[1]);

    EXPECT("C_WaitForSlotEvent before init", F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, NULL),
           CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT("C_GetFunctionStatus before init", F->C_GetFunctionStatus(1), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT("C_CancelFunction before init", F->C_CancelFunction(1), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT("C_Initialize", F->C_Initialize(NULL), CKR_OK);
    EXPECT("C_GetFunctionStatus", F->C_GetFunctionStatus(1), CKR_FUNCTION_NOT_PARALLEL);
    EXPECT("C_CancelFunction", F->C_CancelFunction(1), CKR_FUNCTION_NOT_PARALLEL);
    EXPECT("C_WaitForSlotEvent(NULL pSlot)", F->C_WaitForSlotEvent(CKF_DONT_BLOCK, NULL, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_WaitForSlotEvent(pReserved)", F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, &dummy),
           CKR_ARGUMENTS_BAD);
    EXPECT("quiet library: no event", F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, NULL), CKR_NO_EVENT);

    start_wait(&w);
    CHECK("another process made a token", system(argv[2]) == 0);
    join_wait(&w);
    EXPECT("blocked wait woken by the new token", w.rv, CKR_OK);
    memset(padded, ' ', 32);
    memcpy(padded, argv[3], strlen(argv[3]));
    CHECK("the event names the new token's slot", F->C_GetTokenInfo(w.slot, &info) == CKR_OK
          && !memcmp(info.label, padded, 32));
    EXPECT("no event after it was reported", F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, NULL), CKR_NO_EVENT);

    start_wait(&w);
    usleep(300000);   /* lets the thread get into the wait; either way it must answer NOT_INITIALIZED */
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    join_wait(&w);
    EXPECT("blocked wait ended by C_Finalize", w.rv, CKR_CRYPTOKI_NOT_INITIALIZED);

    printf("%d failures\n", failures);
    return failures != 0;
}
