import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A strict, read-only view of a ZIP archive of stored (uncompressed) entries, the layout `torch.save` writes.
///
/// Everything is validated before anything is trusted: the end records, every central directory entry, every local
/// header, and the placement of every entry's data (inside the file, before the central directory, no overlaps).
/// Torch writes data descriptors (local headers carry zero CRC and sizes), so the central directory is the source of
/// truth, and the local header is only checked for agreement where it states something.
struct ZipArchive {
    struct Entry {
        let name: String
        let size: Int
        let crc32: UInt32
        /// Offset of the local file header; the entry's span starts here.
        let headerOffset: Int
        let dataOffset: Int
    }

    /// Bounds checked before any allocation sized by the file's own claims.
    static let maxEntryCount = 100_000
    static let maxCentralDirectoryBytes = 64 << 20

    let file: String
    /// The one top-level folder every entry lives in (torch names it after the archive).
    let root: String
    /// Entries in central directory order.
    let entries: [Entry]
    private let entriesByName: [String: Int]
    private let reader: FileReader

    init(url: URL, file: String) throws {
        self.file = file
        reader = try FileReader(url: url, file: file)
        let end = try Self.readEndRecords(reader, file: file)
        var parsed = try Self.readCentralDirectory(reader, end: end, file: file)
        try Self.attachLocalHeaders(&parsed, reader: reader, dataLimit: end.centralDirectoryOffset, file: file)
        entries = parsed
        root = try Self.singleRoot(of: parsed.map(\.name), file: file)
        entriesByName = Dictionary(uniqueKeysWithValues: parsed.enumerated().map { ($0.element.name, $0.offset) })
    }

    func entry(named name: String) -> Entry? {
        entriesByName[name].map { entries[$0] }
    }

    /// The entry's bytes, after checking them against the CRC-32 the central directory records.
    func contents(of entry: Entry) throws -> [UInt8] {
        let bytes = try reader.read(at: entry.dataOffset, count: entry.size, what: "entry '\(entry.name)'")
        let computed = bytes.withUnsafeBytes { CRC32.checksum($0) }
        guard computed == entry.crc32 else {
            throw legacyError(file, "CRC mismatch in entry '\(entry.name)': "
                              + "recorded \(hex(entry.crc32)), computed \(hex(computed))")
        }
        return bytes
    }

    // MARK: End records

    private struct EndRecords {
        let entryCount: Int
        let centralDirectoryOffset: Int
        let centralDirectorySize: Int
    }

    private static let endRecordSignature: UInt32 = 0x0605_4B50
    private static let zip64EndRecordSignature: UInt32 = 0x0606_4B50
    private static let zip64LocatorSignature: UInt32 = 0x0706_4B50
    private static let centralHeaderSignature: UInt32 = 0x0201_4B50
    private static let localHeaderSignature: UInt32 = 0x0403_4B50

