// OpenMPI handles and constants are C macros (often the address of a global) that Swift
// cannot import; each is exposed here as a static inline getter.
#include <mpi.h>

static inline MPI_Comm sb_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm sb_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Comm sb_comm_self(void) { return MPI_COMM_SELF; }
static inline int sb_any_source(void) { return MPI_ANY_SOURCE; }
static inline MPI_Datatype sb_type_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype sb_type_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype sb_type_int32(void) { return MPI_INT32_T; }
static inline MPI_Datatype sb_type_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype sb_type_uint64(void) { return MPI_UINT64_T; }
static inline MPI_Datatype sb_type_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype sb_type_char(void) { return MPI_CHAR; }
static inline MPI_Op sb_op_sum(void) { return MPI_SUM; }
static inline MPI_Op sb_op_max(void) { return MPI_MAX; }
static inline MPI_Op sb_op_min(void) { return MPI_MIN; }
static inline void *sb_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Request sb_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *sb_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Status *sb_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
static inline int sb_success(void) { return MPI_SUCCESS; }
static inline int sb_thread_single(void) { return MPI_THREAD_SINGLE; }
static inline int sb_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int sb_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int sb_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
static inline int sb_max_processor_name(void) { return MPI_MAX_PROCESSOR_NAME; }
static inline int sb_max_library_version_string(void) { return MPI_MAX_LIBRARY_VERSION_STRING; }
static inline MPI_Errhandler sb_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int sb_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
static inline MPI_Info sb_info_null(void) { return MPI_INFO_NULL; }
