import Foundation
import PEFTKit
import SafeTensors

/// What `inspect` learned about a checkpoint: everything in its headers (and index), plus per-tensor statistics when
/// asked. A plain value, so the text and JSON reports are pure functions of it.
struct CheckpointInspection: Sendable {
    /// What PATH is.
    enum Kind: String, Sendable {
        /// A single `.safetensors` file.
        case file
        /// A model folder: one `.safetensors` file, or shards and their index.
        case model
        /// A PEFT adapter folder, or the `adapter_model.safetensors` inside one.
        case adapter
    }

    struct File: Sendable {
        /// The file's name inside the checkpoint's folder.
        let name: String
        /// Size of the whole file on disk.
        let size: Int
        /// Length of the JSON header (the data starts 8 bytes later).
        let headerLength: Int
        let tensorCount: Int
        /// `__metadata__`, or nil when the header has none.
        let metadata: [(key: String, value: String)]?
    }

    struct Index: Sendable {
        let name: String
        /// The index's `metadata` object as read (transformers writes `total_size`).
        let metadata: [(key: String, value: JSONValue)]
    }

    struct Tensor: Sendable {
        let name: String
        let dtype: DType
        let shape: [Int]
        let elementCount: Int
        let byteCount: Int
        /// The name of the file holding it.
        let fileName: String
        /// Nil when statistics were not asked for, or when the dtype cannot be decoded.
        let statistics: TensorStatistics?
    }

    var path: String
    let kind: Kind
    let files: [File]
    let index: Index?
    /// In storage order: file by file (shard order), and by position within each file.
    let tensors: [Tensor]
    let includesStatistics: Bool
    /// For an adapter that passed its consistency checks: what it is and does.
    var adapter: AdapterReport?
    /// For an adapter that failed them: every problem found.
    var adapterProblems: [String] = []

    var isSharded: Bool { index != nil }
    var parameterCount: Int { tensors.reduce(0) { $0 + $1.elementCount } }
    var byteCount: Int { tensors.reduce(0) { $0 + $1.byteCount } }

    /// Tensor count per dtype, most common first, ties by name.
    var dtypeHistogram: [(dtype: DType, count: Int)] {
        Dictionary(grouping: tensors, by: \.dtype)
            .map { (dtype: $0.key, count: $0.value.count) }
            .sorted { $0.count != $1.count ? $0.count > $1.count : $0.dtype.rawValue < $1.dtype.rawValue }
    }

    /// The `__metadata__` entries every file agrees on (same key, same value), in the first file's order. For a
    /// single file, simply its metadata; for shards, what they share (transformers writes `format: pt` in each).
    var sharedMetadata: [(key: String, value: String)] {
        guard let first = files.first?.metadata else { return [] }
        return first.filter { entry in
            files.dropFirst().allSatisfy { file in
                file.metadata?.contains { $0.key == entry.key && $0.value == entry.value } ?? false
            }
        }
    }

    /// Keys that appear in some file's metadata but are not shared by all, so the text report can point at them.
    var unsharedMetadataKeyCount: Int {
        let shared = Set(sharedMetadata.map(\.key))
        let all = Set(files.flatMap { $0.metadata?.map(\.key) ?? [] })
        return all.subtracting(shared).count
    }
}

extension CheckpointInspection {
    /// Opens the checkpoint at `path` and reads its headers, and its data only when `statistics` is set.
    init(path: String, kind: Kind, statistics: Bool) throws {
        let checkpoint = try Checkpoint(path: path)
        let fileNames = checkpoint.files.map { ($0.path as NSString).lastPathComponent }
        self.path = path
        self.kind = kind
        self.files = zip(checkpoint.files, fileNames).map { file, name in
            File(name: name, size: file.fileSize, headerLength: file.header.length,
                 tensorCount: file.tensors.count, metadata: file.metadata)
        }
        if let indexName = checkpoint.indexFileName {
            let index = try ShardIndex.read(path: (checkpoint.folder as NSString).appendingPathComponent(indexName))
            self.index = Index(name: indexName, metadata: index.metadata)
        } else {
            self.index = nil
        }
        var tensors: [Tensor] = []
        tensors.reserveCapacity(checkpoint.tensors.count)
        for (file, fileName) in zip(checkpoint.files, fileNames) {
            for info in file.tensors {
                tensors.append(Tensor(
                    name: info.name, dtype: info.dtype, shape: info.shape, elementCount: info.elementCount,
                    byteCount: info.byteCount, fileName: fileName,
                    statistics: statistics ? try Self.statistics(of: info, in: file) : nil))
            }
        }
        self.tensors = tensors
        self.includesStatistics = statistics
    }

    /// An adapter's tensors as its loader read them (which also covers a legacy `adapter_model.bin`).
    init(adapter: Adapter, path: String, statistics: Bool) throws {
        if (try? SafeTensorsFile(path: adapter.source)) != nil {
            self = try CheckpointInspection(path: adapter.source, kind: .adapter, statistics: statistics)
            self.path = path
            return
        }
        let fileName = (adapter.source as NSString).lastPathComponent
        let size = (try? FileManager.default.attributesOfItem(atPath: adapter.source)[.size] as? Int) ?? 0
        self.path = path
        self.kind = .adapter
        self.files = [File(name: fileName, size: size, headerLength: 0, tensorCount: adapter.allTensors.count,
                           metadata: nil)]
        self.index = nil
        self.tensors = try adapter.allTensors.map { tensor in
            Tensor(name: tensor.name, dtype: tensor.dtype, shape: tensor.shape, elementCount: tensor.elementCount,
                   byteCount: tensor.byteCount, fileName: fileName,
                   statistics: statistics ? try tensor.withBytes {
                       TensorStatistics.compute($0, dtype: tensor.dtype, count: tensor.elementCount)
                   } : nil)
        }
        self.includesStatistics = statistics
    }

    /// Reads one tensor's data through the mapping, then lets its pages go so memory stays flat on big models.
    private static func statistics(of info: TensorInfo, in file: SafeTensorsFile) throws -> TensorStatistics? {
        guard Codec.canDecode(info.dtype) else { return nil }
        file.prefetch(info)
        defer { file.release(info) }
        return TensorStatistics.compute(try file.view(info))
    }
}

/// What PATH holds, decided before anything is opened.
///
/// An adapter gets its own report (method, modules, ranks, consistency checks that exit with status 1) on top of
/// the listing of its tensors.
enum InspectSubject {
    case checkpoint(CheckpointInspection.Kind)
    case adapter

    static func classify(_ path: String) -> InspectSubject {
        if AdapterLoader.looksLikeAdapter(path) { return .adapter }
        var isFolder: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isFolder)
        return .checkpoint(isFolder.boolValue ? .model : .file)
    }
}
