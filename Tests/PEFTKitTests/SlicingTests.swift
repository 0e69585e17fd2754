import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// The engine cuts each tensor into slices of `MergeRequest.sliceElements` Float32 values (2¹⁸ by default, larger than
/// any fixture weight). These tests make slices as small as they go — one row, or one band of r rows for Bat — so
/// that every weight spans many of them.
@Test(arguments: fixtureCaseNames())
func mergeInTheSmallestSlicesMatchesPEFT(_ name: String) throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let caseFolder = "\(fixtureCases)/\(name)"
    let sliced = try MergeEngine.run(MergeRequest(base: caseFolder + "/base", adapters: [caseFolder + "/adapter"],
                                                  output: folder + "/sliced", sliceElements: 1))
    #expect(sliced.transformed + sliced.replaced > 0)
    for comparison in try compareCheckpoints(actual: folder + "/sliced", expected: caseFolder + "/expected_merged.safetensors",
                                             base: caseFolder + "/base") {
        #expect(comparison.maxScaledULP <= (try mergedMaxULP(name)), "\(name): \(comparison.name) is \(comparison.maxScaledULP) scaled ulp from PEFT")
    }
    // Bone and MiSS compute each row (Bat each band) on its own, so the slicing cannot change a single bit.
    guard !name.hasPrefix("lora") else { return }
    _ = try MergeEngine.run(MergeRequest(base: caseFolder + "/base", adapters: [caseFolder + "/adapter"],
                                         output: folder + "/whole"))
    for comparison in try compareCheckpoints(actual: folder + "/sliced", expected: folder + "/whole") {
        #expect(comparison.differing == 0, "\(name): \(comparison.name) depends on the slice size")
    }
}

/// Bat's unmerge solves each band in place: in one-band slices it must give exactly what whole tensors give.
@Test(arguments: fixtureCaseNames().filter { $0.contains("bat") })
func batUnmergeInOneBandSlicesIsUnchanged(_ name: String) throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let caseFolder = "\(fixtureCases)/\(name)"
    for (output, slice) in [("sliced", 1), ("whole", MergeRequest.defaultSliceElements)] {
        _ = try MergeEngine.run(MergeRequest(base: caseFolder + "/expected_merged.safetensors",
                                             adapters: [caseFolder + "/adapter"], output: "\(folder)/\(output)",
                                             direction: .unmerge, sliceElements: slice))
    }
    let comparisons = try compareCheckpoints(actual: folder + "/sliced", expected: folder + "/whole")
    #expect(!comparisons.isEmpty)
    for comparison in comparisons { #expect(comparison.differing == 0, "\(name): \(comparison.name)") }
}

/// Divides every column by its Euclidean norm over the whole tensor: an operation that cannot work row by row.
private final class NormalizeColumns: WeightOperation {
    var sumsOfSquares: [Double]
    init(columns: Int) { sumsOfSquares = Array(repeating: 0, count: columns) }
    var needsFirstPass: Bool { true }

    func observe(_ slice: WeightRows) {
        for row in slice.rows {
            for c in 0..<slice.columns { sumsOfSquares[c] += Double(slice.row(row)[c] * slice.row(row)[c]) }
        }
    }

    func apply(to slice: WeightRows) {
        for row in slice.rows {
            for c in 0..<slice.columns { slice.row(row)[c] /= Float(sumsOfSquares[c].squareRoot()) }
        }
    }
}

private struct AddOne: WeightOperation {
    func apply(to slice: WeightRows) {
        for row in slice.rows { for c in 0..<slice.columns { slice.row(row)[c] += 1 } }
    }
}

/// The first-pass protocol, through the engine's own tensor writer in one-row slices: normalise the columns, add 1,
/// normalise again. The second normalisation must see the first one complete (and the + 1) over every row.
@Test func firstPassOperationsSeeTheWholeTensorAfterTheOperationsBeforeThem() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let (rows, columns) = (7, 5)
    let values = (0..<(rows * columns)).map { Float(($0 * 37) % 11) - 4.5 }
    let basePath = folder + "/base.safetensors"
    let baseWriter = try SafeTensorsWriter(path: basePath, tensors: [TensorSpec(name: "w", dtype: .f32, shape: [rows, columns])],
                                           metadata: [("format", "pt")])
    try values.withUnsafeBytes { try baseWriter.write("w", bytes: $0) }
    try baseWriter.finish()

    let base = try Checkpoint(path: basePath)
    let changes = (0..<3).map { step in
        OutputTensor.Change(change: ModuleChange(tensor: "w") { _, _ in
            step == 1 ? AddOne() as any WeightOperation : NormalizeColumns(columns: columns)
        }, scale: 1, adapterIndex: 0)
    }
    let tensor = OutputTensor(name: "w", source: base.tensors[0], shape: [rows, columns], outputDType: .f32, changes: changes)
    let request = MergeRequest(base: basePath, adapters: [], output: folder + "/out", sliceElements: 1)
    let plan = MergePlan(request: request, base: base, adapters: [], files: [("out.safetensors", [tensor])],
                         writesIndex: false, configChanges: [], notes: [], keptRecord: UnmergeRecord())
    let outPath = folder + "/out.safetensors"
    let file = SharedOutputFile(try SafeTensorsWriter(path: outPath, tensors: [TensorSpec(name: "w", dtype: .f32, shape: [rows, columns])],
                                                      metadata: [("format", "pt")]))
    try TensorWriter(run: MergeRun(plan: plan, progress: nil)).write(tensor, into: file)
    try file.writer.finish()

    // The same three steps on the whole matrix, in Double.
    var expected = values.map(Double.init)
    func normalizeColumns() {
        for c in 0..<columns {
            let norm = (0..<rows).reduce(0.0) { $0 + expected[$1 * columns + c] * expected[$1 * columns + c] }.squareRoot()
            for r in 0..<rows { expected[r * columns + c] /= norm }
        }
    }
    normalizeColumns()
    expected = expected.map { $0 + 1 }
    normalizeColumns()
    let result = floats(try SafeTensorsFile(path: outPath).view(try #require(try SafeTensorsFile(path: outPath).info("w"))))
    #expect(result.count == expected.count)
    for (got, want) in zip(result, expected) { #expect(abs(Double(got) - want) < 1e-6, "\(got) vs \(want)") }
}
