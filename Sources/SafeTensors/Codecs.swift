/// Conversions between stored element types and Float32, with the rounding rules of torch:
/// round to nearest, ties to even, once. Written as bit manipulation: Swift's `Float16(Float)` is a library call
/// per element at the default target, about 8× slower.
public enum Codec {
    // MARK: Scalars

    @inline(__always)
    public static func float(fromBF16 bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// bf16 as torch rounds it: NaN becomes 0x7FC0 (sign dropped), everything else rounds to nearest even
    /// (overflow goes to ±Inf by carrying into the exponent).
    @inline(__always)
    public static func bf16(from value: Float) -> UInt16 {
        let u = value.bitPattern
        if u & 0x7FFF_FFFF > 0x7F80_0000 { return 0x7FC0 }
        return UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
    }

    @inline(__always)
    public static func float(fromF16 bits: UInt16) -> Float {
        let sign = UInt32(bits & 0x8000) << 16
        let exponent = UInt32(bits >> 10) & 0x1F
        let mantissa = UInt32(bits) & 0x3FF
        if exponent == 0x1F {  // Inf or NaN: keep the payload
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        if exponent == 0 {  // zero or subnormal: exact as mantissa × 2⁻²⁴
            let magnitude = Float(mantissa) * 0x1p-24
            return Float(bitPattern: sign | magnitude.bitPattern)
        }
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }

    /// IEEE binary16, round to nearest even; overflow to ±Inf; NaN stays NaN with its sign and the top 10 payload
    /// bits, made quiet (as torch does).
    @inline(__always)
    public static func f16(from value: Float) -> UInt16 {
        let u = value.bitPattern
        let sign = UInt16(truncatingIfNeeded: (u >> 16) & 0x8000)
        let magnitude = u & 0x7FFF_FFFF
        if magnitude >= 0x4780_0000 {  // ≥ 65536, Inf or NaN
            let nan = 0x7E00 | UInt16(truncatingIfNeeded: (magnitude >> 13) & 0x3FF)
            return sign | (magnitude > 0x7F80_0000 ? nan : 0x7C00)
        }
        if magnitude < 0x3880_0000 {  // below 2⁻¹⁴: subnormal or zero
            // Adding 0.5 aligns the value so that the FPU's own round-to-nearest-even produces the f16 mantissa.
            let aligned = Float(bitPattern: magnitude) + 0.5
            return sign | UInt16(truncatingIfNeeded: aligned.bitPattern &- 0x3F00_0000)
        }
        let odd = (magnitude >> 13) & 1
        // Rebias the exponent (127 → 15) and round; a carry out of the mantissa correctly bumps the exponent,
        // up to Inf for values from 65520.
        let rounded = magnitude &- 0x3800_0000 &+ 0xFFF &+ odd
        return sign | UInt16(truncatingIfNeeded: rounded >> 13)
    }

    // MARK: Buffers

    /// Whether `decode` can produce Float32 values from this element type.
    public static func canDecode(_ dtype: DType) -> Bool {
        switch dtype {
        case .f16, .bf16, .f32, .f64, .bool, .u8, .i8, .i16, .u16, .i32, .u32, .i64, .u64: true
        default: false
        }
    }

    /// Whether `encode` can write this element type.
    public static func canEncode(_ dtype: DType) -> Bool { dtype.isArithmetic }

    /// The first `count` elements of `dtype` in `source` (which may be unaligned) as Float32.
    public static func decode(_ source: UnsafeRawBufferPointer, as dtype: DType, count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            decode(source, as: dtype, into: buffer)
            initialized = count
        }
    }

    /// Decodes `count` elements of `dtype` from `source` (which may be unaligned) into `destination`.
    /// Integers convert exactly up to 2²⁴, then round like `Float(_:)`.
    public static func decode(_ source: UnsafeRawBufferPointer, as dtype: DType,
                              into destination: UnsafeMutableBufferPointer<Float>) {
        let count = destination.count
        precondition(source.count >= count * dtype.bitWidth / 8, "source too small for \(count) \(dtype.rawValue)")
        guard count > 0, let src = source.baseAddress, let dst = destination.baseAddress else { return }
        // Aligned 16-bit data (the norm: safetensors offsets are multiples of the element size) takes typed loops the
        // compiler vectorises; unaligned data falls back to byte-wise loads.
        let aligned16 = Int(bitPattern: src) % 2 == 0
        switch dtype {
        case .bf16 where aligned16:
            let bits = src.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { dst[i] = float(fromBF16: UInt16(littleEndian: bits[i])) }
        case .f16 where aligned16:
            let bits = src.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { dst[i] = float(fromF16: UInt16(littleEndian: bits[i])) }
        case .bf16:
            for i in 0..<count { dst[i] = float(fromBF16: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        case .f16:
            for i in 0..<count { dst[i] = float(fromF16: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        case .f32:
            UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: 4 * count)
        case .f64:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
        case .bool, .u8:
            for i in 0..<count { dst[i] = Float(src.load(fromByteOffset: i, as: UInt8.self)) }
        case .i8:
            for i in 0..<count { dst[i] = Float(src.load(fromByteOffset: i, as: Int8.self)) }
        case .i16:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)) }
        case .u16:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        case .i32:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
        case .u32:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)) }
        case .i64:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
        case .u64:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)) }
        default:
            preconditionFailure("decode of \(dtype.rawValue) is not supported; check canDecode first")
        }
    }

    /// Encodes Float32 values as `dtype` (F16, BF16, F32 or F64) into `destination`, rounding once.
    /// - Returns: whether any encoded value is infinite or NaN (a finite value that rounded to infinity included),
    ///   found in the same pass. For 16-bit targets the screen looks at the encoded bits, where eight elements
    ///   compare in one SSE2 instruction (the 32-bit source bits have no unsigned max before SSE4.1).
    @discardableResult
    public static func encode(_ source: UnsafeBufferPointer<Float>, as dtype: DType,
                              into destination: UnsafeMutableRawBufferPointer) -> Bool {
        let count = source.count
        precondition(destination.count >= count * dtype.bitWidth / 8, "destination too small")
        guard count > 0, let src = source.baseAddress, let dst = destination.baseAddress else { return false }
        let aligned16 = Int(bitPattern: dst) % 2 == 0
        switch dtype {
        case .bf16, .f16:
            // The exponent field, all ones: infinity or NaN.
            let infinity: Int16 = dtype == .bf16 ? 0x7F80 : 0x7C00
            var largest: Int16 = 0
            if aligned16 && dtype == .bf16 {
                let bits = dst.assumingMemoryBound(to: UInt16.self)
                for i in 0..<count {
                    let h = bf16(from: src[i])
                    largest = max(largest, Int16(bitPattern: h & 0x7FFF))
                    bits[i] = h.littleEndian
                }
            } else if aligned16 {
                let bits = dst.assumingMemoryBound(to: UInt16.self)
                for i in 0..<count {
                    let h = f16(from: src[i])
                    largest = max(largest, Int16(bitPattern: h & 0x7FFF))
                    bits[i] = h.littleEndian
                }
            } else {
                for i in 0..<count {
                    let h = dtype == .bf16 ? bf16(from: src[i]) : f16(from: src[i])
                    largest = max(largest, Int16(bitPattern: h & 0x7FFF))
                    dst.storeBytes(of: h.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                }
            }
            return largest >= infinity
        case .f32:
            dst.copyMemory(from: src, byteCount: 4 * count)
            return !allFinite(source)
        case .f64:
            for i in 0..<count { dst.storeBytes(of: Double(src[i]), toByteOffset: 8 * i, as: Double.self) }
            return !allFinite(source)
        default:
            preconditionFailure("encode to \(dtype.rawValue) is not supported; check canEncode first")
        }
    }

    private static func allFinite(_ values: UnsafeBufferPointer<Float>) -> Bool {
        var largest: UInt32 = 0
        for value in values { largest = max(largest, value.bitPattern & 0x7FFF_FFFF) }
        return largest < 0x7F80_0000
    }
}
