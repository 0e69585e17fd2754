import Foundation
import Testing
@testable import PEFTKit

/// Hostile and broken checkpoints, built byte by byte: each must be refused with a message naming the problem.
@Suite struct LegacyMaliciousInputTests {
    /// A well-formed archive around `pickle`, with one F32 storage of `count` elements under key "0".
    private func archive(_ pickle: [UInt8], count: Int = 4) -> [UInt8] {
        legacyTorchArchive(pickle: pickle, storages: [("0", legacyFloat32Bytes(Array(repeating: 1, count: count)))]).build()
    }

    /// The builder of a valid archive holding one 4-element F32 tensor, for tests that then break the ZIP.
    private func fourFloats() -> LegacyZipBuilder {
        legacyTorchArchive(pickle: oneTensor(shape: [4], stride: [1]), storages: [("0", legacyFloat32Bytes([1, 2, 3, 4]))])
    }

    private func oneTensor(count: Int = 4, offset: Int = 0, shape: [Int], stride: [Int]) -> [UInt8] {
        LegacyPickleWriter.stateDict { writer in
            writer.string("w")
            writer.tensor(count: count, offset: offset, shape: shape, stride: stride)
        }
    }

    // MARK: Pickle

    @Test(arguments: [("os", "system"), ("builtins", "eval"), ("posix", "system"), ("builtins", "exec"),
                      ("subprocess", "Popen"), ("torch", "load"), ("torch._utils", "_rebuild_parameter_with_state")])
    func legacyForbiddenGlobalIsRefusedAndNothingRuns(module: String, name: String) throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("peftkit-pwned-\(UUID().uuidString)")
        var writer = LegacyPickleWriter()
        writer.global(module, name)
        writer.mark()
        writer.string(module == "builtins" ? "open('\(marker.path)', 'w')" : "touch \(marker.path)")
        writer.tuple()
        writer.reduce()
        writer.stop()
        expectLegacyRefusal(archive(writer.bytes), mentioning: "'\(module).\(name)'", "not allowed", "offset 2")
        #expect(!FileManager.default.fileExists(atPath: marker.path))
    }

    @Test func legacyUnknownOpcodeIsRefusedWithItsOffset() {
        var writer = LegacyPickleWriter()
        writer.raw(0xFF)
        expectLegacyRefusal(archive(writer.bytes), mentioning: "unknown pickle opcode 0xFF", "offset 2")
    }

    @Test func legacyOpcodeOutsideTheAllowListIsRefusedByName() {
        var writer = LegacyPickleWriter()
        writer.string("os")
        writer.string("system")
        writer.raw(0x93)  // STACK_GLOBAL: a global from stack strings, a way around GLOBAL's check
        expectLegacyRefusal(archive(writer.bytes), mentioning: "STACK_GLOBAL", "0x93", "offset 20")
    }

    @Test func legacyMissingMemoEntryIsRefused() {
        var writer = LegacyPickleWriter()
        writer.raw(0x68, 7)  // BINGET 7
        expectLegacyRefusal(archive(writer.bytes), mentioning: "BINGET", "memo entry 7 was never stored")
    }

    @Test func legacyOversizedStringLengthIsRefusedBeforeAllocating() {
        var writer = LegacyPickleWriter()
        writer.raw(0x58, 0xFF, 0xFF, 0xFF, 0xFF)  // BINUNICODE of 4 GiB - 1
        expectLegacyRefusal(archive(writer.bytes), mentioning: "BINUNICODE", "string length 4294967295")
    }

    @Test func legacyStackUnderflowIsRefused() {
        var writer = LegacyPickleWriter()
        writer.emptyTuple()
        writer.reduce()  // needs a callable below the arguments
        expectLegacyRefusal(archive(writer.bytes), mentioning: "REDUCE", "stack underflow")
    }

    @Test func legacyValuesBelowAMarkAreOutOfReach() {
        var writer = LegacyPickleWriter()
        writer.int(1)
        writer.mark()
        writer.raw(0x85)  // TUPLE1 with nothing above the MARK
        expectLegacyRefusal(archive(writer.bytes), mentioning: "TUPLE1", "stack underflow")
    }

    @Test func legacyTupleWithoutMarkIsRefused() {
        var writer = LegacyPickleWriter()
        writer.int(1)
        writer.tuple()
        expectLegacyRefusal(archive(writer.bytes), mentioning: "TUPLE", "no MARK")
    }

    @Test func legacyStopWithOpenMarkIsRefused() {
        var writer = LegacyPickleWriter()
        writer.emptyDict()
        writer.mark()
        writer.stop()
        expectLegacyRefusal(archive(writer.bytes), mentioning: "STOP", "MARK")
    }

    @Test func legacyTruncatedPickleIsRefused() {
        var writer = LegacyPickleWriter()
        writer.raw(0x4A, 1, 2)  // BININT needs four bytes
        expectLegacyRefusal(archive(writer.bytes), mentioning: "BININT", "truncated")
        var unterminated = LegacyPickleWriter()
        unterminated.emptyDict()
        expectLegacyRefusal(archive(unterminated.bytes), mentioning: "without STOP")
    }

    @Test func legacyTopLevelMustBeADictOfTensors() {
        var list = LegacyPickleWriter()
        list.raw(0x5D)  // EMPTY_LIST
        list.stop()
        expectLegacyRefusal(archive(list.bytes), mentioning: "top-level object is a list")
        let notTensor = LegacyPickleWriter.stateDict { writer in
            writer.string("w")
            writer.int(3)
        }
        expectLegacyRefusal(archive(notTensor), mentioning: "an int", "not a tensor")
    }

    @Test func legacyCallingAStorageTypeIsRefused() {
        var writer = LegacyPickleWriter()
        writer.global("torch", "FloatStorage")
        writer.emptyTuple()
        writer.reduce()
        writer.stop()
        expectLegacyRefusal(archive(writer.bytes), mentioning: "cannot be called")
    }

    // MARK: ZIP

    @Test func legacyDeflatedEntryIsRefused() {
        var zip = fourFloats()
        zip.entries[2].method = 8
        expectLegacyRefusal(zip.build(), mentioning: "'archive/data/0'", "method 8", "only stored")
    }

    @Test func legacyEncryptedEntryIsRefused() {
        var zip = legacyTorchArchive(pickle: oneTensor(shape: [4], stride: [1]))
        zip.entries[0].flags |= 1
        expectLegacyRefusal(zip.build(), mentioning: "'archive/data.pkl'", "encrypted")
    }

    @Test func legacyTwoRootFoldersAreRefused() {
        var zip = fourFloats()
        zip.add("other/data.pkl", [0x80, 2, 0x2E])
        expectLegacyRefusal(zip.build(), mentioning: "2 top-level folders", "'archive'", "'other'")
    }

    @Test func legacyBadCRCIsRefused() {
        var zip = fourFloats()
        zip.entries[2].recordedCRC = 0xDEAD_BEEF
        expectLegacyRefusal(zip.build(), mentioning: "CRC mismatch", "'archive/data/0'", "0xDEADBEEF")
    }

    @Test(arguments: ["archive/../evil", "../archive/data/1", "/etc/passwd", "archive\\data\\1"])
    func legacyEscapingEntryNamesAreRefused(name: String) {
        var zip = fourFloats()
        zip.add(name, [1])
        expectLegacyRefusal(zip.build(), mentioning: "'\(name)'")
    }

    @Test func legacyDotDotIsNamedInTheMessage() {
        var zip = legacyTorchArchive(pickle: oneTensor(shape: [4], stride: [1]))
        zip.add("archive/../../x", [1])
        expectLegacyRefusal(zip.build(), mentioning: "contains '..'")
    }

    @Test func legacyDuplicateEntryNamesAreRefused() {
        var zip = fourFloats()
        zip.add("archive/data/0", legacyFloat32Bytes([5, 6, 7, 8]))
        expectLegacyRefusal(zip.build(), mentioning: "duplicate entry name 'archive/data/0'")
    }

    @Test func legacyTruncatedFileIsRefused() throws {
        let whole = archive(oneTensor(shape: [4], stride: [1]))
        expectLegacyRefusal(Array(whole.dropLast(7)), mentioning: "truncated")
        let real = [UInt8](try Data(contentsOf: legacyFixtures.appendingPathComponent("all_dtypes.bin")))
        expectLegacyRefusal(Array(real.prefix(real.count / 2)), mentioning: "truncated")
        expectLegacyRefusal([0x50, 0x4B], mentioning: "too short")
    }

    @Test func legacyEntryRunningPastTheCentralDirectoryIsRefused() {
        var zip = fourFloats()
        zip.entries[2].recordedSize = 200  // past the central directory, within the file
        expectLegacyRefusal(zip.build(), mentioning: "'archive/data/0'", "runs past")
    }

    @Test func legacyOverlappingEntriesAreRefused() {
        var zip = fourFloats()
        zip.entries[0].recordedSize = zip.entries[0].data.count + 40  // data.pkl now reaches into byteorder's header
        expectLegacyRefusal(zip.build(), mentioning: "overlap", "'archive/data.pkl'", "'archive/byteorder'")
    }

    @Test func legacyEntryCountBeyondTheDirectoryIsRefused() {
        var zip = legacyTorchArchive(pickle: oneTensor(shape: [4], stride: [1]))
        zip.recordedEntryCount = 60_000
        expectLegacyRefusal(zip.build(), mentioning: "cannot hold the 60000 entries")
    }

    @Test func legacyPreZipTorchFormatIsNamed() {
        expectLegacyRefusal([0x80, 0x02, 0x8A, 0x0A] + Array(repeating: 0, count: 40), mentioning: "pre-1.6")
    }

    @Test func legacyBigEndianIsRefused() {
        let zip = legacyTorchArchive(pickle: oneTensor(shape: [4], stride: [1]),
                                     storages: [("0", legacyFloat32Bytes([1, 2, 3, 4]))], byteOrder: "big")
        expectLegacyRefusal(zip.build(), mentioning: "'big'", "little-endian")
    }

    // MARK: Tensors against storages

    @Test func legacyStorageTooSmallForSizeAndStrideIsRefused() {
        expectLegacyRefusal(archive(oneTensor(shape: [3, 3], stride: [3, 1])),
                            mentioning: "reach past storage '0'", "16 bytes")
        expectLegacyRefusal(archive(oneTensor(offset: 3, shape: [2], stride: [1])), mentioning: "reach past")
        expectLegacyRefusal(archive(oneTensor(shape: [2, 2], stride: [1, 3])), mentioning: "reach past")
    }

    @Test func legacyNegativeStrideOrSizeIsRefused() {
        expectLegacyRefusal(archive(oneTensor(offset: 3, shape: [4], stride: [-1])), mentioning: "negative stride -1")
        expectLegacyRefusal(archive(oneTensor(shape: [-2, 2], stride: [2, 1])), mentioning: "negative size -2")
        expectLegacyRefusal(archive(oneTensor(offset: -1, shape: [2], stride: [1])), mentioning: "negative storage offset")
    }

    @Test func legacyOverflowingStridesAreRefused() {
        expectLegacyRefusal(archive(oneTensor(shape: [4, 2], stride: [Int.max / 2, 1])), mentioning: "overflow")
        expectLegacyRefusal(archive(oneTensor(shape: [1 << 40, 1 << 40], stride: [0, 0])), mentioning: "overflow")
        expectLegacyRefusal(archive(oneTensor(shape: [1 << 30, 8], stride: [0, 0])), mentioning: "repeats storage elements")
    }

    @Test func legacyStorageSizeMustMatchItsPersistentId() {
        expectLegacyRefusal(archive(oneTensor(count: 8, shape: [4], stride: [1])),
                      mentioning: "should hold 8 elements of F32", "16 bytes")
    }

    @Test func legacyMissingStorageEntryIsRefused() {
        let pickle = oneTensor(shape: [4], stride: [1])
        expectLegacyRefusal(legacyTorchArchive(pickle: pickle).build(), mentioning: "no entry 'archive/data/0'")
    }

    @Test func legacyStorageSharedWithTwoTypesIsRefused() {
        let pickle = LegacyPickleWriter.stateDict { writer in
            writer.string("a")
            writer.tensor(count: 4, shape: [4], stride: [1])
            writer.string("b")
            writer.tensor(storage: "IntStorage", count: 4, shape: [4], stride: [1])
        }
        expectLegacyRefusal(archive(pickle), mentioning: "storage '0'", "two different types")
    }
}
