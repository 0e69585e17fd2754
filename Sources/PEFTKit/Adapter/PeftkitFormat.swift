import Foundation
import SafeTensors

/// peftkit's own single-file adapter format: a safetensors file whose `__metadata__` makes it self-describing.
/// The normative description is spec/adapter-format.md; this file implements version 1.0 of it.
///
/// Tensors keep the names PEFT gives them, so a PEFT → peftkit → PEFT round trip keeps every name and byte; the
/// metadata adds the resolved per-module parameters, the verbatim PEFT config, the base model's identity and a CRC-32
/// per tensor.
public enum PeftkitFormat {
    /// The metadata key whose presence marks a peftkit file.
    public static let formatKey = "peftkit.format"
    /// The value of `formatKey`.
    public static let formatName = "peftkit-adapter"
    public static let versionKey = "peftkit.version"
    public static let methodKey = "peftkit.method"
    public static let variantKey = "peftkit.variant"
    public static let sourceFormatKey = "peftkit.source_format"
    public static let baseModelKey = "peftkit.base_model"
    public static let baseFingerprintKey = "peftkit.base_fingerprint"
    public static let modulesKey = "peftkit.modules"
    public static let carriedKey = "peftkit.carried"
    public static let checksumsKey = "peftkit.crc32"
    public static let peftConfigKey = "peftkit.peft_config"

    /// The version this code writes.
    public static let currentVersion = FormatVersion(major: 1, minor: 0)
    /// The major versions this code reads (every minor version of each).
    public static let supportedMajorVersions = [1]

    /// A `MAJOR.MINOR` format version. Minor versions only add what older readers may ignore; anything that changes
    /// how a file must be read or applied takes a new major version, which older readers refuse.
    public struct FormatVersion: Sendable, Equatable, CustomStringConvertible {
        public let major: Int
        public let minor: Int

        public init(major: Int, minor: Int) {
            self.major = major
            self.minor = minor
        }

        /// Parses `MAJOR.MINOR`: two decimal numbers without signs or leading zeros.
        public init?(_ text: String) {
            let parts = text.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 2, let major = Self.number(parts[0]), let minor = Self.number(parts[1]) else {
                return nil
            }
            self.init(major: major, minor: minor)
        }

        public var description: String { "\(major).\(minor)" }

        private static func number(_ text: Substring) -> Int? {
            guard !text.isEmpty, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
                  text == "0" || text.first != "0" else { return nil }
            return Int(text)
        }
    }

    /// Whether `file` declares itself a peftkit adapter (whatever its version).
    public static func isPeftkitFile(_ file: SafeTensorsFile) -> Bool {
        file.header.metadataValue(formatKey) != nil
    }

    // MARK: - Reading

    /// Reads a peftkit file: checks its format name and version, every tensor's CRC-32, rebuilds the adapter from the
    /// verbatim PEFT config and checks that the resolved parameters the file records agree with it.
    public static func read(_ file: SafeTensorsFile) throws -> Adapter {
        let source = file.path
        let metadata = Metadata(file: file)
        let version = try checkFormat(metadata)
        try verifyChecksums(file, metadata)

        let configText = try metadata.required(peftConfigKey)
        let configJSON = try metadata.json(peftConfigKey, text: configText)
        let config = try PEFTConfig.parse(configJSON, source: "\(source) (\(peftConfigKey))")

        let fingerprint = metadata.value(baseFingerprintKey)
        if let fingerprint, !BaseFingerprint.isWellFormed(fingerprint) {
            throw PEFTKitError(.invalidConfig, file: source,
                               "'\(baseFingerprintKey)' is \"\(fingerprint)\"; expected SCHEME:VALUE such as v1:0123abcd")
        }
        let tensors = try file.tensors.map { StoredTensor(view: try file.view($0)) }
        let adapter = try AdapterBuilder.build(config: config, tensors: tensors, source: source,
                                               format: .peftkit(version: version.description), fingerprint: fingerprint)
        try crossCheck(adapter, metadata)
        return adapter
    }

    /// The metadata of a file, with errors that name the file and the key.
    private struct Metadata {
        let file: SafeTensorsFile
        var source: String { file.path }

        func value(_ key: String) -> String? { file.header.metadataValue(key) }

        func required(_ key: String) throws -> String {
            guard let value = value(key) else {
                throw PEFTKitError(.invalidConfig, file: source, "the peftkit metadata has no '\(key)'")
            }
            return value
        }

