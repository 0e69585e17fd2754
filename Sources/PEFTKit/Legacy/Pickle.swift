import SafeTensors

/// The only globals a pickle may name. Each is a tag our own Swift interprets; nothing is ever looked up or called.
enum PickleGlobal: Equatable, Sendable {
    case orderedDict
    case rebuildTensorV2
    /// What torch ≥ 2.1 writes for dtypes without a legacy storage class (uint16, float8 …).
    case rebuildTensorV3
    case rebuildParameter
    case typedStorage(DType)
    /// The storage `_rebuild_tensor_v3` reads; its persistent id counts bytes, not elements.
    case untypedStorage
    /// A `torch.<dtype>` object, the element type argument of `_rebuild_tensor_v3`.
    case dtype(DType)

    private static let storageTypes: [String: DType] = [
        "FloatStorage": .f32, "HalfStorage": .f16, "BFloat16Storage": .bf16, "DoubleStorage": .f64,
        "LongStorage": .i64, "IntStorage": .i32, "ShortStorage": .i16, "CharStorage": .i8, "ByteStorage": .u8,
        "BoolStorage": .bool,
    ]

    private static let dtypes: [String: DType] = [
        "float32": .f32, "float16": .f16, "bfloat16": .bf16, "float64": .f64, "int64": .i64, "int32": .i32,
        "int16": .i16, "int8": .i8, "uint8": .u8, "bool": .bool, "uint16": .u16, "uint32": .u32, "uint64": .u64,
        "float8_e4m3fn": .f8e4m3, "float8_e5m2": .f8e5m2, "float8_e4m3fnuz": .f8e4m3fnuz,
        "float8_e5m2fnuz": .f8e5m2fnuz, "float8_e8m0fnu": .f8e8m0,
    ]

    init?(module: String, name: String) {
        switch (module, name) {
        case ("collections", "OrderedDict"): self = .orderedDict
        case ("torch._utils", "_rebuild_tensor_v2"): self = .rebuildTensorV2
        case ("torch._utils", "_rebuild_tensor_v3"): self = .rebuildTensorV3
        case ("torch._utils", "_rebuild_parameter"): self = .rebuildParameter
        case ("torch.storage", "UntypedStorage"): self = .untypedStorage
        case ("torch", _):
            if let type = Self.storageTypes[name] {
                self = .typedStorage(type)
            } else if let type = Self.dtypes[name] {
                self = .dtype(type)
            } else {
                return nil
            }
        default: return nil
        }
    }
}

/// A storage as a persistent id names it: `('storage', <storage type>, key, location, count)`.
struct PickledStorage: Equatable, Sendable {
    let key: String
    /// nil for an untyped storage.
    let elementType: DType?
    /// Elements of `elementType`, or bytes for an untyped storage.
    let count: Int
}

/// A tensor as `_rebuild_tensor_v2/v3` describe it: a view into a storage, not yet checked against it.
struct PickledTensor: Equatable, Sendable {
    let storage: PickledStorage
    let dtype: DType
    /// In elements of `dtype`, as are the strides.
    let storageOffset: Int
    let shape: [Int]
    let strides: [Int]
}

/// A value on the machine's stack. Dicts and lists are mutable and shared by reference in Python, so they live in
/// the machine's arenas and values refer to them by index: memo copies then see later SETITEMs, as in Python,
/// without reference cycles.
enum PickleValue: Equatable, Sendable {
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    case tuple([PickleValue])
    case dict(Int)
    case list(Int)
    case global(PickleGlobal)
    case storage(PickledStorage)
    case tensor(PickledTensor)

    var kindName: String {
        switch self {
        case .none: "None"
        case .bool: "a bool"
        case .int: "an int"
        case .float: "a float"
        case .string: "a string"
        case .tuple: "a tuple"
        case .dict: "a dict"
        case .list: "a list"
        case .global: "a global"
        case .storage: "a storage"
        case .tensor: "a tensor"
        }
    }
}

/// A small pickle virtual machine over an allow-list of protocol 2 opcodes: enough for what `torch.save` writes
/// for a state dict, and nothing that can reach code. Every length is checked against the input and a limit
/// before anything is allocated.
struct PickleMachine {
    static let maxStackDepth = 100_000
    static let maxMarkDepth = 1_000
    static let maxMemoEntries = 1 << 20
    static let maxStringBytes = 1 << 20
    static let maxContainers = 1 << 20
    static let maxContainerElements = 1 << 22
    static let maxOperations = 50_000_000

