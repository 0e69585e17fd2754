#if canImport(Glibc)
import Glibc
#endif
import PEFTKit

/// Starts the `peftkit` executable over with `OPENBLAS_CORETYPE` set when OpenBLAS loaded slower kernels than this
/// CPU runs (see `BLASKernels`): the products of a merge or an extract then run up to 5× faster, with results as
/// correct (only the order of Float32 sums differs). A `OPENBLAS_CORETYPE` the user set is left as it is.
public enum KernelRelaunch {
    /// Returns only when nothing is to be done or the new start failed (the loaded kernels then serve).
    public static func relaunchIfFaster() {
        let setting = getenv("OPENBLAS_CORETYPE").map { String(cString: $0) }
        guard let family = BLASKernels.fasterFamily(coreTypeSetting: setting) else { return }
        setenv("OPENBLAS_CORETYPE", family, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        unsetenv("OPENBLAS_CORETYPE")
    }
}
