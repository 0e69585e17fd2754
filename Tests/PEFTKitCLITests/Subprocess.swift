import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The real `peftkit` executable, for tests that must see what a user sees: exit statuses, signals, files left behind.
enum PeftkitExecutable {
    /// `swift build --build-tests` (what scripts/test.sh and CI run) links `peftkit` into the folder that holds the test
    /// bundle, `.build/<triple>/debug/`. A plain `swift test` compiles the sources but does not relink the executable,
    /// so after changing the sources, build first. `PEFTKIT_EXECUTABLE` overrides the search.
    static let path: String? = {
        var candidates: [URL] = []
        if let override = ProcessInfo.processInfo.environment["PEFTKIT_EXECUTABLE"] {
            candidates.append(URL(fileURLWithPath: override))
        }
        // On Linux the test bundle is an executable, `peftkitPackageTests.xctest`; the runner is that executable.
        for start in [URL(fileURLWithPath: CommandLine.arguments[0]), Bundle.main.bundleURL,
                      Bundle.main.executableURL].compactMap({ $0 }) {
            var folder = start.resolvingSymlinksInPath()
            for _ in 0..<3 {
                folder = folder.deletingLastPathComponent()
                candidates.append(folder.appendingPathComponent("peftkit"))
            }
        }
        return candidates.map(\.path).first { path in
            var isFolder: ObjCBool = false
            return FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) && !isFolder.boolValue
                && FileManager.default.isExecutableFile(atPath: path)
        }
    }()

    /// The path, or a test failure that says how to get it.
    static func require(sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        try #require(path, "no peftkit executable beside the test bundle (\(CommandLine.arguments[0])): run `swift build --build-tests` before `swift test --skip-build`", sourceLocation: sourceLocation)
    }
}

/// How a child process ended.
enum Ending: Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    var description: String {
        switch self {
        case .exited(let status): "exit \(status)"
        case .signaled(let signal): "signal \(signal)"
        }
    }
}

/// What a finished child process left.
struct SubprocessResult {
    let ending: Ending
    let standardOutput: String
    let standardError: String
    /// From the spawn to the moment its end was seen (polled every millisecond).
    let seconds: Double
}

/// A child process started with `posix_spawn`, its standard output and error going to files. Every instance is
/// reaped: by `wait`, or (killed first) when it is dropped, so a failing test leaves no process behind.
final class Subprocess {
    let pid: pid_t
    private let logFolder: String
    private let started = DispatchTime.now()
    private var ending: Ending?
    private var endedAt: DispatchTime?

