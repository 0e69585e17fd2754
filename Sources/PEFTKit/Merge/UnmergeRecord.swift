import Foundation
import SafeTensors

/// What a merge knew that its merged weights do not keep, written beside them so that an unmerge can undo it:
/// DoRA's norms n = ‖W + s·B·A‖ per output (spec/unmerge-record.md).
///
/// `peftkit-unmerge.record` (safetensors inside; named so that no loader takes it for weights) in a merged folder keeps, for each tensor T that a DoRA merge changed, a stack of the
/// merges into T since, oldest first (k = 0, 1, …), and the hash of T's bytes as peftkit last wrote them:
///
///     T:hash          U64 [1]         ContentHash of T's stored bytes
///     T:k:scale       F32 [1]         the scale s merge k was applied with (scaling × merge weight)
///     T:k:norms       F32 [outputs]   DoRA only: the norms merge k divided by
///     T:k:magnitude   F32 [outputs]   DoRA only: the adapter's lora_magnitude_vector, which says whose merge it was
///
/// An unmerge undoes the top merge of each tensor it changes, and only when T's bytes still have the hash (nothing
/// merged or converted since without peftkit knowing) and the adapter's magnitude and scale are the recorded ones;
/// adapters merged in turn are so unmerged in reverse order. Any merge into a tensor with a stack pushes onto it.
struct UnmergeRecord: Sendable {
    static let fileName = "peftkit-unmerge.record"
    static let format = "peftkit-unmerge"
    static let version = "2"

    struct Entry: Sendable, Equatable {
        let scale: Float
        /// DoRA: the norms and magnitude (nil for a change the merged weights determine).
        let dora: (norms: [Float], magnitude: [Float])?

        static func == (a: Entry, b: Entry) -> Bool {
            a.scale == b.scale && a.dora?.norms == b.dora?.norms && a.dora?.magnitude == b.dora?.magnitude
        }
    }

    struct Stack: Sendable, Equatable {
        var entries: [Entry]
        /// `ContentHash` of the tensor's bytes.
        var hash: UInt64
    }

    var stacks: [String: Stack] = [:]

    /// The record in `folder`, empty when it has none.
    /// - Throws: `PEFTKitError` `.corrupted` naming the file and tensor when the record is malformed.
    static func read(folder: String) throws -> UnmergeRecord {
        let path = (folder as NSString).appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: path) else { return UnmergeRecord() }
        let file = try SafeTensorsFile(path: path)
        func fail(_ tensor: String?, _ message: String) -> PEFTKitError {
            PEFTKitError(.corrupted, file: path, tensor: tensor, message)
        }
        let metadata = Dictionary(file.metadata ?? [], uniquingKeysWith: { first, _ in first })
        guard metadata["format"] == format else { throw fail(nil, "not a peftkit unmerge record (metadata format is not '\(format)')") }
        guard metadata["version"] == version else {
            throw fail(nil, "unmerge record version \(metadata["version"] ?? "(none)") is not one this peftkit reads (\(version))")
        }
        var hashes: [String: TensorInfo] = [:]
        var fields: [String: [Int: [String: TensorInfo]]] = [:]
        for info in file.tensors {
            let parts = info.name.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            if parts.count >= 2, parts.last == "hash" {
                hashes[parts.dropLast().joined(separator: ":")] = info
                continue
            }
            guard parts.count >= 3, let k = Int(parts[parts.count - 2]), k >= 0, String(k) == parts[parts.count - 2],
                  ["norms", "magnitude", "scale"].contains(parts.last!) else {
                throw fail(info.name, "not a record tensor name (TENSOR:hash or TENSOR:INDEX:scale|norms|magnitude)")
            }
            fields[parts.dropLast(2).joined(separator: ":"), default: [:]][k, default: [:]][parts.last!] = info
        }
        func vector(_ info: TensorInfo, _ dtype: DType) throws -> [Float] {
            guard info.dtype == dtype, info.shape.count == 1 else {
                throw fail(info.name, "\(info.dtype.rawValue) \(info.shape), expected a \(dtype.rawValue) vector")
            }
            return Codec.decode(try file.view(info).bytes, as: dtype, count: info.elementCount)
        }
        var record = UnmergeRecord()
        for tensor in Set(hashes.keys).union(fields.keys).sorted() {
            guard let hashInfo = hashes[tensor], hashInfo.dtype == .u64, hashInfo.shape == [1] else {
                throw fail(tensor + ":hash", "missing, or not a U64 of shape [1]")
            }
            let byIndex = fields[tensor] ?? [:]
            guard !byIndex.isEmpty else { throw fail(tensor, "a hash without merges") }
            var entries: [Entry] = []
            for k in 0..<byIndex.count {
                guard let entry = byIndex[k] else { throw fail("\(tensor):\(k)", "merge \(k) is missing (merges count up from 0)") }
                guard let scaleInfo = entry["scale"], scaleInfo.shape == [1] else { throw fail("\(tensor):\(k):scale", "missing, or not of shape [1]") }
                let scale = try vector(scaleInfo, .f32)[0]
                guard scale.isFinite else { throw fail(scaleInfo.name, "scale is \(scale)") }
                var dora: (norms: [Float], magnitude: [Float])?
                switch (entry["norms"], entry["magnitude"]) {
                case (nil, nil): break
                case let (norms?, magnitude?):
                    let n = try vector(norms, .f32), m = try vector(magnitude, .f32)
                    guard n.count == m.count else { throw fail(norms.name, "\(n.count) norms for \(m.count) magnitudes") }
                    if let bad = n.firstIndex(where: { !($0.isFinite && $0 > 0) }) {
                        throw fail(norms.name, "element \(bad) is \(n[bad]); a norm is finite and positive")
                    }
                    if let bad = m.firstIndex(where: { !$0.isFinite }) { throw fail(magnitude.name, "element \(bad) is \(m[bad])") }
                    dora = (n, m)
                default:
                    throw fail("\(tensor):\(k)", "a DoRA merge needs both norms and magnitude")
                }
                entries.append(Entry(scale: scale, dora: dora))
            }
            let hash = try file.view(hashInfo).bytes.loadUnaligned(as: UInt64.self).littleEndian
            record.stacks[tensor] = Stack(entries: entries, hash: hash)
        }
        return record
    }

    /// Writes the record to `path`, or nothing when it is empty.
    func write(to path: String) throws {
        guard !stacks.isEmpty else { return }
        var specs: [TensorSpec] = [], data: [String: [UInt8]] = [:]
        func add(_ name: String, _ dtype: DType, _ bytes: [UInt8]) {
            specs.append(TensorSpec(name: name, dtype: dtype, shape: [bytes.count / (dtype.bitWidth / 8)]))
            data[name] = bytes
        }
        func bytes(_ values: [Float]) -> [UInt8] { values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) } }
        for tensor in stacks.keys.sorted() {
            let stack = stacks[tensor]!
            add(tensor + ":hash", .u64, withUnsafeBytes(of: stack.hash.littleEndian, Array.init))
            for (k, entry) in stack.entries.enumerated() {
                add("\(tensor):\(k):scale", .f32, bytes([entry.scale]))
                if let dora = entry.dora {
                    add("\(tensor):\(k):norms", .f32, bytes(dora.norms))
                    add("\(tensor):\(k):magnitude", .f32, bytes(dora.magnitude))
                }
            }
        }
        let writer = try SafeTensorsWriter(path: path, tensors: specs,
                                           metadata: [("format", Self.format), ("version", Self.version)])
        for spec in specs { try data[spec.name]!.withUnsafeBytes { try writer.write(spec.name, bytes: $0) } }
        try writer.finish()
    }
}
