import SafeTensors

/// How far one tensor is from another of the same dtype and shape, in absolute terms and in units in the last place.
public struct TensorComparison: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let elements: Int
    /// Elements whose bit patterns differ.
    public let differing: Int
    /// Elements more than one ulp apart.
    public let beyondOneULP: Int
    public let maxAbsoluteError: Double
    /// Largest distance in representable values of `dtype` (0 = identical; `Int.max` when one side is NaN).
    public let maxULP: Int
    /// Largest |actual − expected| in ulps of `dtype` at the operands' magnitude: max(|actual|, |expected|, |scale|,
    /// |expected − scale|), with `scale` the value before the change (the base weight W) so that both operands of the
    /// final addition W + ΔW count. Near a cancellation (a result close to zero made from large operands) a raw ulp
    /// count is meaningless; this is the measure the tolerance policy uses.
    public let maxScaledULP: Double

    public var identicalFraction: Double { elements == 0 ? 1 : Double(elements - differing) / Double(elements) }

    public init(name: String, dtype: DType, elements: Int, differing: Int, beyondOneULP: Int, maxAbsoluteError: Double,
                maxULP: Int, maxScaledULP: Double) {
        self.name = name
        self.dtype = dtype
        self.elements = elements
        self.differing = differing
        self.beyondOneULP = beyondOneULP
        self.maxAbsoluteError = maxAbsoluteError
        self.maxULP = maxULP
        self.maxScaledULP = maxScaledULP
    }

    /// One comparison of a tensor compared in consecutive pieces: counts add up, maxima combine.
    public func combined(with other: TensorComparison) -> TensorComparison {
        TensorComparison(name: name, dtype: dtype, elements: elements + other.elements,
                         differing: differing + other.differing, beyondOneULP: beyondOneULP + other.beyondOneULP,
                         maxAbsoluteError: max(maxAbsoluteError, other.maxAbsoluteError), maxULP: max(maxULP, other.maxULP),
                         maxScaledULP: max(maxScaledULP, other.maxScaledULP))
    }
}

