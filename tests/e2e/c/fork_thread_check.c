/* fork() from a thread that never called the module (issue 9, robustness 2).
 *
 * The main thread initialises the module (which starts Python); a thread made
 * with pthread_create, that never calls the module and so has no Python thread
 * state, forks ROUNDS times. Each child initialises the module again, lists
 * slots, finalises and exits 0. The old pthread_atfork handlers aborted every
 * child ("Fatal Python error: init_threadstate: thread state already
 * initialized"). The parent keeps working after each fork. */
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "session.h"

#define ROUNDS 30

static int children_ok;

static int child(void)
{
    CK_ULONG n = 0;
    if (F->C_Initialize(NULL) != CKR_OK || F->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_OK || n == 0
        || F->C_Finalize(NULL) != CKR_OK)
        return 1;
    return 0;
}

static void *forker(void *arg)
{
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        int status = -1;
        pid_t pid = fork();
        if (pid == 0)
            _exit(child());
        if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0)
            children_ok++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t t;
    CK_ULONG n = 0;
    if (argc < 2) {
        printf("usage: %s MODULE\n", argv[0]);
        return 2;
    }
    load(argv[1]);
    EXPECT("C_Initialize", F->C_Initialize(NULL), CKR_OK);
    CHECK("thread started", pthread_create(&t, NULL, forker, NULL) == 0);
    pthread_join(t, NULL);
    printf("children ok: %d of %d\n", children_ok, ROUNDS);
    CHECK("every child initialised, listed slots and finalised", children_ok == ROUNDS);
    EXPECT("the parent still works", F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    EXPECT("C_Finalize", F->C_Finalize(NULL), CKR_OK);
    printf("%d failures\n", failures);
    return failures != 0;
}
