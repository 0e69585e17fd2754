import Foundation
import PEFTKit
import SafeTensors

/// `verify`'s table and JSON (`peftkit.verify/1`).
enum VerifyReport {
    /// A case that could not be checked at all (unreadable or inconsistent fixture).
    struct Broken {
        let caseFolder: String
        let message: String
    }

    static func text(_ checks: [VerificationCheck], broken: [Broken]) -> String {
        var table = TextTable([
            .init(title: "CASE", alignment: .left), .init(title: "METHOD", alignment: .left),
            .init(title: "DTYPE", alignment: .left), .init(title: "CHECK", alignment: .left),
            .init(title: "MAX ABS ERR", alignment: .right), .init(title: "MEASURE", alignment: .right),
            .init(title: "TOLERANCE", alignment: .right), .init(title: "RESULT", alignment: .left),
        ])
        for check in checks {
            table.append([TerminalText.escaped(check.caseName), check.method, check.dtype, check.check,
                          String(format: "%.3g", check.maxAbsoluteError), measure(check.measure, check.unit),
                          measure(check.tolerance, check.unit),
                          check.passed ? "PASS" : "FAIL" + (check.worst.map { " (\(TerminalText.escaped($0)))" } ?? "")])
        }
        var out = table.rendered()
        for case_ in broken {
            out += "BROKEN \(TerminalText.escaped(case_.caseFolder)): \(TerminalText.escaped(case_.message))\n"
        }
        let passed = checks.filter(\.passed).count
        out += "\(passed) passed, \(checks.count - passed + broken.count) failed\n"
        return out
    }

    static func json(_ checks: [VerificationCheck], broken: [Broken]) -> String {
        let passed = checks.filter(\.passed).count
        let document = JSONValue.object([
            ("schema", .string("peftkit.verify/1")),
            ("passed", .integer(Int64(passed))),
            ("failed", .integer(Int64(checks.count - passed + broken.count))),
            ("checks", .array(checks.map { check in
                .object([("case", .string(check.caseName)), ("method", .string(check.method)),
                         ("dtype", .string(check.dtype)), ("check", .string(check.check)),
                         ("max_abs_error", MergeReport.number(check.maxAbsoluteError)),
                         ("measure", MergeReport.number(check.measure)), ("tolerance", MergeReport.number(check.tolerance)),
                         ("unit", .string(check.unit)), ("worst", check.worst.map { .string($0) } ?? .null),
                         ("passed", .bool(check.passed))])
            })),
            ("broken", .array(broken.map { .object([("case", .string($0.caseFolder)), ("error", .string($0.message))]) })),
        ])
        return document.prettyText(indent: 2) + "\n"
    }

    private static func measure(_ value: Double, _ unit: String) -> String {
        value.isFinite ? String(format: "%.3g %@", value, unit) : "inf \(unit)"
    }
}
