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

    /// Removes every registered temporary output. Other threads may still be writing into them: each is first renamed
    /// aside, so that those threads, which reach their files by the old path, can no longer add to it (a file created
    /// after the listing would make the final rmdir fail) nor rename it into place, and then removed.
    public func removeAll() {
        let current = lock.withLock {
            interrupted = true
            return paths
        }
        for path in current {
            let aside = path + "-removing"
            let target = rename(path, aside) == 0 ? aside : path
            try? FileManager.default.removeItem(atPath: target)
        }
    }
}
