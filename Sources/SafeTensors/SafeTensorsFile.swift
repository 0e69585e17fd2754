#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A safetensors file opened for reading: the header is read and validated up front, the data is memory-mapped and
/// handed out as zero-copy views. No tensor byte is read until somebody looks at a view.
public final class SafeTensorsFile: @unchecked Sendable {
    // @unchecked: all stored state is immutable after init; the mapping is read-only.

    /// The path as the caller gave it, used in every message.
    public let path: String
    public let header: Header
    /// Size of the file when it was opened; views check that it has not shrunk since.
    public let fileSize: Int
    private let descriptor: Int32
    private let mapping: UnsafeRawPointer?
    private let indexByName: [String: Int]

    public var tensors: [TensorInfo] { header.tensors }
    public var metadata: [(key: String, value: String)]? { header.metadata }
    public var dataStart: Int { header.dataStart }

    /// Opens and validates `path`.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SafeTensorsError.io(file: path, operation: "open", reason: Self.errnoText()) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let reason = Self.errnoText()
            close(fd)
            throw SafeTensorsError.io(file: path, operation: "stat", reason: reason)
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw SafeTensorsError.io(file: path, operation: "open", reason: "not a regular file")
        }
        let size = Int(info.st_size)
        do {
            let header = try Self.readHeader(fd: fd, fileSize: size, path: path)
            var mapped: UnsafeRawPointer?
            if size > 0 {
                let address = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0)
                guard let address, address != MAP_FAILED else {
                    throw SafeTensorsError.io(file: path, operation: "mmap", reason: Self.errnoText())
                }
                mapped = UnsafeRawPointer(address)
            }
            self.header = header
            self.fileSize = size
            self.descriptor = fd
            self.mapping = mapped
            var index: [String: Int] = [:]
            index.reserveCapacity(header.tensors.count)
            for (i, tensor) in header.tensors.enumerated() { index[tensor.name] = i }
            self.indexByName = index
        } catch {
            close(fd)
            throw error
        }
    }

    deinit {
        if let mapping {
            munmap(UnsafeMutableRawPointer(mutating: mapping), fileSize)
            #if canImport(Glibc)
            BusErrorGuard.forget(UInt(bitPattern: mapping)..<UInt(bitPattern: mapping + fileSize))
            #endif
        }
        close(descriptor)
    }

    /// Reads the 8-byte length and the JSON with `pread`, so that parsing never touches the mapping.
    private static func readHeader(fd: Int32, fileSize: Int, path: String) throws -> Header {
        guard fileSize >= 8 else { throw SafeTensorsError.fileTooSmall(file: path, size: fileSize) }
        var lengthBytes: UInt64 = 0
        try withUnsafeMutableBytes(of: &lengthBytes) { (raw) throws in
            try readFully(fd: fd, into: raw, at: 0, path: path)
        }
        let length = UInt64(littleEndian: lengthBytes)
        guard length <= UInt64(Header.maxLength) else {
            throw SafeTensorsError.headerTooLarge(file: path, length: length, limit: Header.maxLength)
        }
        guard 8 + Int(length) <= fileSize else {
            throw SafeTensorsError.headerPastEnd(file: path, length: length, fileSize: fileSize)
        }
        let json = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(length), alignment: 8)
        defer { json.deallocate() }
        try readFully(fd: fd, into: json, at: 8, path: path)
        return try Header.parse(json: UnsafeRawBufferPointer(json), bufferSize: fileSize - 8 - Int(length), file: path)
    }

    static func readFully(fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int,
                          path: String) throws {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(file: path, operation: "read", reason: errnoText())
            }
            if n == 0 { throw SafeTensorsError.fileChanged(file: path, detail: "unexpected end of file at byte \(offset + done)") }
            done += n
        }
    }

    static func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

    // MARK: Access

    public func info(_ name: String) -> TensorInfo? {
        indexByName[name].map { header.tensors[$0] }
    }

    /// A zero-copy view of a tensor's bytes. Fails if the file has shrunk since it was opened (reading a mapped page
    /// past the new end would raise SIGBUS).
    public func view(_ name: String) throws -> TensorView {
        guard let tensor = info(name) else { throw SafeTensorsError.tensorNotFound(file: path, tensor: name) }
        return try view(tensor)
    }

    public func view(_ tensor: TensorInfo) throws -> TensorView {
        try checkUnchanged()
        let start = mapping.map { $0 + dataStart + tensor.dataOffsets.lowerBound }
        return TensorView(info: tensor, file: self, bytes: UnsafeRawBufferPointer(start: start, count: tensor.byteCount))
    }

    /// Throws if the file is now shorter than when it was opened (or a read of its mapping already hit a page past
    /// its end, see `BusErrorGuard`).
    public func checkUnchanged() throws {
        #if canImport(Glibc)
        if let mapping, BusErrorGuard.faulted(in: UInt(bitPattern: mapping)..<UInt(bitPattern: mapping + fileSize)) {
            throw SafeTensorsError.fileChanged(file: path, detail: "a mapped page could not be read (the file shrank while in use)")
        }
        #endif
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            throw SafeTensorsError.io(file: path, operation: "stat", reason: Self.errnoText())
        }
        if Int(info.st_size) < fileSize {
            throw SafeTensorsError.fileChanged(file: path, detail: "shrank from \(fileSize) to \(info.st_size) bytes")
        }
    }

    /// Hints that the tensor's pages will be read soon and in order.
    public func prefetch(_ tensor: TensorInfo) {
        advise(tensor, MADV_WILLNEED)
    }

    /// Drops the tensor's pages from this process's resident set (they stay in the page cache), keeping memory flat
    /// while a large checkpoint streams through. A page fault also maps cached neighbours — a 64 KiB fault-around
    /// window, or a whole large folio (up to 2 MiB) for data freshly read from disk — which would otherwise stay
    /// resident after their own tensor was released; the range released is widened by that much on both sides.
    public func release(_ tensor: TensorInfo) {
        advise(tensor, MADV_DONTNEED, margin: Self.neighbourBytes)
    }

    /// How far beyond a faulting page the kernel may map: the largest common folio.
    static let neighbourBytes = 2 << 20

    private func advise(_ tensor: TensorInfo, _ advice: Int32, margin: Int = 0) {
        guard let mapping, tensor.byteCount > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let begin = max(0, dataStart + tensor.dataOffsets.lowerBound - margin) / page * page
        let end = min(fileSize, dataStart + tensor.dataOffsets.upperBound + margin)
        madvise(UnsafeMutableRawPointer(mutating: mapping + begin), end - begin, advice)
    }
}

/// The bytes of one tensor inside a mapped file. Valid as long as the view (which keeps its file open) lives.
public struct TensorView: @unchecked Sendable {
    public let info: TensorInfo
    public let file: SafeTensorsFile
    public let bytes: UnsafeRawBufferPointer
}
