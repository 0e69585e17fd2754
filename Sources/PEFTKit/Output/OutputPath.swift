#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Rules shared by the writers for where output goes: never over an existing path without `force`, temporary names
/// beside the target, and a rename as the last step.
enum OutputPath {
    /// Refuses an existing `path` unless `force`; with `force`, still refuses to put a file where a folder is (or the
    /// reverse), which is almost certainly a mistake in the arguments rather than an old output.
    static func checkWritable(_ path: String, force: Bool, expectFolder: Bool) throws {
        var isFolder: ObjCBool = false
        let (parent, _) = split(path)
        var parentIsFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: parent, isDirectory: &parentIsFolder), parentIsFolder.boolValue else {
            throw PEFTKitError(.io, file: path, "the folder to write into, '\(parent)', does not exist")
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard force else {
            throw PEFTKitError(.io, file: path, "already exists", remedy: .replaceExisting)
        }
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isFolder)
        if isFolder.boolValue != expectFolder {
            throw PEFTKitError(.io, file: path, isFolder.boolValue
                ? "is a folder; refusing to replace it with a file, even though replacing was asked for"
                : "is a file; refusing to replace it with a folder, even though replacing was asked for")
        }
    }

    /// The folder (never empty: "." for a bare name) and the last component of `path`.
    static func split(_ path: String) -> (parent: String, name: String) {
        var trimmed = path
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        let parent = (trimmed as NSString).deletingLastPathComponent
        return (parent.isEmpty ? "." : parent, (trimmed as NSString).lastPathComponent)
    }

    /// A fresh hidden name in `parent`, recognisable by `tag` when a crash leaves it behind.
    static func sibling(of parent: String, name: String, tag: String) -> String {
        var random = SystemRandomNumberGenerator()
        let suffix = "-\(getpid())-\(String(random.next() as UInt32, radix: 16))"
        return (parent as NSString).appendingPathComponent(tag + name + suffix)
    }

    /// Creates `path` (which must not exist) with `contents`, synced to disk.
    static func writeFile(_ path: String, contents: [UInt8], reportedAs target: String) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw PEFTKitError(.io, file: target, "cannot create \(path): \(errnoText())") }
        defer { close(descriptor) }
        var written = 0
        while written < contents.count {
            let count = contents.withUnsafeBytes { write(descriptor, $0.baseAddress! + written, contents.count - written) }
            if count < 0 {
                if errno == EINTR { continue }
                throw PEFTKitError(.io, file: target, "cannot write \(path): \(errnoText())")
            }
            written += count
        }
        guard fsync(descriptor) == 0 else { throw PEFTKitError(.io, file: target, "cannot sync \(path): \(errnoText())") }
    }

    /// Renames the finished `temporary` to `target`. When replacing, the old target is first moved aside and only
    /// removed once the new one is in place (and put back if the rename fails).
    static func moveIntoPlace(_ temporary: String, _ target: String, replacing: Bool) throws {
        let (parent, name) = split(target)
        var info = stat()
        if replacing && lstat(target, &info) == 0 {
            let aside = sibling(of: parent, name: name, tag: ".peftkit-old-")
            guard rename(target, aside) == 0 else {
                throw PEFTKitError(.io, file: target, "cannot move the existing output aside: \(errnoText())")
            }
            guard rename(temporary, target) == 0 else {
                let reason = errnoText()
                _ = rename(aside, target)
                throw PEFTKitError(.io, file: target, "cannot rename the new output into place: \(reason)")
            }
            try? FileManager.default.removeItem(atPath: aside)
        } else {
            // rename(2) replaces a file or an empty folder without a word: check once more right before, which
            // narrows the race to a moment. (renameat2's RENAME_NOREPLACE would close it where the file system
            // supports it; CPeftKitSystem has only RENAME_EXCHANGE so far.)
            guard lstat(target, &info) != 0 else {
                throw PEFTKitError(.io, file: target, "appeared while the output was being written; not overwriting it")
            }
            guard rename(temporary, target) == 0 else {
                throw PEFTKitError(.io, file: target, "cannot rename the new output into place: \(errnoText())")
            }
        }
        syncFolder(parent)
    }

    /// Makes renames inside `folder` durable.
    static func syncFolder(_ folder: String) {
        let descriptor = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        fsync(descriptor)
        close(descriptor)
    }

    static func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }
}
