import Testing
@testable import PEFTKit

@Test func errorDescriptionNamesFileAndTensor() {
    let error = PEFTKitError(.baseMismatch, file: "base/model.safetensors", tensor: "q_proj", "shape differs")
    #expect(error.errorDescription == "base/model.safetensors: 'q_proj': shape differs")
}
