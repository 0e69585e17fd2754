import Foundation

/// Temporary files and folders being written, so that a process interrupted by SIGINT or SIGTERM can remove them
/// before it exits. (A process killed outright leaves them; their names start with `SafeTensorsWriter.temporaryPrefix`
/// or another recognisable prefix, so later runs can tell them apart and clear them.)
public final class TemporaryOutputs: @unchecked Sendable {
    // @unchecked: `paths` is only touched under `lock`.
    public static let shared = TemporaryOutputs()
    private let lock = NSLock()
    private var paths: Set<String> = []

    public func register(_ path: String) { lock.withLock { _ = paths.insert(path) } }
    public func unregister(_ path: String) { lock.withLock { _ = paths.remove(path) } }

    /// Removes every registered temporary output.
    public func removeAll() {
        let current = lock.withLock { paths }
        for path in current { try? FileManager.default.removeItem(atPath: path) }
    }
}
