import CPeftKitSystem
import Testing
@testable import PEFTKit

/// When peftkit asks OpenBLAS for other kernels than it picked by itself (the CLI then starts over with
/// `OPENBLAS_CORETYPE` set): only for a known family slower than what the CPU's features run, never over the user.
@Suite struct BLASKernelsTests {
    static let avx512: UInt32 = PEFTKIT_CPU_AVX | PEFTKIT_CPU_AVX2_FMA | PEFTKIT_CPU_AVX512
    static let avx2: UInt32 = PEFTKIT_CPU_AVX | PEFTKIT_CPU_AVX2_FMA

    @Test func theSSE3FallbackOnAnAVX512CPUGetsTheSkylakeXKernels() {
        #expect(BLASKernels.fasterFamily(than: "Prescott", features: Self.avx512) == "SkylakeX")
        #expect(BLASKernels.fasterFamily(than: "PRESCOTT", features: Self.avx512) == "SkylakeX")
        #expect(BLASKernels.fasterFamily(than: "Haswell", features: Self.avx512) == "SkylakeX")
    }

    @Test func theBestFamilyTheFeaturesAllow() {
        #expect(BLASKernels.fasterFamily(than: "Prescott", features: Self.avx2) == "Haswell")
        #expect(BLASKernels.fasterFamily(than: "Prescott", features: PEFTKIT_CPU_AVX) == "Sandybridge")
        // AVX-512 without AVX2 and FMA is no CPU; the kernels need all of them.
        #expect(BLASKernels.fasterFamily(than: "Prescott", features: PEFTKIT_CPU_AVX512) == nil)
    }

    @Test func nothingWhenOpenBLASAlreadyRunsTheBestOrAFamilyPeftkitDoesNotRank() {
        #expect(BLASKernels.fasterFamily(than: "SkylakeX", features: Self.avx512) == nil)
        #expect(BLASKernels.fasterFamily(than: "Haswell", features: Self.avx2) == nil)
        #expect(BLASKernels.fasterFamily(than: "Prescott", features: 0) == nil)
        #expect(BLASKernels.fasterFamily(than: "Zen", features: Self.avx2) == nil)
        #expect(BLASKernels.fasterFamily(than: "SapphireRapids", features: Self.avx512) == nil)
    }

    @Test func aCoreTypeTheUserSetIsKept() {
        #expect(BLASKernels.fasterFamily(coreTypeSetting: "Prescott") == nil)
        #expect(BLASKernels.fasterFamily(coreTypeSetting: "") == nil)
    }
}
