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

#endif
