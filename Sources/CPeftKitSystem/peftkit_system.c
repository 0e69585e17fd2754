// For syscall(2), which glibc declares only under _GNU_SOURCE.
#define _GNU_SOURCE
#include "peftkit_system.h"

#include <errno.h>

#if defined(__linux__)
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

// Not every libc's headers define it; the value is the kernel's ABI.
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

int peftkit_rename_exchange(const char *first, const char *second) {
#if defined(SYS_renameat2)
    // The raw system call, not glibc's wrapper: it exists only since glibc 2.28 and needs _GNU_SOURCE anyway.
    return (int)syscall(SYS_renameat2, AT_FDCWD, first, AT_FDCWD, second, RENAME_EXCHANGE);
#else
    (void)first;
    (void)second;
    errno = ENOSYS;
    return -1;
#endif
}

int peftkit_is_tmpfs(int descriptor) {
    struct statfs info;
    if (fstatfs(descriptor, &info) != 0) return -1;
    return info.f_type == TMPFS_MAGIC ? 1 : 0;
}

#else

int peftkit_rename_exchange(const char *first, const char *second) {
    (void)first;
    (void)second;
    errno = ENOSYS;
    return -1;
}

int peftkit_is_tmpfs(int descriptor) {
    (void)descriptor;
    errno = ENOSYS;
    return -1;
}

#endif

unsigned peftkit_cpu_vector_features(void) {
    unsigned features = 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx")) features |= PEFTKIT_CPU_AVX;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) features |= PEFTKIT_CPU_AVX2_FMA;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        features |= PEFTKIT_CPU_AVX512;
#endif
    return features;
}
