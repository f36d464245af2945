// zlib for tests that build compressed chunks by hand (compression bombs).
#ifndef THINKV_CZLIB_SHIM_H
#define THINKV_CZLIB_SHIM_H
#include <zlib.h>
#endif