    /// Finds the end of central directory record (the comment may hold up to 65 535 bytes, so search the tail
    /// backwards), then prefers the ZIP64 record when its locator sits right before it, as torch always writes one.
    private static func readEndRecords(_ reader: FileReader, file: String) throws -> EndRecords {
        let fixedSize = 22
        guard reader.size >= fixedSize else {
            throw legacyError(file, "file of \(reader.size) bytes is too short to be a ZIP archive (truncated?)")
        }
        let tailLength = min(reader.size, fixedSize + 0xFFFF)
        let tailStart = reader.size - tailLength
        let tail = try reader.read(at: tailStart, count: tailLength, what: "end of file")
        var found: Int?
        for position in stride(from: tailLength - fixedSize, through: 0, by: -1) {
            var fields = FieldReader(tail, at: position, what: "end of central directory record", file: file)
            guard try fields.u32() == endRecordSignature else { continue }
            var commentLength = FieldReader(tail, at: position + 20, what: "end of central directory record", file: file)
            if position + fixedSize + Int(try commentLength.u16()) == tailLength {
                found = position
                break
            }
        }
        guard let eocdInTail = found else {
            let head = try reader.read(at: 0, count: min(reader.size, 2), what: "file start")
            if head.first == 0x80 {
                throw legacyError(file, "not a ZIP archive: this looks like torch's pre-1.6 pickle format, "
                                  + "which is not supported")
            }
            throw legacyError(file, "no end of central directory record: not a ZIP archive, or truncated")
        }
        let eocdOffset = tailStart + eocdInTail
        var eocd = FieldReader(tail, at: eocdInTail + 4, what: "end of central directory record", file: file)
        let diskNumber = try eocd.u16(), directoryDisk = try eocd.u16()
        let entriesOnDisk = try eocd.u16(), entryCount16 = try eocd.u16()
        let directorySize32 = try eocd.u32(), directoryOffset32 = try eocd.u32()

        var entryCount = UInt64(entryCount16), directorySize = UInt64(directorySize32)
        var directoryOffset = UInt64(directoryOffset32)
        var directoryLimit = eocdOffset
        var isMultiDisk = diskNumber != 0 || directoryDisk != 0 || entriesOnDisk != entryCount16

        let locatorSize = 20, zip64RecordSize = 56
        if eocdOffset >= locatorSize {
            let locatorOffset = eocdOffset - locatorSize
            let locatorBytes = try reader.read(at: locatorOffset, count: locatorSize, what: "ZIP64 locator")
            var locator = FieldReader(locatorBytes, at: 0, what: "ZIP64 end of central directory locator", file: file)
            if try locator.u32() == zip64LocatorSignature {
                let recordDisk = try locator.u32()
                let recordOffset64 = try locator.u64()
                let diskCount = try locator.u32()
                guard let recordOffset = Int(exactly: recordOffset64), recordOffset <= locatorOffset - zip64RecordSize
                else {
                    throw legacyError(file, "ZIP64 end record offset \(recordOffset64) is outside the file")
                }
                let recordBytes = try reader.read(at: recordOffset, count: zip64RecordSize, what: "ZIP64 end record")
                var record = FieldReader(recordBytes, at: 0, what: "ZIP64 end of central directory record", file: file)
                guard try record.u32() == zip64EndRecordSignature else {
                    throw legacyError(file, "the ZIP64 locator points at offset \(recordOffset), "
                                      + "which holds no ZIP64 end record")
                }
                try record.skip(12)  // record size, versions made by and needed
                let disk64 = try record.u32(), directoryDisk64 = try record.u32()
                let entriesOnDisk64 = try record.u64(), entryCount64 = try record.u64()
                let directorySize64 = try record.u64(), directoryOffset64 = try record.u64()
                isMultiDisk = isMultiDisk || recordDisk != 0 || diskCount > 1 || disk64 != 0 || directoryDisk64 != 0
                    || entriesOnDisk64 != entryCount64
                // The 32-bit fields either say "see ZIP64" (all ones) or must agree: two readers must not see two archives.
                guard entryCount16 == 0xFFFF || UInt64(entryCount16) == entryCount64,
                      directorySize32 == 0xFFFF_FFFF || UInt64(directorySize32) == directorySize64,
                      directoryOffset32 == 0xFFFF_FFFF || UInt64(directoryOffset32) == directoryOffset64
                else {
                    throw legacyError(file, "the ZIP64 end record disagrees with the end of central directory record")
                }
                entryCount = entryCount64
                directorySize = directorySize64
                directoryOffset = directoryOffset64
                directoryLimit = recordOffset
            } else if entryCount16 == 0xFFFF || directorySize32 == 0xFFFF_FFFF || directoryOffset32 == 0xFFFF_FFFF {
                throw legacyError(file, "the end of central directory record defers to a ZIP64 record that is missing")
            }
        }
        guard !isMultiDisk else {
            throw legacyError(file, "multi-disk (split) ZIP archives are not supported")
        }
        guard entryCount <= UInt64(maxEntryCount) else {
            throw legacyError(file, "the archive claims \(entryCount) entries; at most \(maxEntryCount) are accepted")
        }
        guard directorySize <= UInt64(maxCentralDirectoryBytes) else {
            throw legacyError(file, "the central directory claims \(directorySize) bytes; "
                              + "at most \(maxCentralDirectoryBytes) are accepted")
        }
        guard let offset = Int(exactly: directoryOffset), let size = Int(exactly: directorySize),
              offset <= directoryLimit, size <= directoryLimit - offset
        else {
            throw legacyError(file, "the central directory (offset \(directoryOffset), \(directorySize) bytes) "
                              + "runs past its end records (\(directoryLimit)): truncated or corrupt")
        }
        let count = Int(entryCount)
        guard count.multipliedReportingOverflow(by: 46).partialValue <= size else {
            throw legacyError(file, "the central directory of \(size) bytes "
                              + "cannot hold the \(count) entries the archive claims")
        }
        return EndRecords(entryCount: count, centralDirectoryOffset: offset, centralDirectorySize: size)
    }

