import Foundation
import SafeTensors
import Testing
@testable import PEFTKit

/// Every tensor of two safetensors files (read with Foundation only), compared by name, dtype, shape and bytes.
func expectSameTensors(_ actualPath: String, _ expectedPath: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let actual = try LegacyExpectedTensors(contentsOf: URL(fileURLWithPath: actualPath))
    let expected = try LegacyExpectedTensors(contentsOf: URL(fileURLWithPath: expectedPath))
    #expect(actual.tensors.keys.sorted() == expected.tensors.keys.sorted(), sourceLocation: sourceLocation)
    for (name, want) in expected.tensors {
        guard let got = actual.tensors[name] else { continue }
        #expect(got.dtype == want.dtype && got.shape == want.shape && got.bytes == want.bytes,
                "tensor \(name) differs", sourceLocation: sourceLocation)
    }
}

@Suite struct PeftkitRoundTripTests {
    /// PEFT → peftkit → PEFT for one PEFT folder: every tensor and the config come back, byte for byte.
    private func roundTrip(_ original: String) throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(original)
        let peftkitPath = join(scratch, "adapter.safetensors")
        try PeftkitFormat.write(adapter, to: peftkitPath, options: AdapterWriteOptions())

        let reread = try AdapterLoader.load(peftkitPath)
        #expect(reread.format.id == PeftkitFormat.id && reread.format.version == "1.0")
        #expect(reread.base == BaseIdentity(nameOrPath: adapter.base.nameOrPath, fingerprint: nil))
        #expect(reread.modules.map { ModuleRecord($0, method: reread.method).json }
                == adapter.modules.map { ModuleRecord($0, method: adapter.method).json })
        #expect(reread.carried.map(CarriedRecord.init) == adapter.carried.map(CarriedRecord.init))
        // The peftkit file holds PEFT's own tensors under PEFT's own names.
        try expectSameTensors(peftkitPath, join(original, "adapter_model.safetensors"))

        let folder = join(scratch, "peft")
        try PEFTFolderFormat.write(reread, to: folder, options: AdapterWriteOptions())
        #expect(folderListing(folder) == ["adapter_config.json", "adapter_model.safetensors"])
        try expectSameTensors(join(folder, "adapter_model.safetensors"), join(original, "adapter_model.safetensors"))
        #expect(try strictJSON(join(folder, "adapter_config.json")) == strictJSON(join(original, "adapter_config.json")))
        // Stronger than required: PEFT's own layout comes back exactly.
        #expect(fileBytes(join(folder, "adapter_config.json")) == fileBytes(join(original, "adapter_config.json")))
        #expect(fileBytes(join(folder, "adapter_model.safetensors")) == fileBytes(join(original, "adapter_model.safetensors")))
    }

    @Test(arguments: fixtureAdapterCases)
    func fixtureRoundTripKeepsEveryTensorAndTheConfig(caseName: String) throws {
        try roundTrip(caseFixtures.appendingPathComponent(caseName).appendingPathComponent("adapter").path)
    }

    @Test func legacyFixtureAdapterRoundTrips() throws {
        try roundTrip(legacyFixtures.appendingPathComponent("lora_tiny_safetensors").path)
    }

    @Test func tinyAdapterRoundTrips() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try roundTrip(try TinyLoRA.writePEFTFolder(in: scratch))
    }

    /// A temporary file left by a killed conversion to the same path is removed; one a live process is writing is not.
    @Test func writingClearsWhatAKilledRunLeft() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(try TinyLoRA.writePEFTFolder(in: scratch))
        let stale = join(scratch, ".peftkit-tmp-tiny.safetensors-99999999-1a2b3c")  // no process has this pid
        let live = join(scratch, ".peftkit-tmp-tiny.safetensors-\(getpid())-4d5e6f")
        for path in [stale, live] { #expect(FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3]))) }
        try PeftkitFormat.write(adapter, to: join(scratch, "tiny.safetensors"), options: AdapterWriteOptions())
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(FileManager.default.fileExists(atPath: live))
    }

    /// A legacy `adapter_model.bin` converts to the same tensors as the `adapter_model.safetensors` PEFT wrote for it.
    private func legacyConverts(_ binFolder: String, twin: String) throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(binFolder)
        #expect(adapter.format.id == PEFTLegacyBinFormat.id)
        let peftkitPath = join(scratch, "from-bin.safetensors")
        try PeftkitFormat.write(adapter, to: peftkitPath, options: AdapterWriteOptions())
        #expect(try SafeTensorsFile(path: peftkitPath).header.metadataValue(PeftkitFormat.sourceFormatKey) == "peft-bin")
        try expectSameTensors(peftkitPath, join(twin, "adapter_model.safetensors"))
        let folder = join(scratch, "peft")
        try PEFTFolderFormat.write(try AdapterLoader.load(peftkitPath), to: folder, options: AdapterWriteOptions())
        try expectSameTensors(join(folder, "adapter_model.safetensors"), join(twin, "adapter_model.safetensors"))
        #expect(try strictJSON(join(folder, "adapter_config.json")) == strictJSON(join(twin, "adapter_config.json")))
    }

    @Test func legacyBinConvertsToTheSameTensorsAsItsSafetensorsTwin() throws {
        try legacyConverts(legacyFixtures.appendingPathComponent("lora_tiny_bin").path,
                           twin: legacyFixtures.appendingPathComponent("lora_tiny_safetensors").path)
    }

    @Test(arguments: fixtureAdapterCases.filter {
        FileManager.default.fileExists(atPath: caseFixtures.appendingPathComponent("\($0)/adapter_bin/adapter_model.bin").path)
    })
    func fixtureAdapterBinConvertsLikeItsTwin(caseName: String) throws {
        let folder = caseFixtures.appendingPathComponent(caseName)
        try legacyConverts(folder.appendingPathComponent("adapter_bin").path, twin: folder.appendingPathComponent("adapter").path)
    }

    @Test func peftkitToPeftkitKeepsTheFingerprintWhenAskedTo() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let first = try TinyLoRA.writePeftkitFile(in: scratch, fingerprint: "v1:0123abcd")
        let adapter = try AdapterLoader.load(first)
        #expect(adapter.base.fingerprint == "v1:0123abcd")
        let second = join(scratch, "again.safetensors")
        try PeftkitFormat.write(adapter, to: second, options: AdapterWriteOptions(baseFingerprint: adapter.base.fingerprint))
        let again = try AdapterLoader.load(second)
        #expect(again.base.fingerprint == "v1:0123abcd")
        #expect(try SafeTensorsFile(path: second).header.metadataValue(PeftkitFormat.sourceFormatKey) == "peftkit")
    }
}