    private struct Dict {
        var keys: [String] = []
        var values: [PickleValue] = []
        var indexByKey: [String: Int] = [:]
    }

    private let input: [UInt8]
    private let file: String
    private var position = 0
    /// Offset of the opcode being executed, for messages.
    private var opcodeOffset = 0
    private var opcodeName = ""
    private var stack: [PickleValue] = []
    /// Stack heights at each open MARK; items below the innermost mark are out of reach, as in CPython.
    private var marks: [Int] = []
    private var memo: [Int: PickleValue] = [:]
    private var dicts: [Dict] = []
    private var lists: [[PickleValue]] = []
    private var containerElementCount = 0

    /// Runs the pickle and returns the top-level dict of string → tensor, in the pickle's order.
    static func stateDict(from input: [UInt8], file: String) throws -> [(name: String, tensor: PickledTensor)] {
        var machine = PickleMachine(input: input, file: file)
        let result = try machine.run()
        guard case .dict(let id) = result else {
            throw legacyError(file, "the pickle's top-level object is \(result.kindName), not a dict of tensors")
        }
        let dict = machine.dicts[id]
        return try zip(dict.keys, dict.values).map { name, value in
            guard case .tensor(let tensor) = value else {
                throw legacyError(file, tensor: name, "the state dict holds \(value.kindName) here, not a tensor")
            }
            return (name, tensor)
        }
    }

    private init(input: [UInt8], file: String) {
        self.input = input
        self.file = file
    }

    // MARK: The loop

    private mutating func run() throws -> PickleValue {
        var operations = 0
        while position < input.count {
            operations += 1
            guard operations <= Self.maxOperations else {
                throw fail("the pickle runs more than \(Self.maxOperations) operations")
            }
            opcodeOffset = position
            let opcode = input[position]
            position += 1
            opcodeName = Self.opcodeNames[opcode] ?? "unknown opcode"
            switch opcode {
            case 0x80:  // PROTO
                let version = try byte()
                guard (2...5).contains(version) else { throw fail("unsupported pickle protocol \(version)") }
            case 0x95:  // FRAME: a hint for buffered readers, meaningless here
                _ = try take(8)
            case 0x63: try push(.global(try readGlobal()))  // GLOBAL
            case 0x71: try store(Int(try byte()))  // BINPUT
            case 0x72: try store(Int(try littleEndian(4)))  // LONG_BINPUT
            case 0x94: try store(memo.count)  // MEMOIZE
            case 0x68: try recall(Int(try byte()))  // BINGET
            case 0x6A: try recall(Int(try littleEndian(4)))  // LONG_BINGET
            case 0x28:  // MARK
                guard marks.count < Self.maxMarkDepth else { throw fail("more than \(Self.maxMarkDepth) nested MARKs") }
                marks.append(stack.count)
            case 0x7D: try push(try newDict())  // EMPTY_DICT
            case 0x5D: try push(try newList())  // EMPTY_LIST
            case 0x29: try push(.tuple([]))  // EMPTY_TUPLE
            case 0x74: try push(.tuple(try popToMark()))  // TUPLE
            case 0x85: try push(.tuple(try pop(1)))  // TUPLE1
            case 0x86: try push(.tuple(try pop(2)))  // TUPLE2
            case 0x87: try push(.tuple(try pop(3)))  // TUPLE3
            case 0x58: try push(.string(try readString(length: Int(try littleEndian(4)))))  // BINUNICODE
            case 0x8C: try push(.string(try readString(length: Int(try byte()))))  // SHORT_BINUNICODE
            case 0x4A: try push(.int(Int(Int32(truncatingIfNeeded: try littleEndian(4)))))  // BININT
            case 0x4B: try push(.int(Int(try byte())))  // BININT1
            case 0x4D: try push(.int(Int(try littleEndian(2))))  // BININT2
            case 0x8A: try push(.int(try readLong1()))  // LONG1
            case 0x47:  // BINFLOAT, big-endian
                try push(.float(Double(bitPattern: try take(8).reduce(UInt64(0)) { ($0 << 8) | UInt64($1) })))
            case 0x4E: try push(.none)  // NONE
            case 0x88: try push(.bool(true))  // NEWTRUE
            case 0x89: try push(.bool(false))  // NEWFALSE
            case 0x52:  // REDUCE
                let arguments = try pop(1)[0]
                let callable = try pop(1)[0]
                try push(try reduce(callable, arguments))
            case 0x62: try build()  // BUILD
            case 0x73: try setItems(try pop(2))  // SETITEM
            case 0x75: try setItems(try popToMark())  // SETITEMS
            case 0x61: try append(try pop(1))  // APPEND
            case 0x65: try append(try popToMark())  // APPENDS
            case 0x51: try push(try persistentLoad(try pop(1)[0]))  // BINPERSID
            case 0x2E:  // STOP
                guard marks.isEmpty else { throw fail("STOP with \(marks.count) MARK(s) still open") }
                guard stack.count == 1, let result = stack.last else {
                    throw fail("STOP with \(stack.count) values on the stack instead of one")
                }
                guard position == input.count else {
                    throw fail("\(input.count - position) bytes follow STOP")
                }
                return result
            default:
                let code = "0x" + String(opcode, radix: 16, uppercase: true)
                guard let name = Self.opcodeNames[opcode] else {
                    throw legacyError(file, "unknown pickle opcode \(code) at offset \(opcodeOffset)")
                }
                throw legacyError(file, "pickle opcode \(name) (\(code)) at offset \(opcodeOffset) is not allowed")
            }
        }
        throw legacyError(file, "the pickle ends at offset \(input.count) without STOP: truncated")
    }