    // MARK: Central directory

    private static func readCentralDirectory(_ reader: FileReader, end: EndRecords, file: String) throws -> [Entry] {
        let directory = try reader.read(at: end.centralDirectoryOffset, count: end.centralDirectorySize,
                                        what: "central directory")
        var entries: [Entry] = []
        entries.reserveCapacity(end.entryCount)
        var seenNames: Set<String> = []
        var position = 0
        for index in 0..<end.entryCount {
            let what = "central directory entry \(index)"
            var fields = FieldReader(directory, at: position, what: what, file: file)
            guard try fields.u32() == centralHeaderSignature else {
                throw legacyError(file, "\(what) has no valid signature (corrupt central directory)")
            }
            try fields.skip(4)  // versions made by and needed
            let flags = try fields.u16(), method = try fields.u16()
            try fields.skip(4)  // modification time and date
            let crc = try fields.u32()
            let compressedSize32 = try fields.u32(), size32 = try fields.u32()
            let nameLength = Int(try fields.u16()), extraLength = Int(try fields.u16())
            let commentLength = Int(try fields.u16())
            let disk16 = try fields.u16()
            try fields.skip(6)  // internal and external attributes
            let headerOffset32 = try fields.u32()
            let nameBytes = try fields.bytes(nameLength)
            let extra = try fields.bytes(extraLength)
            try fields.skip(commentLength)
            position = fields.position

            guard let name = String(validating: nameBytes, as: UTF8.self) else {
                throw legacyError(file, "\(what) has a name that is not valid UTF-8")
            }
            try validateEntryName(name, file: file)
            guard flags & 0x0001 == 0, flags & 0x0040 == 0 else {
                throw legacyError(file, "entry '\(name)' is encrypted; encrypted entries are not supported")
            }
            guard method == 0 else {
                let label = method == 8 ? " (deflate)" : ""
                throw legacyError(file, "entry '\(name)' is compressed with method \(method)\(label); "
                                  + "only stored (method 0) entries are supported")
            }
            var size = UInt64(size32), compressedSize = UInt64(compressedSize32)
            var headerOffset = UInt64(headerOffset32), disk = UInt32(disk16)
            try applyZip64Extra(extra, size: &size, compressedSize: &compressedSize, headerOffset: &headerOffset,
                                disk: &disk, entry: name, file: file)
            guard disk == 0 else {
                throw legacyError(file, "entry '\(name)' lives on disk \(disk); multi-disk archives are not supported")
            }
            guard size == compressedSize else {
                throw legacyError(file, "stored entry '\(name)' records \(compressedSize) compressed bytes "
                                  + "but \(size) uncompressed")
            }
            guard let sizeInt = Int(exactly: size), let offsetInt = Int(exactly: headerOffset),
                  sizeInt <= reader.size, offsetInt <= reader.size
            else {
                throw legacyError(file, "entry '\(name)' claims \(size) bytes at offset \(headerOffset), "
                                  + "beyond the file's \(reader.size) bytes")
            }
            guard seenNames.insert(name).inserted else {
                throw legacyError(file, "duplicate entry name '\(name)'")
            }
            entries.append(Entry(name: name, size: sizeInt, crc32: crc, headerOffset: offsetInt, dataOffset: 0))
        }
        guard position == directory.count else {
            throw legacyError(file, "the central directory holds \(directory.count - position) bytes after its last entry")
        }
        return entries
    }

