import Testing
@testable import PEFTKit

@Test func errorDescriptionNamesFileAndTensor() {
    let error = PEFTKitError(.baseMismatch, file: "base/model.safetensors", tensor: "q_proj", "shape differs")
    #expect(error.errorDescription == "base/model.safetensors: 'q_proj': shape differs")
}

/// Apps see the remedy in words that fit any front end; flags are the CLI's to add.
@Test func errorDescriptionStatesTheRemedyWithoutFlags() {
    let exists = PEFTKitError(.io, file: "out", "already exists", remedy: .replaceExisting)
    #expect(exists.message == "already exists")
    #expect(exists.errorDescription == "out: already exists (replacing it must be asked for)")
    let nonFinite = PEFTKitError(.numerics, tensor: "w", "merged value is nan", details: ["row 0"], remedy: .allowNonFinite)
    #expect(nonFinite.errorDescription == "'w': merged value is nan (non-finite values must be allowed to write it anyway)\n  - row 0")
    #expect(PEFTKitError(.io, "x").remedy == nil)
}
