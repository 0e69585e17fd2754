import Foundation
import PEFTKit
import SafeTensors

/// The end-of-run summary of `merge` and `unmerge`, as text for people and as JSON (`peftkit.merge/1`,
/// spec/merge-output.md) for machines.
enum MergeReport {
    static func text(_ summary: MergeSummary, base: String, check: [TensorComparison]?) -> String {
        let verb = summary.direction == .merge ? "merged" : "unmerged"
        var lines = ["\(verb) \(summary.adapters.count) adapter\(summary.adapters.count == 1 ? "" : "s") "
            + "\(summary.direction == .merge ? "into" : "from") \(TerminalText.escaped(base)) → \(TerminalText.escaped(summary.output))"]
        func add(_ label: String, _ text: String) {
            lines.append("  " + label.padding(toLength: 8, withPad: " ", startingAt: 0) + " " + text)
        }
        for adapter in summary.adapters {
            add("adapter", "\(TerminalText.escaped(adapter.source))  \(adapter.peftType) (\(adapter.variant)), "
                + "weight \(formatWeight(adapter.weight)), \(adapter.modules) modules")
        }
        add("tensors", "\(summary.transformed) \(verb), \(summary.replaced) replaced, \(summary.copied) copied"
            + (summary.converted > 0 ? ", \(summary.converted) converted" : ""))
        let rate = summary.seconds > 0 ? Double(summary.bytesWritten) / summary.seconds : 0
        add("output", "\(summary.files.count) file\(summary.files.count == 1 ? "" : "s"), "
            + "\(NumberFormatting.bytes(summary.bytesWritten)) in \(String(format: "%.2f", summary.seconds)) s "
            + "(\(NumberFormatting.bytes(Int(rate)))/s)")
        if let bound = summary.driftBound {
            add("drift", "at most \(String(format: "%.3g", bound)) from the true base "
                + "(the merged file's rounding bounds what unmerging can recover)")
        }
        if let condition = summary.worstCondition {
            add("solve", String(format: "largest condition number of I + B: %.3g", condition))
        }
        if let check {
            let worst = check.max { $0.maxScaledULP < $1.maxScaledULP }
            let differing = check.reduce(0) { $0 + $1.differing }, elements = check.reduce(0) { $0 + $1.elements }
            add("check", "\(check.count) tensors against the base: \(differing) of \(elements) elements differ, "
                + "largest difference \(String(format: "%.3g", check.map(\.maxAbsoluteError).max() ?? 0))"
                + (worst.map { ", worst \(String(format: "%.2g", $0.maxScaledULP)) ulp at operand scale in \(TerminalText.escaped($0.name))" } ?? ""))
        }
        for note in summary.notes { add("note", TerminalText.escaped(note)) }
        return lines.joined(separator: "\n") + "\n"
    }

    static func json(_ summary: MergeSummary, check: [TensorComparison]?) -> String {
        var members: [(key: String, value: JSONValue)] = [
            ("schema", .string("peftkit.merge/1")),
            ("direction", .string(summary.direction.rawValue)),
            ("output", .string(summary.output)),
            ("files", .array(summary.files.map { .string($0) })),
            ("adapters", .array(summary.adapters.map { adapter in
                .object([("source", .string(adapter.source)), ("method", .string(adapter.method)),
                         ("variant", .string(adapter.variant)), ("weight", number(adapter.weight)),
                         ("modules", .integer(Int64(adapter.modules)))])
            })),
            ("tensors", .object([("transformed", .integer(Int64(summary.transformed))),
                                 ("replaced", .integer(Int64(summary.replaced))),
                                 ("copied", .integer(Int64(summary.copied))),
                                 ("converted", .integer(Int64(summary.converted)))])),
            ("bytes_written", .integer(Int64(summary.bytesWritten))),
            ("seconds", number(summary.seconds)),
            ("notes", .array(summary.notes.map { .string($0) })),
        ]
        if let bound = summary.driftBound { members.append(("drift_bound", number(bound))) }
        if let condition = summary.worstCondition { members.append(("worst_condition", number(condition))) }
        if let check {
            members.append(("check", .array(check.map { comparison in
                .object([("tensor", .string(comparison.name)), ("elements", .integer(Int64(comparison.elements))),
                         ("differing", .integer(Int64(comparison.differing))),
                         ("max_abs_error", number(comparison.maxAbsoluteError)),
                         ("max_ulp", .integer(Int64(min(comparison.maxULP, Int(Int64.max))))),
                         ("max_scaled_ulp", number(comparison.maxScaledULP))])
            })))
        }
        return JSONValue.object(members).prettyText(indent: 2) + "\n"
    }

    static func number(_ value: Double) -> JSONValue {
        value.isFinite ? .number(value, literal: "\(value)") : .null
    }

    private static func formatWeight(_ weight: Double) -> String {
        weight == weight.rounded() ? String(Int(weight)) : String(weight)
    }
}
