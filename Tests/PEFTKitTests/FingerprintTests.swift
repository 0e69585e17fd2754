import Foundation
import SafeTensors
import Testing
@testable import PEFTKit

@Suite struct FingerprintTests {
    private func tinyAdapter(_ scratch: String) throws -> Adapter {
        try AdapterLoader.load(try TinyLoRA.writePEFTFolder(in: scratch))
    }

    @Test func matchesTheSpecDefinitionComputedIndependently() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let base = try Checkpoint(path: try TinyLoRA.writeBase(in: scratch))
        // The spec's canonical text, built here with a bitwise CRC: one line per covered tensor.
        let crc = CRC32.hex(legacyCRC32(float32Bytes([1, 2, 3, 4])))
        let canonical = "8:q.weight F32 [2,2] \(crc)\n"
        let expected = "v1:" + CRC32.hex(legacyCRC32(Array(canonical.utf8)))
        #expect(try BaseFingerprint.compute(adapter: try tinyAdapter(scratch), base: base) == expected)
    }

    @Test func sameBaseGivesTheSameFingerprint() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try tinyAdapter(scratch)
        let first = try BaseFingerprint.compute(adapter: adapter, base: try Checkpoint(path: try TinyLoRA.writeBase(in: scratch, name: "a.safetensors")))
        let second = try BaseFingerprint.compute(adapter: adapter, base: try Checkpoint(path: try TinyLoRA.writeBase(in: scratch, name: "b.safetensors")))
        #expect(first == second)
        #expect(first.hasPrefix("v1:") && first.count == 11)
    }

    @Test func oneChangedByteInATargetedTensorChangesIt() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try tinyAdapter(scratch)
        let original = try BaseFingerprint.compute(adapter: adapter, base: try Checkpoint(path: try TinyLoRA.writeBase(in: scratch)))
        let changed = try BaseFingerprint.compute(
            adapter: adapter, base: try Checkpoint(path: try TinyLoRA.writeBase(in: scratch, name: "q.safetensors", flipping: "q.weight")))
        #expect(original != changed)
    }

    @Test func aChangeInAnUntargetedTensorDoesNotChangeIt() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let adapter = try tinyAdapter(scratch)
        let original = try BaseFingerprint.compute(adapter: adapter, base: try Checkpoint(path: try TinyLoRA.writeBase(in: scratch)))
        let changed = try BaseFingerprint.compute(
            adapter: adapter, base: try Checkpoint(path: try TinyLoRA.writeBase(in: scratch, name: "k.safetensors", flipping: "k.weight")))
        #expect(original == changed)
    }

    @Test func aBaseWithoutATargetedTensorIsAMismatchNamingIt() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let base = try Checkpoint(path: try TinyLoRA.writeBase(in: scratch, omitting: "q.weight"))
        let error = try #require(peftkitError { _ = try BaseFingerprint.compute(adapter: try tinyAdapter(scratch), base: base) })
        #expect(error.kind == .baseMismatch)
        #expect(error.tensor == "q.weight")
    }

    @Test func verifyAcceptsTheRightBaseAndRefusesAnother() throws {
        let scratch = scratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let right = try Checkpoint(path: try TinyLoRA.writeBase(in: scratch))
        let wrong = try Checkpoint(path: try TinyLoRA.writeBase(in: scratch, name: "wrong.safetensors", flipping: "q.weight"))
        let fingerprint = try BaseFingerprint.compute(adapter: try tinyAdapter(scratch), base: right)
        let adapter = try AdapterLoader.load(try TinyLoRA.writePeftkitFile(in: scratch, fingerprint: fingerprint))
        #expect(adapter.base.fingerprint == fingerprint)
        #expect(try BaseFingerprint.verify(adapter: adapter, base: right) == .matches(fingerprint))
        let error = try #require(peftkitError { try BaseFingerprint.verify(adapter: adapter, base: wrong) })
        #expect(error.kind == .baseMismatch)
        #expect(error.message.contains(fingerprint))

        let unfingerprinted = try AdapterLoader.load(try TinyLoRA.writePeftkitFile(in: scratch, name: "plain.safetensors"))
        #expect(try BaseFingerprint.verify(adapter: unfingerprinted, base: wrong) == .absent)
    }

    @Test func coversBiasesAndCarriedTensorsOnceEach() throws {
        for caseName in ["lora-bias-opt-f32", "lora-embed-mts-llama-bf16"] where fixtureAdapterCases.contains(caseName) {
            let adapter = try AdapterLoader.load(caseFixtures.appendingPathComponent("\(caseName)/adapter").path)
            let names = BaseFingerprint.tensorNames(of: adapter)
            #expect(Set(names).count == names.count)
            #expect(names == names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) })
            for module in adapter.modules {
                #expect(names.contains(module.weightName))
                #expect(names.contains(module.biasName) == (module.tensors[LoRA.bias] != nil))
            }
            for carried in adapter.carried { #expect(names.contains(carried.baseName)) }
        }
    }

    @Test(arguments: fixtureCasesWithBase)
    func fixtureBaseFingerprintIsStable(caseName: String) throws {
        let folder = caseFixtures.appendingPathComponent(caseName)
        let adapter = try AdapterLoader.load(folder.appendingPathComponent("adapter").path)
        let base = try Checkpoint(path: folder.appendingPathComponent("base").path)
        let first = try BaseFingerprint.compute(adapter: adapter, base: base)
        #expect(try BaseFingerprint.compute(adapter: adapter, base: try Checkpoint(path: base.path)) == first)
        #expect(BaseFingerprint.isWellFormed(first))
    }
}
