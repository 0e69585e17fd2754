import Foundation
import SafeTensors
import Testing
@testable import PEFTKit

/// Files written by real `torch.save` / PEFT (`fixtures/legacy/make_legacy.py`), compared with the same tensors
/// saved as safetensors by the same script.
@Suite struct LegacyCheckpointTests {
    private func expectMatches(_ binName: String, expected expectedName: String) throws {
        let tensors = try LegacyCheckpoint.read(contentsOf: legacyFixtures.appendingPathComponent(binName))
        let expected = try LegacyExpectedTensors(contentsOf: legacyFixtures.appendingPathComponent(expectedName))
        #expect(tensors.map(\.name) == expected.order)
        for tensor in tensors {
            let want = try #require(expected.tensors[tensor.name], "unexpected tensor \(tensor.name)")
            #expect(tensor.dtype.rawValue == want.dtype, "\(tensor.name)")
            #expect(tensor.shape == want.shape, "\(tensor.name)")
            #expect(tensor.bytes == want.bytes, "\(tensor.name)")
        }
    }

    @Test func legacyAllStorageTypesMatchExpectedBytes() throws {
        // F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL, a scalar, an empty tensor, a transposed slice, two views of one
        // storage, a Parameter and a uint16 tensor (written with `_rebuild_tensor_v3`).
        try expectMatches("all_dtypes.bin", expected: "all_dtypes.expected.safetensors")
    }

    @Test func legacyModuleStateDictWithMetadataIsRead() throws {
        // `nn.Module.state_dict()` carries `_metadata`, which torch pickles with BUILD.
        try expectMatches("module_state_dict.bin", expected: "module_state_dict.expected.safetensors")
    }

    @Test func legacyPEFTAdapterBinMatchesItsSafetensorsTwin() throws {
        let tensors = try LegacyCheckpoint.read(
            contentsOf: legacyFixtures.appendingPathComponent("lora_tiny_bin/adapter_model.bin"))
        let twin = try LegacyExpectedTensors(
            contentsOf: legacyFixtures.appendingPathComponent("lora_tiny_safetensors/adapter_model.safetensors"))
        #expect(Set(tensors.map(\.name)) == Set(twin.tensors.keys))
        #expect(tensors.count == 4)
        for tensor in tensors {
            let want = try #require(twin.tensors[tensor.name])
            #expect(tensor.dtype.rawValue == want.dtype && tensor.shape == want.shape && tensor.bytes == want.bytes,
                    "\(tensor.name)")
        }
    }

    @Test func legacyStridedViewIsGatheredRowMajor() throws {
        // A 2×3 storage [0 1 2; 3 4 5] read as its transpose (3×2, strides 1, 3).
        let pickle = LegacyPickleWriter.stateDict { writer in
            writer.string("t")
            writer.tensor(count: 6, shape: [3, 2], stride: [1, 3])
        }
        let archive = legacyTorchArchive(pickle: pickle, storages: [("0", legacyFloat32Bytes([0, 1, 2, 3, 4, 5]))])
        let tensors = try readLegacy(archive.build())
        let transposed = legacyFloat32Bytes([0, 3, 1, 4, 2, 5])
        #expect(tensors == [LegacyTensor(name: "t", dtype: .f32, shape: [3, 2], bytes: transposed)])
    }

    @Test func legacyExpandedViewRepeatsElements() throws {
        // Stride 0 (what `expand` makes) repeats a storage element.
        let pickle = LegacyPickleWriter.stateDict { writer in
            writer.string("e")
            writer.tensor(count: 2, offset: 1, shape: [2, 3], stride: [0, 0])
        }
        let archive = legacyTorchArchive(pickle: pickle, storages: [("0", legacyFloat32Bytes([7, 9]))])
        let tensors = try readLegacy(archive.build())
        #expect(tensors.first?.bytes == legacyFloat32Bytes([9, 9, 9, 9, 9, 9]))
    }

    @Test func legacyZip64RecordsAreFollowed() throws {
        let pickle = LegacyPickleWriter.stateDict { writer in
            writer.string("w")
            writer.tensor(count: 2, shape: [2], stride: [1])
        }
        var archive = legacyTorchArchive(pickle: pickle, storages: [("0", legacyFloat32Bytes([1.5, -2]))])
        archive.zip64 = true
        let tensors = try readLegacy(archive.build())
        #expect(tensors == [LegacyTensor(name: "w", dtype: .f32, shape: [2], bytes: legacyFloat32Bytes([1.5, -2]))])
    }

    @Test func legacyMissingByteOrderMeansLittleEndian() throws {
        let pickle = LegacyPickleWriter.stateDict { writer in
            writer.string("w")
            writer.tensor(count: 1, shape: [], stride: [])
        }
        let archive = legacyTorchArchive(pickle: pickle, storages: [("0", legacyFloat32Bytes([4]))], byteOrder: nil)
        #expect(try readLegacy(archive.build()).first?.bytes == legacyFloat32Bytes([4]))
    }
}
