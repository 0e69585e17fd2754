import Foundation
import PEFTKit
import SafeTensors

/// `verify --merged` / `--unmerged`: the table and the JSON (`peftkit.verify-merged/1`, spec/verify-merged-output.md).
enum AuditReport {
    static func text(_ audit: CheckpointAudit) -> String {
        var table = TextTable([
            .init(title: "TENSOR", alignment: .left), .init(title: "DTYPE", alignment: .left),
            .init(title: "SHAPE", alignment: .left), .init(title: "MAX ABS ERR", alignment: .right),
            .init(title: "MEASURE", alignment: .right), .init(title: "IDENTICAL", alignment: .right),
            .init(title: "RESULT", alignment: .left),
        ])
        // Every adapted or failing tensor gets a row; the untouched ones that pass would drown them.
        var quiet = 0
        for tensor in audit.tensors {
            guard tensor.adapted || !tensor.passed else { quiet += 1; continue }
            let dtype = tensor.actualDType ?? tensor.expectedDType
            let shape = tensor.actualShape ?? tensor.expectedShape
            let comparable = tensor.status == .passed || tensor.status == .failed
            table.append([TerminalText.escaped(tensor.name), dtype?.rawValue ?? "-",
                          shape.map(NumberFormatting.shape) ?? "-",
                          comparable ? String(format: "%.3g", tensor.maxAbsoluteError) : "-",
                          comparable ? measure(tensor.measure, audit.unit) : "-",
                          comparable ? String(format: "%.1f%%", tensor.identicalFraction * 100) : "-",
                          result(tensor)])
        }
        if quiet > 0 { table.appendNote("… \(quiet) tensors no adapter changes, all within tolerance") }
        var out = table.rendered()
        for finding in audit.findings { out += "FAIL \(TerminalText.escaped(finding))\n" }
        for note in audit.notes { out += "note: \(TerminalText.escaped(note))\n" }
        if let worst = audit.worst, !audit.passed, !worst.passed {
            out += "worst: \(TerminalText.escaped(worst.name)) (\(result(worst)))\n"
        }
        out += "\(audit.passedCount) passed, \(audit.failedCount) failed\n"
        return out
    }

    private static func result(_ tensor: AuditedTensor) -> String {
        switch tensor.status {
        case .passed: "PASS"
        case .failed: "FAIL"
        case .missing: "FAIL missing"
        case .extra: "FAIL extra"
        case .dtypeMismatch: "FAIL dtype \(tensor.actualDType?.rawValue ?? "?"), expected \(tensor.expectedDType?.rawValue ?? "?")"
        case .shapeMismatch:
            "FAIL shape \(tensor.actualShape.map(NumberFormatting.shape) ?? "?"), expected \(tensor.expectedShape.map(NumberFormatting.shape) ?? "?")"
        }
    }

    static func json(_ audit: CheckpointAudit) -> String {
        func shape(_ shape: [Int]?) -> JSONValue { shape.map { .array($0.map { .integer(Int64($0)) }) } ?? .null }
        let document = JSONValue.object([
            ("schema", .string("peftkit.verify-merged/1")),
            ("mode", .string(audit.mode.rawValue)),
            ("checkpoint", .string(audit.checkpoint)),
            ("base", .string(audit.base)),
            ("adapters", .array(zip(audit.adapters, audit.weights).map {
                .object([("path", .string($0.0)), ("weight", MergeReport.number($0.1))])
            })),
            ("unit", .string(audit.unit)),
            ("tolerance", MergeReport.number(audit.tolerance)),
            ("passed", .integer(Int64(audit.passedCount))),
            ("failed", .integer(Int64(audit.failedCount))),
            ("worst", audit.worst.map { .string($0.name) } ?? .null),
            ("findings", .array(audit.findings.map { .string($0) })),
            ("notes", .array(audit.notes.map { .string($0) })),
            ("tensors", .array(audit.tensors.map { tensor in
                .object([("name", .string(tensor.name)), ("status", .string(tensor.status.rawValue)),
                         ("adapted", .bool(tensor.adapted)),
                         ("expected_dtype", tensor.expectedDType.map { .string($0.rawValue) } ?? .null),
                         ("expected_shape", shape(tensor.expectedShape)),
                         ("dtype", tensor.actualDType.map { .string($0.rawValue) } ?? .null),
                         ("shape", shape(tensor.actualShape)),
                         ("max_abs_error", MergeReport.number(tensor.maxAbsoluteError)),
                         ("measure", MergeReport.number(tensor.measure)),
                         ("identical_fraction", MergeReport.number(tensor.identicalFraction)),
                         ("bound", tensor.bound.map(MergeReport.number) ?? .null)])
            })),
        ])
        return document.prettyText(indent: 2) + "\n"
    }

    private static func measure(_ value: Double, _ unit: String) -> String {
        value.isFinite ? String(format: "%.3g %@", value, unit) : "inf \(unit)"
    }
}
