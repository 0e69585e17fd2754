#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CPeftKitSystem
import Foundation

/// Writes one safetensors file, tensor by tensor, without ever holding the whole file in memory.
///
/// Every tensor is declared up front (the header comes first and fixes the offsets); the bytes may then arrive in any
/// order. The file is written under a temporary name in the destination folder, synced, and renamed into place by
/// `finish()`; a writer that is dropped or aborted before that removes its temporary file.
/// The layout is the one of `safetensors.save_file`, so the same tensors and metadata give the same bytes.
/// Different tensors (or disjoint chunks of one) may be written from several threads at once.
public final class SafeTensorsWriter: @unchecked Sendable {
    // @unchecked: the bookkeeping (`writtenBytes`, `state`, `descriptor`) is only touched under `lock`; the data
    // itself goes out with pwrite at fixed offsets, which needs no lock.
    /// Prefix of temporary files, so that stale ones (after a crash) can be recognised.
    public static let temporaryPrefix = ".peftkit-tmp-"

    /// The final path.
    public let path: String
    public let temporaryPath: String
    /// The tensors in file order, with their offsets in the data buffer.
    public let tensors: [TensorInfo]
    /// Total size of the finished file.
    public let fileSize: Int
    private let dataStart: Int
    private let indexByName: [String: Int]
    /// Bytes received so far per tensor (chunks must not overlap; the engine writes disjoint row ranges).
    private var writtenBytes: [Int]
    private let lock = NSLock()
    private var descriptor: Int32
    private var state = State.open

    private enum State { case open, finished, aborted }

