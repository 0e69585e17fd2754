#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Where commands write their results and the runner writes its messages.
///
/// Commands never print directly: they write to `Console.current`, a task-local, so tests can run commands
/// in-process and in parallel, each with its own captured output, without any shared mutable state.
public struct Console: Sendable {
    public enum Stream: Sendable {
        case standardOutput
        case standardError
    }

    private let sink: @Sendable (Stream, String) -> Void

    /// A console that hands every piece of text to `sink`, unchanged and in order.
    public init(sink: @escaping @Sendable (Stream, String) -> Void) {
        self.sink = sink
    }

    /// The console of the running task; the process's file descriptors 1 and 2 unless a caller bound another.
    @TaskLocal public static var current: Console = .process

    /// Writes straight to file descriptors 1 and 2 with `write(2)`, unbuffered: commands hand over whole reports,
    /// and nothing is lost if the process exits right after.
    public static let process = Console { stream, text in
        FileDescriptorWriter.write(text, to: stream == .standardOutput ? 1 : 2)
    }

    /// Writes `text` to standard output as is (callers end their lines).
    public func output(_ text: String) { sink(.standardOutput, text) }

    /// Writes `text` to standard error as is (callers end their lines).
    public func error(_ text: String) { sink(.standardError, text) }
}

/// Collects what a command writes, for tests and for callers embedding the CLI.
public final class ConsoleCapture: @unchecked Sendable {
    // @unchecked: both buffers are only touched under `lock`.
    private let lock = NSLock()
    private var outputText = ""
    private var errorText = ""

    public init() {}

    /// A console that appends to this capture.
    public var console: Console {
        Console { [self] stream, text in
            lock.lock()
            defer { lock.unlock() }
            switch stream {
            case .standardOutput: outputText += text
            case .standardError: errorText += text
            }
        }
    }

    public var standardOutput: String {
        lock.lock()
        defer { lock.unlock() }
        return outputText
    }

    public var standardError: String {
        lock.lock()
        defer { lock.unlock() }
        return errorText
    }
}

/// `write(2)` until done. A closed pipe (`peftkit inspect … | head`) or a full disk ends the write quietly:
/// there is nobody left to tell, and the exit status still reports the command's own outcome.
enum FileDescriptorWriter {
    static func write(_ text: String, to descriptor: Int32) {
        var text = text
        text.withUTF8 { bytes in
            guard var next = bytes.baseAddress else { return }
            var remaining = bytes.count
            while remaining > 0 {
                #if canImport(Glibc)
                let written = Glibc.write(descriptor, next, remaining)
                #else
                let written = Darwin.write(descriptor, next, remaining)
                #endif
                if written < 0 {
                    if errno == EINTR { continue }
                    return
                }
                next += written
                remaining -= written
            }
        }
    }
}
