#include "Signals.h"
#include <signal.h>
#include <string.h>

static volatile sig_atomic_t requested = 0;

static void note(int sig) {
    requested = sig;
    // A second Ctrl-C takes the default action.
    if (sig == SIGINT) signal(SIGINT, SIG_DFL);
}

void sb_install_stop_request(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = note;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
}

int sb_stop_requested(void) { return requested; }
