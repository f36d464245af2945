// HDF5's type and property-list identifiers are macros that expand to library globals
// (and need H5open() to have run); Swift cannot import them, so they are wrapped here.
#ifndef THINKV_CHDF5_SHIM_H
#define THINKV_CHDF5_SHIM_H

#include <hdf5.h>

static inline hid_t thinkv_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline hid_t thinkv_H5S_ALL(void) { return H5S_ALL; }
static inline hid_t thinkv_H5E_DEFAULT(void) { return H5E_DEFAULT; }
static inline hid_t thinkv_H5P_DATASET_CREATE(void) { return H5P_DATASET_CREATE; }
static inline hid_t thinkv_H5P_FILE_ACCESS(void) { return H5P_FILE_ACCESS; }
static inline hid_t thinkv_H5P_DATASET_ACCESS(void) { return H5P_DATASET_ACCESS; }

static inline unsigned thinkv_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned thinkv_H5F_ACC_TRUNC(void) { return H5F_ACC_TRUNC; }
static inline unsigned thinkv_H5F_ACC_RDWR(void) { return H5F_ACC_RDWR; }

static inline hid_t thinkv_H5T_NATIVE_FLOAT(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t thinkv_H5T_NATIVE_DOUBLE(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t thinkv_H5T_NATIVE_INT8(void) { return H5T_NATIVE_INT8; }
static inline hid_t thinkv_H5T_NATIVE_INT32(void) { return H5T_NATIVE_INT32; }
static inline hid_t thinkv_H5T_NATIVE_INT64(void) { return H5T_NATIVE_INT64; }
static inline hid_t thinkv_H5T_NATIVE_UINT16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t thinkv_H5T_STD_I8LE(void) { return H5T_STD_I8LE; }
static inline hid_t thinkv_H5T_STD_I32LE(void) { return H5T_STD_I32LE; }
static inline hid_t thinkv_H5T_STD_I64LE(void) { return H5T_STD_I64LE; }
static inline hid_t thinkv_H5T_IEEE_F32LE(void) { return H5T_IEEE_F32LE; }
static inline hid_t thinkv_H5T_C_S1(void) { return H5T_C_S1; }

/// Silences HDF5's own error-stack printing: the caller reports one clear line instead.
static inline void thinkv_silence_hdf5_errors(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/// IEEE 754 binary16 as an HDF5 datatype (HDF5 1.10 has no predefined half type);
/// the same layout h5py and numpy use for float16.
static inline hid_t thinkv_create_float16_type(void) {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0) return t;
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_precision(t, 16) < 0 ||
        H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

#endif
