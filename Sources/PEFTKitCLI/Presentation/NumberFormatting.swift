import Foundation

/// Numbers for people: exact counts with thousands separators, short forms, byte sizes, shapes.
///
/// Written by hand rather than with `NumberFormatter`, so the output is the same on every machine whatever its
/// locale: reports are compared in tests and read by scripts.
enum NumberFormatting {
    /// `1100048384` → `1,100,048,384`.
    static func grouped(_ value: Int) -> String {
        let digits = String(value.magnitude)
        var out = ""
        for (i, digit) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
            out.append(digit)
        }
        return value < 0 ? "-" + out : out
    }

    /// `1100048384` → `1.10 B`; `68000` → `68.0 K`; nil below one thousand, where the exact number is short enough.
    static func shortCount(_ value: Int) -> String? {
        guard value >= 1000 else { return nil }
        return threeSignificant(Double(value), base: 1000, units: ["", "K", "M", "B", "T", "Q"])
    }

    /// `2200096768` → `2.05 GiB`; below 1 KiB the exact number of bytes (`512 B`).
    static func bytes(_ value: Int) -> String {
        guard value >= 1024 else { return "\(value) B" }
        return threeSignificant(Double(value), base: 1024, units: ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"])
    }

    /// Three significant digits in the largest unit that keeps the number below `base`
    /// (`999.6 M` is written `1.00 B`, not `1000 M`).
    private static func threeSignificant(_ value: Double, base: Double, units: [String]) -> String {
        var scaled = value
        var unit = 0
        while unit < units.count - 1 {
            if scaled < base && format(scaled).value < base { break }
            scaled /= base
            unit += 1
        }
        return format(scaled).text + " " + units[unit]
    }

    private static func format(_ value: Double) -> (text: String, value: Double) {
        let decimals = value < 9.995 ? 2 : value < 99.95 ? 1 : 0
        let text = String(format: "%.\(decimals)f", value)
        return (text, Double(text) ?? value)
    }

    /// `[2048, 5632]`; a scalar is `[]`.
    static func shape(_ shape: [Int]) -> String {
        "[" + shape.map(String.init).joined(separator: ", ") + "]"
    }

    /// Four significant digits, for statistics in a table: `0.01234`, `-1.5e+04`, `0`.
    static func statistic(_ value: Double) -> String {
        String(format: "%.4g", value)
    }
}
