#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A nameless scratch file for bytes a command has before it can place them — extract's factors, whose adapter
/// header is known only once every module's rank is — so that they do not pile up in memory as the model grows.
/// Created beside the output and unlinked at once: nothing is left behind, however the process ends. Appended to
/// from several threads; read back with `pread`.
final class SpillFile: @unchecked Sendable {
    // @unchecked: `end` is touched under `lock` only; the descriptor never changes.
    private let descriptor: Int32
    private let lock = NSLock()
    private var end = 0
    /// Where the file was made, for messages.
    let folder: String

    init(near output: String) throws {
        folder = OutputPath.split(output).parent
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isFolder), isFolder.boolValue else {
            throw PEFTKitError(.io, file: output, "the folder to write into, '\(folder)', does not exist")
        }
        var template = Array((folder + "/.peftkit-spill-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw PEFTKitError(.io, file: folder, "cannot create a scratch file here: \(String(cString: strerror(errno)))")
        }
        unlink(template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// Writes `bytes` at the end; returns where they start.
    func append(_ bytes: [UInt8]) throws -> Int {
        let offset = lock.withLock { () -> Int in
            defer { end += bytes.count }
            return end
        }
        try bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = pwrite(descriptor, raw.baseAddress! + done, raw.count - done, off_t(offset + done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    throw PEFTKitError(.io, file: folder, "cannot write the scratch file here: \(String(cString: strerror(errno)))")
                }
                done += n
            }
        }
        return offset
    }

    /// The `count` bytes at `offset`.
    func read(offset: Int, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { raw in
            var done = 0
            while done < count {
                let n = pread(descriptor, raw.baseAddress! + done, count - done, off_t(offset + done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    throw PEFTKitError(.io, file: folder, "cannot read back the scratch file: \(n < 0 ? String(cString: strerror(errno)) : "it ended early")")
                }
                done += n
            }
        }
        return bytes
    }
}