    // MARK: Reading operands

    private func fail(_ message: String) -> PEFTKitError {
        legacyError(file, "pickle \(opcodeName) at offset \(opcodeOffset): \(message)")
    }

    private mutating func byte() throws -> UInt8 {
        guard position < input.count else { throw fail("needs 1 byte but none remain: truncated") }
        defer { position += 1 }
        return input[position]
    }

    private mutating func take(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count <= input.count - position else {
            throw fail("needs \(count) bytes but only \(input.count - position) remain: truncated")
        }
        defer { position += count }
        return input[position..<(position + count)]
    }

    private mutating func littleEndian(_ count: Int) throws -> UInt64 {
        try take(count).reversed().reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
    }

    private mutating func readString(length: Int) throws -> String {
        guard length <= Self.maxStringBytes else {
            throw fail("string length \(length) exceeds the limit of \(Self.maxStringBytes) bytes")
        }
        guard length <= input.count - position else {
            throw fail("string length \(length) exceeds the \(input.count - position) bytes that remain")
        }
        guard let text = String(validating: try take(length), as: UTF8.self) else {
            throw fail("string is not valid UTF-8")
        }
        return text
    }

    /// LONG1: a little-endian two's complement integer of up to 255 bytes; we accept what fits in 64 bits.
    private mutating func readLong1() throws -> Int {
        let count = Int(try byte())
        guard count <= 8 else { throw fail("integer of \(count) bytes does not fit in 64 bits") }
        let bytes = try take(count)
        guard let last = bytes.last else { return 0 }
        let fill: UInt64 = last & 0x80 != 0 ? ~0 : 0
        let magnitude = bytes.reversed().reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
        let value = count == 8 ? magnitude : (fill << (8 * count)) | magnitude
        return Int(Int64(bitPattern: value))
    }

    /// GLOBAL's operands are two newline-terminated lines, "module\nname\n".
    private mutating func readGlobal() throws -> PickleGlobal {
        let module = try readLine(), name = try readLine()
        guard let global = PickleGlobal(module: module, name: name) else {
            throw fail("global '\(module).\(name)' is not allowed (only torch tensor rebuilding and OrderedDict are)")
        }
        return global
    }

    private mutating func readLine() throws -> String {
        let limit = min(input.count, position + 256)
        guard let end = input[position..<limit].firstIndex(of: 0x0A) else {
            throw fail("global name is unterminated or longer than 255 bytes")
        }
        defer { position = end + 1 }
        guard let line = String(validating: input[position..<end], as: UTF8.self) else {
            throw fail("global name is not valid UTF-8")
        }
        return line
    }

    // MARK: Stack and memo

    private mutating func push(_ value: PickleValue) throws {
        guard stack.count < Self.maxStackDepth else { throw fail("stack deeper than \(Self.maxStackDepth)") }
        stack.append(value)
    }

    /// Pops `count` values from above the innermost MARK, oldest first.
    private mutating func pop(_ count: Int) throws -> [PickleValue] {
        guard stack.count - (marks.last ?? 0) >= count else { throw fail("stack underflow") }
        defer { stack.removeLast(count) }
        return Array(stack.suffix(count))
    }

    private mutating func popToMark() throws -> [PickleValue] {
        guard let mark = marks.popLast() else { throw fail("no MARK to pop to") }
        defer { stack.removeSubrange(mark...) }
        return Array(stack[mark...])
    }

