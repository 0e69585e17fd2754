import Foundation
import Testing
@testable import SafeTensors

/// Writes `tensors` as a sharded checkpoint the way the merge engine does: plan, one writer per shard, then the index.
private func writeSharded(_ tensors: [(String, DType, [Int], [UInt8])], maxShardSize: Int, folder: String) throws -> [[String]] {
    let plan = ShardPlanner.plan(sizes: tensors.map { $0.3.count }, maxShardSize: maxShardSize)
    var weightMap: [(tensor: String, shard: String)] = []
    for (i, members) in plan.enumerated() {
        let name = ShardPlanner.shardName(i, of: plan.count)
        try writeTensors(members.map { tensors[$0] }, to: folder + "/" + name)
        weightMap += members.map { (tensors[$0].0, name) }
    }
    if plan.count > 1 {
        let total = tensors.reduce(0) { $0 + $1.3.count }
        let index = ShardIndex(weightMap: weightMap, metadata: [("total_size", .integer(Int64(total)))])
        try index.serialized().write(toFile: folder + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
    }
    return plan.map { $0.map { tensors[$0].0 } }
}

private let sampleTensors: [(String, DType, [Int], [UInt8])] = (0..<7).map { i in
    ("layer.\(i).weight", DType.f32, [i + 1, 4], (0..<(16 * (i + 1))).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) })
}

@Test func shardPlanFollowsTransformers() {
    // Sizes 16…112 with a 100-byte limit: greedy fill, a new shard when the next would overflow, and the 112-byte
    // tensor alone in a shard appended before the one being filled (huggingface_hub's
    // split_torch_state_dict_into_shards gives exactly this for these sizes).
    #expect(ShardPlanner.plan(sizes: [16, 32, 48, 64, 80, 96, 112], maxShardSize: 100)
        == [[0, 1, 2], [3], [4], [6], [5]])
    // A tensor larger than the limit gets its own shard, placed before the shard being filled.
    #expect(ShardPlanner.plan(sizes: [10, 500, 10, 10], maxShardSize: 25) == [[1], [0, 2], [3]])
    #expect(ShardPlanner.shardName(0, of: 1) == "model.safetensors")
    #expect(ShardPlanner.shardName(1, of: 3) == "model-00002-of-00003.safetensors")
}

@Test func shardSizesParseLikeTransformers() throws {
    #expect(try ShardPlanner.parseSize("5GB") == 5_000_000_000)
    #expect(try ShardPlanner.parseSize("2GiB") == 2 << 30)
    #expect(try ShardPlanner.parseSize("500MB") == 500_000_000)
    #expect(try ShardPlanner.parseSize("100kb") == 100_000)
    #expect(try ShardPlanner.parseSize("1234") == 1234)
    #expect(throws: SafeTensorsError.self) { try ShardPlanner.parseSize("lots") }
    #expect(throws: SafeTensorsError.self) { try ShardPlanner.parseSize("-5GB") }
}

@Test func shardedWriteReadRoundTripAcrossShardBoundaries() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let shards = try writeSharded(sampleTensors, maxShardSize: 100, folder: folder)
    #expect(shards.count == 5)
    let checkpoint = try Checkpoint(path: folder)
    #expect(checkpoint.isSharded)
    #expect(checkpoint.files.count == 5)
    #expect(checkpoint.tensors.count == sampleTensors.count)
    for (name, dtype, shape, bytes) in sampleTensors {
        let view = try checkpoint.view(name)
        #expect(view.info.dtype == dtype && view.info.shape == shape)
        #expect([UInt8](view.bytes) == bytes)
    }
    let index = try String(contentsOfFile: folder + "/model.safetensors.index.json", encoding: .utf8)
    #expect(index.hasPrefix("{\n  \"metadata\": {\n    \"total_size\": 448\n  },\n  \"weight_map\": {\n    \"layer.0.weight\": \"model-00001-of-00005.safetensors\""))
}

@Test func singleShardIsPlainModelFile() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    _ = try writeSharded(sampleTensors, maxShardSize: 1 << 20, folder: folder)
    #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["model.safetensors"])
    let checkpoint = try Checkpoint(path: folder)
    #expect(!checkpoint.isSharded && checkpoint.tensors.count == 7)
}

@Test(arguments: [
    ("../outside.safetensors", "shardNameNotPlain"),
    ("/etc/passwd", "shardNameNotPlain"),
    ("sub/model.safetensors", "shardNameNotPlain"),
    ("..", "shardNameNotPlain"),
])
func indexNamingAPathOutsideTheFolderIsRefused(shard: String, rule: String) throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    _ = try writeSharded(sampleTensors, maxShardSize: 100, folder: folder)
    let index = ShardIndex(weightMap: [("layer.0.weight", shard)], metadata: [])
    try index.serialized().write(toFile: folder + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
    do {
        _ = try Checkpoint(path: folder)
        Issue.record("accepted \(shard)")
    } catch let error as SafeTensorsError {
        #expect(error.rule == rule)
    }
}

@Test func indexAndShardsMustAgree() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let shards = try writeSharded(sampleTensors, maxShardSize: 100, folder: folder)
    let indexPath = folder + "/model.safetensors.index.json"
    let good = try ShardIndex.read(path: indexPath)

    func expectRule(_ rule: String, _ weightMap: [(tensor: String, shard: String)]) throws {
        try ShardIndex(weightMap: weightMap, metadata: good.metadata).serialized()
            .write(toFile: indexPath, atomically: true, encoding: .utf8)
        do {
            _ = try Checkpoint(path: folder)
            Issue.record("accepted an index that breaks \(rule)")
        } catch let error as SafeTensorsError {
            #expect(error.rule == rule, "\(error.localizedDescription)")
        }
    }
    // A tensor mapped to the wrong shard.
    try expectRule("tensorNotInNamedShard", good.weightMap.map { ($0.tensor, $0.tensor == shards[1][0]
        ? ShardPlanner.shardName(0, of: 5) : $0.shard) })
    // A shard that does not exist.
    try expectRule("io", good.weightMap + [("ghost", "model-00009-of-00009.safetensors")])
    // A tensor present in a shard but absent from the index.
    try expectRule("tensorMissingFromIndex", good.weightMap.filter { $0.tensor != shards[0][1] })
}
