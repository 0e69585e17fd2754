import Foundation
import SafeTensors

/// peftkit's own single-file adapter format: a safetensors file whose `__metadata__` makes it self-describing.
/// The normative description is spec/adapter-format.md; this file implements version 1.0 of it.
///
/// Tensors keep the names PEFT gives them, so a PEFT → peftkit → PEFT round trip keeps every name and byte; the
/// metadata adds the resolved per-module parameters, the verbatim PEFT config, the base model's identity and a CRC-32
/// per tensor.
public enum PeftkitFormat: AdapterFormat {
    public static let id = "peftkit"
    public static let writeName: String? = "peftkit"
    public static let summary = "one .safetensors file holding config and tensors"
    public static let recordsBaseFingerprint = true

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

    /// A file describes itself: a safetensors file whose metadata has `peftkit.format` is a peftkit file, even inside
    /// a PEFT folder. A file that is neither in a PEFT folder nor a valid safetensors file yet is named `.safetensors`
    /// can only be meant as one: its safetensors error is thrown.
    public static func claims(_ path: String) throws -> Bool {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), !isFolder.boolValue else { return false }
        let inPEFTFolder = PEFTFolderFormat.folder(of: path) != nil
        guard path.hasSuffix(".safetensors") || !inPEFTFolder else { return false }
        do {
            return isPeftkitFile(try SafeTensorsFile(path: path))
        } catch let error as SafeTensorsError where !inPEFTFolder && path.hasSuffix(".safetensors") {
            throw error
        } catch is SafeTensorsError {
            return false  // not a safetensors file: judged by what surrounds it
        }
    }

    public static func read(_ path: String) throws -> Adapter { try read(try SafeTensorsFile(path: path)) }

    // MARK: - Reading

    /// Reads a peftkit file: checks its format name and version, every tensor's CRC-32, rebuilds the adapter from the
    /// verbatim PEFT config and checks that the resolved parameters the file records agree with it.
    /// - Throws: `PEFTKitError` — `.invalidConfig` for missing or malformed metadata, `.unsupported` for a major
    ///   version this code does not read, `.corrupted` for a CRC-32 mismatch, `.inconsistentAdapter` when the
    ///   metadata disagrees with the adapter rebuilt from its config and tensors.
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
        let adapter = try PEFTKeys.adapter(config: config, tensors: tensors, source: source,
                                           format: SourceFormat(id: id, version: version.description,
                                                                description: "peftkit file, format \(version)"),
                                           fingerprint: fingerprint)
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
        if method != adapter.method.name {
            problems.append("'\(methodKey)' is \"\(method)\" but the PEFT config's peft_type is \(adapter.config.peftType)")
        }
        let variant = try metadata.required(variantKey)
        if variant != adapter.variant {
            problems.append("'\(variantKey)' is \"\(variant)\" but the PEFT config gives \"\(adapter.variant)\"")
        }
        if let baseModel = metadata.value(baseModelKey), baseModel != adapter.base.nameOrPath {
            problems.append("'\(baseModelKey)' is \"\(baseModel)\" but the PEFT config's base_model_name_or_path is "
                            + (adapter.base.nameOrPath.map { "\"\($0)\"" } ?? "absent"))
        }

        let modulesByPath = Dictionary(adapter.modules.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first })
        // Each entry is read against what the adapter computes for that module (which says what fields to expect).
        let recordedModules = try metadata.object(modulesKey).map { path, value in
            try ModuleRecord(parsing: value, path: path,
                             expected: modulesByPath[path].map { ModuleRecord($0, method: adapter.method) }, source: source)
        }
        for record in recordedModules {
            guard let module = modulesByPath[record.path] else {
                problems.append("module '\(record.path)' is in '\(modulesKey)' but the adapter's tensors have no such module")
                continue
            }
            problems += record.disagreements(with: ModuleRecord(module, method: adapter.method))
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
    /// place once complete). `options.baseFingerprint` is recorded (`BaseFingerprint.compute`; pass
    /// `adapter.base.fingerprint` to keep the one an adapter already has).
    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws {
        if let fingerprint = options.baseFingerprint, !BaseFingerprint.isWellFormed(fingerprint) {
            throw PEFTKitError(.invalidConfig, file: path, "\"\(fingerprint)\" is not a base fingerprint (SCHEME:VALUE)")
        }
        try OutputPath.checkWritable(path, force: options.force, expectFolder: false)
        let (parent, name) = OutputPath.split(path)
        OutputFolder.removeStaleTemporaries(in: parent, for: name)  // what a killed earlier run left

        let tensors = PEFTKeys.namedTensors(adapter)
        var checksums: [String: UInt32] = [:]
        for (name, tensor) in tensors { checksums[name] = try CRC32.checksum(of: tensor) }
        let metadata = try metadataEntries(adapter, fingerprint: options.baseFingerprint, checksums: checksums)
        let writer = try SafeTensorsWriter(path: path,
                                           tensors: tensors.map { TensorSpec(name: $0.name, dtype: $0.tensor.dtype, shape: $0.tensor.shape) },
                                           metadata: metadata)
        do {
            for (name, tensor) in tensors {
                try tensor.withBytes { bytes in
                    // The recorded CRC was taken in an earlier pass: make sure the source did not change since.
                    guard CRC32.checksum(bytes) == checksums[name] else {
                        throw PEFTKitError(.corrupted, file: adapter.source, tensor: tensor.name,
                                           "the tensor's bytes changed while it was being converted")
                    }
                    try writer.write(name, bytes: bytes)
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
            (methodKey, adapter.method.name),
            (variantKey, adapter.variant),
            (sourceFormatKey, adapter.format.id),
        ]
        if let name = adapter.base.nameOrPath { entries.append((baseModelKey, name)) }
        if let fingerprint { entries.append((baseFingerprintKey, fingerprint)) }
        let modules = adapter.modules.map { ($0.path, ModuleRecord($0, method: adapter.method).json) }
        entries.append((modulesKey, JSONValue.object(modules).compactText()))
        let carried = adapter.carried.map { ($0.baseName, CarriedRecord($0).json) }
        entries.append((carriedKey, JSONValue.object(carried).compactText()))
        let sortedChecksums = checksums.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        entries.append((checksumsKey, JSONValue.object(sortedChecksums.map { ($0.key, .string(CRC32.hex($0.value))) }).compactText()))
        entries.append((peftConfigKey, adapter.config.json.compactText()))
        return entries
    }
}

// MARK: - Records of the metadata

/// One entry of `peftkit.modules`: a module's resolved parameters and its tensors by role.
struct ModuleRecord {
    var path: String
    var kind: AdaptedModule.Kind
    var rank: Int
    /// The method's own parameters (`AdapterMethod.recordedParameters`), e.g. LoRA's alpha, scaling, fan_in_fan_out.
    var parameters: [(key: String, value: JSONValue)]
    /// Role (PEFT suffix) → tensor name, in the method's role order.
    var tensors: [(role: String, name: String)]
}

extension ModuleRecord {
    /// What the format records for `module`.
    init(_ module: AdaptedModule, method: any AdapterMethod) {
        self.init(path: module.path, kind: module.kind, rank: module.rank,
                  parameters: method.recordedParameters(of: module),
                  tensors: method.roles.filter { module.tensors[$0] != nil }.map { ($0.rawValue, PEFTKeys.key(module, $0)) })
    }

    var json: JSONValue {
        .object([("kind", .string(kind.rawValue)), ("rank", .integer(Int64(rank)))] + parameters
                + [("tensors", .object(tensors.map { ($0.role, .string($0.name)) }))])
    }

    /// Parses an entry. `expected` (the record computed for the same module, if the adapter has it) says which
    /// parameters to read and of which JSON type; unknown fields are ignored.
    init(parsing value: JSONValue, path: String, expected: ModuleRecord?, source: String) throws {
        func invalid(_ text: String) -> PEFTKitError {
            PEFTKitError(.invalidConfig, file: source, tensor: path, "'\(PeftkitFormat.modulesKey)': \(text)")
        }
        guard case .object = value else { throw invalid("the entry is \(value.typeName), not an object") }
        guard let kindText = value["kind"]?.stringValue, let kind = AdaptedModule.Kind(rawValue: kindText) else {
            throw invalid("'kind' must be \"linear\" or \"embedding\"")
        }
        // 0 only where the adapter rebuilt from its config and tensors has it too: an AdaLoRA module whose triplets
        // were all pruned.
        guard let rank = value["rank"]?.integerValue, rank > 0 || (rank == 0 && expected?.rank == 0),
              let rankInt = Int(exactly: rank) else {
            throw invalid("'rank' must be a positive integer")
        }
        var parameters: [(key: String, value: JSONValue)] = []
        for (key, wanted) in expected?.parameters ?? [] {
            let recorded = value[key]
            switch wanted {
            case .number where recorded?.doubleValue?.isFinite != true: throw invalid("'\(key)' must be a number")
            case .integer where (recorded?.integerValue ?? 0) <= 0: throw invalid("'\(key)' must be a positive integer")
            case .bool where recorded?.boolValue == nil: throw invalid("'\(key)' must be true or false")
            default: parameters.append((key, recorded ?? .null))
            }
        }
        guard let tensors = value["tensors"]?.objectValue, !tensors.isEmpty else {
            throw invalid("'tensors' must be an object of role → tensor name")
        }
        var names: [(role: String, name: String)] = []
        for (role, name) in tensors {
            guard let name = name.stringValue else { throw invalid("tensor of role '\(role)' must be a string") }
            names.append((role, name))
        }
        self.init(path: path, kind: kind, rank: rankInt, parameters: parameters, tensors: names)
    }

    /// How this recorded entry differs from `actual`, one line per difference.
    func disagreements(with actual: ModuleRecord) -> [String] {
        var lines: [String] = []
        func note(_ field: String, _ recorded: String, _ computed: String) {
            lines.append("module '\(path)': '\(field)' is \(recorded) in the metadata but \(computed) from the PEFT config and tensors")
        }
        if kind != actual.kind { note("kind", kind.rawValue, actual.kind.rawValue) }
        if rank != actual.rank { note("rank", "\(rank)", "\(actual.rank)") }
        for (key, computed) in actual.parameters {
            let recorded = parameters.first { $0.key == key }?.value
            if !Self.same(recorded, computed) { note(key, recorded.map(Self.text) ?? "absent", Self.text(computed)) }
        }
        let describe = { (pairs: [(role: String, name: String)]) in
            pairs.sorted { $0.role < $1.role }.map { "\($0.role)=\($0.name)" }.joined(separator: ", ")
        }
        if describe(tensors) != describe(actual.tensors) {
            note("tensors", "{\(describe(tensors))}", "{\(describe(actual.tensors))}")
        }
        return lines
    }

    private static func text(_ value: JSONValue) -> String {
        switch value {
        case .number(let number, _): "\(number)"
        case .integer(let number): "\(number)"
        case .bool(let flag): "\(flag)"
        default: value.compactText()
        }
    }

    /// Numbers equal within a relative 1e-12 (the spec's tolerance for numbers another writer may have printed
    /// differently); anything else exactly.
    private static func same(_ recorded: JSONValue?, _ computed: JSONValue) -> Bool {
        guard let recorded else { return false }
        if case .bool = computed { return recorded.boolValue == computed.boolValue }
        guard let a = recorded.doubleValue, let b = computed.doubleValue else { return recorded == computed }
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
        self.init(baseName: carried.baseName, tensor: PEFTKeys.key(carried), reason: carried.reason.rawValue)
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
