import SafeTensors

/// The fingerprint of the base tensors an adapter touches (spec/adapter-format.md, "Base fingerprint").
///
/// It lets a merge refuse a base model other than the one the adapter was converted against, even when every shape
/// matches (a sibling fine-tune, another revision). It is a CRC, so it guards against mistakes, not against anyone
/// crafting a base on purpose.
public enum BaseFingerprint {
    /// The scheme this version computes; a fingerprint is written `v1:` followed by eight lowercase hex digits.
    public static let scheme = "v1"

    /// Bytes checksummed between two checks that the base file has not shrunk under its mapping.
    static let streamChunkSize = 64 << 20

    /// What comparing an adapter's recorded fingerprint with a base found.
    public enum Verification: Sendable, Equatable {
        /// The base is the one the adapter was fingerprinted against.
        case matches(String)
        /// The adapter records no fingerprint: nothing to check.
        case absent
        /// The adapter records a fingerprint of a scheme this version cannot compute.
        case unknownScheme(String)
    }

    /// The names of the base tensors the fingerprint covers: each adapted module's weight, its bias when the adapter
    /// changes it (`lora_B.bias`), and each tensor the adapter carries; once each, sorted by their UTF-8 bytes.
    public static func tensorNames(of adapter: Adapter) -> [String] {
        var names = Set<String>()
        for module in adapter.modules { names.formUnion(adapter.method.baseTensors(of: module)) }
        for carried in adapter.carried { names.insert(carried.baseName) }
        return names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }

    /// Computes the fingerprint of `base` for `adapter`, reading every covered tensor once, in streaming fashion.
    /// - Throws: `PEFTKitError` `.baseMismatch` when the base lacks a covered tensor; `SafeTensorsError` when a file
    ///   shrinks while it is read.
    public static func compute(adapter: Adapter, base: Checkpoint) throws -> String {
        scheme + ":" + CRC32.hex(CRC32.checksum(try canonicalText(adapter: adapter, base: base)))
    }

    /// The text the fingerprint is the CRC-32 of: one line per covered tensor,
    /// `<UTF-8 length of name>:<name> <dtype> [<dim>,<dim>,…] <CRC-32 of its bytes>\n`.
    /// The length prefix keeps the text unambiguous whatever characters a name holds.
    static func canonicalText(adapter: Adapter, base: Checkpoint) throws -> String {
        var text = ""
        for name in tensorNames(of: adapter) {
            guard let location = base.location(of: name) else {
                throw PEFTKitError(.baseMismatch, file: base.path, tensor: name,
                                   "the base model has no such tensor, but the adapter changes it")
            }
            let crc = try checksum(location)
            let shape = "[" + location.info.shape.map(String.init).joined(separator: ",") + "]"
            text += "\(name.utf8.count):\(name) \(location.info.dtype.rawValue) \(shape) \(CRC32.hex(crc))\n"
        }
        return text
    }

    /// Compares the fingerprint the adapter records with `base`. A merge calls this before writing anything.
    /// - Throws: `.baseMismatch` when the fingerprints differ or the base lacks a covered tensor.
    @discardableResult
    public static func verify(adapter: Adapter, base: Checkpoint) throws -> Verification {
        guard let recorded = adapter.base.fingerprint else { return .absent }
        guard recorded.hasPrefix(scheme + ":") else { return .unknownScheme(recorded) }
        let actual = try compute(adapter: adapter, base: base)
        guard actual == recorded else {
            throw PEFTKitError(.baseMismatch, file: base.path,
                               "this base model's fingerprint is \(actual), but the adapter was converted against a base "
                               + "whose fingerprint is \(recorded): the targeted weights differ, so this is probably not "
                               + "the base model the adapter was trained on")
        }
        return .matches(actual)
    }

    /// Whether `text` is a fingerprint of the form `<scheme>:<payload>` (any scheme; `v1` payloads are 8 hex digits).
    static func isWellFormed(_ text: String) -> Bool {
        guard let colon = text.firstIndex(of: ":") else { return false }
        let schemeName = text[..<colon], payload = String(text[text.index(after: colon)...])
        guard !schemeName.isEmpty, schemeName.utf8.allSatisfy({ (0x21...0x7E).contains($0) && $0 != 0x3A }),
              !payload.isEmpty else { return false }
        return schemeName != scheme || CRC32.parseHex(payload) != nil
    }

    /// The CRC of one base tensor, read from the mapping in pieces; each piece first checks the file is intact and the
    /// pages read are released afterwards, so a multi-gigabyte base streams through in flat memory.
    private static func checksum(_ location: Checkpoint.Location) throws -> UInt32 {
        let view = try location.file.view(location.info)
        location.file.prefetch(location.info)
        defer { location.file.release(location.info) }
        var crc: UInt32 = 0
        var start = 0
        while start < view.bytes.count {
            let length = min(view.bytes.count - start, streamChunkSize)
            try location.file.checkUnchanged()
            crc = CRC32.checksum(UnsafeRawBufferPointer(rebasing: view.bytes[start..<(start + length)]), continuing: crc)
            start += length
        }
        return crc
    }
}
