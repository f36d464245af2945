#ifndef THINKV_CINFLATE_H
#define THINKV_CINFLATE_H

#include <stddef.h>

/* HDF5's deflate filter (id 1) with a bound on what one chunk may inflate to. The library's own
   filter doubles its buffer until the stream ends, so a 2 MB chunk of compressed zeros becomes
   2 GiB in memory even when the dataset declares the chunk to be a few KB. This one inflates into
   a buffer of `thinkv_inflate_limit()` bytes (the reader sets it to the chunk's declared size) and
   fails the read when the stream holds more. Same arguments and zlib format as the library's
   filter (registered over it with H5Zregister), so writing is unchanged. */
size_t thinkv_deflate_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[],
                             size_t nbytes, size_t *buf_size, void **buf);

/* The most bytes one chunk may inflate to; reads fail beyond it. */
void thinkv_set_inflate_limit(size_t bytes);
size_t thinkv_inflate_limit(void);

/* Whether a read failed since the last reset because a chunk inflated beyond the limit. */
int thinkv_inflate_limit_exceeded(void);
void thinkv_reset_inflate_limit_exceeded(void);

#endif
