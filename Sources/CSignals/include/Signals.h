#pragma once
#include <stdint.h>

/// Installs handlers for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT that write one line,
/// "<prefix> killed by signal SIGSEGV (invalid memory access) in training step N" (the step
/// part once a step has been set), to stderr and then hand the signal to the handler that was
/// installed before, if any, or to the default action. `prefix` is copied; the handler itself
/// only calls async-signal-safe functions.
void sb_install_fatal_signal_report(const char *prefix);

/// The training step the report names; set once per step (a plain store).
void sb_fatal_signal_set_step(int64_t step);

/// Notes SIGTERM and SIGINT as a request (clusters send SIGTERM before preemption): training
/// finishes its step, saves a checkpoint and exits. The calling thread, and every thread it
/// starts later, blocks them; one thread of this library takes them with sigwait, so no signal
/// interrupts a computing thread. A handler that only notes catches them in threads started
/// before. A second SIGINT kills at once. Call it before threads that compute are started.
void sb_install_stop_request(void);

/// The signal that asked to stop (SIGTERM or SIGINT), or 0.
int sb_stop_requested(void);