    /// Replaces the 32-bit fields that are all ones with the ZIP64 extra field's 64-bit values, in the order the
    /// format fixes: uncompressed size, compressed size, local header offset, disk.
    private static func applyZip64Extra(
        _ extra: ArraySlice<UInt8>, size: inout UInt64, compressedSize: inout UInt64, headerOffset: inout UInt64,
        disk: inout UInt32, entry: String, file: String
    ) throws {
        let what = "extra field of entry '\(entry)'"
        var fields = FieldReader(extra, at: extra.startIndex, what: what, file: file)
        var zip64: ArraySlice<UInt8>?
        while fields.position < extra.endIndex {
            let id = try fields.u16(), length = Int(try fields.u16())
            let body = try fields.bytes(length)
            if id == 0x0001 {
                guard zip64 == nil else { throw legacyError(file, "entry '\(entry)' has two ZIP64 extra fields") }
                zip64 = body
            }
        }
        let needsSize = size == 0xFFFF_FFFF, needsCompressed = compressedSize == 0xFFFF_FFFF
        let needsOffset = headerOffset == 0xFFFF_FFFF, needsDisk = disk == 0xFFFF
        guard needsSize || needsCompressed || needsOffset || needsDisk else { return }
        guard let zip64 else {
            throw legacyError(file, "entry '\(entry)' defers its sizes or offset to a ZIP64 extra field that is missing")
        }
        var values = FieldReader(zip64, at: zip64.startIndex, what: "ZIP64 extra field of entry '\(entry)'", file: file)
        if needsSize { size = try values.u64() }
        if needsCompressed { compressedSize = try values.u64() }
        if needsOffset { headerOffset = try values.u64() }
        if needsDisk { disk = try values.u32() }
    }

    /// Refuses names an extractor could turn into a path outside its target, and names that make no sense in a
    /// torch archive (directories, empty components).
    private static func validateEntryName(_ name: String, file: String) throws {
        guard !name.hasPrefix("/"), !name.contains("\\"), !name.contains("\0") else {
            throw legacyError(file, "entry name '\(name)' is an absolute path or contains a backslash or NUL")
        }
        let components = name.split(separator: "/", omittingEmptySubsequences: false)
        guard !components.contains("..") else {
            throw legacyError(file, "entry name '\(name)' contains '..'")
        }
        guard !components.contains("."), !components.contains("") else {
            throw legacyError(file, "entry name '\(name)' has an empty or '.' path component")
        }
        guard components.count >= 2 else {
            throw legacyError(file, "entry '\(name)' is not inside a top-level folder")
        }
    }

    private static func singleRoot(of names: [String], file: String) throws -> String {
        let roots = Set(names.compactMap { $0.split(separator: "/").first.map(String.init) })
        guard roots.count <= 1 else {
            let listed = roots.sorted().prefix(3).map { "'\($0)'" }.joined(separator: ", ")
            throw legacyError(file, "the archive has \(roots.count) top-level folders (\(listed)); torch writes exactly one")
        }
        guard let root = roots.first else { throw legacyError(file, "the archive is empty") }
        return root
    }

    // MARK: Local headers

    /// Reads each local header to find where the data starts, then checks that every entry's span (header through
    /// data) ends before the central directory and that no two spans overlap.
    private static func attachLocalHeaders(_ entries: inout [Entry], reader: FileReader, dataLimit: Int,
                                           file: String) throws {
        for index in entries.indices {
            let entry = entries[index]
            let what = "local header of entry '\(entry.name)'"
            guard entry.headerOffset <= dataLimit - 30 else {
                throw legacyError(file, "\(what) at offset \(entry.headerOffset) lies past the central directory")
            }
            let fixed = try reader.read(at: entry.headerOffset, count: 30, what: what)
            var fields = FieldReader(fixed, at: 0, what: what, file: file)
            guard try fields.u32() == localHeaderSignature else {
                throw legacyError(file, "\(what) at offset \(entry.headerOffset) has no valid signature")
            }
            try fields.skip(2)
            let flags = try fields.u16(), method = try fields.u16()
            try fields.skip(4)
            let crc = try fields.u32(), compressedSize = try fields.u32(), size = try fields.u32()
            let nameLength = Int(try fields.u16()), extraLength = Int(try fields.u16())
            let nameOffset = entry.headerOffset + 30
            guard nameLength <= dataLimit - nameOffset else {
                throw legacyError(file, "\(what) runs past the central directory")
            }
            let localName = try reader.read(at: nameOffset, count: nameLength, what: what)
            guard localName.elementsEqual(entry.name.utf8) else {
                throw legacyError(file, "\(what) names a different entry")
            }
            guard method == 0, flags & 0x0041 == 0 else {
                throw legacyError(file, "\(what) disagrees with the central directory on compression or encryption")
            }
            // Without a data descriptor (flag bit 3) the local header states CRC and sizes itself: they must agree.
            let hasDataDescriptor = flags & 0x0008 != 0
            if !hasDataDescriptor, size != 0xFFFF_FFFF,
               crc != entry.crc32 || UInt64(size) != UInt64(entry.size) || compressedSize != size {
                throw legacyError(file, "\(what) disagrees with the central directory on CRC or size")
            }
            let dataOffset = nameOffset + nameLength + extraLength
            guard dataOffset <= dataLimit, entry.size <= dataLimit - dataOffset else {
                throw legacyError(file, "the data of entry '\(entry.name)' (\(entry.size) bytes at offset "
                                  + "\(dataOffset)) runs past the central directory or the end of the file")
            }
            entries[index] = Entry(name: entry.name, size: entry.size, crc32: entry.crc32,
                                   headerOffset: entry.headerOffset, dataOffset: dataOffset)
        }
        let byPosition = entries.sorted { $0.headerOffset < $1.headerOffset }
        for (earlier, later) in zip(byPosition, byPosition.dropFirst())
        where earlier.dataOffset + earlier.size > later.headerOffset {
            throw legacyError(file, "entries '\(earlier.name)' and '\(later.name)' overlap")
        }
    }

