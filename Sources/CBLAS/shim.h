// OpenBLAS: CBLAS interface plus the OpenBLAS threading and identification calls.
#include <cblas.h>
