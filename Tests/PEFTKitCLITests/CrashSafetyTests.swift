import Foundation
import SafeTensors
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A base of 6 shards of 4 MiB (one 1024×1024 F32 weight each) and a rank-8 LoRA on every weight: large enough
/// that a debug `peftkit merge` runs for a few hundred milliseconds, so it can be interrupted mid-write.
struct CrashFixture {
    static let layers = 6
    static let rows = 1024, columns = 1024, rank = 8

    /// Holds `base/` and `adapter/`; the test puts its outputs here too, and removes the whole folder.
    let folder: String
    var base: String { folder + "/base" }
    var adapter: String { folder + "/adapter" }

    static func weightName(_ layer: Int) -> String { "model.layers.\(layer).mlp.down_proj.weight" }
    static func shardName(_ layer: Int) -> String { ShardPlanner.shardName(layer, of: layers) }

    init() throws {
        folder = makeTemporaryFolder()
        let fileManager = FileManager.default
        try fileManager.createDirectory(atPath: base, withIntermediateDirectories: true)
        try fileManager.createDirectory(atPath: adapter, withIntermediateDirectories: true)
        let weights = (0..<Self.layers).map { layer in
            TestTensor(name: Self.weightName(layer), dtype: .f32, shape: [Self.rows, Self.columns],
                       bytes: Self.floatBytes(count: Self.rows * Self.columns, seed: UInt64(layer + 1), scale: 1))
        }
        let shardOf = try writeShardedCheckpoint(weights, maxShardSize: Self.rows * Self.columns * 4, folder: base)
        precondition(Set(shardOf.values).count == Self.layers)
        try #"{"model_type": "llama", "torch_dtype": "float32"}"#.write(toFile: base + "/config.json", atomically: true, encoding: .utf8)

        var lora: [TestTensor] = []
        for layer in 0..<Self.layers {
            let key = "base_model.model." + Self.weightName(layer).dropLast(".weight".count)
            lora.append(TestTensor(name: key + ".lora_A.weight", dtype: .f32, shape: [Self.rank, Self.columns],
                                   bytes: Self.floatBytes(count: Self.rank * Self.columns, seed: UInt64(100 + layer), scale: 0.1)))
            lora.append(TestTensor(name: key + ".lora_B.weight", dtype: .f32, shape: [Self.rows, Self.rank],
                                   bytes: Self.floatBytes(count: Self.rows * Self.rank, seed: UInt64(200 + layer), scale: 0.1)))
        }
        try writeSafeTensors(lora, to: adapter + "/adapter_model.safetensors")
        try #"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["down_proj"]}"#
            .write(toFile: adapter + "/adapter_config.json", atomically: true, encoding: .utf8)
    }

    func remove() { try? FileManager.default.removeItem(atPath: folder) }

    /// Deterministic floats in [-scale/2, scale/2), as little-endian bytes.
    static func floatBytes(count: Int, seed: UInt64, scale: Float) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15
        return [UInt8](unsafeUninitializedCapacity: count * 4) { buffer, initialized in
            let floats = UnsafeMutableRawPointer(buffer.baseAddress!).bindMemory(to: Float.self, capacity: count)
            for i in 0..<count {
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                floats[i] = (Float(bitPattern: 0x3F80_0000 | UInt32(truncatingIfNeeded: state >> 41)) - 1.5) * scale
            }
            initialized = count * 4
        }
    }

    func mergeArguments(output: String, force: Bool = false) -> [String] {
        ["merge", base, adapter, "--output", output] + (force ? ["--force"] : [])
    }
}

/// Expects `path` to be a complete merged model, tensor for tensor identical to `reference`.
private func expectComplete(_ path: String, like reference: String, _ label: String,
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
    let merged = try Checkpoint(path: path)
    let expected = try Checkpoint(path: reference)
    #expect(merged.files.count == CrashFixture.layers, "\(label)", sourceLocation: sourceLocation)
    #expect(merged.indexFileName == "model.safetensors.index.json", "\(label)", sourceLocation: sourceLocation)
    #expect(merged.tensors.map(\.info.name) == expected.tensors.map(\.info.name), "\(label)", sourceLocation: sourceLocation)
    for location in expected.tensors {
        let want = try expected.view(location.info.name), got = try merged.view(location.info.name)
        #expect(got.bytes.count == want.bytes.count && memcmp(got.bytes.baseAddress!, want.bytes.baseAddress!, want.bytes.count) == 0,
                "\(label): \(location.info.name) differs from the uninterrupted merge", sourceLocation: sourceLocation)
    }
    #expect(FileManager.default.fileExists(atPath: path + "/config.json"), "\(label)", sourceLocation: sourceLocation)
}

