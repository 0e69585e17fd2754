import Foundation
import GGUF
import SafeTensors

/// Checks peftkit's GGUF conversions offline against the references fixtures/check_clients.py saved from the real
/// clients (manifest `format: peftkit-gguf-fixture`, fixtures/README.md):
///
/// 1. written: the PEFT adapter converted by peftkit holds exactly the tensors (names, types, dimensions, bytes) and
///    LoRA keys of llama.cpp's own converter's GGUF where that converter is right, and of peftkit's GGUF that
///    llama.cpp was run with otherwise;
/// 2. read: each GGUF read back (llama.cpp's, peftkit's) gives PEFT's A bit for bit and s·B within one float32
///    rounding of PEFT's (0 where no scale was folded).
enum GGUFFixtureVerifier {
    static let format = "peftkit-gguf-fixture"

    /// The checks of `caseFolder` when its manifest is a GGUF fixture's; nil otherwise.
    static func verifyIfGGUF(caseFolder: String) throws -> [VerificationCheck]? {
        let file = { (name: String) in (caseFolder as NSString).appendingPathComponent(name) }
        let manifestPath = file(FixtureVerifier.manifestName)
        let json = try AdapterLoader.readJSON(manifestPath)
        guard json["format"]?.stringValue == format else { return nil }
        func field(_ key: String) throws -> String {
            guard let value = json[key]?.stringValue else {
                throw PEFTKitError(.invalidConfig, file: manifestPath, "missing or malformed '\(key)'")
            }
            return value
        }
        let name = try field("case"), basePath = file(try field("base")), outtype = try field("outtype")
        let adapter = try AdapterLoader.load(file(try field("adapter")))
        let base = try GGUFFormat.Base(path: basePath)
        let references = ["llama_cpp_gguf", "peftkit_gguf"].compactMap { key in json[key]?.stringValue.map { (key, $0) } }
        guard !references.isEmpty else {
            throw PEFTKitError(.invalidConfig, file: manifestPath, "names neither 'llama_cpp_gguf' nor 'peftkit_gguf'")
        }
        func row(_ check: String, _ maxError: Double, _ measure: Double, _ tolerance: Double, _ unit: String, _ worst: String?) -> VerificationCheck {
            VerificationCheck(caseName: name, method: "lora/gguf", dtype: outtype.uppercased(), check: check,
                              maxAbsoluteError: maxError, measure: measure, tolerance: tolerance, unit: unit, worst: worst)
        }
        var checks: [VerificationCheck] = []
        let written = try GGUFFile(bytes: GGUFFormat.serialize(adapter, base: base, outputType: outtype, path: "peftkit"),
                                   name: "peftkit's GGUF")
        for (key, reference) in references {
            let label = key == "llama_cpp_gguf" ? "llama.cpp's" : "checked"
            let expected = try GGUFFile(path: file(reference))
            var differing: [String] = []
            var maxError = 0.0
            let names = Set(expected.tensors.map(\.name)).union(written.tensors.map(\.name)).sorted()
            for tensorName in names {
                guard let e = expected.tensor(tensorName), let w = written.tensor(tensorName),
                      e.type == w.type, e.dimensions == w.dimensions else {
                    differing.append(tensorName)
                    maxError = .infinity
                    continue
                }
                let eb = try expected.bytes(of: e), wb = try written.bytes(of: w)
                if eb != wb {
                    differing.append(tensorName)
                    maxError = max(maxError, try maxDifference(eb, wb, e))
                }
            }
            for key in ["general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"]
            where expected.value(key) != written.value(key) {
                differing.append(key)
                maxError = .infinity
            }
            checks.append(row("written = \(label) GGUF", maxError, Double(differing.count), 0, "differing", differing.first))
            checks.append(try readBack(file(reference), base: basePath, original: adapter, outtype: outtype, label: label, row: row))
        }
        return checks
    }

    /// The largest |difference| of two encodings of one tensor, decoded.
    static func maxDifference(_ a: [UInt8], _ b: [UInt8], _ info: GGUFTensorInfo) throws -> Double {
        let x = try decode(a, info), y = try decode(b, info)
        return zip(x, y).reduce(0.0) { max($0, Double(abs($1.0 - $1.1))) }
    }

    static func decode(_ bytes: [UInt8], _ info: GGUFTensorInfo) throws -> [Float] {
        switch info.type {
        case .q8_0: return Q8_0.dequantize(bytes, count: info.elementCount)
        case .f32, .f16, .bf16:
            let dtype: DType = info.type == .f32 ? .f32 : info.type == .f16 ? .f16 : .bf16
            return bytes.withUnsafeBytes { Codec.decode($0, as: dtype, count: info.elementCount) }
        default:
            throw PEFTKitError(.unsupported, tensor: info.name, "cannot decode \(info.type.name)")
        }
    }

    /// The GGUF read back against the original adapter: for f32, A equal and s·B within a float32 rounding of the
    /// scale folded into it (in ulps of the largest |s·B|); for a lossy type, A and s·B within one rounding step of
    /// that type at the tensor's largest magnitude (Q8_0: one step max/127, the F16 fallback included).
    static func readBack(_ path: String, base: String, original: Adapter, outtype: String, label: String,
                         row: (String, Double, Double, Double, String, String?) -> VerificationCheck) throws -> VerificationCheck {
        let read = try GGUFFormat.read(path, base: base)
        var maxError = 0.0, worstULP = 0.0
        var worst: String?
        let step = switch outtype {
        // A Q8_0 value is off by at most half a step d = max|x|/127 plus 127 · d's own f16 rounding (2⁻¹¹):
        // under one step of the tensor's largest block (the F16 fallback is far closer).
        case "q8_0": 1.0 / 127
        case "f16": 0x1p-11
        case "bf16": 0x1p-8
        default: 0x1p-24
        }
        let unit = outtype == "f32" ? "ulp" : "steps"
        guard read.modules.map(\.path) == original.modules.map(\.path) else {
            return row("read \(label) GGUF", .infinity, .infinity, 1, unit, "modules differ")
        }
        for (back, module) in zip(read.modules, original.modules) {
            let (a0, b0) = GGUFFormat.pair(module), (a1, b1) = GGUFFormat.pair(back)
            let x0 = try a0.floats(), x1 = try a1.floats()
            let y0 = try b0.floats().map { Double($0) * module.scaling }, y1 = try b1.floats().map { Double($0) * back.scaling }
            guard a0.shape == a1.shape, b0.shape == b1.shape else {
                return row("read \(label) GGUF", .infinity, .infinity, 1, unit, module.path)
            }
            let aError = zip(x0, x1).reduce(0.0) { max($0, Double(abs($1.0 - $1.1))) }
            let bError = zip(y0, y1).reduce(0.0) { max($0, abs($1.0 - $1.1)) }
            let scale = y0.reduce(0.0) { max($0, abs($1)) }, aScale = x0.reduce(0.0) { max($0, Double(abs($1))) }
            let aMeasure = outtype == "f32" ? (aError == 0 ? 0 : .infinity) : (aScale == 0 ? 0 : aError / (aScale * step))
            let ulp = max(aMeasure, scale == 0 ? 0 : bError / (scale * step))
            maxError = max(maxError, max(aError, bError))
            if ulp >= worstULP {
                worstULP = ulp
                worst = module.path
            }
        }
        return row("read \(label) GGUF", maxError, worstULP, 1, unit, worst)
    }
}
