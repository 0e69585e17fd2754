import Foundation
import SafeTensors
import Testing
@testable import PEFTKit

/// Inputs found by the libFuzzer targets (Fuzz/run.sh), minimised and kept as byte literals; the same bytes are in
/// Fuzz/regressions/<target>/ as seeds. Each once crashed, hung, ran out of memory or leaked.
@Suite struct PEFTKitFuzzRegressionTests {
    /// The leak the index target found (an empty file read through Foundation loses 4 KiB) in the config reader:
    /// an empty adapter_config.json is refused as invalid JSON without being read.
    @Test func emptyAdapterConfigIsRefusedAsInvalidJSON() throws {
        let folder = makeScratchFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/adapter_config.json"
        _ = FileManager.default.createFile(atPath: path, contents: Data())
        do {
            _ = try AdapterLoader.readJSON(path)
            Issue.record("an empty config was accepted")
        } catch let error as SafeTensorsError {
            #expect(error.rule == "invalidJSON", "\(error.localizedDescription)")
        }
    }
}
