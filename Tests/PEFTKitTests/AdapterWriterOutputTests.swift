import Foundation
import SafeTensors
import Testing
@testable import PEFTKit

/// Where the writers put their output: never over an existing path without force, and nothing left behind on failure.
@Suite struct AdapterWriterOutputTests {
    /// An adapter whose second tensor declares more bytes than it holds, so a writer fails halfway through.
    private func adapterThatFailsToWrite() throws -> Adapter {
        let config = try StrictJSON.parse(Array(TinyLoRA.config.utf8), source: "tiny")
        let tensors = [
            StoredTensor(name: TinyLoRA.loraA.0, dtype: .f32, shape: TinyLoRA.loraA.2, bytes: TinyLoRA.loraA.3),
            StoredTensor(name: TinyLoRA.loraB.0, dtype: .f32, shape: TinyLoRA.loraB.2, bytes: [0, 0, 0]),
        ]
        return try PEFTKeys.adapter(config: try PEFTConfig.parse(config, source: "tiny"), tensors: tensors,
                                    source: "memory", format: PEFTFolderFormat.sourceFormat)
    }

    @Test func peftkitWriterRefusesAnExistingFileWithoutForce() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(try TinyLoRA.writePEFTFolder(in: scratch))
        let path = join(scratch, "out.safetensors")
        try Data("precious".utf8).write(to: URL(fileURLWithPath: path))
        let error = try #require(peftkitError { try PeftkitFormat.write(adapter, to: path, options: AdapterWriteOptions()) })
        #expect(error.kind == .io)
        #expect(error.message == "already exists" && error.remedy == .replaceExisting)
        #expect(fileBytes(path) == Array("precious".utf8))

        try PeftkitFormat.write(adapter, to: path, options: AdapterWriteOptions(force: true))
        #expect(try AdapterLoader.load(path).modules.count == 1)
        #expect(folderListing(scratch) == ["out.safetensors", "tiny-adapter"])
    }

    @Test func peftkitWriterRefusesAFolderEvenWithForce() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(try TinyLoRA.writePEFTFolder(in: scratch))
        let error = try #require(peftkitError {
            try PeftkitFormat.write(adapter, to: join(scratch, "tiny-adapter"), options: AdapterWriteOptions(force: true))
        })
        #expect(error.kind == .io)
        // Replacing was asked for already: there is no remedy to offer.
        #expect(error.message.hasPrefix("is a folder") && error.remedy == nil)
    }

    @Test func peftkitWriterLeavesNothingBehindOnFailure() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try adapterThatFailsToWrite()
        #expect(throws: (any Error).self) { try PeftkitFormat.write(adapter, to: join(scratch, "out.safetensors"), options: AdapterWriteOptions()) }
        #expect(folderListing(scratch) == [])

        // With force over an existing file, the old file survives a failed write.
        let existing = join(scratch, "old.safetensors")
        try Data("old".utf8).write(to: URL(fileURLWithPath: existing))
        #expect(throws: (any Error).self) { try PeftkitFormat.write(adapter, to: existing, options: AdapterWriteOptions(force: true)) }
        #expect(folderListing(scratch) == ["old.safetensors"])
        #expect(fileBytes(existing) == Array("old".utf8))
    }

    @Test func peftkitWriterRefusesAMalformedFingerprint() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(try TinyLoRA.writePEFTFolder(in: scratch))
        let error = try #require(peftkitError {
            try PeftkitFormat.write(adapter, to: join(scratch, "out.safetensors"), options: AdapterWriteOptions(baseFingerprint: "v1:not-hex"))
        })
        #expect(error.kind == .invalidConfig)
        #expect(folderListing(scratch) == ["tiny-adapter"])
    }

    @Test func folderWriterRefusesAnExistingFolderWithoutForce() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(try TinyLoRA.writePeftkitFile(in: scratch))
        let target = join(scratch, "out")
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: join(target, "notes.txt")))
        let error = try #require(peftkitError { try PEFTFolderFormat.write(adapter, to: target, options: AdapterWriteOptions()) })
        #expect(error.kind == .io)
        #expect(folderListing(target) == ["notes.txt"])

        try PEFTFolderFormat.write(adapter, to: target, options: AdapterWriteOptions(force: true))
        #expect(folderListing(target) == ["adapter_config.json", "adapter_model.safetensors"])
        #expect(try AdapterLoader.load(target).modules.map(\.path) == ["q"])
        #expect(folderListing(scratch) == ["out", "source-tiny.safetensors", "tiny.safetensors"])
    }

    @Test func folderWriterRefusesToReplaceAFileWithAFolder() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = try TinyLoRA.writePeftkitFile(in: scratch)
        let error = try #require(peftkitError { try PEFTFolderFormat.write(try AdapterLoader.load(path), to: path, options: AdapterWriteOptions(force: true)) })
        #expect(error.kind == .io)
        #expect(try AdapterLoader.load(path).modules.count == 1)
    }

    @Test func folderWriterLeavesNothingBehindOnFailure() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try adapterThatFailsToWrite()
        #expect(throws: (any Error).self) { try PEFTFolderFormat.write(adapter, to: join(scratch, "out"), options: AdapterWriteOptions()) }
        #expect(folderListing(scratch) == [])

        let existing = join(scratch, "old")
        try FileManager.default.createDirectory(atPath: existing, withIntermediateDirectories: false)
        try Data("old".utf8).write(to: URL(fileURLWithPath: join(existing, "adapter_config.json")))
        #expect(throws: (any Error).self) { try PEFTFolderFormat.write(adapter, to: existing, options: AdapterWriteOptions(force: true)) }
        #expect(folderListing(scratch) == ["old"])
        #expect(fileBytes(join(existing, "adapter_config.json")) == Array("old".utf8))
    }

    @Test func writersRefuseAMissingParentFolder() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(try TinyLoRA.writePEFTFolder(in: scratch))
        #expect(peftkitError { try PEFTFolderFormat.write(adapter, to: join(scratch, "no", "out"), options: AdapterWriteOptions()) }?.kind == .io)
        #expect(peftkitError { try PeftkitFormat.write(adapter, to: join(scratch, "no", "a.safetensors"), options: AdapterWriteOptions()) }?.kind == .io)
    }
}
