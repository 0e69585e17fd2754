import Foundation

/// A model checkpoint: one safetensors file, or a folder holding either a single `model.safetensors` or shards listed
/// by a `*.safetensors.index.json`. Every tensor name is unique across the checkpoint.
public final class Checkpoint: Sendable {
    /// Where a tensor lives.
    public struct Location: Sendable {
        public let file: SafeTensorsFile
        public let info: TensorInfo
    }

    /// The path as given.
    public let path: String
    /// The folder holding the checkpoint's files (the file's folder when a single file was given).
    public let folder: String
    /// The data files, in shard order.
    public let files: [SafeTensorsFile]
    /// The index file's name inside `folder`, when sharded.
    public let indexFileName: String?
    /// Every tensor in file order, then data order.
    public let tensors: [Location]
    private let locationByName: [String: Int]

    public var isSharded: Bool { indexFileName != nil }

    /// Opens a safetensors file or a model folder.
    public init(path: String) throws {
        self.path = path
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
            throw SafeTensorsError.noCheckpoint(path: path, detail: "no such file or folder")
        }
        if !isFolder.boolValue {
            folder = (path as NSString).deletingLastPathComponent
            files = [try SafeTensorsFile(path: path)]
            indexFileName = nil
        } else {
            folder = path
            let names = try FileManager.default.contentsOfDirectory(atPath: path).sorted()
            let indexes = names.filter { $0.hasSuffix(".safetensors.index.json") }
            if indexes.count > 1 {
                throw SafeTensorsError.noCheckpoint(path: path, detail: "several index files: \(indexes.joined(separator: ", "))")
            }
            if let index = indexes.first {
                indexFileName = index
                files = try Self.openShards(folder: path, indexName: index)
            } else {
                let candidates = names.contains("model.safetensors")
                    ? ["model.safetensors"] : names.filter { $0.hasSuffix(".safetensors") }
                guard candidates.count == 1 else {
                    throw SafeTensorsError.noCheckpoint(path: path, detail: candidates.isEmpty
                        ? "no .safetensors file and no index in this folder"
                        : "several .safetensors files and no index: \(candidates.joined(separator: ", "))")
                }
                indexFileName = nil
                files = [try SafeTensorsFile(path: (path as NSString).appendingPathComponent(candidates[0]))]
            }
        }
        var tensors: [Location] = []
        var locations: [String: Int] = [:]
        for file in files {
            for info in file.tensors {
                guard locations[info.name] == nil else {
                    throw SafeTensorsError.duplicateTensor(file: file.path, tensor: info.name)
                }
                locations[info.name] = tensors.count
                tensors.append(Location(file: file, info: info))
            }
        }
        self.tensors = tensors
        self.locationByName = locations
    }

    public func location(of name: String) -> Location? {
        locationByName[name].map { tensors[$0] }
    }

    public func view(_ name: String) throws -> TensorView {
        guard let location = location(of: name) else {
            throw SafeTensorsError.tensorNotFound(file: path, tensor: name)
        }
        return try location.file.view(location.info)
    }

    /// Total bytes of tensor data (what transformers calls `total_size`).
    public var totalTensorBytes: Int { tensors.reduce(0) { $0 + $1.info.byteCount } }

    // MARK: Index

    /// Reads the index, opens every shard it names and checks that index and shards agree exactly.
    private static func openShards(folder: String, indexName: String) throws -> [SafeTensorsFile] {
        let indexPath = (folder as NSString).appendingPathComponent(indexName)
        let index = try ShardIndex.read(path: indexPath)
        var files: [SafeTensorsFile] = []
        for shard in index.shardNames {
            files.append(try SafeTensorsFile(path: (folder as NSString).appendingPathComponent(shard)))
        }
        let fileByShard = Dictionary(uniqueKeysWithValues: zip(index.shardNames, files))
        for (tensor, shard) in index.weightMap {
            guard fileByShard[shard]?.info(tensor) != nil else {
                throw SafeTensorsError.tensorNotInNamedShard(file: indexPath, tensor: tensor, shard: shard)
            }
        }
        let shardByTensor = Dictionary(index.weightMap, uniquingKeysWith: { first, _ in first })
        for (shard, file) in zip(index.shardNames, files) {
            for info in file.tensors where shardByTensor[info.name] != shard {
                if shardByTensor[info.name] == nil {
                    throw SafeTensorsError.tensorMissingFromIndex(file: indexPath, tensor: info.name, shard: shard)
                }
                throw SafeTensorsError.duplicateTensor(file: indexPath, tensor: info.name)
            }
        }
        return files
    }
}

/// `model.safetensors.index.json`: which shard holds each tensor.
public struct ShardIndex: Sendable, Equatable {
    /// Tensor name → shard file name, in the order written.
    public var weightMap: [(tensor: String, shard: String)]
    /// `metadata`, kept as read (transformers writes `total_size`, newer versions `total_parameters` too).
    public var metadata: [(key: String, value: JSONValue)]

    public init(weightMap: [(tensor: String, shard: String)], metadata: [(key: String, value: JSONValue)]) {
        self.weightMap = weightMap
        self.metadata = metadata
    }

    public static func == (lhs: ShardIndex, rhs: ShardIndex) -> Bool {
        lhs.weightMap.elementsEqual(rhs.weightMap) { $0 == $1 }
            && JSONValue.object(lhs.metadata) == JSONValue.object(rhs.metadata)
    }