package enum Comparison {
    /// Compares `actual` to `expected`, both holding `count` elements of `dtype` (F32, BF16, F16 or F64).
    /// - Parameters:
    ///   - scale: optional values of the same dtype giving each element's operand magnitude (see `maxScaledULP`);
    ///     `beyondOneULP` counts elements beyond one scaled ulp.
    ///   - floorAtTensorMaximum: measure every element at no less than the tensor's largest magnitude (the policy for
    ///     32/64-bit outputs, whose last bits depend on the summation order of the BLAS library; spec/tolerance.md).
    package static func compare(name: String, dtype: DType, count: Int, actual: UnsafeRawBufferPointer,
                               expected: UnsafeRawBufferPointer, scale: UnsafeRawBufferPointer? = nil,
                               floorAtTensorMaximum: Bool = false) -> TensorComparison {
        compare(name: name, dtype: dtype, count: count, actual: actual, expected: expected, scale: scale,
                floor: floorAtTensorMaximum ? largestMagnitude(expected, count: count, dtype: dtype) : 0)
    }

    /// The largest finite |value| of `count` elements of `dtype`: the F32/F64 floor of the tolerance policy.
    public static func largestMagnitude(_ bytes: UnsafeRawBufferPointer, count: Int, dtype: DType) -> Double {
        var largest = 0.0
        for i in 0..<count { let v = abs(element(bytes, i, dtype).0); if v.isFinite { largest = max(largest, v) } }
        return largest
    }

    /// As above with the magnitude floor given: a tensor compared slice by slice floors every slice at the whole
    /// tensor's largest magnitude, found beforehand.
    public static func compare(name: String, dtype: DType, count: Int, actual: UnsafeRawBufferPointer,
                               expected: UnsafeRawBufferPointer, scale: UnsafeRawBufferPointer?,
                               floor: Double) -> TensorComparison {
        var differing = 0, beyond = 0, maxULP = 0
        var maxError = 0.0, maxScaled = 0.0
        for i in 0..<count {
            let (a, ia) = element(actual, i, dtype)
            let (e, ie) = element(expected, i, dtype)
            guard ia != ie else { continue }
            differing += 1
            let distance: Int
            let scaled: Double
            if a.isNaN || e.isNaN {
                distance = a.isNaN && e.isNaN ? 0 : Int.max
                scaled = a.isNaN && e.isNaN ? 0 : .infinity
            } else {
                distance = Int(ia.subtractingReportingOverflow(ie).partialValue.magnitude.clamped(to: Int.max))
                let error = abs(a - e)
                maxError = max(maxError, error)
                var magnitude = max(abs(a), abs(e), floor)
                if let scale {
                    let before = element(scale, i, dtype).0
                    magnitude = max(magnitude, abs(before), abs(e - before))
                }
                scaled = error.isFinite ? error / ulp(at: magnitude, in: dtype) : .infinity
            }
            if scaled > 1 { beyond += 1 }
            maxULP = max(maxULP, distance)
            maxScaled = max(maxScaled, scaled)
        }
        return TensorComparison(name: name, dtype: dtype, elements: count, differing: differing, beyondOneULP: beyond,
                                maxAbsoluteError: maxError, maxULP: maxULP, maxScaledULP: maxScaled)
    }

    /// The value and a monotonic integer image of the bit pattern (adjacent representable values differ by one).
    @inline(__always)
    private static func element(_ bytes: UnsafeRawBufferPointer, _ i: Int, _ dtype: DType) -> (Double, Int64) {
        switch dtype {
        case .bf16:
            let bits = bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)
            return (Double(Codec.float(fromBF16: bits)), ordered(UInt64(bits), signBit: 15))
        case .f16:
            let bits = bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)
            return (Double(Codec.float(fromF16: bits)), ordered(UInt64(bits), signBit: 15))
        case .f64:
            let bits = bytes.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)
            return (Double(bitPattern: bits), ordered(bits, signBit: 63))
        default:
            let bits = bytes.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
            return (Double(Float(bitPattern: bits)), ordered(UInt64(bits), signBit: 31))
        }
    }

    /// Sign-magnitude bits to a signed integer whose order is the order of the values (+0 and −0 both map to 0).
    @inline(__always)
    private static func ordered(_ bits: UInt64, signBit: Int) -> Int64 {
        let magnitude = Int64(bitPattern: bits & ((1 << UInt64(signBit)) - 1))
        return bits >> UInt64(signBit) & 1 == 1 ? -magnitude : magnitude
    }

    /// The tolerance policy of spec/tolerance.md: whether a dtype is compared at the tensor's largest magnitude.
    package static func floorsAtTensorMaximum(_ dtype: DType) -> Bool { dtype == .f32 || dtype == .f64 }

    /// Unmerge drift on F32/F64 (spec/tolerance.md §3): for the order in which the BLAS library summed the change
    /// (PEFT's own merge → unmerge subtracts the very sum it added, peftkit sums again), the larger of one ulp at the
    /// tensor's largest magnitude and the γ bound of the two sums; nothing for 16-bit dtypes, whose ulp dwarfs that.
    static func summationOrderAllowance(_ values: [Float], dtype: DType, summationBound: Double) -> Double {
        guard floorsAtTensorMaximum(dtype) else { return 0 }
        return max(ulp(at: Double(values.reduce(0) { max($0, $1.magnitude) }), in: dtype), summationBound)
    }

    /// The spacing of representable `dtype` values near `magnitude` (the size of one ulp there).
    package static func ulp(at magnitude: Double, in dtype: DType) -> Double {
        let (mantissaBits, minimumExponent): (Int, Int) = switch dtype {
        case .bf16: (7, -126)
        case .f16: (10, -14)
        case .f64: (52, -1022)
        default: (23, -126)
        }
        let exponent = magnitude > 0 ? max(Int(magnitude.exponent), minimumExponent) : minimumExponent
        return Double(sign: .plus, exponent: exponent - mantissaBits, significand: 1)
    }
}

private extension UInt64 {
    func clamped(to limit: Int) -> Int { self > UInt64(limit) ? limit : Int(self) }
}
