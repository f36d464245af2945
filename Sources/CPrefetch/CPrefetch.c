/* The module is header-only; SwiftPM builds a C target from at least one source file. */
#include "CPrefetch.h"