    private mutating func store(_ index: Int) throws {
        guard let top = stack.last, stack.count > (marks.last ?? 0) else { throw fail("stack underflow") }
        guard memo[index] != nil || memo.count < Self.maxMemoEntries else {
            throw fail("more than \(Self.maxMemoEntries) memo entries")
        }
        memo[index] = top
    }

    private mutating func recall(_ index: Int) throws {
        guard let value = memo[index] else { throw fail("memo entry \(index) was never stored") }
        try push(value)
    }

    private mutating func newDict() throws -> PickleValue {
        try checkContainerCount()
        dicts.append(Dict())
        return .dict(dicts.count - 1)
    }

    private mutating func newList() throws -> PickleValue {
        try checkContainerCount()
        lists.append([])
        return .list(lists.count - 1)
    }

    private func checkContainerCount() throws {
        guard dicts.count + lists.count < Self.maxContainers else {
            throw fail("more than \(Self.maxContainers) dicts and lists")
        }
    }

    private mutating func countElements(_ added: Int) throws {
        containerElementCount += added
        guard containerElementCount <= Self.maxContainerElements else {
            throw fail("dicts and lists hold more than \(Self.maxContainerElements) elements")
        }
    }

    // MARK: Containers

    private mutating func setItems(_ items: [PickleValue]) throws {
        guard items.count.isMultiple(of: 2) else { throw fail("odd number of values: a key lacks its value") }
        guard case .dict(let id)? = stack.last, stack.count > (marks.last ?? 0) else {
            throw fail("target is \(stack.last?.kindName ?? "missing"), not a dict")
        }
        try countElements(items.count / 2)
        for pair in stride(from: 0, to: items.count, by: 2) {
            guard case .string(let key) = items[pair] else {
                throw fail("dict key is \(items[pair].kindName), not a string")
            }
            guard dicts[id].indexByKey[key] == nil else { throw fail("duplicate dict key '\(key)'") }
            dicts[id].indexByKey[key] = dicts[id].keys.count
            dicts[id].keys.append(key)
            dicts[id].values.append(items[pair + 1])
        }
    }

    private mutating func append(_ items: [PickleValue]) throws {
        guard case .list(let id)? = stack.last, stack.count > (marks.last ?? 0) else {
            throw fail("target is \(stack.last?.kindName ?? "missing"), not a list")
        }
        try countElements(items.count)
        lists[id].append(contentsOf: items)
    }

    /// BUILD sets instance attributes: torch uses it for a state dict's `_metadata`, which carries nothing we need.
    private mutating func build() throws {
        let state = try pop(1)[0]
        guard case .dict? = stack.last, stack.count > (marks.last ?? 0) else {
            throw fail("only a dict may receive state, not \(stack.last?.kindName ?? "nothing")")
        }
        switch state {
        case .dict, .none: break
        default: throw fail("state is \(state.kindName), not a dict of attributes")
        }
    }

    // MARK: Torch

    /// BINPERSID: torch names each storage `('storage', <storage type>, key, location, count)`.
    private func persistentLoad(_ id: PickleValue) throws -> PickleValue {
        guard case .tuple(let fields) = id, fields.count == 5, fields[0] == .string("storage"),
              case .global(let type) = fields[1], case .string(let key) = fields[2],
              case .string = fields[3], case .int(let count) = fields[4], count >= 0
        else {
            throw fail("persistent id is not ('storage', <storage type>, key, location, count)")
        }
        switch type {
        case .typedStorage(let elementType):
            return .storage(PickledStorage(key: key, elementType: elementType, count: count))
        case .untypedStorage:
            return .storage(PickledStorage(key: key, elementType: nil, count: count))
        default:
            throw fail("persistent id names a global that is not a storage type")
        }
    }