        /// The value of `key`, parsed as strict JSON.
        func json(_ key: String, text: String? = nil) throws -> JSONValue {
            let text = try text ?? required(key)
            do {
                return try StrictJSON.parse(Array(text.utf8), source: key)
            } catch let error as SafeTensorsError {
                let reason = switch error {
                case .invalidJSON(_, let detail): detail
                case .duplicateKey(_, let duplicate): "the key \"\(duplicate)\" appears twice"
                default: error.localizedDescription
                }
                throw PEFTKitError(.invalidConfig, file: source, "'\(key)' is not valid JSON: \(reason)")
            }
        }

        /// The value of `key` as a JSON object.
        func object(_ key: String) throws -> [(key: String, value: JSONValue)] {
            let value = try json(key)
            guard let members = value.objectValue else {
                throw PEFTKitError(.invalidConfig, file: source, "'\(key)' is \(value.typeName), not a JSON object")
            }
            return members
        }
    }

    /// Checks the format name and version; returns the version.
    private static func checkFormat(_ metadata: Metadata) throws -> FormatVersion {
        let name = try metadata.required(formatKey)
        guard name == formatName else {
            throw PEFTKitError(.invalidConfig, file: metadata.source,
                               "'\(formatKey)' is \"\(name)\"; a peftkit adapter file says \"\(formatName)\"")
        }
        let text = try metadata.required(versionKey)
        guard let version = FormatVersion(text) else {
            throw PEFTKitError(.invalidConfig, file: metadata.source,
                               "'\(versionKey)' is \"\(text)\"; expected MAJOR.MINOR such as \(currentVersion)")
        }
        guard supportedMajorVersions.contains(version.major) else {
            let supported = supportedMajorVersions.map { "\($0).x" }.joined(separator: ", ")
            throw PEFTKitError(.unsupported, file: metadata.source,
                               "peftkit format version \(version) is not supported: this peftkit reads format "
                               + "\(supported) (written as \(currentVersion)); a newer peftkit may read it")
        }
        return version
    }

    /// Checks every tensor's bytes against the CRC-32 the file records for it.
    private static func verifyChecksums(_ file: SafeTensorsFile, _ metadata: Metadata) throws {
        var recorded: [String: UInt32] = [:]
        for (name, value) in try metadata.object(checksumsKey) {
            guard let text = value.stringValue, let crc = CRC32.parseHex(text) else {
                throw PEFTKitError(.invalidConfig, file: file.path, tensor: name,
                                   "'\(checksumsKey)' gives \(PEFTConfig.describe(value)); expected 8 lowercase hex digits")
            }
            guard file.info(name) != nil else {
                throw PEFTKitError(.invalidConfig, file: file.path, tensor: name,
                                   "'\(checksumsKey)' has a CRC for a tensor the file does not hold")
            }
            recorded[name] = crc
        }
        var mismatches: [(name: String, line: String)] = []
        for info in file.tensors {
            guard let expected = recorded[info.name] else {
                throw PEFTKitError(.invalidConfig, file: file.path, tensor: info.name,
                                   "'\(checksumsKey)' records no CRC for this tensor")
            }
            let view = try file.view(info)
            let actual = CRC32.checksum(view.bytes)
            if actual != expected {
                mismatches.append((info.name, "'\(info.name)': recorded \(CRC32.hex(expected)), computed \(CRC32.hex(actual))"))
            }
        }
        if let first = mismatches.first {
            throw PEFTKitError(.corrupted, file: file.path, tensor: first.name,
                               "CRC-32 mismatch in \(mismatches.count) tensor(s): the file is corrupted",
                               details: mismatches.map(\.line))
        }
    }

