import CPeftKitSystem
import Foundation
import SafeTensors
#if canImport(Glibc)
import Glibc
#endif

/// An output folder built under a temporary name beside its final place and renamed into place only when complete,
/// so the final path is always either absent (or the old folder, with `force`) or a complete result.
final class OutputFolder {
    let finalPath: String
    let temporaryPath: String
    private let force: Bool
    private var published = false

    /// Refuses an existing `finalPath` unless `force`; clears temporary folders left by peftkit runs that died.
    init(finalPath: String, force: Bool) throws {
        let standardized = (finalPath as NSString).standardizingPath
        try OutputPath.checkWritable(standardized, force: force, expectFolder: true)
        self.finalPath = standardized
        self.force = force
        let (parent, name) = OutputPath.split(standardized)
        Self.removeStaleTemporaries(in: parent, for: name)
        temporaryPath = OutputPath.sibling(of: parent, name: name, tag: SafeTensorsWriter.temporaryPrefix)
        guard mkdir(temporaryPath, 0o755) == 0 else {
            throw PEFTKitError(.io, file: finalPath, "cannot create a temporary folder beside it: \(OutputPath.errnoText())")
        }
        TemporaryOutputs.shared.register(temporaryPath)
    }

    deinit { discard() }

    func path(of name: String) -> String { (temporaryPath as NSString).appendingPathComponent(name) }

    /// Syncs the folder and moves it into place; an old output (with `force`) is swapped out in one step where the
    /// kernel allows, else moved aside first and removed once the new one is in place.
    func publish() throws {
        OutputPath.syncFolder(temporaryPath)
        var swapped = false
        try TemporaryOutputs.shared.publish(temporaryPath, as: finalPath) {
            if force && FileManager.default.fileExists(atPath: finalPath) && Self.exchange(temporaryPath, finalPath) {
                swapped = true
            } else {
                try OutputPath.moveIntoPlace(temporaryPath, finalPath, replacing: force)
            }
        }
        published = true
        if swapped {
            // temporaryPath now holds the old output.
            try? FileManager.default.removeItem(atPath: temporaryPath)
            OutputPath.syncFolder(OutputPath.split(finalPath).parent)
        }
    }

    /// Removes the temporary folder (nothing is left under the final name).
    func discard() {
        guard !published else { return }
        try? FileManager.default.removeItem(atPath: temporaryPath)
        TemporaryOutputs.shared.unregister(temporaryPath)
    }

    /// Atomically swaps two paths with `renameat2(RENAME_EXCHANGE)` (Linux 3.15+). False when unavailable or refused
    /// (some file systems do not support it): then a two-step rename is used.
    private static func exchange(_ first: String, _ second: String) -> Bool {
        peftkit_rename_exchange(first, second) == 0
    }

    /// Temporary folders for the same output whose process no longer runs were left by a crash: remove them.
    /// Their names are exactly `<prefix><name>-<pid>-<hex>` (`OutputPath.sibling`), or that followed by `-removing`
    /// (what an interrupted clean-up renames a temporary to); anything else, such as the temporary of an output named
    /// `<name>-2`, is not ours.
    static func removeStaleTemporaries(in parent: String, for name: String) {
        let prefix = "\(SafeTensorsWriter.temporaryPrefix)\(name)-"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return }
        for entry in entries where entry.hasPrefix(prefix) {
            let parts = entry.dropFirst(prefix.count).split(separator: "-", omittingEmptySubsequences: false)
            guard parts.count == 2 || (parts.count == 3 && parts[2] == "removing"),
                  let pid = Int32(parts[0]), pid > 0, !parts[1].isEmpty, UInt32(parts[1], radix: 16) != nil
            else { continue }
            if pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH {
                try? FileManager.default.removeItem(atPath: (parent as NSString).appendingPathComponent(entry))
            }
        }
    }
}