@Suite struct PeftkitMetadataTests {
    @Test func tinyFileHasTheSpecifiedMetadata() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = try TinyLoRA.writePeftkitFile(in: scratch, fingerprint: "v1:89abcdef")
        let file = try SafeTensorsFile(path: path)
        let metadata = try #require(file.metadata)
        #expect(metadata.map(\.key) == ["format", "peftkit.format", "peftkit.version", "peftkit.method", "peftkit.variant",
                                        "peftkit.source_format", "peftkit.base_model", "peftkit.base_fingerprint",
                                        "peftkit.modules", "peftkit.carried", "peftkit.crc32", "peftkit.peft_config"])
        let value = { (key: String) in file.header.metadataValue(key) }
        #expect(value("format") == "pt")
        #expect(value("peftkit.format") == "peftkit-adapter")
        #expect(value("peftkit.version") == "1.0")
        #expect(value("peftkit.method") == "lora")
        #expect(value("peftkit.variant") == "default")
        #expect(value("peftkit.source_format") == "peft-safetensors")
        #expect(value("peftkit.base_model") == "tiny-base")
        #expect(value("peftkit.base_fingerprint") == "v1:89abcdef")
        #expect(value("peftkit.modules") == #"{"q":{"kind":"linear","rank":1,"alpha":2.0,"scaling":2.0,"fan_in_fan_out":false,"#
                + #""tensors":{"lora_A.weight":"base_model.model.q.lora_A.weight","lora_B.weight":"base_model.model.q.lora_B.weight"}}}"#)
        #expect(value("peftkit.carried") == "{}")
        let crcA = CRC32.hex(legacyCRC32(float32Bytes([0.5, -1])))
        let crcB = CRC32.hex(legacyCRC32(float32Bytes([2, 0.25])))
        #expect(value("peftkit.crc32") == #"{"base_model.model.q.lora_A.weight":"\#(crcA)","#
                + #""base_model.model.q.lora_B.weight":"\#(crcB)"}"#)
        #expect(value("peftkit.peft_config")
                == #"{"base_model_name_or_path":"tiny-base","lora_alpha":2,"peft_type":"LORA","r":1,"target_modules":["q"]}"#)
    }

    @Test(arguments: fixtureAdapterCases)
    func fixtureMetadataRecordsTheResolvedParameters(caseName: String) throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(caseFixtures.appendingPathComponent("\(caseName)/adapter").path)
        let path = join(scratch, "a.safetensors")
        try PeftkitFormat.write(adapter, to: path, options: AdapterWriteOptions())
        let file = try SafeTensorsFile(path: path)
        #expect(file.header.metadataValue(PeftkitFormat.baseFingerprintKey) == nil)
        let modules = try StrictJSON.parse(Array(try #require(file.header.metadataValue(PeftkitFormat.modulesKey)).utf8), source: "m")
        let entries = try #require(modules.objectValue)
        #expect(entries.map(\.key) == adapter.modules.map(\.path))
        for module in adapter.modules {
            let entry = try #require(modules[module.path])
            #expect(entry["rank"]?.integerValue == Int64(module.rank))
            // LoRA, LoHa and LoKr scale their change by alpha / r; the others record neither.
            if adapter.method is LoRA || adapter.method is LoHa || adapter.method is LoKr {
                #expect(entry["scaling"]?.doubleValue == module.scaling)
                #expect(entry["alpha"]?.doubleValue == module.alpha)
            } else {
                #expect(entry["scaling"] == nil && entry["alpha"] == nil)
            }
            #expect(entry["mini_rank"]?.integerValue.map(Int.init) == (adapter.variant == "mini" ? (adapter.method as? MiSS)?.miniRank : nil))
        }
    }

    @Test(.enabled(if: fixtureAdapterCases.contains("lora-rslora-patterns-llama-bf16"), "needs its fixture"))
    func patternsAndRSLoRAAreResolvedPerModule() throws {
        let caseName = "lora-rslora-patterns-llama-bf16"
        let adapter = try AdapterLoader.load(caseFixtures.appendingPathComponent("\(caseName)/adapter").path)
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = join(scratch, "a.safetensors")
        try PeftkitFormat.write(adapter, to: path, options: AdapterWriteOptions())
        let modules = try StrictJSON.parse(Array(try #require(try SafeTensorsFile(path: path)
            .header.metadataValue(PeftkitFormat.modulesKey)).utf8), source: "m")
        // rank_pattern {"q_proj": 4, "layers.1.mlp.down_proj": 2}, alpha_pattern {"v_proj": 7}, lora_alpha 16, r 8.
        let q = try #require(modules["model.layers.0.self_attn.q_proj"])
        #expect(q["rank"]?.integerValue == 4 && q["scaling"]?.doubleValue == 16 / Double(4).squareRoot())
        let v = try #require(modules["model.layers.0.self_attn.v_proj"])
        #expect(v["rank"]?.integerValue == 8 && v["alpha"]?.doubleValue == 7 && v["scaling"]?.doubleValue == 7 / Double(8).squareRoot())
        #expect(modules["model.layers.1.mlp.down_proj"]?["rank"]?.integerValue == 2)
        #expect(modules["model.layers.0.mlp.down_proj"]?["rank"]?.integerValue == 8)
    }
}