    /// Starts `executable` with `arguments` (and standard input from /dev/null). Every signal is unblocked and
    /// SIGINT, SIGTERM, SIGPIPE, SIGXFSZ and SIGBUS are set to their default action in the child, whatever the test
    /// runner's own settings.
    init(_ executable: String, _ arguments: [String]) throws {
        logFolder = NSTemporaryDirectory() + "peftkit-subprocess-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: logFolder, withIntermediateDirectories: true)

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logFolder + "/stdout", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, logFolder + "/stderr", O_WRONLY | O_CREAT | O_TRUNC, 0o644)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGPIPE, SIGXFSZ, SIGBUS] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let environment = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { environment.forEach { free($0) } }
        var child: pid_t = 0
        let status = posix_spawn(&child, executable, &actions, &attributes, argv, environment)
        guard status == 0 else {
            try? FileManager.default.removeItem(atPath: logFolder)
            throw POSIXError(POSIXErrorCode(rawValue: status) ?? .EIO)
        }
        pid = child
    }

    deinit {
        if ending == nil {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        try? FileManager.default.removeItem(atPath: logFolder)
    }

    var elapsed: Double { Self.seconds(since: started) }

    private static func seconds(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }

    func send(_ signal: Int32) { if ending == nil { kill(pid, signal) } }

    /// Sends `signal` `milliseconds` after the child started (timed on a thread of its own).
    func send(_ signal: Int32, afterMilliseconds milliseconds: Int) async {
        guard ending == nil else { return }
        let pid = pid, started = started
        await onOwnThread {
            let remaining = Double(milliseconds) / 1000 - Self.seconds(since: started)
            if remaining > 0 { usleep(useconds_t(remaining * 1e6)) }
            kill(pid, signal)
        }
    }

    /// Whether the child has ended (without reaping it: `waitid` with WNOWAIT).
    private static func hasEnded(_ pid: pid_t) -> Bool {
        var info = siginfo_t()
        guard waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 else { return true }
        return info._sifields._sigchld.si_pid == pid
    }

    /// Polls `condition` every millisecond until it holds, then runs `action` at once; false (and no action) if
    /// the child ended first or `timeout` seconds passed. Polling and action run on a thread of their own: test
    /// tasks busy on the cooperative pool could otherwise hold this task back until the merge had passed the stage
    /// it waits for.
    func when(timeout: Double = 20, _ condition: @escaping @Sendable () -> Bool,
              _ action: @escaping @Sendable () -> Void) async -> Bool {
        guard ending == nil else { return false }
        let pid = pid
        return await onOwnThread {
            let start = DispatchTime.now()
            while Self.seconds(since: start) < timeout && !Self.hasEnded(pid) {
                if condition() {
                    action()
                    return true
                }
                usleep(1000)
            }
            return false
        }
    }

    /// Waits for the child to end (on a thread of its own, checking every millisecond); after `timeout` seconds it
    /// is killed with SIGKILL and the test fails.
    func wait(timeout: Double = 60, sourceLocation: SourceLocation = #_sourceLocation) async throws -> SubprocessResult {
        if ending == nil {
            let pid = pid, started = started
            let (status, endedAt, timedOut) = await onOwnThread { () -> (Int32, DispatchTime, Bool) in
                var status: Int32 = 0
                var timedOut = false
                while true {
                    let reaped = waitpid(pid, &status, WNOHANG)
                    if reaped == pid || (reaped < 0 && errno != EINTR) { break }
                    if Self.seconds(since: started) > timeout && !timedOut {
                        timedOut = true
                        kill(pid, SIGKILL)
                    }
                    usleep(1000)
                }
                return (status, DispatchTime.now(), timedOut)
            }
            if timedOut { Issue.record("the child did not end within \(timeout) s: killed", sourceLocation: sourceLocation) }
            self.endedAt = endedAt
            // <sys/wait.h>'s macros, which Swift does not import: low 7 bits 0 = exited, else the terminating signal.
            ending = status & 0x7F == 0 ? .exited((status >> 8) & 0xFF) : .signaled(status & 0x7F)
        }
        let read = { (name: String) -> String in
            // Foundation leaks its read buffer on every empty file (LeakSanitizer sees it): read only non-empty ones.
            let path = self.logFolder + "/" + name
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            return size == 0 ? "" : (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        }
        return SubprocessResult(
            ending: ending!, standardOutput: read("stdout"), standardError: read("stderr"),
            seconds: Double(endedAt!.uptimeNanoseconds - started.uptimeNanoseconds) / 1e9)
    }

    /// Runs `executable` to its end, once one of `ProcessSlots.shared` is free (so its timing means something).
    static func run(_ executable: String, _ arguments: [String], timeout: Double = 60,
                    sourceLocation: SourceLocation = #_sourceLocation) async throws -> SubprocessResult {
        try await ProcessSlots.shared.withSlot {
            try await Subprocess(executable, arguments).wait(timeout: timeout, sourceLocation: sourceLocation)
        }
    }
}

/// Limits how many timed children run at once. Swift Testing starts every argument of a parameterised test at the
/// same moment; 160 processes sharing two cores would each take seconds, and their timings would mean nothing.
actor ProcessSlots {
    static let shared = ProcessSlots(count: max(1, ProcessInfo.processInfo.activeProcessorCount))

    private var free: Int
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(count: Int) { free = count }

    func acquire() async {
        if free > 0 {
            free -= 1
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func release() {
        if waiting.isEmpty {
            free += 1
        } else {
            waiting.removeFirst().resume()
        }
    }

    /// Runs `body` holding a slot.
    func withSlot<T: Sendable>(_ body: @Sendable () async throws -> T) async rethrows -> T {
        await acquire()
        defer { release() }
        return try await body()
    }
}

/// Runs `body` on a new thread and returns its result, leaving the cooperative pool free meanwhile.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: body()) }.start()
    }
}

/// Entries of `folder` whose names start with peftkit's temporary prefix (what a run that died may leave).
func temporaryOutputs(in folder: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasPrefix(".peftkit-tmp-") }.sorted()
}

/// Every file and folder under `folder`, relative to it, sorted.
func listTree(_ folder: String) -> [String] {
    (FileManager.default.enumerator(atPath: folder)?.allObjects as? [String] ?? []).sorted()
}