    /// Checks that what the metadata records (method, variant, base name, per-module parameters, carried tensors)
    /// agrees with the adapter rebuilt from the PEFT config and the tensors.
    private static func crossCheck(_ adapter: Adapter, _ metadata: Metadata) throws {
        let source = metadata.source
        var problems: [String] = []
        let method = try metadata.required(methodKey)
        if method != adapter.method.rawValue {
            problems.append("'\(methodKey)' is \"\(method)\" but the PEFT config's peft_type is \(adapter.method.peftType)")
        }
        let variant = try metadata.required(variantKey)
        if variant != adapter.variant.rawValue {
            problems.append("'\(variantKey)' is \"\(variant)\" but the PEFT config gives \"\(adapter.variant.rawValue)\"")
        }
        if let baseModel = metadata.value(baseModelKey), baseModel != adapter.base.nameOrPath {
            problems.append("'\(baseModelKey)' is \"\(baseModel)\" but the PEFT config's base_model_name_or_path is "
                            + (adapter.base.nameOrPath.map { "\"\($0)\"" } ?? "absent"))
        }

        let recordedModules = try ModuleRecord.parseAll(try metadata.object(modulesKey), method: adapter.method,
                                                        variant: adapter.variant, source: source)
        let modulesByPath = Dictionary(adapter.modules.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first })
        for record in recordedModules {
            guard let module = modulesByPath[record.path] else {
                problems.append("module '\(record.path)' is in '\(modulesKey)' but the adapter's tensors have no such module")
                continue
            }
            problems += record.disagreements(with: ModuleRecord(module, config: adapter.config))
        }
        let recordedPaths = Set(recordedModules.map(\.path))
        for module in adapter.modules where !recordedPaths.contains(module.path) {
            problems.append("module '\(module.path)' has tensors but is missing from '\(modulesKey)'")
        }

        let recordedCarried = try CarriedRecord.parseAll(try metadata.object(carriedKey), source: source)
        let actualCarried = adapter.carried.map(CarriedRecord.init)
        for record in recordedCarried where !actualCarried.contains(record) {
            problems.append("'\(carriedKey)' records '\(record.baseName)' (tensor '\(record.tensor)', \(record.reason)) "
                            + "but the adapter carries it differently or not at all")
        }
        for record in actualCarried where !recordedCarried.contains(where: { $0.baseName == record.baseName }) {
            problems.append("the adapter carries '\(record.baseName)' (tensor '\(record.tensor)') but '\(carriedKey)' does not list it")
        }

        guard problems.isEmpty else {
            throw PEFTKitError(.inconsistentAdapter, file: source,
                               "\(problems.count) disagreement(s) between the peftkit metadata and the adapter rebuilt "
                               + "from its PEFT config and tensors", details: problems)
        }
    }

    // MARK: - Writing

    /// Writes `adapter` as a peftkit file at `path`, atomically (a temporary file in the same folder, renamed into
    /// place once complete).
    /// - Parameters:
    ///   - fingerprint: the base fingerprint to record (`BaseFingerprint.compute`), or nil to leave it absent; pass
    ///     `adapter.base.fingerprint` to keep the one an adapter already has.
    ///   - force: replace an existing file at `path`; without it an existing path is refused.
    public static func write(_ adapter: Adapter, to path: String, fingerprint: String?, force: Bool = false) throws {
        if let fingerprint, !BaseFingerprint.isWellFormed(fingerprint) {
            throw PEFTKitError(.invalidConfig, file: path, "\"\(fingerprint)\" is not a base fingerprint (SCHEME:VALUE)")
        }
        try OutputPath.checkWritable(path, force: force, expectFolder: false)
        let (parent, name) = OutputPath.split(path)
        OutputFolder.removeStaleTemporaries(in: parent, for: name)  // what a killed earlier run left

        let tensors = adapter.allTensors
        var checksums: [String: UInt32] = [:]
        for tensor in tensors { checksums[tensor.name] = try CRC32.checksum(of: tensor) }
        let metadata = try metadataEntries(adapter, fingerprint: fingerprint, checksums: checksums)
        let writer = try SafeTensorsWriter(path: path,
                                           tensors: tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                                           metadata: metadata)
        do {
            for tensor in tensors {
                try tensor.withBytes { bytes in
                    // The recorded CRC was taken in an earlier pass: make sure the source did not change since.
                    guard CRC32.checksum(bytes) == checksums[tensor.name] else {
                        throw PEFTKitError(.corrupted, file: adapter.source, tensor: tensor.name,
                                           "the tensor's bytes changed while it was being converted")
                    }
                    try writer.write(tensor.name, bytes: bytes)
                }
            }
            try writer.finish()
        } catch {
            writer.abort()
            throw error
        }
    }

    /// The `__metadata__` of a peftkit file for `adapter`, in the order the spec lists the keys.
    static func metadataEntries(_ adapter: Adapter, fingerprint: String?,
                                checksums: [String: UInt32]) throws -> [(key: String, value: String)] {
        var entries: [(key: String, value: String)] = [
            ("format", "pt"),
            (formatKey, formatName),
            (versionKey, currentVersion.description),
            (methodKey, adapter.method.rawValue),
            (variantKey, adapter.variant.rawValue),
            (sourceFormatKey, sourceFormatName(adapter.format)),
        ]
        if let name = adapter.base.nameOrPath { entries.append((baseModelKey, name)) }
        if let fingerprint { entries.append((baseFingerprintKey, fingerprint)) }
        let modules = adapter.modules.map { ($0.path, ModuleRecord($0, config: adapter.config).json) }
        entries.append((modulesKey, JSONValue.object(modules).compactText()))
        let carried = adapter.carried.map { ($0.baseName, CarriedRecord($0).json) }
        entries.append((carriedKey, JSONValue.object(carried).compactText()))
        let sortedChecksums = checksums.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        entries.append((checksumsKey, JSONValue.object(sortedChecksums.map { ($0.key, .string(CRC32.hex($0.value))) }).compactText()))
        entries.append((peftConfigKey, adapter.config.json.compactText()))
        return entries
    }

    static func sourceFormatName(_ format: Adapter.Format) -> String {
        switch format {
        case .peftSafetensors: "peft-safetensors"
        case .peftBin: "peft-bin"
        case .peftkit: "peftkit"
        }
    }
}

