#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Temporary files and folders being written, so that a process interrupted by SIGINT or SIGTERM can remove them
/// before it exits. (A process killed outright leaves them; their names start with `SafeTensorsWriter.temporaryPrefix`
/// or another recognisable prefix, so later runs can tell them apart and clear them.)
public final class TemporaryOutputs: @unchecked Sendable {
    // @unchecked: `paths` and `interrupted` are only touched under `lock`.
    public static let shared = TemporaryOutputs()
    private let lock = NSLock()
    private var paths: Set<String> = []
    private var interrupted = false

    // `package`: only peftkit's own writers register what they write; apps just call `removeAll` on a signal.
    package func register(_ path: String) { lock.withLock { _ = paths.insert(path) } }
    package func unregister(_ path: String) { lock.withLock { _ = paths.remove(path) } }

    /// Whether `removeAll` has begun: the process is being interrupted, and failures other threads meet from now on
    /// (their files vanishing) are the interruption's doing.
    public var isInterrupted: Bool { lock.withLock { interrupted } }

    /// Moves the finished temporary output at `path` into place with `move` and forgets it, under the lock
    /// `removeAll` takes: an interruption either comes first (then nothing is moved, and the temporary is removed) or
    /// finds the output already published — never a temporary that became the final output while it was removing it.
    /// `move` must not register or unregister anything.
    /// - Throws: `move`'s error, or `SafeTensorsError.io` when an interruption has begun.
    package func publish(_ path: String, as finalPath: String, _ move: () throws -> Void) throws {
        lock.lock()
        defer { lock.unlock() }
        guard !interrupted else {
            throw SafeTensorsError.io(file: finalPath, operation: "rename into place", reason: "interrupted")
        }
        try move()
        paths.remove(path)
    }

    /// Removes every registered temporary output. Other threads may still be writing into them: each is first renamed
    /// aside, so that those threads, which reach their files by the old path, can no longer add to it (a file created
    /// after the listing would make the final rmdir fail) nor rename it into place, and then removed.
    /// - Returns: how many temporary outputs there were (0: nothing was being written, or it was already published).
    @discardableResult
    public func removeAll() -> Int {
        let current = lock.withLock {
            interrupted = true
            return paths
        }
        for path in current {
            let aside = path + "-removing"
            let target = rename(path, aside) == 0 ? aside : path
            try? FileManager.default.removeItem(atPath: target)
        }
        return current.count
    }
}
