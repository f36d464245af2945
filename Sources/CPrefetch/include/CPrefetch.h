#ifndef THINKV_CPREFETCH_H
#define THINKV_CPREFETCH_H

/* Swift has no prefetch instruction of its own. These ask the core to start loading the cache
   line holding `address` into L2 (and the levels below it) before the kernels need it; they are
   hints: no fault, no effect on any result. */
static inline void thinkv_prefetch_l2(const void *address) {
    __builtin_prefetch(address, 0, 2);
}

#endif
