#ifndef PEFTKIT_SYSTEM_H
#define PEFTKIT_SYSTEM_H

// Linux system calls that Swift's Glibc module does not declare (glibc hides them behind _GNU_SOURCE or in headers
// the module leaves out). Elsewhere each reports "not available" so the package still compiles.

/// Atomically swaps the paths `first` and `second` (renameat2 with RENAME_EXCHANGE, Linux 3.15+).
/// Returns 0 on success, else -1 with errno set (ENOSYS where the call does not exist).
int peftkit_rename_exchange(const char *first, const char *second);

/// Whether the file open as `descriptor` lives on tmpfs: 1 if so, 0 if not, -1 with errno set when fstatfs fails
/// (ENOSYS where the call does not exist).
int peftkit_is_tmpfs(int descriptor);

/// The x86-64 vector extensions this CPU runs (cpuid, through the compiler's __builtin_cpu_supports), as the bits
/// below; 0 on other architectures. They decide which OpenBLAS kernel family can run here.
#define PEFTKIT_CPU_AVX 1u
#define PEFTKIT_CPU_AVX2_FMA 2u
/// AVX-512 F, CD, DQ, BW and VL: what OpenBLAS's SkylakeX kernels use.
#define PEFTKIT_CPU_AVX512 4u
unsigned peftkit_cpu_vector_features(void);

#endif