    /// Distinct shard names, sorted.
    public var shardNames: [String] { Array(Set(weightMap.map(\.shard))).sorted() }

    public static func read(path: String) throws -> ShardIndex {
        let data: Data
        do {
            // Foundation leaks a 4 KiB buffer on every read of an empty file: an empty file needs no reading.
            let attributes = try? FileManager.default.attributesOfItem(atPath: path)
            let isEmptyFile = attributes?[.type] as? FileAttributeType == .typeRegular && attributes?[.size] as? Int == 0
            data = isEmptyFile ? Data() : try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw SafeTensorsError.io(file: path, operation: "read", reason: error.localizedDescription)
        }
        guard data.count <= Header.maxLength else {
            throw SafeTensorsError.invalidIndex(file: path, detail: "\(data.count) bytes is larger than any real index")
        }
        let json = try data.withUnsafeBytes { try StrictJSON.parse($0, source: path) }
        guard case .object = json else { throw SafeTensorsError.invalidIndex(file: path, detail: "not a JSON object") }
        guard case .object(let map)? = json["weight_map"] else {
            throw SafeTensorsError.invalidIndex(file: path, detail: "missing 'weight_map' object")
        }
        var weightMap: [(tensor: String, shard: String)] = []
        for (tensor, value) in map {
            guard case .string(let shard) = value else {
                throw SafeTensorsError.invalidIndex(
                    file: path, detail: "shard of '\(SafeTensorsError.quoted(tensor))' is \(value.typeName), not a string")
            }
            guard isPlainFileName(shard) else { throw SafeTensorsError.shardNameNotPlain(file: path, shard: shard) }
            weightMap.append((tensor, shard))
        }
        guard !weightMap.isEmpty else { throw SafeTensorsError.invalidIndex(file: path, detail: "empty 'weight_map'") }
        var metadata: [(key: String, value: JSONValue)] = []
        if let value = json["metadata"] {
            guard case .object(let members) = value else {
                throw SafeTensorsError.invalidIndex(file: path, detail: "'metadata' is \(value.typeName), not an object")
            }
            metadata = members
        }
        return ShardIndex(weightMap: weightMap, metadata: metadata)
    }

    /// A name that stays inside its folder: no separators, not `.` or `..`, no NUL, not empty.
    public static func isPlainFileName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.contains("\0")
    }

    /// The index as transformers writes it: `json.dumps(index, indent=2, sort_keys=True) + "\n"`.
    public func serialized() -> String {
        let metadataObject = JSONValue.object(metadata.sorted { $0.key < $1.key })
        let map = JSONValue.object(weightMap.sorted { $0.tensor < $1.tensor }.map { ($0.tensor, .string($0.shard)) })
        return JSONValue.object([("metadata", metadataObject), ("weight_map", map)]).prettyText(indent: 2) + "\n"
    }
}

/// How transformers splits a state dict into shards (`max_shard_size`), and how it names them.
public enum ShardPlanner {
    /// Parses sizes like transformers: an integer is bytes; `KB`/`MB`/`GB` are powers of 1000, `KiB`/`MiB`/`GiB` of 1024.
    public static func parseSize(_ text: String) throws -> Int {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let units: [(suffix: String, factor: Int)] = [
            ("KIB", 1 << 10), ("MIB", 1 << 20), ("GIB", 1 << 30), ("TIB", 1 << 40),
            ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000), ("B", 1),
        ]
        let upper = trimmed.uppercased()
        for unit in units where upper.hasSuffix(unit.suffix) {
            let number = String(trimmed.dropLast(unit.suffix.count)).trimmingCharacters(in: .whitespaces)
            guard let value = Double(number), value > 0, value * Double(unit.factor) < Double(Int.max) else {
                throw SafeTensorsError.invalidShardSize(text: text)
            }
            return Int(value * Double(unit.factor))
        }
        guard let bytes = Int(trimmed), bytes > 0 else { throw SafeTensorsError.invalidShardSize(text: text) }
        return bytes
    }

    /// Groups tensors (in the given order) into shards: a tensor that would tip the current shard over the limit
    /// starts a new one; a tensor larger than the limit gets a shard of its own, inserted where it was met.
    /// Returns, for each shard, the indices of its tensors.
    public static func plan(sizes: [Int], maxShardSize: Int) -> [[Int]] {
        var shards: [[Int]] = []
        var current: [Int] = []
        var currentSize = 0
        for (i, size) in sizes.enumerated() {
            if size > maxShardSize {
                shards.append([i])
                continue
            }
            if currentSize + size > maxShardSize && !current.isEmpty {
                shards.append(current)
                current = []
                currentSize = 0
            }
            current.append(i)
            currentSize += size
        }
        if !current.isEmpty { shards.append(current) }
        return shards
    }

    /// `model-00001-of-00003.safetensors`, or `model.safetensors` when there is one shard.
    public static func shardName(_ index: Int, of count: Int, prefix: String = "model") -> String {
        if count == 1 { return "\(prefix).safetensors" }
        func fiveDigits(_ n: Int) -> String {
            let digits = String(n)
            return String(repeating: "0", count: max(0, 5 - digits.count)) + digits
        }
        return "\(prefix)-\(fiveDigits(index + 1))-of-\(fiveDigits(count)).safetensors"
    }
}
