import Foundation
import Testing
@testable import SafeTensors

/// Inputs found by the libFuzzer targets (Fuzz/run.sh), minimised and kept as byte literals; the same bytes are in
/// Fuzz/regressions/<target>/ as seeds. Each once crashed, hung, ran out of memory or leaked.
@Suite struct SafeTensorsFuzzRegressionTests {
    /// index: an empty index file. Foundation's `Data(contentsOf:)` leaks its 4 KiB read buffer on every empty file
    /// (LeakSanitizer); `ShardIndex.read` no longer asks it to read one, and still refuses it as invalid JSON.
    @Test func emptyShardIndexIsRefusedAsInvalidJSON() throws {
        let folder = makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/model.safetensors.index.json"
        _ = FileManager.default.createFile(atPath: path, contents: Data())
        do {
            _ = try ShardIndex.read(path: path)
            Issue.record("an empty index was accepted")
        } catch let error as SafeTensorsError {
            #expect(error.rule == "invalidJSON", "\(error.localizedDescription)")
            #expect(error.localizedDescription.contains(path))
        }
    }
}
