/// The element types of a GGUF tensor (ggml's `ggml_type`), with the block layout that fixes their byte size:
/// a row of `ne[0]` elements is `ne[0] / blockSize` blocks of `typeSize` bytes each.
///
/// Only the types ggml defines today are known; any other number is refused (a reader cannot size the data of a
/// type it does not know). Ids 4, 5 (removed Q4_2/Q4_3) and 31–33, 36–38 (removed or repacked-only types) are not
/// valid in files.
public enum GGMLType: UInt32, CaseIterable, Sendable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    /// Elements per block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .f64: 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_nl, .mxfp4: 32
        default: 256
        }
    }

    /// Bytes per block.
    public var typeSize: Int {
        switch self {
        case .f32: 4
        case .f16, .bf16: 2
        case .i8: 1
        case .i16: 2
        case .i32: 4
        case .i64, .f64: 8
        case .q4_0: 18
        case .q4_1: 20
        case .q5_0: 22
        case .q5_1: 24
        case .q8_0: 34
        case .q8_1: 36
        case .q2_K: 84
        case .q3_K: 110
        case .q4_K: 144
        case .q5_K: 176
        case .q6_K: 210
        case .q8_K: 292
        case .iq2_xxs: 66
        case .iq2_xs: 74
        case .iq3_xxs: 98
        case .iq1_s: 50
        case .iq4_nl: 18
        case .iq3_s: 110
        case .iq2_s: 82
        case .iq4_xs: 136
        case .iq1_m: 56
        case .tq1_0: 54
        case .tq2_0: 66
        case .mxfp4: 17
        }
    }

    /// ggml's name, upper case as gguf-py prints it: `F32`, `Q8_0`, `BF16`.
    public var name: String {
        String(describing: self).uppercased()
    }

    /// The bytes of `elements` elements laid out as rows of `rowLength`; nil when a row is not a whole number of
    /// blocks or the count overflows.
    public func byteCount(elements: Int, rowLength: Int) -> Int? {
        guard rowLength >= 0, elements >= 0, rowLength % blockSize == 0 else { return nil }
        guard rowLength > 0 else { return 0 }
        let rows = elements / rowLength
        let (rowBytes, o1) = (rowLength / blockSize).multipliedReportingOverflow(by: typeSize)
        let (total, o2) = rowBytes.multipliedReportingOverflow(by: rows)
        return o1 || o2 ? nil : total
    }
}

/// The type of a GGUF key-value pair (`gguf_type`).
public enum GGUFValueType: UInt32, Sendable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7, string = 8
    case array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Bytes of one value of this type, for the fixed-size types; nil for strings and arrays.
    var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64: 8
        case .string, .array: nil
        }
    }

    /// The smallest encoding of one value (a string is at least its 8-byte length).
    var minimumSize: Int { fixedSize ?? (self == .string ? 8 : 12) }

    public var name: String {
        switch self {
        case .uint8: "UINT8"
        case .int8: "INT8"
        case .uint16: "UINT16"
        case .int16: "INT16"
        case .uint32: "UINT32"
        case .int32: "INT32"
        case .float32: "FLOAT32"
        case .bool: "BOOL"
        case .string: "STRING"
        case .array: "ARRAY"
        case .uint64: "UINT64"
        case .int64: "INT64"
        case .float64: "FLOAT64"
        }
    }
}

/// The value of a GGUF key-value pair. Arrays hold values of one type (never arrays: nested arrays are refused).
public enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32), float32(Float)
    case bool(Bool), string(String), uint64(UInt64), int64(Int64), float64(Double)
    case array(GGUFValueType, [GGUFValue])

    public var type: GGUFValueType {
        switch self {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .float32: .float32
        case .bool: .bool
        case .string: .string
        case .uint64: .uint64
        case .int64: .int64
        case .float64: .float64
        case .array: .array
        }
    }

    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }

    /// The value of an integer of any width, when it fits Int.
    public var integerValue: Int? {
        switch self {
        case .uint8(let v): Int(v)
        case .int8(let v): Int(v)
        case .uint16(let v): Int(v)
        case .int16(let v): Int(v)
        case .uint32(let v): Int(v)
        case .int32(let v): Int(v)
        case .uint64(let v): Int(exactly: v)
        case .int64(let v): Int(v)
        default: nil
        }
    }
}

/// One key-value pair, in file order.
public struct GGUFKeyValue: Equatable, Sendable {
    public let key: String
    public let value: GGUFValue
    public init(_ key: String, _ value: GGUFValue) {
        self.key = key
        self.value = value
    }
}

/// A tensor as the header declares it.
public struct GGUFTensorInfo: Equatable, Sendable {
    public let name: String
    /// ggml order: the fastest-varying dimension first (numpy's shape reversed).
    public let dimensions: [Int]
    public let type: GGMLType
    /// Relative to the start of the data section.
    public let offset: Int
    public let byteCount: Int

    public var elementCount: Int { dimensions.reduce(1, *) }
    /// numpy / safetensors order: the slowest-varying dimension first.
    public var shape: [Int] { dimensions.reversed() }
}
