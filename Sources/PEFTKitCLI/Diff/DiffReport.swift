import Foundation
import PEFTKit
import SafeTensors

/// `diff`'s tables and JSON (`peftkit.diff/1`, spec/diff-output.md).
enum DiffReport {
    static func text(_ diff: CheckpointDiff) -> String {
        var out = ""
        let headers = diff.headerDifferences
        if !headers.isEmpty {
            out += "Header differences:\n"
            for tensor in headers { out += "  \(headerLine(tensor))\n" }
            out += "\n"
        }
        var table = TextTable([
            .init(title: "TENSOR", alignment: .left), .init(title: "DTYPE", alignment: .left),
            .init(title: "MAX |Δ|", alignment: .right), .init(title: "‖Δ‖/‖A‖", alignment: .right),
            .init(title: "MAX ULP", alignment: .right), .init(title: "CHANGED", alignment: .right),
        ])
        let compared = diff.tensors.filter { $0.status == .changed || $0.status == .identical }
        for tensor in compared where tensor.status == .changed {
            table.append([TerminalText.escaped(tensor.name), tensor.dtypeA?.rawValue ?? "-",
                          number(tensor.maxAbsoluteDelta), number(tensor.relativeChange), ulps(tensor.maxULP),
                          "\(NumberFormatting.grouped(tensor.differingElements ?? 0))/\(NumberFormatting.grouped(tensor.shapeA?.reduce(1, *) ?? 0))"])
        }
        let identical = compared.filter { $0.status == .identical }.count
        if identical > 0 { table.appendNote("… \(identical) tensors bit-identical") }
        out += table.rendered()

        var groups = TextTable([
            .init(title: "LAYER", alignment: .right), .init(title: "KIND", alignment: .left),
            .init(title: "TENSORS", alignment: .right), .init(title: "CHANGED", alignment: .right),
            .init(title: "MAX |Δ|", alignment: .right), .init(title: "‖Δ‖/‖A‖", alignment: .right),
        ])
        for group in diff.groups {
            groups.append([group.layer.map(String.init) ?? "-", TerminalText.escaped(group.kind), "\(group.tensors.count)",
                           "\(group.changed)", number(group.maxAbsoluteDelta), number(group.relativeChange)])
        }
        out += "\n" + groups.rendered()
        out += "\(diff.tensors.count) tensors, \(diff.changedCount) changed, \(headers.count) header differences\n"
        return out
    }

    private static func headerLine(_ tensor: TensorDifference) -> String {
        let name = TerminalText.escaped(tensor.name)
        func spec(_ dtype: DType?, _ shape: [Int]?) -> String {
            "\(dtype?.rawValue ?? "?") \(shape.map(NumberFormatting.shape) ?? "?")"
        }
        return switch tensor.status {
        case .onlyInA: "only in A: \(name) \(spec(tensor.dtypeA, tensor.shapeA))"
        case .onlyInB: "only in B: \(name) \(spec(tensor.dtypeB, tensor.shapeB))"
        default: "\(tensor.status == .dtypeDiffers ? "dtype" : "shape") differs: \(name) A \(spec(tensor.dtypeA, tensor.shapeA)), B \(spec(tensor.dtypeB, tensor.shapeB))"
        }
    }

    private static func number(_ value: Double?) -> String {
        guard let value else { return "-" }
        return value.isFinite ? String(format: "%.3g", value) : "inf"
    }

    private static func ulps(_ value: Int?) -> String {
        guard let value else { return "-" }
        return value == Int.max ? "NaN" : NumberFormatting.grouped(value)
    }

    static func json(_ diff: CheckpointDiff) -> String {
        func shape(_ shape: [Int]?) -> JSONValue { shape.map { .array($0.map { .integer(Int64($0)) }) } ?? .null }
        func optional(_ value: Double?) -> JSONValue { value.map(MergeReport.number) ?? .null }
        let document = JSONValue.object([
            ("schema", .string("peftkit.diff/1")),
            ("a", .string(diff.a)),
            ("b", .string(diff.b)),
            ("tensors_total", .integer(Int64(diff.tensors.count))),
            ("tensors_changed", .integer(Int64(diff.changedCount))),
            ("header_differences", .integer(Int64(diff.headerDifferences.count))),
            ("tensors", .array(diff.tensors.map { tensor in
                .object([("name", .string(tensor.name)), ("status", .string(tensor.status.rawValue)),
                         ("changed", .bool(tensor.changed)),
                         ("layer", tensor.layer.map { .integer(Int64($0)) } ?? .null), ("kind", .string(tensor.kind)),
                         ("dtype_a", tensor.dtypeA.map { .string($0.rawValue) } ?? .null),
                         ("dtype_b", tensor.dtypeB.map { .string($0.rawValue) } ?? .null),
                         ("shape_a", shape(tensor.shapeA)), ("shape_b", shape(tensor.shapeB)),
                         ("max_abs_delta", optional(tensor.maxAbsoluteDelta)),
                         ("relative_change", optional(tensor.relativeChange)),
                         ("max_ulp", tensor.maxULP.map { $0 == Int.max ? .null : .integer(Int64($0)) } ?? .null),
                         ("differing_elements", tensor.differingElements.map { .integer(Int64($0)) } ?? .null)])
            })),
            ("groups", .array(diff.groups.map { group in
                .object([("layer", group.layer.map { .integer(Int64($0)) } ?? .null), ("kind", .string(group.kind)),
                         ("tensors", .array(group.tensors.map { .string($0) })),
                         ("changed", .integer(Int64(group.changed))),
                         ("max_abs_delta", MergeReport.number(group.maxAbsoluteDelta)),
                         ("relative_change", MergeReport.number(group.relativeChange))])
            })),
        ])
        return document.prettyText(indent: 2) + "\n"
    }
}
