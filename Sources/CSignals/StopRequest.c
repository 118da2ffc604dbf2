#include "Signals.h"
#include <pthread.h>
#include <signal.h>
#include <string.h>

static volatile sig_atomic_t requested = 0;

static void note(int sig) {
    requested = sig;
    // A second Ctrl-C takes the default action.
    if (sig == SIGINT) signal(SIGINT, SIG_DFL);
}

// The stop signals are taken by this thread alone (sigwait), never by a thread that computes:
// a signal frame pushed onto a thread inside oneDNN's generated code corrupted its stack data
// (a crash or a damaged heap in about one stop in three, fashion-moe on AVX-512).
static void *wait_for_stop(void *unused) {
    (void)unused;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        if (sig == SIGINT && requested == SIGINT) {
            // The second Ctrl-C: killed by it, at once.
            signal(SIGINT, SIG_DFL);
            sigset_t only;
            sigemptyset(&only);
            sigaddset(&only, SIGINT);
            pthread_sigmask(SIG_UNBLOCK, &only, NULL);
            raise(SIGINT);
        }
        requested = sig;
    }
    return NULL;
}

void sb_install_stop_request(void) {
    // The handler, for threads that libraries started before this call (OpenBLAS's) and
    // that therefore do not block the signals.
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = note;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    // Blocked in this thread and so in every thread it starts from now on (MPI's, OpenMP's,
    // the worker pool's); the waiting thread takes them.
    static int waiting = 0;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (!waiting) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, wait_for_stop, NULL) == 0) {
            pthread_detach(thread);
            waiting = 1;
        }
    }
}

int sb_stop_requested(void) { return requested; }
