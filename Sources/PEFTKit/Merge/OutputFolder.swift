import Foundation
import SafeTensors
#if canImport(Glibc)
import Glibc
#endif

/// An output folder built under a temporary name beside its final place and renamed into place only when complete,
/// so the final path is always either absent (or the old folder, with `--force`) or a complete result.
final class OutputFolder {
    static let temporaryPrefix = ".peftkit-tmp-"

    let finalPath: String
    let temporaryPath: String
    private var published = false

    /// Refuses an existing `finalPath` unless `force`; clears temporary folders left by peftkit runs that died.
    init(finalPath: String, force: Bool) throws {
        let fileManager = FileManager.default
        let standardized = (finalPath as NSString).standardizingPath
        self.finalPath = standardized
        if fileManager.fileExists(atPath: standardized) && !force {
            throw PEFTKitError(.io, file: finalPath, "already exists (use --force to replace it)")
        }
        let parent = (standardized as NSString).deletingLastPathComponent
        let name = (standardized as NSString).lastPathComponent
        let parentFolder = parent.isEmpty ? "." : parent
        var isFolder: ObjCBool = false
        guard fileManager.fileExists(atPath: parentFolder, isDirectory: &isFolder), isFolder.boolValue else {
            throw PEFTKitError(.io, file: finalPath, "the folder \(parentFolder) does not exist")
        }
        Self.removeStaleTemporaries(in: parentFolder, for: name)
        let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        temporaryPath = (parentFolder as NSString).appendingPathComponent("\(Self.temporaryPrefix)\(name)-\(getpid())-\(suffix)")
        do {
            try fileManager.createDirectory(atPath: temporaryPath, withIntermediateDirectories: false)
        } catch {
            throw PEFTKitError(.io, file: temporaryPath, "cannot create the temporary output folder: \(error.localizedDescription)")
        }
        TemporaryOutputs.shared.register(temporaryPath)
    }

    deinit { discard() }

    func path(of name: String) -> String { (temporaryPath as NSString).appendingPathComponent(name) }

    /// Syncs the folder and moves it into place, replacing an old output in one step where the kernel allows.
    func publish() throws {
        syncFolder(temporaryPath)
        if FileManager.default.fileExists(atPath: finalPath) {
            // Swap old and new atomically, then remove the old one.
            if Self.exchange(temporaryPath, finalPath) {
                try? FileManager.default.removeItem(atPath: temporaryPath)
            } else {
                let old = temporaryPath + "-old"
                guard rename(finalPath, old) == 0 else {
                    throw PEFTKitError(.io, file: finalPath, "cannot move the old output aside: \(String(cString: strerror(errno)))")
                }
                guard rename(temporaryPath, finalPath) == 0 else {
                    let reason = String(cString: strerror(errno))
                    _ = rename(old, finalPath)
                    throw PEFTKitError(.io, file: finalPath, "cannot move the output into place: \(reason)")
                }
                try? FileManager.default.removeItem(atPath: old)
            }
        } else if rename(temporaryPath, finalPath) != 0 {
            throw PEFTKitError(.io, file: finalPath, "cannot move the output into place: \(String(cString: strerror(errno)))")
        }
        published = true
        TemporaryOutputs.shared.unregister(temporaryPath)
        syncFolder((finalPath as NSString).deletingLastPathComponent)
    }

    /// Removes the temporary folder (nothing is left under the final name).
    func discard() {
        guard !published else { return }
        try? FileManager.default.removeItem(atPath: temporaryPath)
        TemporaryOutputs.shared.unregister(temporaryPath)
    }

    private func syncFolder(_ path: String) {
        let fd = open(path.isEmpty ? "." : path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }

    /// Atomically swaps two paths with `renameat2(RENAME_EXCHANGE)` (Linux 3.15+), looked up at run time because
    /// glibc declares it only under _GNU_SOURCE. False when unavailable or refused (then a two-step rename is used).
    private static func exchange(_ first: String, _ second: String) -> Bool {
        typealias RenameAt2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "renameat2") else { return false }
        let renameat2 = unsafeBitCast(symbol, to: RenameAt2.self)
        let renameExchange: UInt32 = 1 << 1
        return renameat2(AT_FDCWD, first, AT_FDCWD, second, renameExchange) == 0
    }

    /// Temporary folders for the same output whose process no longer runs were left by a crash: remove them.
    /// Their names are exactly `<prefix><name>-<pid>-<hex>`, optionally followed by `-old` (a replaced output moved
    /// aside) or `-removing` (a SIGINT clean-up under way); anything else, such as the temporary of an output named
    /// `<name>-2`, is not ours.
    static func removeStaleTemporaries(in parent: String, for name: String) {
        let prefix = "\(temporaryPrefix)\(name)-"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return }
        for entry in entries where entry.hasPrefix(prefix) {
            let parts = entry.dropFirst(prefix.count).split(separator: "-", omittingEmptySubsequences: false)
            guard parts.count == 2 || (parts.count == 3 && (parts[2] == "old" || parts[2] == "removing")),
                  let pid = Int32(parts[0]), pid > 0, !parts[1].isEmpty, UInt32(parts[1], radix: 16) != nil
            else { continue }
            if pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH {
                try? FileManager.default.removeItem(atPath: (parent as NSString).appendingPathComponent(entry))
            }
        }
    }
}

