#ifndef THINKV_CPROCESS_H
#define THINKV_CPROCESS_H

/* prctl is variadic, which Swift cannot call; this wraps the one use. */
#if defined(__linux__)
#include <signal.h>
#include <sys/prctl.h>

/* Asks the kernel to send `signal` to this process when its parent thread exits. 0 on success. */
static inline int thinkv_set_parent_death_signal(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0UL, 0UL, 0UL);
}
#else
static inline int thinkv_set_parent_death_signal(int signal) {
    (void)signal;
    return -1;
}
#endif

#endif
