// The declarations live in include/CProcess.h (static inline); a C target needs one source file.
#include "CProcess.h"
