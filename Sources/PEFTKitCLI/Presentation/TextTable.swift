/// A plain-text table with aligned columns, for terminals and for `grep`.
///
/// Columns are separated by two spaces; text columns are left-aligned, numeric ones right-aligned. A `note` row
/// (such as "… 171 more tensors") spans the table and does not widen any column.
struct TextTable {
    enum Alignment { case left, right }

    struct Column {
        let title: String
        let alignment: Alignment
    }

    private enum Row {
        case cells([String])
        case note(String)
    }

    let columns: [Column]
    private var rows: [Row] = []

    init(_ columns: [Column]) {
        self.columns = columns
    }

    /// Adds a row; `cells` must already be safe to print (escaped) and have one entry per column.
    mutating func append(_ cells: [String]) {
        precondition(cells.count == columns.count, "a row needs one cell per column")
        rows.append(.cells(cells))
    }

    mutating func appendNote(_ text: String) {
        rows.append(.note(text))
    }

    /// The table with a header line, each line ending in a newline, without trailing spaces.
    func rendered() -> String {
        var widths = columns.map { $0.title.count }
        for case .cells(let cells) in rows {
            for (i, cell) in cells.enumerated() { widths[i] = max(widths[i], cell.count) }
        }
        var out = line(columns.map(\.title), widths: widths)
        for row in rows {
            switch row {
            case .cells(let cells): out += line(cells, widths: widths)
            case .note(let text): out += text + "\n"
            }
        }
        return out
    }

    private func line(_ cells: [String], widths: [Int]) -> String {
        var parts: [String] = []
        for (i, cell) in cells.enumerated() {
            let padding = String(repeating: " ", count: widths[i] - cell.count)
            parts.append(columns[i].alignment == .left ? cell + padding : padding + cell)
        }
        var text = parts.joined(separator: "  ")
        while text.last == " " { text.removeLast() }
        return text + "\n"
    }
}

/// Which rows of a long list to show: all of them, or a head and a tail with the number left out in between.
struct Shortening: Equatable {
    let head: Int
    let omitted: Int
    let tail: Int

    /// Shows everything when `count` is at most `threshold` or `showAll`; otherwise `head` first and `tail` last.
    init(count: Int, threshold: Int, head: Int, tail: Int, showAll: Bool) {
        if showAll || count <= threshold || head + tail >= count {
            self.head = count
            self.omitted = 0
            self.tail = 0
        } else {
            self.head = head
            self.omitted = count - head - tail
            self.tail = tail
        }
    }

    /// Indices shown before the gap, and after it.
    var headRange: Range<Int> { 0..<head }
    var tailRange: Range<Int> { (head + omitted)..<(head + omitted + tail) }
}
