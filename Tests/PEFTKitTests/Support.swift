import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// The repository root, from this file's location (tests run from a clean clone).
let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

let fixtureCases = repositoryRoot + "/fixtures/cases"

/// Names of the fixture cases present (each made by fixtures/generate.py with HF PEFT).
func fixtureCaseNames() -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: fixtureCases)) ?? [])
        .filter { FileManager.default.fileExists(atPath: "\(fixtureCases)/\($0)/manifest.json") }.sorted()
}

/// The cases whose merged checkpoint determines the base (all but DoRA's: its manifest says
/// `unmerge_from_checkpoint: false`, and it has no expected_unmerged).
func fixtureCasesThatUnmerge() -> [String] {
    fixtureCaseNames().filter { FileManager.default.fileExists(atPath: "\(fixtureCases)/\($0)/expected_unmerged.safetensors") }
}

/// The manifest's `tolerances.merged_max_ulp` of a case (1, or 2 for Float32 DoRA: spec/tolerance.md §1).
func mergedMaxULP(_ name: String) throws -> Double {
    let manifest = try AdapterLoader.readJSON("\(fixtureCases)/\(name)/manifest.json")
    return try #require(manifest["tolerances"]?["merged_max_ulp"]?.doubleValue)
}

func makeScratchFolder() -> String {
    let path = NSTemporaryDirectory() + "peftkit-tests-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Decodes a whole tensor to Float32 (test data is small).
func floats(_ view: TensorView) -> [Float] {
    [Float](unsafeUninitializedCapacity: view.info.elementCount) { buffer, count in
        Codec.decode(view.bytes, as: view.info.dtype, into: buffer)
        count = view.info.elementCount
    }
}

/// Compares every tensor of `expected` with the same tensor in `actual` (same dtype and shape required), scaling
/// ulps by the magnitude of the same tensor in `base` where it has one.
func compareCheckpoints(actual: String, expected: String, base: String? = nil,
                        names: Set<String>? = nil) throws -> [TensorComparison] {
    let actualCheckpoint = try Checkpoint(path: actual)
    let expectedCheckpoint = try Checkpoint(path: expected)
    let baseCheckpoint = try base.map { try Checkpoint(path: $0) }
    return try expectedCheckpoint.tensors.compactMap { location -> TensorComparison? in
        let name = location.info.name
        if let names, !names.contains(name) { return nil }
        let want = try location.file.view(location.info)
        let got = try actualCheckpoint.view(name)
        precondition(got.info.dtype == want.info.dtype && got.info.shape == want.info.shape, "\(name): dtype/shape differ")
        let scale = try baseCheckpoint?.location(of: name).flatMap { location in
            location.info.dtype == want.info.dtype && location.info.shape == want.info.shape
                ? try location.file.view(location.info).bytes : nil
        }
        return Comparison.compare(name: name, dtype: want.info.dtype, count: want.info.elementCount,
                                  actual: got.bytes, expected: want.bytes, scale: scale,
                                  floorAtTensorMaximum: Comparison.floorsAtTensorMaximum(want.info.dtype))
    }
}
