import Foundation
import SafeTensors

/// How one tensor differs between two checkpoints.
public struct TensorDifference: Sendable {
    public enum Status: String, Sendable {
        case identical
        case changed
        /// Header-level differences, found without reading data.
        case onlyInA = "only_in_a"
        case onlyInB = "only_in_b"
        case dtypeDiffers = "dtype_differs"
        case shapeDiffers = "shape_differs"
    }

    public let name: String
    public let status: Status
    public let dtypeA: DType?
    public let dtypeB: DType?
    public let shapeA: [Int]?
    public let shapeB: [Int]?
    /// Compared tensors only (nil otherwise).
    public let maxAbsoluteDelta: Double?
    /// ‖B − A‖ / ‖A‖ (Frobenius); ∞ when A is zero and B is not.
    public let relativeChange: Double?
    /// Largest distance in representable values of the dtype.
    public let maxULP: Int?
    public let differingElements: Int?
    /// Σ(B − A)² and ΣA², kept to sum over a layer or module kind.
    public let deltaSquares: Double
    public let aSquares: Double
    public let layer: Int?
    public let kind: String

    public var changed: Bool { status != .identical }
}

/// Tensors grouped by layer and module kind (`model.layers.3.self_attn.q_proj.weight` → layer 3, kind `q_proj`).
public struct DifferenceGroup: Sendable {
    /// nil for tensors outside the numbered layers (embeddings, final norm, head).
    public let layer: Int?
    public let kind: String
    public let tensors: [String]
    public let changed: Int
    public let maxAbsoluteDelta: Double
    /// ‖Δ‖ / ‖A‖ over the group's compared tensors.
    public let relativeChange: Double
}

public struct CheckpointDiff: Sendable {
    public let a: String
    public let b: String
    public let tensors: [TensorDifference]

    public var changedCount: Int { tensors.filter(\.changed).count }
    public var headerDifferences: [TensorDifference] {
        tensors.filter { [.onlyInA, .onlyInB, .dtypeDiffers, .shapeDiffers].contains($0.status) }
    }

    /// Groups in order of layer (non-layer tensors last), kinds in order of first appearance.
    public var groups: [DifferenceGroup] {
        var order: [String] = []
        var byKey: [String: [TensorDifference]] = [:]
        for tensor in tensors {
            let key = "\(tensor.layer.map(String.init) ?? "-")/\(tensor.kind)"
            if byKey[key] == nil { order.append(key) }
            byKey[key, default: []].append(tensor)
        }
        let groups = order.map { key -> DifferenceGroup in
            let members = byKey[key]!
            let delta = members.reduce(0) { $0 + $1.deltaSquares }, base = members.reduce(0) { $0 + $1.aSquares }
            return DifferenceGroup(layer: members[0].layer, kind: members[0].kind, tensors: members.map(\.name),
                                   changed: members.filter(\.changed).count,
                                   maxAbsoluteDelta: members.compactMap(\.maxAbsoluteDelta).max() ?? 0,
                                   relativeChange: CheckpointDiffer.ratio(delta, base))
        }
        return groups.enumerated().sorted { x, y in
            switch (x.element.layer, y.element.layer) {
            case let (l?, r?) where l != r: return l < r
            case (nil, _?): return false
            case (_?, nil): return true
            default: return x.offset < y.offset
            }
        }.map(\.element)
    }

    /// Module kinds of the numbered layers, in order of first appearance: the heat map's columns.
    public var layerKinds: [String] {
        var seen = Set<String>(), kinds: [String] = []
        for tensor in tensors where tensor.layer != nil && seen.insert(tensor.kind).inserted { kinds.append(tensor.kind) }
        return kinds
    }
}

/// `peftkit diff`: two checkpoints of one architecture compared tensor by tensor, streaming through the mapped files
/// one slice at a time, so memory stays flat whatever the model's size.
public enum CheckpointDiffer {
    /// Elements per slice.
    static let sliceElements = 1 << 20

    public static func diff(_ aPath: String, _ bPath: String) throws -> CheckpointDiff {
        let a = try Checkpoint(path: aPath), b = try Checkpoint(path: bPath)
        var results: [TensorDifference] = []
        var floatsA = [Float](repeating: 0, count: sliceElements), floatsB = floatsA
        for location in a.tensors {
            let info = location.info
            let (layer, kind) = parse(info.name)
            guard let other = b.location(of: info.name) else {
                results.append(header(info.name, .onlyInA, info, nil, layer, kind))
                continue
            }
            if other.info.shape != info.shape { results.append(header(info.name, .shapeDiffers, info, other.info, layer, kind)); continue }
            if other.info.dtype != info.dtype { results.append(header(info.name, .dtypeDiffers, info, other.info, layer, kind)); continue }
            results.append(try compare(location, other, layer: layer, kind: kind, &floatsA, &floatsB))
        }
        for location in b.tensors where a.location(of: location.info.name) == nil {
            let (layer, kind) = parse(location.info.name)
            results.append(header(location.info.name, .onlyInB, nil, location.info, layer, kind))
        }
        return CheckpointDiff(a: aPath, b: bPath, tensors: results)
    }