// MARK: - Records of the metadata

/// One entry of `peftkit.modules`: a module's resolved parameters and its tensors by role.
struct ModuleRecord: Equatable {
    var path: String
    var kind: AdaptedModule.Kind
    var rank: Int
    /// LoRA only.
    var alpha: Double?
    var scaling: Double?
    var fanInFanOut: Bool?
    /// MiSS `mini` only.
    var miniRank: Int?
    /// Role (PEFT suffix) → tensor name.
    var tensors: [String: String]
}

// In an extension, so that the struct keeps its synthesized memberwise initializer.
extension ModuleRecord {
    /// What the format records for `module`.
    init(_ module: AdaptedModule, config: PEFTConfig) {
        let isLoRA = config.method == .lora
        self.init(path: module.path, kind: module.kind, rank: module.rank,
                  alpha: isLoRA ? module.alpha : nil, scaling: isLoRA ? module.scaling : nil,
                  fanInFanOut: isLoRA ? (module.kind == .linear && config.fanInFanOut) : nil,
                  miniRank: config.variant == .mini ? module.miniRank : nil,
                  tensors: Dictionary(uniqueKeysWithValues: module.tensors.map { ($0.key.rawValue, $0.value.name) }))
    }

    var json: JSONValue {
        var members: [(key: String, value: JSONValue)] = [("kind", .string(kind.rawValue)), ("rank", .integer(Int64(rank)))]
        if let alpha { members.append(("alpha", Self.number(alpha))) }
        if let scaling { members.append(("scaling", Self.number(scaling))) }
        if let fanInFanOut { members.append(("fan_in_fan_out", .bool(fanInFanOut))) }
        if let miniRank { members.append(("mini_rank", .integer(Int64(miniRank)))) }
        let roles = AdaptedModule.Role.allCases.map(\.rawValue).filter { tensors[$0] != nil }
        members.append(("tensors", .object(roles.map { ($0, .string(tensors[$0]!)) })))
        return .object(members)
    }

    /// A finite Double as the shortest literal that reads back to the same value (Swift prints `2.0`, `1e-05`,
    /// `1e+16`: all valid JSON).
    private static func number(_ value: Double) -> JSONValue { .number(value, literal: "\(value)") }

