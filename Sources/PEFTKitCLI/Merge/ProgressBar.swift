#if canImport(Glibc)
import Glibc
#endif
import Foundation
import PEFTKit

/// A one-line progress display on standard error, redrawn in place at most ten times a second: tensors and bytes
/// done, throughput and time left. Shown only when standard error is a terminal and --quiet is not given.
final class ProgressBar: @unchecked Sendable {
    // @unchecked: `lastDraw` and `drewSomething` are only touched under `lock` (the engine reports from one thread).
    private let console: Console
    private let start = Date()
    private let lock = NSLock()
    private var lastDraw = Date.distantPast
    private var drewSomething = false

    /// Nil when progress should not be shown.
    static func make(quiet: Bool, console: Console) -> ProgressBar? {
        quiet || isatty(2) == 0 ? nil : ProgressBar(console: console)
    }

    private init(console: Console) { self.console = console }

    func update(_ progress: MergeProgress) {
        lock.withLock {
            let now = Date()
            guard progress.tensorsDone == progress.tensorsTotal || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
            lastDraw = now
            drewSomething = true
            console.error("\r\u{1B}[2K" + Self.line(progress, elapsed: now.timeIntervalSince(start)))
        }
    }

    /// Clears the line so the summary starts on a clean one.
    func finish() {
        lock.withLock { if drewSomething { console.error("\r\u{1B}[2K") } }
    }

    static func line(_ progress: MergeProgress, elapsed: Double) -> String {
        let fraction = progress.bytesTotal == 0 ? 1 : Double(progress.bytesDone) / Double(progress.bytesTotal)
        let width = 24
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
        let rate = elapsed > 0 ? Double(progress.bytesDone) / elapsed : 0
        let remaining = rate > 0 ? Double(progress.bytesTotal - progress.bytesDone) / rate : 0
        return "[\(bar)] \(progress.tensorsDone)/\(progress.tensorsTotal) tensors  "
            + "\(NumberFormatting.bytes(progress.bytesDone)) of \(NumberFormatting.bytes(progress.bytesTotal))  "
            + "\(NumberFormatting.bytes(Int(rate)))/s  ETA \(Int(remaining.rounded()))s"
    }
}