    /// Layer index and module kind of a parameter name: the number after `layers`/`h`/`layer`/`blocks`, and the last
    /// module name before `weight`/`bias`.
    public static func parse(_ name: String) -> (layer: Int?, kind: String) {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        var layer: Int?
        for (i, part) in parts.enumerated().dropLast() where ["layers", "h", "layer", "blocks"].contains(part) {
            if let n = Int(parts[i + 1]), n >= 0 { layer = n; break }
        }
        var modules = parts
        if let last = modules.last, ["weight", "bias"].contains(last), modules.count > 1 { modules.removeLast() }
        return (layer, modules.last ?? name)
    }

    static func ratio(_ delta: Double, _ base: Double) -> Double {
        delta == 0 ? 0 : (base == 0 ? .infinity : (delta / base).squareRoot())
    }

    private static func header(_ name: String, _ status: TensorDifference.Status, _ a: TensorInfo?, _ b: TensorInfo?,
                               _ layer: Int?, _ kind: String) -> TensorDifference {
        TensorDifference(name: name, status: status, dtypeA: a?.dtype, dtypeB: b?.dtype, shapeA: a?.shape, shapeB: b?.shape,
                         maxAbsoluteDelta: nil, relativeChange: nil, maxULP: nil, differingElements: nil,
                         deltaSquares: 0, aSquares: 0, layer: layer, kind: kind)
    }

    private static func compare(_ a: Checkpoint.Location, _ b: Checkpoint.Location, layer: Int?, kind: String,
                                _ floatsA: inout [Float], _ floatsB: inout [Float]) throws -> TensorDifference {
        let info = a.info, dtype = info.dtype
        let viewA = try a.file.view(info), viewB = try b.file.view(b.info)
        defer {
            a.file.release(info)
            b.file.release(b.info)
        }
        var deltaSquares = 0.0, aSquares = 0.0, maxDelta = 0.0, maxULP = 0, differing = 0
        if !dtype.isArithmetic || !Codec.canDecode(dtype) {
            // Integer or boolean tensors: whether the bytes agree.
            differing = viewA.bytes.elementsEqual(viewB.bytes) ? 0 : info.elementCount
        } else {
            let size = dtype.bitWidth / 8
            var start = 0, released = 0
            while start < info.elementCount {
                let count = min(sliceElements, info.elementCount - start)
                let bytesA = UnsafeRawBufferPointer(rebasing: viewA.bytes[(start * size)..<((start + count) * size)])
                let bytesB = UnsafeRawBufferPointer(rebasing: viewB.bytes[(start * size)..<((start + count) * size)])
                let ulps = Comparison.compare(name: info.name, dtype: dtype, count: count, actual: bytesB, expected: bytesA,
                                              scale: nil, floor: 0)
                differing += ulps.differing
                maxULP = max(maxULP, ulps.maxULP)
                if dtype == .f64 {
                    // Float32 would round away an F64 change.
                    for i in 0..<count {
                        let x = bytesA.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)
                        let d = bytesB.loadUnaligned(fromByteOffset: 8 * i, as: Double.self) - x
                        deltaSquares += d * d
                        aSquares += x * x
                        maxDelta = max(maxDelta, abs(d).isNaN ? .infinity : abs(d))
                    }
                } else {
                    floatsA.withUnsafeMutableBufferPointer { fa in
                        floatsB.withUnsafeMutableBufferPointer { fb in
                            Codec.decode(bytesA, as: dtype, into: UnsafeMutableBufferPointer(rebasing: fa[0..<count]))
                            Codec.decode(bytesB, as: dtype, into: UnsafeMutableBufferPointer(rebasing: fb[0..<count]))
                            for i in 0..<count {
                                let x = Double(fa[i]), d = Double(fb[i]) - x
                                deltaSquares += d * d
                                aSquares += x * x
                                maxDelta = max(maxDelta, abs(d).isNaN ? .infinity : abs(d))
                            }
                        }
                    }
                }
                start += count
                // Drop the compared pages every 8 MiB or so as the tensor streams through, keeping memory flat.
                if (start - released) * size >= TensorWriter.releaseBytes || start == info.elementCount {
                    for (location, view) in [(a, viewA), (b, viewB)] {
                        let begin = view.info.dataOffsets.lowerBound
                        location.file.release(TensorInfo(name: info.name, dtype: .u8, shape: [(start - released) * size],
                                                         dataOffsets: (begin + released * size)..<(begin + start * size)))
                    }
                    released = start
                }
            }
        }
        return TensorDifference(name: info.name, status: differing == 0 ? .identical : .changed, dtypeA: dtype, dtypeB: dtype,
                                shapeA: info.shape, shapeB: info.shape, maxAbsoluteDelta: maxDelta,
                                relativeChange: ratio(deltaSquares, aSquares), maxULP: maxULP, differingElements: differing,
                                deltaSquares: deltaSquares, aSquares: aSquares, layer: layer, kind: kind)
    }
}