    /// Parses `peftkit.modules`; fields that do not apply to the method are ignored, as are unknown fields.
    static func parseAll(_ members: [(key: String, value: JSONValue)], method: AdapterMethod, variant: AdapterVariant,
                         source: String) throws -> [ModuleRecord] {
        try members.map { path, value in
            func invalid(_ text: String) -> PEFTKitError {
                PEFTKitError(.invalidConfig, file: source, tensor: path, "'\(PeftkitFormat.modulesKey)': \(text)")
            }
            guard case .object = value else { throw invalid("the entry is \(value.typeName), not an object") }
            guard let kindText = value["kind"]?.stringValue, let kind = AdaptedModule.Kind(rawValue: kindText) else {
                throw invalid("'kind' must be \"linear\" or \"embedding\"")
            }
            guard let rank = value["rank"]?.integerValue, rank > 0, let rankInt = Int(exactly: rank) else {
                throw invalid("'rank' must be a positive integer")
            }
            func finiteNumber(_ key: String) throws -> Double {
                guard let number = value[key]?.doubleValue, number.isFinite else { throw invalid("'\(key)' must be a number") }
                return number
            }
            var record = ModuleRecord(path: path, kind: kind, rank: rankInt, alpha: nil, scaling: nil, fanInFanOut: nil,
                                      miniRank: nil, tensors: [:])
            if method == .lora {
                record.alpha = try finiteNumber("alpha")
                record.scaling = try finiteNumber("scaling")
                guard let flag = value["fan_in_fan_out"]?.boolValue else { throw invalid("'fan_in_fan_out' must be true or false") }
                record.fanInFanOut = flag
            }
            if variant == .mini {
                guard let mini = value["mini_rank"]?.integerValue, mini > 0, let miniInt = Int(exactly: mini) else {
                    throw invalid("'mini_rank' must be a positive integer")
                }
                record.miniRank = miniInt
            }
            guard let tensors = value["tensors"]?.objectValue, !tensors.isEmpty else {
                throw invalid("'tensors' must be an object of role → tensor name")
            }
            for (role, name) in tensors {
                guard let name = name.stringValue else { throw invalid("tensor of role '\(role)' must be a string") }
                record.tensors[role] = name
            }
            return record
        }
    }

    /// How this recorded entry differs from `actual`, one line per difference.
    func disagreements(with actual: ModuleRecord) -> [String] {
        var lines: [String] = []
        func note(_ field: String, _ recorded: String, _ computed: String) {
            lines.append("module '\(path)': '\(field)' is \(recorded) in the metadata but \(computed) from the PEFT config and tensors")
        }
        if kind != actual.kind { note("kind", kind.rawValue, actual.kind.rawValue) }
        if rank != actual.rank { note("rank", "\(rank)", "\(actual.rank)") }
        if !Self.close(alpha, actual.alpha) { note("alpha", "\(alpha.map { "\($0)" } ?? "absent")", "\(actual.alpha.map { "\($0)" } ?? "absent")") }
        if !Self.close(scaling, actual.scaling) { note("scaling", "\(scaling.map { "\($0)" } ?? "absent")", "\(actual.scaling.map { "\($0)" } ?? "absent")") }
        if fanInFanOut != actual.fanInFanOut { note("fan_in_fan_out", "\(fanInFanOut.map { "\($0)" } ?? "absent")", "\(actual.fanInFanOut.map { "\($0)" } ?? "absent")") }
        if miniRank != actual.miniRank { note("mini_rank", "\(miniRank.map { "\($0)" } ?? "absent")", "\(actual.miniRank.map { "\($0)" } ?? "absent")") }
        if tensors != actual.tensors {
            let describe = { (map: [String: String]) in map.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ") }
            note("tensors", "{\(describe(tensors))}", "{\(describe(actual.tensors))}")
        }
        return lines
    }

    /// Equal within a relative 1e-12: the spec's tolerance for numbers another writer may have printed differently.
    private static func close(_ a: Double?, _ b: Double?) -> Bool {
        guard let a, let b else { return a == nil && b == nil }
        return a == b || abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    }
}

/// One entry of `peftkit.carried`: a base tensor the adapter replaces whole.
struct CarriedRecord: Equatable {
    var baseName: String
    var tensor: String
    var reason: String

    init(baseName: String, tensor: String, reason: String) {
        self.baseName = baseName
        self.tensor = tensor
        self.reason = reason
    }

    init(_ carried: CarriedTensor) {
        self.init(baseName: carried.baseName, tensor: carried.tensor.name, reason: carried.reason.rawValue)
    }

    var json: JSONValue { .object([("tensor", .string(tensor)), ("reason", .string(reason))]) }

    static func parseAll(_ members: [(key: String, value: JSONValue)], source: String) throws -> [CarriedRecord] {
        try members.map { baseName, value in
            guard let tensor = value["tensor"]?.stringValue, let reason = value["reason"]?.stringValue,
                  CarriedTensor.Reason(rawValue: reason) != nil else {
                throw PEFTKitError(.invalidConfig, file: source, tensor: baseName,
                                   "'\(PeftkitFormat.carriedKey)': each entry needs a 'tensor' name and a 'reason' "
                                   + "(modules_to_save, base_layer or bias)")
            }
            return CarriedRecord(baseName: baseName, tensor: tensor, reason: reason)
        }
    }
}