    /// Creates the temporary file and writes the header.
    /// - Parameter metadata: `__metadata__`; transformers requires `format: pt`, the default.
    /// - Throws: SafeTensorsError when the specs cannot be laid out (a duplicate or reserved name, a size that
    ///   overflows), `.io` when the temporary file cannot be created, its space reserved or its header written.
    public init(path: String, tensors: [TensorSpec],
                metadata: [(key: String, value: String)]? = [("format", "pt")]) throws {
        self.path = path
        let ordered = Header.layoutOrder(tensors)
        let (json, infos) = try Header.serialize(ordered, metadata: metadata, file: path)
        self.tensors = infos
        self.dataStart = 8 + json.count
        self.fileSize = dataStart + (infos.last?.dataOffsets.upperBound ?? 0)
        var index: [String: Int] = [:]
        for (i, info) in infos.enumerated() { index[info.name] = i }
        self.indexByName = index
        self.writtenBytes = Array(repeating: 0, count: infos.count)

        let (folder, name) = Self.split(path)
        var random = SystemRandomNumberGenerator()
        self.temporaryPath = folder + Self.temporaryPrefix + name + "-\(getpid())-\(String(random.next() as UInt32, radix: 16))"
        let fd = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SafeTensorsError.io(file: path, operation: "create", reason: SafeTensorsFile.errnoText()) }
        self.descriptor = fd
        TemporaryOutputs.shared.register(temporaryPath)
        do {
            // Reserve the space now: running out of disk fails here, before any work is done. Not on tmpfs, where
            // reserving means allocating and zeroing every page up front (a serial pass over the whole file,
            // measured at ~15% of a merge); there a full filesystem still fails the write itself, cleanly.
            let status = Self.isMemoryBacked(fd) ? 0 : posix_fallocate(fd, 0, off_t(fileSize))
            if status != 0 && status != EOPNOTSUPP && status != EINVAL {
                throw SafeTensorsError.io(file: path, operation: "allocate \(fileSize) bytes",
                                          reason: SafeTensorsFile.errnoText(status))
            }
            var prefix = [UInt8]()
            prefix.reserveCapacity(dataStart)
            withUnsafeBytes(of: UInt64(json.count).littleEndian) { prefix.append(contentsOf: $0) }
            prefix.append(contentsOf: json)
            try prefix.withUnsafeBytes { (raw) throws in try writeFully(raw, at: 0) }
        } catch {
            abort()
            throw error
        }
    }

    deinit { abort() }

    /// Writes all the bytes of the declared tensor `name`.
    public func write(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        guard let index = indexByName[name] else { throw SafeTensorsError.writerUnknownTensor(file: path, tensor: name) }
        let tensor = tensors[index]
        guard bytes.count == tensor.byteCount else {
            throw SafeTensorsError.writerByteCount(file: path, tensor: name, expected: tensor.byteCount, actual: bytes.count)
        }
        try lock.withLock {
            guard writtenBytes[index] == 0 else { throw SafeTensorsError.writerDuplicateTensor(file: path, tensor: name) }
            writtenBytes[index] = bytes.count
        }
        try writeFully(bytes, at: dataStart + tensor.dataOffsets.lowerBound)
    }

    /// Writes part of a tensor's bytes, starting `offset` bytes into the tensor. Chunks of one tensor must not
    /// overlap; `finish()` checks that each tensor received exactly its byte count.
    public func write(_ name: String, chunk: UnsafeRawBufferPointer, at offset: Int) throws {
        guard let index = indexByName[name] else { throw SafeTensorsError.writerUnknownTensor(file: path, tensor: name) }
        let tensor = tensors[index]
        try lock.withLock {
            guard offset >= 0, offset + chunk.count <= tensor.byteCount,
                  writtenBytes[index] + chunk.count <= tensor.byteCount else {
                throw SafeTensorsError.writerByteCount(file: path, tensor: name, expected: tensor.byteCount,
                                                       actual: max(offset + chunk.count, writtenBytes[index] + chunk.count))
            }
            writtenBytes[index] += chunk.count
        }
        try writeFully(chunk, at: dataStart + tensor.dataOffsets.lowerBound + offset)
    }

    /// Checks that every tensor was written, syncs, and renames the file to its final name.
    /// - Parameter sync: fsync the file before the rename and its folder after (turn off only for scratch output).
    /// - Throws: SafeTensorsError `.writerIncomplete` when a tensor is short of bytes, `.io` when the sync or the
    ///   rename fails (the temporary file is then removed).
    public func finish(sync: Bool = true) throws {
        lock.lock()
        defer { lock.unlock() }
        let missing = zip(tensors, writtenBytes).filter { $0.1 != $0.0.byteCount }.map(\.0.name)
        guard missing.isEmpty else { throw SafeTensorsError.writerIncomplete(file: path, missing: missing) }
        if sync && fsync(descriptor) != 0 {
            throw SafeTensorsError.io(file: path, operation: "fsync", reason: SafeTensorsFile.errnoText())
        }
        close(descriptor)
        descriptor = -1
        do {
            try TemporaryOutputs.shared.publish(temporaryPath, as: path) {
                guard rename(temporaryPath, path) == 0 else {
                    throw SafeTensorsError.io(file: path, operation: "rename into place", reason: SafeTensorsFile.errnoText())
                }
            }
        } catch {
            abortLocked()
            throw error
        }
        state = .finished
        if sync { Self.syncFolder(of: path) }
    }

    /// Removes the temporary file. Safe to call more than once.
    public func abort() {
        lock.lock()
        defer { lock.unlock() }
        abortLocked()
    }

    private func abortLocked() {
        guard state == .open else { return }
        state = .aborted
        if descriptor >= 0 { close(descriptor) }
        descriptor = -1
        unlink(temporaryPath)
        TemporaryOutputs.shared.unregister(temporaryPath)
    }

    private func writeFully(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < bytes.count {
            // Large writes in chunks: some kernels cap a single write near 2 GiB.
            let chunk = min(bytes.count - done, 1 << 30)
            let n = pwrite(descriptor, bytes.baseAddress! + done, chunk, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(file: path, operation: "write", reason: SafeTensorsFile.errnoText())
            }
            done += n
        }
    }

    /// Whether the file lives on tmpfs; false when that cannot be told (fstatfs failed or does not exist).
    static func isMemoryBacked(_ descriptor: Int32) -> Bool {
        peftkit_is_tmpfs(descriptor) == 1
    }

    static func split(_ path: String) -> (folder: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return ("", path) }
        return (String(path[...slash]), String(path[path.index(after: slash)...]))
    }

    /// Makes a rename durable by syncing the folder that holds the file.
    static func syncFolder(of path: String) {
        let folder = split(path).folder
        let fd = open(folder.isEmpty ? "." : folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }
}
