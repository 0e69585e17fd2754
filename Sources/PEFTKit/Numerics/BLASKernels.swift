import CPeftKitOpenBLAS
import CPeftKitSystem

/// Which of OpenBLAS's CPU kernel families runs the products, and whether a faster one could.
///
/// A DYNAMIC_ARCH OpenBLAS picks its kernels by CPU model when it loads. Debian 12's 0.3.21 does not know models
/// newer than it (Emerald Rapids, say) and falls back to its SSE3 kernels, `Prescott`: measured here, Float32
/// products of a 5632 × 2048 matrix with 32 columns run at 16 GFLOPS with them and 85 with the AVX-512 `SkylakeX`
/// ones on the same core. The choice can only be made before the library loads, through `OPENBLAS_CORETYPE`.
public enum BLASKernels {
    /// The families peftkit may ask for, slowest first, each with the CPU features its kernels use. (Cooperlake,
    /// SkylakeX plus bfloat16 products, has the same Float32 kernels.)
    static let families: [(name: String, needs: UInt32)] = [
        ("Prescott", 0),
        ("Sandybridge", PEFTKIT_CPU_AVX),
        ("Haswell", PEFTKIT_CPU_AVX | PEFTKIT_CPU_AVX2_FMA),
        ("SkylakeX", PEFTKIT_CPU_AVX | PEFTKIT_CPU_AVX2_FMA | PEFTKIT_CPU_AVX512),
    ]

    /// The family OpenBLAS runs in this process (`openblas_get_corename`), e.g. "Haswell".
    public static var active: String {
        String(cString: openblas_get_corename())
    }

    /// The fastest family this CPU can run, when OpenBLAS runs a slower one of `families` by its own choice;
    /// nil when `OPENBLAS_CORETYPE` is set (the user chose), when OpenBLAS runs a family not in the list (a newer
    /// OpenBLAS that knows this CPU, a non-x86 one), or when it already runs the fastest.
    public static func fasterFamily(coreTypeSetting: String?) -> String? {
        guard coreTypeSetting == nil else { return nil }
        return fasterFamily(than: active, features: peftkit_cpu_vector_features())
    }

    static func fasterFamily(than active: String, features: UInt32) -> String? {
        guard let current = families.firstIndex(where: { $0.name.lowercased() == active.lowercased() }),
              let best = families.lastIndex(where: { $0.needs & features == $0.needs }),
              best > current else { return nil }
        return families[best].name
    }
}
