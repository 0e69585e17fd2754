import SafeTensors

extension Comparison {
    /// Compares the named tensors of two checkpoints (e.g. an unmerged model against the true base), with the
    /// tolerance policy's magnitude rule.
    public static func compareCheckpoints(_ actualPath: String, against referencePath: String,
                                          tensors names: [String]) throws -> [TensorComparison] {
        let actual = try Checkpoint(path: actualPath), reference = try Checkpoint(path: referencePath)
        return try names.map { name in
            guard let want = reference.location(of: name) else {
                throw PEFTKitError(.baseMismatch, file: referencePath, tensor: name, "not in this checkpoint")
            }
            let got = try actual.view(name)
            guard got.info.dtype == want.info.dtype, got.info.shape == want.info.shape, want.info.dtype.isArithmetic else {
                throw PEFTKitError(.baseMismatch, file: referencePath, tensor: name,
                                   "is \(want.info.dtype.rawValue) \(want.info.shape), the result \(got.info.dtype.rawValue) \(got.info.shape)")
            }
            let expected = try want.file.view(want.info)
            return Comparison.compare(name: name, dtype: want.info.dtype, count: want.info.elementCount,
                                      actual: got.bytes, expected: expected.bytes,
                                      floorAtTensorMaximum: Comparison.floorsAtTensorMaximum(want.info.dtype))
        }
    }}
