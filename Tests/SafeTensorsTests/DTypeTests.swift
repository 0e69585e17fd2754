import Testing
@testable import SafeTensors

@Test func allTwentyTwoDTypesAreKnown() {
    #expect(DType.allCases.count == 22)
    #expect(DType(rawValue: "BF16") == .bf16)
    #expect(DType(rawValue: "bf16") == nil)
    #expect(DType.f4.bitWidth == 4)
    #expect(DType.c64.bitWidth == 64)
}