/// The temporary folder of a merge running into `parent`, if it has created it yet.
private func runningTemporary(in parent: String) -> String? {
    temporaryOutputs(in: parent).first.map { parent + "/" + $0 }
}

@Suite("Crash safety: interrupted, killed and starved merges leave nothing partial")
struct CrashSafetyTests {
    /// When to kill: a fixed delay after the start, or the moment the running merge's temporary folder shows a stage.
    enum KillPoint: CustomStringConvertible {
        case after(milliseconds: Int)
        case when(String, @Sendable (_ temporaryEntries: [String]) -> Bool)
        case afterCompletion

        var description: String {
            switch self {
            case .after(let milliseconds): "SIGKILL after \(milliseconds) ms"
            case .when(let stage, _): "SIGKILL when \(stage)"
            case .afterCompletion: "SIGKILL after completion"
            }
        }
    }

    /// SIGKILL at several moments of a 6-shard merge: the output is then absent or complete, never partial, and a
    /// rerun without any clean-up by hand succeeds (or, when the output is complete, refuses to overwrite it), and
    /// leaves no temporary behind.
    @Test func sigkillLeavesNothingPartial() async throws {
        let executable = try PeftkitExecutable.require()
        let fixture = try CrashFixture()
        defer { fixture.remove() }
        let reference = fixture.folder + "/reference"
        let uninterrupted = try await Subprocess.run(executable, fixture.mergeArguments(output: reference))
        try #require(uninterrupted.ending == .exited(0), "reference merge: \(uninterrupted.standardError)")

        let points: [KillPoint] = [0, 20, 50, 100, 200, 400].map { .after(milliseconds: $0) } + [
            .when("shard 1 is being written") { $0.contains { $0.contains("model-00001-of-00006") } },
            .when("shard 4 is being written") { $0.contains { $0.contains("model-00004-of-00006") } },
            .when("shard 6 is complete") { $0.contains("model-00006-of-00006.safetensors") },
            .afterCompletion,
        ]
        var observations: [String] = []
        for (number, point) in points.enumerated() {
            let label = point.description
            let parent = fixture.folder + "/kill-\(number)"
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: false)
            let output = parent + "/merged"

            let merge = try Subprocess(executable, fixture.mergeArguments(output: output))
            switch point {
            case .after(let milliseconds):
                await merge.send(SIGKILL, afterMilliseconds: milliseconds)
            case .when(_, let stage):
                let pid = merge.pid
                _ = await merge.when({ runningTemporary(in: parent).map { stage(listTree($0)) } ?? false },
                                     { kill(pid, SIGKILL) })
            case .afterCompletion:
                break
            }
            let killed = try await merge.wait()
            #expect(killed.ending == .signaled(SIGKILL) || killed.ending == .exited(0), "\(label): \(killed.ending)")
            let present = FileManager.default.fileExists(atPath: output)
            let stale = temporaryOutputs(in: parent)
            observations.append("\(label) (at \(String(format: "%.0f", killed.seconds * 1000)) ms): \(killed.ending), "
                                + "output \(present ? "complete" : "absent"), \(stale.count) stale temporar\(stale.count == 1 ? "y" : "ies")")
            if killed.ending == .exited(0) { #expect(present, "\(label)") }

            if present {
                // Renamed into place whole: complete, and nothing else left beside it.
                try expectComplete(output, like: reference, label)
                #expect(stale.isEmpty, "\(label): \(stale)")
                let rerun = try await Subprocess.run(executable, fixture.mergeArguments(output: output))
                #expect(rerun.ending == .exited(5) && rerun.standardError.contains("already exists"), "\(label): \(rerun.standardError)")
                try expectComplete(output, like: reference, label + ", after the refused rerun")
            } else {
                // The next run needs no clean-up by hand, and clears what the killed one left.
                let rerun = try await Subprocess.run(executable, fixture.mergeArguments(output: output))
                #expect(rerun.ending == .exited(0), "\(label), rerun: \(rerun.standardError)")
                try expectComplete(output, like: reference, label + ", rerun")
            }
            #expect(temporaryOutputs(in: parent).isEmpty, "\(label): left after the rerun: \(temporaryOutputs(in: parent))")
        }
        print("crash safety, reference merge \(String(format: "%.2f", uninterrupted.seconds)) s:\n  "
              + observations.joined(separator: "\n  "))
    }

    /// SIGINT and SIGTERM in the middle of writing the shards: the temporary output is removed and the status is
    /// 128 + the signal.
    @Test(arguments: [SIGINT, SIGTERM])
    func interruptRemovesTheTemporaryOutput(_ signal: Int32) async throws {
        let executable = try PeftkitExecutable.require()
        let fixture = try CrashFixture()
        defer { fixture.remove() }
        let parent = fixture.folder + "/out"
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: false)
        let output = parent + "/merged"