    // MARK: Reading

    /// Reads little-endian fields from a buffer, throwing a message naming the structure when it runs out.
    struct FieldReader<Bytes: RandomAccessCollection<UInt8>> where Bytes.Index == Int {
        private let bytes: Bytes
        private let what: String
        private let file: String
        private(set) var position: Int

        init(_ bytes: Bytes, at position: Int, what: String, file: String) {
            self.bytes = bytes
            self.position = position
            self.what = what
            self.file = file
        }

        mutating func bytes(_ count: Int) throws -> Bytes.SubSequence {
            guard count >= 0, position >= bytes.startIndex, position <= bytes.endIndex,
                  count <= bytes.endIndex - position
            else {
                throw legacyError(file, "truncated \(what)")
            }
            defer { position += count }
            return bytes[position..<(position + count)]
        }

        mutating func skip(_ count: Int) throws { _ = try bytes(count) }

        private mutating func littleEndian<T: FixedWidthInteger & UnsignedInteger>(_: T.Type) throws -> T {
            try bytes(MemoryLayout<T>.size).reversed().reduce(T.zero) { ($0 << 8) | T($1) }
        }

        mutating func u16() throws -> UInt16 { try littleEndian(UInt16.self) }
        mutating func u32() throws -> UInt32 { try littleEndian(UInt32.self) }
        mutating func u64() throws -> UInt64 { try littleEndian(UInt64.self) }
    }

    /// Positioned reads of a file, so nothing larger than what is asked for is ever loaded.
    final class FileReader {
        private let handle: FileHandle
        private let file: String
        let size: Int

        init(url: URL, file: String) throws {
            do {
                handle = try FileHandle(forReadingFrom: url)
                size = Int(try handle.seekToEnd())
            } catch {
                throw PEFTKitError(.io, file: file, "cannot open the file: \(error.localizedDescription)")
            }
            self.file = file
        }

        /// Reads exactly `count` bytes at `offset`; a short read means the file is shorter than it claims.
        func read(at offset: Int, count: Int, what: String) throws -> [UInt8] {
            guard offset >= 0, count >= 0, offset <= size, count <= size - offset else {
                throw legacyError(file, "\(what) (\(count) bytes at offset \(offset)) "
                                  + "lies past the end of the file: truncated")
            }
            let descriptor = handle.fileDescriptor
            return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
                guard let base = buffer.baseAddress else { return }
                var done = 0
                while done < count {
                    let result = pread(descriptor, base + done, count - done, off_t(offset + done))
                    if result < 0, errno == EINTR { continue }
                    guard result > 0 else {
                        throw legacyError(file, "reading \(what) failed or the file shrank while being read")
                    }
                    done += result
                }
                initialized = count
            }
        }
    }
}

func legacyError(_ file: String, tensor: String? = nil, _ message: String) -> PEFTKitError {
    PEFTKitError(.legacyCheckpoint, file: file, tensor: tensor, message)
}

private func hex(_ value: UInt32) -> String {
    "0x" + String(value, radix: 16, uppercase: true)
}
