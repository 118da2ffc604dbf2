#include "Signals.h"
#include <signal.h>
#include <string.h>
#include <unistd.h>

static char prefix_buf[256];
static volatile int64_t current_step = -1;
static struct sigaction previous[32];
static const int signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

static const char *signal_name(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV (invalid memory access)";
    case SIGBUS: return "SIGBUS (bus error)";
    case SIGFPE: return "SIGFPE (arithmetic fault)";
    case SIGILL: return "SIGILL (illegal instruction; was the binary built for another CPU?)";
    case SIGABRT: return "SIGABRT (abort)";
    default: return "a fatal signal";
    }
}

/// Decimal digits of v into buf (no terminator); returns the length.
static size_t format_int(int64_t v, char *buf) {
    char tmp[24];
    size_t n = 0;
    int negative = v < 0;
    uint64_t u = negative ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
    do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    size_t len = 0;
    if (negative) buf[len++] = '-';
    while (n) buf[len++] = tmp[--n];
    return len;
}

static void handler(int sig, siginfo_t *info, void *context) {
    char line[512];
    size_t len = 0;
    size_t p = strlen(prefix_buf);
    memcpy(line + len, prefix_buf, p); len += p;
    const char *what = " killed by signal ";
    memcpy(line + len, what, strlen(what)); len += strlen(what);
    const char *name = signal_name(sig);
    size_t nl = strlen(name);
    if (nl > 200) nl = 200;
    memcpy(line + len, name, nl); len += nl;
    if (current_step >= 0) {
        const char *at = " in training step ";
        memcpy(line + len, at, strlen(at)); len += strlen(at);
        len += format_int(current_step, line + len);
    }
    line[len++] = '\n';
    ssize_t ignored = write(2, line, len);
    (void)ignored;
    // Hand over: to the previous handler if there was one, else the default action.
    struct sigaction *old = &previous[sig];
    sigaction(sig, old, NULL);
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction) { old->sa_sigaction(sig, info, context); }
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        old->sa_handler(sig);
    }
    // A fault re-executes the faulting instruction on return; a raised signal would not.
    signal(sig, SIG_DFL);
    raise(sig);
}

void sb_install_fatal_signal_report(const char *prefix) {
    strncpy(prefix_buf, prefix, sizeof prefix_buf - 1);
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = handler;
        action.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&action.sa_mask);
        sigaction(signals[i], &action, &previous[signals[i]]);
    }
}

void sb_fatal_signal_set_step(int64_t step) { current_step = step; }
