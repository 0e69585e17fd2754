#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import SafeTensors

/// Process-wide signal behaviour of the `peftkit` executable (not of in-process callers, which keep their own).
public enum ProcessSignals {
    /// Kept alive for the life of the process.
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    /// - SIGINT / SIGTERM: remove every temporary output being written, then exit with 128 + the signal number.
    /// - SIGXFSZ (a file size limit reached): ignored, so the write fails with EFBIG and is reported as an error.
    /// - SIGBUS from a mapped input that shrank: absorbed and reported as an error (see `BusErrorGuard`).
    public static func install() {
        signal(SIGXFSZ, SIG_IGN)
        BusErrorGuard.install()
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                let removed = TemporaryOutputs.shared.removeAll()
                FileDescriptorWriter.write(removed > 0 ? "\npeftkit: interrupted; temporary output removed\n"
                                           : "\npeftkit: interrupted; no output was being written\n", to: 2)
                _exit(128 + signalNumber)
            }
            source.resume()
            sources.append(source)
        }
    }

    /// Ends the process with `status`, unless an interruption is cleaning up: then whatever failed on this thread
    /// failed because the clean-up removed its files, and the clean-up, which ends the process with 128 + the signal
    /// in a moment, must have the last word.
    public static func exit(_ status: Int32) -> Never {
        if TemporaryOutputs.shared.isInterrupted {
            while true { pause() }
        }
        Glibc.exit(status)
    }
}
