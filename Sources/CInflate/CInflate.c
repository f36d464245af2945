#include "CInflate.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* HDF5's flag for the read direction (H5Zpublic.h); not included here to keep this target free
   of HDF5's header path. */
#define THINKV_H5Z_FLAG_REVERSE 0x0100

/* HDF5 calls filters under the caller's lock (the serial library is used from one thread at a
   time), so plain globals are enough. */
static size_t inflate_limit = 256u << 20;
static int limit_exceeded = 0;

void thinkv_set_inflate_limit(size_t bytes) { inflate_limit = bytes; }
size_t thinkv_inflate_limit(void) { return inflate_limit; }
int thinkv_inflate_limit_exceeded(void) { return limit_exceeded; }
void thinkv_reset_inflate_limit_exceeded(void) { limit_exceeded = 0; }

static size_t inflate_bounded(size_t nbytes, size_t *buf_size, void **buf) {
    size_t capacity = inflate_limit;
    if (capacity == 0) capacity = 1;
    unsigned char *out = malloc(capacity);
    if (!out) return 0;
    z_stream stream;
    memset(&stream, 0, sizeof stream);
    stream.next_in = (Bytef *)*buf;
    stream.avail_in = (uInt)nbytes;
    if (nbytes > (size_t)(uInt)-1 || inflateInit(&stream) != Z_OK) {
        free(out);
        return 0;
    }
    size_t produced = 0;
    int status;
    for (;;) {
        /* zlib counts in uInt: feed the output in pieces below 4 GiB. */
        size_t room = capacity - produced;
        stream.next_out = out + produced;
        stream.avail_out = (uInt)(room > (1u << 30) ? (1u << 30) : room);
        size_t offered = stream.avail_out;
        status = inflate(&stream, Z_NO_FLUSH);
        produced += offered - stream.avail_out;
        if (status == Z_STREAM_END) break;
        if (status != Z_OK && status != Z_BUF_ERROR) break;
        if (produced == capacity) {
            /* Full: one more byte of output means the chunk is larger than declared. */
            unsigned char probe;
            stream.next_out = &probe;
            stream.avail_out = 1;
            status = inflate(&stream, Z_NO_FLUSH);
            if (stream.avail_out == 0) limit_exceeded = 1;
            else if (status == Z_STREAM_END) break;
            status = Z_DATA_ERROR;
            break;
        }
        if (status == Z_BUF_ERROR && stream.avail_in == 0) break; /* truncated stream */
    }
    inflateEnd(&stream);
    if (status != Z_STREAM_END) {
        free(out);
        return 0;
    }
    free(*buf);
    *buf = out;
    *buf_size = capacity;
    return produced;
}

static size_t deflate_chunk(size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes, size_t *buf_size,
                            void **buf) {
    int level = cd_nelmts > 0 ? (int)cd_values[0] : Z_DEFAULT_COMPRESSION;
    if (level > 9) level = 9;
    uLongf length = compressBound((uLong)nbytes);
    unsigned char *out = malloc(length);
    if (!out) return 0;
    if (compress2(out, &length, (const Bytef *)*buf, (uLong)nbytes, level) != Z_OK) {
        free(out);
        return 0;
    }
    free(*buf);
    *buf = out;
    *buf_size = length;
    return length;
}

size_t thinkv_deflate_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[],
                             size_t nbytes, size_t *buf_size, void **buf) {
    if (flags & THINKV_H5Z_FLAG_REVERSE) return inflate_bounded(nbytes, buf_size, buf);
    return deflate_chunk(cd_nelmts, cd_values, nbytes, buf_size, buf);
}
