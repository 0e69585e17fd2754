#ifndef CPEFTKIT_JSONC_SHIM_H
#define CPEFTKIT_JSONC_SHIM_H
#include <json-c/json.h>
#endif
