import Foundation
import Testing
@testable import SafeTensors

/// The value a 16-bit pattern denotes, computed from the IEEE definition (sign, biased exponent, fraction).
private func definitionValue(bits: UInt16, exponentBits: Int, fractionBits: Int) -> Double {
    let sign: Double = bits >> 15 == 1 ? -1 : 1
    let exponentMask = (1 << exponentBits) - 1
    let exponent = Int(bits >> fractionBits) & exponentMask
    let fraction = Double(Int(bits) & ((1 << fractionBits) - 1))
    let bias = (1 << (exponentBits - 1)) - 1
    if exponent == exponentMask { return fraction == 0 ? sign * .infinity : .nan }
    if exponent == 0 { return sign * fraction * pow(2, Double(1 - bias - fractionBits)) }
    return sign * (1 + fraction / Double(1 << fractionBits)) * pow(2, Double(exponent - bias))
}

@Test func bf16DecodesAllPatternsPerDefinition() {
    for bits in 0...UInt16.max {
        let expected = definitionValue(bits: bits, exponentBits: 8, fractionBits: 7)
        let got = Codec.float(fromBF16: bits)
        if expected.isNaN { #expect(got.isNaN); continue }
        #expect(Double(got) == expected, "bf16 \(bits)")
        if Double(got) != expected { return }
    }
}

@Test func f16DecodesAllPatternsPerDefinition() {
    for bits in 0...UInt16.max {
        let expected = definitionValue(bits: bits, exponentBits: 5, fractionBits: 10)
        let got = Codec.float(fromF16: bits)
        if expected.isNaN { #expect(got.isNaN); continue }
        #expect(Double(got) == expected, "f16 \(bits)")
        if Double(got) != expected { return }
    }
}

/// Round-to-nearest-even onto a sorted list of finite representable values, by exact Double arithmetic.
private func nearestEven(_ x: Double, below: (bits: UInt16, value: Double), above: (bits: UInt16, value: Double)) -> UInt16 {
    let down = abs(x - below.value), up = abs(above.value - x)
    if down < up { return below.bits }
    if up < down { return above.bits }
    return below.bits & 1 == 0 ? below.bits : above.bits
}

/// Every representable value, every midpoint between neighbours and points just either side of it must encode to
/// the pattern the definition picks (ties to even; past the largest finite value's midpoint, infinity).
private func checkEncoder(exponentBits: Int, fractionBits: Int, encode: (Float) -> UInt16) {
    let decode = { (bits: UInt16) in definitionValue(bits: bits, exponentBits: exponentBits, fractionBits: fractionBits) }
    let infinity = UInt16(((1 << exponentBits) - 1) << fractionBits)
    for sign in [UInt16(0), 0x8000] {
        for magnitude in 0..<infinity {
            let low = sign | magnitude, high = sign | (magnitude + 1)
            // Past the largest finite value, IEEE rounds as if the exponent went on: "infinity" sits at 2^(emax+1).
            let lowValue = decode(low)
            let highValue = high & 0x7FFF == infinity ? (sign == 0 ? 1 : -1) * pow(2, Double(1 << (exponentBits - 1))) : decode(high)
            #expect(encode(Float(lowValue)) == low, "exact \(low)")
            let midpoint = (lowValue + highValue) / 2
            guard let mid = Float(exactly: midpoint) else { continue }
            for x in [mid.nextDown, mid, mid.nextUp] {
                let expected = nearestEven(Double(x), below: (low, lowValue), above: (high, highValue))
                if encode(x) != expected {
                    Issue.record("encode(\(x)) = \(encode(x)), expected \(expected)")
                    return
                }
            }
        }
    }
}

@Test func bf16EncodesRoundToNearestEvenEverywhere() {
    checkEncoder(exponentBits: 8, fractionBits: 7, encode: Codec.bf16(from:))
    #expect(Codec.bf16(from: .nan) == 0x7FC0)
    #expect(Codec.bf16(from: -Float.nan) == 0x7FC0)
    #expect(Codec.bf16(from: .infinity) == 0x7F80)
    #expect(Codec.bf16(from: -.greatestFiniteMagnitude) == 0xFF80)  // rounds past the largest bf16 to -Inf
}

@Test func f16EncodesRoundToNearestEvenEverywhere() {
    checkEncoder(exponentBits: 5, fractionBits: 10, encode: Codec.f16(from:))
    #expect(Codec.f16(from: Float(65519.99)) == 0x7BFF)
    #expect(Codec.f16(from: 65520) == 0x7C00)
    #expect(Codec.f16(from: -1e9) == 0xFC00)
    #expect(Codec.f16(from: .infinity) == 0x7C00)
    #expect(Codec.f16(from: Float(bitPattern: 0x7FC1_2345)) == 0x7E09)  // NaN keeps sign and top payload bits, quiet
    #expect(Codec.f16(from: Float(bitPattern: 0xFF80_0001)) == 0xFE00)
    #expect(Codec.f16(from: 0x1p-25) == 0)  // exactly half the smallest subnormal: ties to even (zero)
    #expect(Codec.f16(from: Float(0x1p-25).nextUp) == 1)
}

@Test func codecsMatchTorchOnTheReferenceSample() throws {
    // fixtures/reference/codec_reference.safetensors: torch's own `.to(bfloat16)` / `.to(float16)` of `source`.
    let file = try SafeTensorsFile(path: repositoryRoot + "/fixtures/reference/codec_reference.safetensors")
    let source = try file.view("source")
    var values = [Float](repeating: 0, count: source.info.elementCount)
    values.withUnsafeMutableBufferPointer { Codec.decode(source.bytes, as: .f32, into: $0) }
    #expect(values.count > 1000)
    for (name, dtype) in [("as_bf16", DType.bf16), ("as_f16", DType.f16)] {
        let torch = [UInt8](try file.view(name).bytes)
        var ours = [UInt8](repeating: 0, count: torch.count)
        let nonFinite = values.withUnsafeBufferPointer { src in
            ours.withUnsafeMutableBytes { Codec.encode(src, as: dtype, into: $0) }
        }
        // The encoder's screen says whether torch's result holds an infinity or a NaN (exponent bits all ones) …
        let exponentMask: UInt16 = dtype == .bf16 ? 0x7F80 : 0x7C00
        let torchBits = (0..<values.count).map { UInt16(torch[2 * $0]) | UInt16(torch[2 * $0 + 1]) << 8 }
        let torchFinite = torchBits.map { $0 & exponentMask != exponentMask }
        #expect(torchFinite.contains(false) && torchFinite.contains(true))
        #expect(nonFinite)
        // … and stays quiet on the values torch keeps finite, the largest of them included.
        let finite = zip(values, torchFinite).filter(\.1).map(\.0)
        var scratch = [UInt8](repeating: 0, count: 2 * finite.count)
        #expect(!finite.withUnsafeBufferPointer { src in scratch.withUnsafeMutableBytes { Codec.encode(src, as: dtype, into: $0) } })
        let mismatches = (0..<values.count).filter { (i: Int) -> Bool in
            torch[2 * i] != ours[2 * i] || torch[2 * i + 1] != ours[2 * i + 1]
        }
        let first = mismatches.first.map { "first at \($0): source \(values[$0])" } ?? ""
        #expect(mismatches.isEmpty, "\(name): \(mismatches.count) mismatches \(first)")
        // And back: decoding torch's bits gives the values torch would upcast to (checked via our own encoder's inverse).
        var decoded = [Float](repeating: 0, count: values.count)
        torch.withUnsafeBytes { raw in decoded.withUnsafeMutableBufferPointer { Codec.decode(raw, as: dtype, into: $0) } }
        for i in 0..<values.count where !values[i].isNaN {
            let roundTrip = dtype == .bf16 ? Codec.bf16(from: decoded[i]) : Codec.f16(from: decoded[i])
            #expect(UInt16(torch[2 * i]) | UInt16(torch[2 * i + 1]) << 8 == roundTrip)
        }
    }
}

@Test func bufferDecodeHandlesUnalignedIntegerAndWideTypes() {
    let bytes: [UInt8] = [0xAA, 0x00, 0x00, 0x80, 0x3F, 0xFF]  // an F32 1.0 at offset 1 (unaligned), then I8 -1
    bytes.withUnsafeBytes { raw in
        var out = [Float](repeating: 0, count: 1)
        out.withUnsafeMutableBufferPointer { Codec.decode(UnsafeRawBufferPointer(rebasing: raw[1..<5]), as: .f32, into: $0) }
        #expect(out == [1.0])
        out.withUnsafeMutableBufferPointer { Codec.decode(UnsafeRawBufferPointer(rebasing: raw[5..<6]), as: .i8, into: $0) }
        #expect(out == [-1.0])
    }
    var wide = [Double](arrayLiteral: 1.5, -2.25)
    var out = [Float](repeating: 0, count: 2)
    wide.withUnsafeBytes { raw in out.withUnsafeMutableBufferPointer { Codec.decode(raw, as: .f64, into: $0) } }
    #expect(out == [1.5, -2.25])
    var encoded = [Double](repeating: 0, count: 2)
    let nonFinite = out.withUnsafeBufferPointer { src in encoded.withUnsafeMutableBytes { Codec.encode(src, as: .f64, into: $0) } }
    #expect(!nonFinite)
    for special in [Float.infinity, -.infinity, .nan] {
        let values = [1, special]
        for dtype in [DType.f32, .f64] {
            var bytes = [UInt8](repeating: 0, count: 2 * dtype.bitWidth / 8)
            #expect(values.withUnsafeBufferPointer { src in bytes.withUnsafeMutableBytes { Codec.encode(src, as: dtype, into: $0) } },
                    "\(special) as \(dtype.rawValue)")
        }
    }
    wide = encoded
    #expect(wide == [1.5, -2.25])
}
