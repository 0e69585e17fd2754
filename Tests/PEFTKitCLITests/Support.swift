import Foundation
import SafeTensors
@testable import PEFTKitCLI
#if canImport(Glibc)
import Glibc
#endif

/// The repository's root folder (this file is Tests/PEFTKitCLITests/Support.swift).
let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// What one in-process run of `peftkit` produced.
struct RunResult {
    let status: Int32
    let standardOutput: String
    let standardError: String
}

/// Runs `peftkit` with `arguments` through the same runner as `main`, capturing both streams.
func peftkit(_ arguments: String...) async -> RunResult {
    await peftkit(arguments)
}

func peftkit(_ arguments: [String]) async -> RunResult {
    let capture = ConsoleCapture()
    let status = await Console.$current.withValue(capture.console) {
        await PeftkitCommand.run(arguments: arguments)
    }
    return RunResult(status: status, standardOutput: capture.standardOutput, standardError: capture.standardError)
}

/// A fresh folder under the system temporary directory; the caller removes it.
func makeTemporaryFolder() -> String {
    let path = NSTemporaryDirectory() + "peftkit-cli-tests-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A tensor to write: name, dtype, shape and its raw bytes.
struct TestTensor {
    let name: String
    let dtype: DType
    let shape: [Int]
    let bytes: [UInt8]

    var elementCount: Int { shape.reduce(1, *) }

    static func f32(_ name: String, _ shape: [Int], _ values: [Float]) -> TestTensor {
        precondition(values.count == shape.reduce(1, *))
        return TestTensor(name: name, dtype: .f32, shape: shape, bytes: values.flatMap { littleEndianBytes($0.bitPattern) })
    }

    static func bf16(_ name: String, _ shape: [Int], _ values: [Float]) -> TestTensor {
        precondition(values.count == shape.reduce(1, *))
        return TestTensor(name: name, dtype: .bf16, shape: shape,
                          bytes: values.flatMap { littleEndianBytes(Codec.bf16(from: $0)) })
    }

    /// A tensor of the right size filled with a byte pattern (for dtypes the test does not compute with).
    static func filled(_ name: String, _ dtype: DType, _ shape: [Int]) -> TestTensor {
        let count = Header.byteCount(dtype: dtype, shape: shape)!
        return TestTensor(name: name, dtype: dtype, shape: shape, bytes: (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) })
    }
}

func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

/// Writes `tensors` as one safetensors file with the project's writer.
@discardableResult
func writeSafeTensors(_ tensors: [TestTensor], to path: String,
                      metadata: [(key: String, value: String)]? = [("format", "pt")]) throws -> String {
    let writer = try SafeTensorsWriter(path: path, tensors: tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                                       metadata: metadata)
    for tensor in tensors {
        try tensor.bytes.withUnsafeBytes { try writer.write(tensor.name, bytes: $0) }
    }
    try writer.finish(sync: false)
    return path
}

/// Writes `tensors` as a sharded checkpoint, the way transformers does: plan the shards, write each, then the
/// index. Returns the shard file name of each tensor.
@discardableResult
func writeShardedCheckpoint(_ tensors: [TestTensor], maxShardSize: Int, folder: String) throws -> [String: String] {
    let plan = ShardPlanner.plan(sizes: tensors.map(\.bytes.count), maxShardSize: maxShardSize)
    precondition(plan.count > 1, "the test wants several shards")
    var weightMap: [(tensor: String, shard: String)] = []
    for (i, members) in plan.enumerated() {
        let name = ShardPlanner.shardName(i, of: plan.count)
        try writeSafeTensors(members.map { tensors[$0] }, to: folder + "/" + name)
        weightMap += members.map { (tensors[$0].name, name) }
    }
    let total = tensors.reduce(0) { $0 + $1.bytes.count }
    let index = ShardIndex(weightMap: weightMap, metadata: [("total_size", .integer(Int64(total)))])
    try index.serialized().write(toFile: folder + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
    return Dictionary(uniqueKeysWithValues: weightMap.map { ($0.tensor, $0.shard) })
}

/// Parses a JSON report with the project's strict parser.
func parseJSON(_ text: String) throws -> JSONValue {
    try StrictJSON.parse(Array(text.utf8), source: "report")
}

/// The lines of a text, without the final empty one.
func lines(_ text: String) -> [String] {
    text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).dropLast(text.hasSuffix("\n") ? 1 : 0)
}

/// The value of a summary row (`label  value`), if the report has one.
func summaryValue(_ report: String, _ label: String) -> String? {
    for line in lines(report) where line.hasPrefix(label + " ") {
        return line.dropFirst(label.count).trimmingCharacters(in: .whitespaces)
    }
    return nil
}

/// The table rows of a text report: the lines after the `NAME` header, split on runs of two or more spaces.
func tableRows(_ report: String) -> [[String]] {
    let all = lines(report)
    guard let header = all.firstIndex(where: { $0.hasPrefix("NAME ") }) else { return [] }
    return all[(header + 1)...].map { line in
        line.components(separatedBy: "  ").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}

/// How many pages of the file's byte range `range` are in the page cache, and how many there are.
/// Reading a file's data, with `read` or through a mapping, brings its pages into the cache; a hole in a sparse
/// file is not cached until someone reads it.
func residentPages(of path: String, in range: Range<Int>) throws -> (resident: Int, total: Int) {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw CocoaError(.fileReadNoPermission) }
    defer { close(fd) }
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let size = range.upperBound
    guard let address = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), address != MAP_FAILED else {
        throw CocoaError(.fileReadUnknown)
    }
    defer { munmap(address, size) }
    var vector = [UInt8](repeating: 0, count: (size + page - 1) / page)
    guard mincore(address, size, &vector) == 0 else { throw CocoaError(.fileReadUnknown) }
    let firstPage = (range.lowerBound + page - 1) / page  // whole pages inside the range only
    let pages = vector[firstPage...]
    return (pages.filter { $0 & 1 != 0 }.count, pages.count)
}
