import CPeftKitJSONC

/// A JSON value as parsed from an untrusted file: objects keep their keys in document order (duplicates are refused
/// at parse time) and numbers keep the text they were written with, so that writing a value back loses nothing.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// An integer literal (no fraction, no exponent) that fits in 64 bits.
    case integer(Int64)
    /// Any other number, with its literal text as written (e.g. `"1.50"`, `"1E2"`).
    case number(Double, literal: String)
    case string(String)
    case array([JSONValue])
    case object([(key: String, value: JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case let (.bool(a), .bool(b)): a == b
        case let (.integer(a), .integer(b)): a == b
        case let (.number(a, la), .number(b, lb)): a == b && la == lb
        case let (.string(a), .string(b)): a == b
        case let (.array(a), .array(b)): a == b
        case let (.object(a), .object(b)): a.elementsEqual(b) { $0.key == $1.key && $0.value == $1.value }
        default: false
        }
    }

    /// The value of `key` when this is an object.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first(where: { $0.key == key })?.value
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var integerValue: Int64? {
        if case .integer(let i) = self { return i }
        return nil
    }

    /// Any number as a Double (integers included).
    public var doubleValue: Double? {
        switch self {
        case .integer(let i): Double(i)
        case .number(let d, _): d
        default: nil
        }
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var objectValue: [(key: String, value: JSONValue)]? {
        if case .object(let o) = self { return o }
        return nil
    }

    /// A short name of the value's type, for error messages.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .integer: "an integer"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

// MARK: - Parsing

/// Strict JSON (RFC 8259) for headers and configs that come from strangers.
///
/// json-c builds the tree under a depth limit and validates UTF-8. Its "strict" mode still accepts single-quoted
/// strings, `NaN`, `Infinity`, `1.`, raw control characters in strings, lone surrogates (silently replaced), duplicate
/// keys (the last one wins), keys with a `\u0000` (cut there) and out-of-range integers (clamped), so a conformance
/// pass of ours refuses those first.
public enum StrictJSON {
    /// Nesting limit for arrays and objects. Headers and adapter configs nest three or four levels deep.
    public static let defaultMaxDepth = 64

    /// Parses `bytes` as one JSON text followed only by whitespace.
    /// - Parameter source: names the file in error messages.
    public static func parse(_ bytes: UnsafeRawBufferPointer, source: String,
                             maxDepth: Int = defaultMaxDepth) throws -> JSONValue {
        var checker = ConformanceChecker(bytes: bytes, maxDepth: maxDepth)
        do {
            try checker.checkDocument()
        } catch let failure as ConformanceChecker.Failure {
            switch failure.problem {
            case .duplicateKey(let key): throw SafeTensorsError.duplicateKey(file: source, key: key)
            case .message(let text): throw SafeTensorsError.invalidJSON(file: source, detail: "\(text) at byte \(failure.offset)")
            }
        }
        return try parseWithJSONC(bytes, source: source, maxDepth: maxDepth)
    }

    public static func parse(_ bytes: [UInt8], source: String,
                             maxDepth: Int = defaultMaxDepth) throws -> JSONValue {
        try bytes.withUnsafeBytes { (raw) throws -> JSONValue in
            try parse(raw, source: source, maxDepth: maxDepth)
        }
    }

    private static func parseWithJSONC(_ bytes: UnsafeRawBufferPointer, source: String,
                                       maxDepth: Int) throws -> JSONValue {
        guard bytes.count <= Int(Int32.max) else {
            throw SafeTensorsError.invalidJSON(file: source, detail: "text of \(bytes.count) bytes is too large to parse")
        }
        // json-c counts the top level as one level of depth.
        guard let tokener = json_tokener_new_ex(Int32(maxDepth + 1)) else {
            throw SafeTensorsError.invalidJSON(file: source, detail: "out of memory")
        }
        defer { json_tokener_free(tokener) }
        json_tokener_set_flags(tokener, Int32(JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8))
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: CChar.self) else {
            throw SafeTensorsError.invalidJSON(file: source, detail: "empty text")
        }
        let root = json_tokener_parse_ex(tokener, base, Int32(bytes.count))
        let status = json_tokener_get_error(tokener)
        guard let root, status == json_tokener_success else {
            let reason = status == json_tokener_continue
                ? "unexpected end of text" : String(cString: json_tokener_error_desc(status))
            throw SafeTensorsError.invalidJSON(file: source, detail: "\(reason) at byte \(json_tokener_get_parse_end(tokener))")
        }
        defer { json_object_put(root) }
        return convert(root)
    }

    /// Converts json-c's tree. The conformance pass has already refused everything json-c would have altered.
    private static func convert(_ object: OpaquePointer?) -> JSONValue {
        guard let object else { return .null }
        switch json_object_get_type(object) {
        case json_type_null:
            return .null
        case json_type_boolean:
            return .bool(json_object_get_boolean(object) != 0)
        case json_type_int:
            return .integer(json_object_get_int64(object))
        case json_type_double:
            // json-c keeps the literal text of parsed doubles as their serialisation.
            let literal = String(cString: json_object_to_json_string_ext(object, JSON_C_TO_STRING_PLAIN))
            return .number(json_object_get_double(object), literal: literal)
        case json_type_string:
            let length = Int(json_object_get_string_len(object))
            let text = json_object_get_string(object).map {
                String(decoding: UnsafeRawBufferPointer(start: $0, count: length), as: UTF8.self)
            }
            return .string(text ?? "")
        case json_type_array:
            let count = json_object_array_length(object)
            return .array((0..<count).map { convert(json_object_array_get_idx(object, $0)) })
        case json_type_object:
            var members: [(key: String, value: JSONValue)] = []
            var iterator = json_object_iter_begin(object)
            var end = json_object_iter_end(object)
            while json_object_iter_equal(&iterator, &end) == 0 {
                let key = String(cString: json_object_iter_peek_name(&iterator))
                members.append((key, convert(json_object_iter_peek_value(&iterator))))
                json_object_iter_next(&iterator)
            }
            return .object(members)
        default:
            return .null
        }
    }
}

/// RFC 8259 grammar check over raw bytes: exact string, number and literal syntax, well-formed surrogate pairs,
/// integers within 64 bits, no duplicate keys and no NUL in a key, bounded depth, only whitespace after the value.
struct ConformanceChecker {
    enum Problem: Error {
        case message(String)
        case duplicateKey(String)
    }

    struct Failure: Error {
        let problem: Problem
        let offset: Int
    }

    let bytes: UnsafeRawBufferPointer
    let maxDepth: Int
    var position = 0

    init(bytes: UnsafeRawBufferPointer, maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    private func fail(_ text: String) -> Failure { Failure(problem: .message(text), offset: position) }

    private var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    mutating func checkDocument() throws {
        if bytes.count >= 3, bytes[0] == 0xEF, bytes[1] == 0xBB, bytes[2] == 0xBF {
            throw fail("byte order mark before the JSON text")
        }
        skipWhitespace()
        try checkValue(depth: 0)
        skipWhitespace()
        if let byte = current {
            throw fail(byte == 0 ? "NUL byte after the JSON text" : "unexpected data after the JSON text")
        }
    }

    private mutating func skipWhitespace() {
        while let byte = current, byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D { position += 1 }
    }

    private mutating func checkValue(depth: Int) throws {
        guard let byte = current else { throw fail("unexpected end of text") }
        switch byte {
        case UInt8(ascii: "{"): try checkObject(depth: depth + 1)
        case UInt8(ascii: "["): try checkArray(depth: depth + 1)
        case UInt8(ascii: "\""): _ = try readString()
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try checkNumber()
        case UInt8(ascii: "t"): try expectLiteral("true")
        case UInt8(ascii: "f"): try expectLiteral("false")
        case UInt8(ascii: "n"): try expectLiteral("null")
        case 0: throw fail("NUL byte")
        default: throw fail("unexpected character '\(printable(byte))'")
        }
    }

    private mutating func checkObject(depth: Int) throws {
        guard depth <= maxDepth else { throw fail("nesting deeper than \(maxDepth) levels") }
        position += 1
        skipWhitespace()
        if current == UInt8(ascii: "}") { position += 1; return }
        var keys = Set<String>()
        while true {
            guard current == UInt8(ascii: "\"") else { throw fail("expected a double-quoted key") }
            let keyStart = position
            let key = try readString()
            // json-c keeps keys as C strings: it would cut this one at the NUL, silently merging distinct keys.
            guard !key.unicodeScalars.contains("\0") else {
                throw Failure(problem: .message("NUL character (\\u0000) in a key"), offset: keyStart)
            }
            guard keys.insert(key).inserted else {
                throw Failure(problem: .duplicateKey(key), offset: keyStart)
            }
            skipWhitespace()
            guard current == UInt8(ascii: ":") else { throw fail("expected ':' after a key") }
            position += 1
            skipWhitespace()
            try checkValue(depth: depth)
            guard try anotherFollows(closer: "}", in: "an object") else { return }
        }
    }

    private mutating func checkArray(depth: Int) throws {
        guard depth <= maxDepth else { throw fail("nesting deeper than \(maxDepth) levels") }
        position += 1
        skipWhitespace()
        if current == UInt8(ascii: "]") { position += 1; return }
        while true {
            try checkValue(depth: depth)
            guard try anotherFollows(closer: "]", in: "an array") else { return }
        }
    }

    /// After a member or element: consumes ',' (true: another follows) or the container's closer (false).
    private mutating func anotherFollows(closer: Unicode.Scalar, in container: String) throws -> Bool {
        skipWhitespace()
        if current == UInt8(ascii: ",") {
            position += 1
            skipWhitespace()
            return true
        }
        guard current == UInt8(ascii: closer) else { throw fail("expected ',' or '\(closer)' in \(container)") }
        position += 1
        return false
    }

    private mutating func expectLiteral(_ word: StaticString) throws {
        let count = word.utf8CodeUnitCount
        guard position + count <= bytes.count else { throw fail("unexpected end of text") }
        for i in 0..<count where bytes[position + i] != word.utf8Start[i] {
            throw fail("invalid literal")
        }
        position += count
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; integer literals must fit in 64 bits.
    private mutating func checkNumber() throws {
        let start = position
        if current == UInt8(ascii: "-") { position += 1 }
        guard let first = current, isDigit(first) else { throw fail("invalid number") }
        position += 1
        if first == UInt8(ascii: "0"), let next = current, isDigit(next) {
            throw fail("number with a leading zero")
        }
        skipDigits()
        var isInteger = true
        if current == UInt8(ascii: ".") {
            isInteger = false
            position += 1
            guard let next = current, isDigit(next) else { throw fail("number with no digit after '.'") }
            skipDigits()
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            isInteger = false
            position += 1
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { position += 1 }
            guard let next = current, isDigit(next) else { throw fail("number with no digit in its exponent") }
            skipDigits()
        }
        if isInteger {
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
            guard Int64(text) != nil else {
                position = start
                throw fail("integer \(text.prefix(40)) does not fit in 64 bits")
            }
        }
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private mutating func skipDigits() {
        while let byte = current, isDigit(byte) { position += 1 }
    }

    /// Reads a string literal at `position` (on its opening quote) and returns its decoded value.
    private mutating func readString() throws -> String {
        position += 1
        var scalars = String.UnicodeScalarView()
        var runStart = position
        func flushRun(_ checker: ConformanceChecker, upTo end: Int) throws {
            guard end > runStart else { return }
            let run = UnsafeRawBufferPointer(rebasing: checker.bytes[runStart..<end])
            guard let text = String(validating: run, as: UTF8.self) else {
                throw Failure(problem: .message("invalid UTF-8 in a string"), offset: runStart)
            }
            scalars.append(contentsOf: text.unicodeScalars)
        }
        while true {
            guard let byte = current else { throw fail("unterminated string") }
            switch byte {
            case UInt8(ascii: "\""):
                try flushRun(self, upTo: position)
                position += 1
                return String(scalars)
            case UInt8(ascii: "\\"):
                try flushRun(self, upTo: position)
                scalars.append(try readEscape())
                runStart = position
            case 0..<0x20:
                throw fail("unescaped control character 0x\(String(byte, radix: 16)) in a string")
            default:
                position += 1
            }
        }
    }

    /// Reads one escape sequence at `position` (on the backslash); surrogates must come as a proper pair.
    private mutating func readEscape() throws -> Unicode.Scalar {
        position += 1
        guard let byte = current else { throw fail("unterminated escape") }
        position += 1
        switch byte {
        case UInt8(ascii: "\""): return "\""
        case UInt8(ascii: "\\"): return "\\"
        case UInt8(ascii: "/"): return "/"
        case UInt8(ascii: "b"): return "\u{08}"
        case UInt8(ascii: "f"): return "\u{0C}"
        case UInt8(ascii: "n"): return "\n"
        case UInt8(ascii: "r"): return "\r"
        case UInt8(ascii: "t"): return "\t"
        case UInt8(ascii: "u"):
            let unit = try readHex4()
            if (0xDC00...0xDFFF).contains(unit) { throw fail("lone low surrogate \\u\(hex(unit))") }
            if (0xD800...0xDBFF).contains(unit) {
                guard position + 1 < bytes.count, bytes[position] == UInt8(ascii: "\\"),
                      bytes[position + 1] == UInt8(ascii: "u") else {
                    throw fail("lone high surrogate \\u\(hex(unit))")
                }
                position += 2
                let low = try readHex4()
                guard (0xDC00...0xDFFF).contains(low) else {
                    throw fail("high surrogate \\u\(hex(unit)) not followed by a low surrogate")
                }
                let value = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                return Unicode.Scalar(value)!  // always valid: 0x10000...0x10FFFF
            }
            return Unicode.Scalar(unit)!  // valid: not a surrogate
        default:
            position -= 1
            throw fail("invalid escape '\\\(printable(byte))'")
        }
    }

    private mutating func readHex4() throws -> UInt32 {
        guard position + 4 <= bytes.count else { throw fail("truncated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[position]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw fail("invalid hex digit in a \\u escape")
            }
            value = value << 4 | UInt32(digit)
            position += 1
        }
        return value
    }

    private func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    private func printable(_ byte: UInt8) -> String {
        (0x20..<0x7F).contains(byte) ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
    }
}

// MARK: - Writing

extension JSONValue {
    /// Compact JSON with the escaping of serde_json and Python's `json` (`ensure_ascii=False`): `"`, `\` and control
    /// characters escaped, everything else written as UTF-8. Numbers are written with the text they were read with.
    public func compactText() -> String {
        var out = ""
        write(to: &out, indent: nil, level: 0)
        return out
    }

    /// Indented JSON in the layout of Python's `json.dumps(value, indent: n)`.
    public func prettyText(indent: Int = 2) -> String {
        var out = ""
        write(to: &out, indent: indent, level: 0)
        return out
    }

    private func write(to out: inout String, indent: Int?, level: Int) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .integer(let i): out += String(i)
        case .number(_, let literal): out += literal
        case .string(let s): JSONValue.writeString(s, to: &out)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                JSONValue.newline(&out, indent: indent, level: level + 1)
                item.write(to: &out, indent: indent, level: level + 1)
            }
            JSONValue.newline(&out, indent: indent, level: level)
            out += "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{"
            for (i, member) in members.enumerated() {
                if i > 0 { out += "," }
                JSONValue.newline(&out, indent: indent, level: level + 1)
                JSONValue.writeString(member.key, to: &out)
                out += indent == nil ? ":" : ": "
                member.value.write(to: &out, indent: indent, level: level + 1)
            }
            JSONValue.newline(&out, indent: indent, level: level)
            out += "}"
        }
    }

    private static func newline(_ out: inout String, indent: Int?, level: Int) {
        guard let indent else { return }
        out += "\n" + String(repeating: " ", count: indent * level)
    }

    static func writeString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case let c where c.value < 0x20:
                let digits = String(c.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - digits.count) + digits
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