    /// REDUCE: applies an allow-listed callable by building the value in Swift.
    private mutating func reduce(_ callable: PickleValue, _ arguments: PickleValue) throws -> PickleValue {
        guard case .global(let function) = callable else {
            throw fail("callable is \(callable.kindName), not an allowed global")
        }
        guard case .tuple(let args) = arguments else { throw fail("arguments are \(arguments.kindName), not a tuple") }
        switch function {
        case .orderedDict:
            guard args.isEmpty else { throw fail("OrderedDict is only accepted with no arguments") }
            return try newDict()
        case .rebuildTensorV2:
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            guard args.count == 6 || args.count == 7, case .storage(let storage) = args[0],
                  let elementType = storage.elementType
            else {
                throw fail("_rebuild_tensor_v2 expects "
                           + "(typed storage, offset, size, stride, requires_grad, hooks[, metadata])")
            }
            return .tensor(try tensor(storage, elementType, args, extra: args.dropFirst(6)))
        case .rebuildTensorV3:
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
            guard args.count == 7 || args.count == 8, case .storage(let storage) = args[0],
                  storage.elementType == nil, case .global(.dtype(let elementType)) = args[6]
            else {
                throw fail("_rebuild_tensor_v3 expects "
                           + "(untyped storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])")
            }
            return .tensor(try tensor(storage, elementType, args, extra: args.dropFirst(7)))
        case .rebuildParameter:
            // (data, requires_grad, backward_hooks)
            guard args.count == 3, case .tensor = args[0], case .bool = args[1], isEmptyDict(args[2]) else {
                throw fail("_rebuild_parameter expects (tensor, requires_grad, empty hooks)")
            }
            return args[0]
        case .typedStorage, .untypedStorage, .dtype:
            throw fail("a storage type or dtype cannot be called")
        }
    }

    private func tensor(_ storage: PickledStorage, _ dtype: DType, _ args: [PickleValue],
                        extra metadata: ArraySlice<PickleValue>) throws -> PickledTensor {
        guard case .int(let offset) = args[1], let shape = integers(args[2]), let strides = integers(args[3]),
              case .bool = args[4]
        else {
            throw fail("tensor offset, size or stride is malformed (expected an int and two tuples of ints)")
        }
        guard isEmptyDict(args[5]) else { throw fail("tensors with backward hooks are not supported") }
        if let metadata = metadata.first, metadata != .none, !isEmptyDict(metadata) {
            throw fail("tensors with extra metadata are not supported")
        }
        return PickledTensor(storage: storage, dtype: dtype, storageOffset: offset, shape: shape, strides: strides)
    }

    private func integers(_ value: PickleValue) -> [Int]? {
        guard case .tuple(let items) = value else { return nil }
        var result: [Int] = []
        for item in items {
            guard case .int(let number) = item else { return nil }
            result.append(number)
        }
        return result
    }

    private func isEmptyDict(_ value: PickleValue) -> Bool {
        guard case .dict(let id) = value else { return false }
        return dicts[id].keys.isEmpty
    }

    /// Names for every pickle opcode, so a refusal can say which one it met.
    private static let opcodeNames: [UInt8: String] = [
        0x28: "MARK", 0x2E: "STOP", 0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x46: "FLOAT", 0x49: "INT",
        0x4A: "BININT", 0x4B: "BININT1", 0x4C: "LONG", 0x4D: "BININT2", 0x4E: "NONE", 0x50: "PERSID",
        0x51: "BINPERSID", 0x52: "REDUCE", 0x53: "STRING", 0x54: "BINSTRING", 0x55: "SHORT_BINSTRING",
        0x56: "UNICODE", 0x58: "BINUNICODE", 0x61: "APPEND", 0x62: "BUILD", 0x63: "GLOBAL", 0x64: "DICT",
        0x7D: "EMPTY_DICT", 0x65: "APPENDS", 0x67: "GET", 0x68: "BINGET", 0x69: "INST", 0x6A: "LONG_BINGET",
        0x6C: "LIST", 0x5D: "EMPTY_LIST", 0x6F: "OBJ", 0x70: "PUT", 0x71: "BINPUT", 0x72: "LONG_BINPUT",
        0x73: "SETITEM", 0x74: "TUPLE", 0x29: "EMPTY_TUPLE", 0x75: "SETITEMS", 0x47: "BINFLOAT", 0x80: "PROTO",
        0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x85: "TUPLE1", 0x86: "TUPLE2", 0x87: "TUPLE3",
        0x88: "NEWTRUE", 0x89: "NEWFALSE", 0x8A: "LONG1", 0x8B: "LONG4", 0x42: "BINBYTES", 0x43: "SHORT_BINBYTES",
        0x8C: "SHORT_BINUNICODE", 0x8D: "BINUNICODE8", 0x8E: "BINBYTES8", 0x8F: "EMPTY_SET", 0x90: "ADDITEMS",
        0x91: "FROZENSET", 0x92: "NEWOBJ_EX", 0x93: "STACK_GLOBAL", 0x94: "MEMOIZE", 0x95: "FRAME",
        0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
    ]
}