        let merge = try Subprocess(executable, fixture.mergeArguments(output: output))
        // As soon as a shard is being written inside the temporary folder.
        let pid = merge.pid
        let sent = await merge.when({ runningTemporary(in: parent).map { !listTree($0).isEmpty } ?? false },
                                    { kill(pid, signal) })
        #expect(sent, "the merge ended before it could be interrupted")
        let result = try await merge.wait()
        #expect(result.ending == .exited(128 + signal), "\(result.ending): \(result.standardError)")
        if result.standardError.contains("peftkit: interrupted; no output was being written") {
            // On a loaded machine the signal can be handled only after the merge published its output (which is
            // atomic with the clean-up): then the output must be the complete merge.
            #expect(throws: Never.self) { try Checkpoint(path: output) }
        } else {
            #expect(result.standardError.contains("peftkit: interrupted; temporary output removed"), "\(result.standardError)")
            #expect(!FileManager.default.fileExists(atPath: output))
        }
        #expect(temporaryOutputs(in: parent).isEmpty, "left behind: \(listTree(parent))")
    }

    /// A file size limit the first shard exceeds (as a full disk would stop it): a clear error, status 5, nothing
    /// under the final name and no temporary left.
    @Test func fileSizeLimitIsAClearError() async throws {
        let executable = try PeftkitExecutable.require()
        let fixture = try CrashFixture()
        defer { fixture.remove() }
        let parent = fixture.folder + "/out"
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: false)
        let output = parent + "/merged"

        // 2048 blocks (1 or 2 MiB, as the shell counts them): room for config.json, not for a 4 MiB shard.
        let result = try await Subprocess.run("/bin/sh", ["-c", "ulimit -f 2048 && exec \"$0\" \"$@\"", executable]
                                              + fixture.mergeArguments(output: output))
        #expect(result.ending == .exited(5), "\(result.ending): \(result.standardError)")
        let lines = result.standardError.split(separator: "\n").map(String.init)
        #expect(lines.count == 1 && lines[0].hasPrefix("peftkit: "), "\(result.standardError)")
        #expect(result.standardError.contains("File too large"), "\(result.standardError)")
        #expect(!FileManager.default.fileExists(atPath: output))
        #expect(temporaryOutputs(in: parent).isEmpty, "left behind: \(listTree(parent))")
    }

    /// A base shard truncated to half while the merge runs, after the plan opened and mapped it:
    /// - before it is read (the last shard, while shard 2 is written): an I/O error naming the file, nothing written;
    /// - while it may be being read (shard 3, as its output file appears): the same error — through a SIGBUS absorbed
    ///   by `BusErrorGuard` when a mapped page past the new end was touched — or, if the truncation came after the
    ///   last read of it, a complete and correct output.
    /// Never a death by signal.
    @Test(arguments: [(truncated: 6, whenWriting: 2), (truncated: 3, whenWriting: 3)])
    func baseShrinkingDuringTheMergeIsAnError(_ moment: (truncated: Int, whenWriting: Int)) async throws {
        let executable = try PeftkitExecutable.require()
        let fixture = try CrashFixture()
        defer { fixture.remove() }
        let parent = fixture.folder + "/out"
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: false)
        let output = parent + "/merged"
        let shard = fixture.base + "/" + CrashFixture.shardName(moment.truncated - 1)
        let size = try #require(try FileManager.default.attributesOfItem(atPath: shard)[.size] as? Int)
        let writing = ShardPlanner.shardName(moment.whenWriting - 1, of: CrashFixture.layers)
            .replacingOccurrences(of: ".safetensors", with: "")

        let merge = try Subprocess(executable, fixture.mergeArguments(output: output))
        let truncated = await merge.when({
            runningTemporary(in: parent).map { listTree($0).contains { $0.contains(writing) } } ?? false
        }, { precondition(truncate(shard, off_t(size / 2)) == 0) })
        #expect(truncated, "the merge ended before the base could be truncated")
        let result = try await merge.wait()
        if moment.truncated > moment.whenWriting || result.ending != .exited(0) {
            #expect(result.ending == .exited(5), "\(result.ending): \(result.standardError)")
            #expect(result.standardError.hasPrefix("peftkit: \(shard): file changed while in use"), "\(result.standardError)")
            #expect(!FileManager.default.fileExists(atPath: output))
        } else {
            // Read whole before it shrank: then the result is complete, and right.
            let merged = try Checkpoint(path: output)
            #expect(merged.tensors.count == CrashFixture.layers)
        }
        #expect(temporaryOutputs(in: parent).isEmpty, "left behind: \(listTree(parent))")
        print("base shard \(moment.truncated) truncated while shard \(moment.whenWriting) was written: \(result.ending), "
              + (result.standardError.split(separator: "\n").first.map(String.init) ?? "no message"))
    }
}
