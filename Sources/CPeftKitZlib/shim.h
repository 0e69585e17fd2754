#ifndef CPEFTKIT_ZLIB_SHIM_H
#define CPEFTKIT_ZLIB_SHIM_H
#include <zlib.h>
#endif
