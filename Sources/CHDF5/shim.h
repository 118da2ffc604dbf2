// HDF5's type and property-list ids are macros over globals (H5T_NATIVE_FLOAT_g and friends)
// that read -1 until H5open() has run; each getter calls H5open() first, which is cheap
// after the first call.
#include <hdf5.h>

static inline hid_t sb_h5t_native_float(void) { H5open(); return H5T_NATIVE_FLOAT; }
static inline hid_t sb_h5t_native_double(void) { H5open(); return H5T_NATIVE_DOUBLE; }
static inline hid_t sb_h5t_native_int64(void) { H5open(); return H5T_NATIVE_INT64; }
static inline hid_t sb_h5t_native_int32(void) { H5open(); return H5T_NATIVE_INT32; }
static inline hid_t sb_h5t_native_uint8(void) { H5open(); return H5T_NATIVE_UINT8; }
static inline hid_t sb_h5t_c_s1(void) { H5open(); return H5T_C_S1; }
static inline hid_t sb_h5t_ieee_f32le(void) { H5open(); return H5T_IEEE_F32LE; }
static inline hid_t sb_h5p_default(void) { return H5P_DEFAULT; }
static inline hid_t sb_h5p_dataset_create(void) { H5open(); return H5P_DATASET_CREATE; }
static inline hid_t sb_h5p_file_access(void) { H5open(); return H5P_FILE_ACCESS; }
static inline hid_t sb_h5p_dataset_access(void) { H5open(); return H5P_DATASET_ACCESS; }
static inline hid_t sb_h5p_link_create(void) { H5open(); return H5P_LINK_CREATE; }
static inline hid_t sb_h5s_all(void) { return H5S_ALL; }
static inline hid_t sb_h5e_default(void) { return H5E_DEFAULT; }
static inline unsigned sb_h5f_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline unsigned sb_h5f_acc_excl(void) { return H5F_ACC_EXCL; }
static inline unsigned sb_h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline unsigned sb_h5f_acc_rdwr(void) { return H5F_ACC_RDWR; }