@Suite struct PeftkitReaderRefusalTests {
    /// A tiny peftkit file, then a copy of it with edited metadata.
    private func edited(_ edit: (inout [(key: String, value: String)]) -> Void) throws -> (scratch: String, path: String) {
        let scratch = scratchFolder()
        let original = try TinyLoRA.writePeftkitFile(in: scratch)
        let path = join(scratch, "edited.safetensors")
        try rewriteMetadata(of: original, to: path, edit)
        return (scratch, path)
    }

    private func readError(_ edit: (inout [(key: String, value: String)]) -> Void,
                           sourceLocation: SourceLocation = #_sourceLocation) throws -> PEFTKitError? {
        let (scratch, path) = try edited(edit)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        return peftkitError({ _ = try AdapterLoader.load(path) }, sourceLocation: sourceLocation)
    }

    @Test func flippedDataByteIsRefusedAsCorruptNamingTheTensor() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = try TinyLoRA.writePeftkitFile(in: scratch)
        var bytes = fileBytes(path)
        bytes[bytes.count - 1] ^= 0x40  // the last byte of the data buffer
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let file = try SafeTensorsFile(path: path)  // still a valid safetensors file
        let lastTensor = try #require(file.tensors.last).name
        let error = try #require(peftkitError { _ = try PeftkitFormat.read(file) })
        #expect(error.kind == .corrupted)
        #expect(error.tensor == lastTensor)
        #expect(error.errorDescription?.contains("CRC-32") == true)
    }

    @Test func unknownMajorVersionIsRefusedNamingIt() throws {
        let error = try #require(try readError { setMetadata(&$0, "peftkit.version", "2.0") })
        #expect(error.kind == .unsupported)
        #expect(error.message.contains("2.0"))
        #expect(error.message.contains("1.x"))
    }

    @Test func laterMinorVersionAndUnknownKeysAreAccepted() throws {
        let (scratch, path) = try edited {
            setMetadata(&$0, "peftkit.version", "1.7")
            setMetadata(&$0, "peftkit.some_future_key", "{\"anything\": [1, 2]}")
            // Unknown fields inside a known key's JSON are ignored too.
            setMetadata(&$0, "peftkit.modules", $0.first { $0.key == "peftkit.modules" }!.value
                .replacingOccurrences(of: #""kind":"linear","#, with: #""kind":"linear","added_in_1_7":true,"#))
        }
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try AdapterLoader.load(path)
        #expect(adapter.format.id == PeftkitFormat.id && adapter.format.version == "1.7")
        #expect(adapter.modules.map(\.path) == ["q"])
    }

    @Test(arguments: ["1", "1.0.0", "01.0", "1.-1", "one.zero", ""])
    func malformedVersionIsRefused(version: String) throws {
        let error = try #require(try readError { setMetadata(&$0, "peftkit.version", version) })
        #expect(error.kind == .invalidConfig)
        #expect(error.message.contains("peftkit.version"))
    }

    @Test func wrongFormatNameIsRefused() throws {
        let error = try #require(try readError { setMetadata(&$0, "peftkit.format", "something-else") })
        #expect(error.kind == .invalidConfig)
    }

    @Test func missingModulesIsRefused() throws {
        let error = try #require(try readError { setMetadata(&$0, "peftkit.modules", nil) })
        #expect(error.kind == .invalidConfig)
        #expect(error.message.contains("peftkit.modules"))
    }

    @Test(arguments: [#"{"q": {"kind": "linear""#, "[]", #"{"q": 3}"#, #"{"q": {"kind": "conv", "rank": 1}}"#,
                      #"{"q": {"kind": "linear", "rank": 1, "alpha": 2, "scaling": 2, "fan_in_fan_out": false}}"#])
    func garbledModulesIsRefused(modules: String) throws {
        let error = try #require(try readError { setMetadata(&$0, "peftkit.modules", modules) })
        #expect(error.kind == .invalidConfig)
        #expect(error.errorDescription?.contains("peftkit.modules") == true)
    }

    @Test func modulesThatDisagreeWithTheConfigAreRefused() throws {
        let error = try #require(try readError {
            setMetadata(&$0, "peftkit.modules", $0.first { $0.key == "peftkit.modules" }!.value
                .replacingOccurrences(of: #""scaling":2.0"#, with: #""scaling":4.0"#))
        })
        #expect(error.kind == .inconsistentAdapter)
        #expect(error.details.contains { $0.contains("scaling") && $0.contains("4.0") && $0.contains("2.0") })
    }

    @Test func aModuleMissingFromTheMetadataIsRefused() throws {
        let error = try #require(try readError { setMetadata(&$0, "peftkit.modules", "{}") })
        #expect(error.kind == .inconsistentAdapter)
        #expect(error.details.contains { $0.contains("'q'") })
    }

    @Test func methodThatDisagreesWithTheConfigIsRefused() throws {
        let error = try #require(try readError { setMetadata(&$0, "peftkit.method", "bone") })
        #expect(error.kind == .inconsistentAdapter)
    }

    @Test func missingOrMalformedChecksumsAreRefused() throws {
        let missing = try #require(try readError { setMetadata(&$0, "peftkit.crc32", nil) })
        #expect(missing.kind == .invalidConfig)
        let partial = try #require(try readError {
            setMetadata(&$0, "peftkit.crc32", #"{"base_model.model.q.lora_A.weight":"00000000"}"#)
        })
        #expect(partial.kind == .invalidConfig || partial.kind == .corrupted)
        let uppercase = try #require(try readError {
            setMetadata(&$0, "peftkit.crc32", $0.first { $0.key == "peftkit.crc32" }!.value.uppercased())
        })
        #expect(uppercase.kind == .invalidConfig)
    }

    @Test func garbledPEFTConfigIsRefused() throws {
        let error = try #require(try readError { setMetadata(&$0, "peftkit.peft_config", "{\"peft_type\": \"LORA\",}") })
        #expect(error.kind == .invalidConfig)
        #expect(error.message.contains("peftkit.peft_config"))
    }

    @Test func malformedFingerprintIsRefused() throws {
        let error = try #require(try readError { setMetadata(&$0, "peftkit.base_fingerprint", "v1:xyz") })
        #expect(error.kind == .invalidConfig)
    }

    @Test func fingerprintOfAnotherSchemeIsKept() throws {
        let (scratch, path) = try edited { setMetadata(&$0, "peftkit.base_fingerprint", "v9:whatever-it-is") }
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        #expect(try AdapterLoader.load(path).base.fingerprint == "v9:whatever-it-is")
    }

    @Test func plainSafetensorsFileIsNotTakenForAnAdapter() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let base = try TinyLoRA.writeBase(in: scratch)
        #expect(!AdapterLoader.looksLikeAdapter(base))
        let error = try #require(peftkitError { _ = try AdapterLoader.load(base) })
        #expect(error.kind == .invalidConfig)
        let peftkit = try TinyLoRA.writePeftkitFile(in: scratch)
        #expect(AdapterLoader.looksLikeAdapter(peftkit))
    }
}
