import Foundation
import PEFTKit

/// `diff --plot`: a heat map of ‖Δ‖/‖A‖ per layer (rows) and module kind (columns) on a log scale, as a
/// self-contained SVG. Tensors outside the numbered layers get a last row of their own.
enum DiffPlot {
    static let cellWidth = 64.0, cellHeight = 20.0
    static let left = 70.0, top = 110.0

    static func svg(_ diff: CheckpointDiff) -> String {
        let groups = diff.groups
        var kinds = diff.layerKinds
        for group in groups where group.layer == nil && !kinds.contains(group.kind) { kinds.append(group.kind) }
        let layers = Array(Set(groups.compactMap(\.layer))).sorted()
        let hasOther = groups.contains { $0.layer == nil }
        let rowCount = layers.count + (hasOther ? 1 : 0)
        let values = groups.map(\.relativeChange).filter { $0 > 0 && $0.isFinite }
        // Whole decades, so that the legend's ticks are round numbers.
        var low = (values.min().map { log10($0).rounded(.down) }) ?? -8
        var high = (values.max().map { log10($0).rounded(.up) }) ?? 0
        if high <= low { high = low + 1 }
        low = min(low, high - 1)

        let width = left + Double(max(kinds.count, 1)) * cellWidth + 140
        let height = top + Double(max(rowCount, 1)) * cellHeight + 40
        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="11">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="18" font-size="14">\(escaped("‖B − A‖ / ‖A‖ per layer and module kind"))</text>
            <text x="\(left)" y="34" fill="#555">\(escaped("A: \(diff.a)   B: \(diff.b)"))</text>

            """
        for (column, kind) in kinds.enumerated() {
            let x = left + (Double(column) + 0.5) * cellWidth
            out += "<text x=\"\(x)\" y=\"\(top - 6)\" text-anchor=\"start\" transform=\"rotate(-40 \(x) \(top - 6))\">\(escaped(kind))</text>\n"
        }
        let rows: [Int?] = layers.map { Optional($0) } + (hasOther ? [nil] : [])
        for (row, layer) in rows.enumerated() {
            let y = top + Double(row) * cellHeight
            out += "<text x=\"\(left - 6)\" y=\"\(y + cellHeight * 0.7)\" text-anchor=\"end\">\(layer.map { "layer \($0)" } ?? "other")</text>\n"
            for (column, kind) in kinds.enumerated() {
                let x = left + Double(column) * cellWidth
                guard let group = groups.first(where: { $0.layer == layer && $0.kind == kind }) else {
                    out += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(cellWidth)\" height=\"\(cellHeight)\" fill=\"none\" stroke=\"#eee\"/>\n"
                    continue
                }
                let fill = group.relativeChange == 0 ? "#f0f0f0"
                    : group.relativeChange.isFinite ? colour((log10(group.relativeChange) - low) / (high - low)) : "#d62728"
                let title = "\(layer.map { "layer \($0)" } ?? "outside layers") \(group.kind): ‖Δ‖/‖A‖ = \(number(group.relativeChange)), "
                    + "max |Δ| = \(number(group.maxAbsoluteDelta)), \(group.changed) of \(group.tensors.count) changed\n"
                    + group.tensors.joined(separator: "\n")
                out += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(cellWidth)\" height=\"\(cellHeight)\" fill=\"\(fill)\" stroke=\"white\">"
                    + "<title>\(escaped(title))</title></rect>\n"
            }
        }
        out += legend(x: left + Double(max(kinds.count, 1)) * cellWidth + 30, low: low, high: high,
                      height: max(Double(rowCount) * cellHeight, 120))
        out += "</svg>\n"
        return out
    }

    /// A vertical colour bar with a tick per decade, and the swatch for "unchanged".
    private static func legend(x: Double, low: Double, high: Double, height: Double) -> String {
        var out = "<defs><linearGradient id=\"ramp\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">"
        for i in 0...8 { out += "<stop offset=\"\(Double(i) / 8)\" stop-color=\"\(colour(Double(i) / 8))\"/>" }
        out += "</linearGradient></defs>\n"
        out += "<text x=\"\(x)\" y=\"\(top - 12)\">‖Δ‖/‖A‖</text>\n"
        out += "<rect x=\"\(x)\" y=\"\(top)\" width=\"16\" height=\"\(height)\" fill=\"url(#ramp)\" stroke=\"#999\"/>\n"
        let decades = Int(high - low)
        let step = max(1, decades / 8)
        // A narrow range gets 2× and 5× ticks too, so that a cell's colour can still be read off.
        let within: [Double] = decades <= 2 ? [1, 2, 5] : [1]
        for d in stride(from: 0, through: decades, by: step) {
            for factor in within where d < decades || factor == 1 {
                let position = (Double(d) + log10(factor)) / Double(decades)
                let y = top + height - position * height
                out += "<line x1=\"\(x + 16)\" y1=\"\(y)\" x2=\"\(x + 20)\" y2=\"\(y)\" stroke=\"#333\"/>"
                out += "<text x=\"\(x + 23)\" y=\"\(y + 4)\">\(Int(factor))e\(Int(low) + d)</text>\n"
            }
        }
        out += "<rect x=\"\(x)\" y=\"\(top + height + 10)\" width=\"16\" height=\"12\" fill=\"#f0f0f0\" stroke=\"#999\"/>"
        out += "<text x=\"\(x + 23)\" y=\"\(top + height + 20)\">unchanged</text>\n"
        return out
    }

    /// Viridis, interpolated between five of its colours: perceptually even and readable in grey.
    static func colour(_ t: Double) -> String {
        let stops: [(Double, Double, Double)] = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
        let u = min(max(t.isFinite ? t : 0, 0), 1) * Double(stops.count - 1)
        let i = min(Int(u), stops.count - 2), f = u - Double(i)
        let (a, b) = (stops[i], stops[i + 1])
        func mix(_ x: Double, _ y: Double) -> Int { Int((x + (y - x) * f).rounded()) }
        return String(format: "#%02x%02x%02x", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }

    /// As `diff --json` gives it, so that hover and report agree.
    static func number(_ value: Double) -> String { value.isFinite ? "\(value)" : "inf" }

    /// XML text: tensor names come from the files.
    static func escaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "\n", "\t": out.unicodeScalars.append(scalar)
            // Control characters are not allowed in XML 1.0 at all.
            case _ where scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0xFFFE || scalar.value == 0xFFFF:
                out += "\u{FFFD}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
