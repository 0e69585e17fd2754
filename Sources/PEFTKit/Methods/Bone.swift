/// Bone (block affine adaptation). Two variants, as PEFT implements them:
///
/// Column blocks (the default): the input columns are grouped in runs of r, and every group receives the same
/// r×out block, transposed; a last partial group takes the block's first rows.
///
///     W'[o, c] = W[o, c] + s · block[c mod r, o]          block: r × out
///
/// Bat (`init_weights: "bat"`): W is cut into r×r tiles T(j, i) (j over output bands, i over input bands), and every
/// tile of band j is transformed by the same block B_j.
///
///     T'(j, i) = T(j, i) · (I + B_j) + B_j                 blocks: out/r × r × r, here with B_j scaled by s
///     T(j, i)  = (T'(j, i) − B_j) · (I + B_j)⁻¹            unmerge, by solving rather than inverting
enum Bone {
    /// Adds s · block[c mod r, o] to every element of a slice of rows.
    static func applyColumnBlock(_ block: [Float], rank r: Int, scale s: Float, to slice: WeightRows) {
        let outFeatures = block.count / r
        let column = UnsafeMutablePointer<Float>.allocate(capacity: r)
        defer { column.deallocate() }
        block.withUnsafeBufferPointer { block in
            for o in slice.rows {
                for t in 0..<r { column[t] = s * block[t * outFeatures + o] }  // block[:, o]: this row's addend
                let row = slice.row(o)
                var start = 0
                while start < slice.columns {
                    let group = row + start
                    for t in 0..<min(r, slice.columns - start) { group[t] += column[t] }
                    start += r
                }
            }
        }
    }

    /// T'(j, i) = T(j, i) + (T(j, i) · sB_j + sB_j) for every tile in a slice whose rows are whole bands of r.
    ///
    /// A band (r rows × in columns, row-major) is also the (in × r) matrix whose row a·(in/r) + i is row a of tile i,
    /// so one `sgemm` per band computes every tile product. The change is formed first and then added, in PEFT's
    /// order: the buffer starts as the sB_j rows and `sgemm` adds the products to it (β = 1).
    static func applyBat(_ blocks: [Float], rank r: Int, scale s: Float, to slice: WeightRows) {
        precondition(slice.rows.lowerBound % r == 0 && slice.rows.count % r == 0 && slice.columns % r == 0)
        let tilesPerBand = slice.columns / r, bandCount = r * slice.columns
        let change = UnsafeMutablePointer<Float>.allocate(capacity: bandCount)
        defer { change.deallocate() }
        blocks.withUnsafeBufferPointer { blocks in
            for bandStart in stride(from: slice.rows.lowerBound, to: slice.rows.upperBound, by: r) {
                let band = slice.row(bandStart)
                let block = blocks.baseAddress! + (bandStart / r) * r * r
                // View row k of the band is row a = k / tilesPerBand of its tile: it gets sB_j[a].
                for a in 0..<r {
                    let blockRow = block + a * r
                    for k in (a * tilesPerBand)..<((a + 1) * tilesPerBand) {
                        let start = change + k * r
                        for c in 0..<r { start[c] = s * blockRow[c] }
                    }
                }
                LinearAlgebra.multiplyAccumulate(
                    m: slice.columns, n: r, k: r, alpha: s,
                    a: band, lda: r, transposeA: false, b: block, ldb: r, transposeB: false,
                    into: change, ldc: r, beta: 1)
                for i in 0..<bandCount { band[i] += change[i] }
            }
        }
    }

    /// The factorised systems I + sB_j of every band, prepared once per module for unmerging.
    struct BatInverse {
        let rank: Int
        let scale: Float
        let blocks: [Float]
        let systems: [LinearAlgebra.LUFactorization]

        /// Largest condition number (∞-norm of I + sB_j) over the bands.
        var worstCondition: Float {
            systems.map { $0.reciprocalCondition > 0 ? 1 / $0.reciprocalCondition : .infinity }.max() ?? 1
        }

        /// Nil, with the band, when some I + sB_j is exactly singular.
        static func prepare(_ blocks: [Float], rank r: Int, scale s: Float) -> Result<BatInverse, SingularBand> {
            var systems: [LinearAlgebra.LUFactorization] = []
            for j in 0..<(blocks.count / (r * r)) {
                // I + sB_j in row-major memory is (I + sB_j)ᵀ to column-major LAPACK: exactly the system we solve.
                var matrix = Array(blocks[(j * r * r)..<((j + 1) * r * r)]).map { $0 * s }
                for d in 0..<r { matrix[d * r + d] += 1 }
                guard let lu = LinearAlgebra.LUFactorization(columnMajor: matrix, order: r) else {
                    return .failure(SingularBand(band: j))
                }
                systems.append(lu)
            }
            return .success(BatInverse(rank: r, scale: s, blocks: blocks, systems: systems))
        }
    }

    struct SingularBand: Error { let band: Int }

    /// T(j, i) = (T'(j, i) − sB_j) · (I + sB_j)⁻¹ for every tile in a slice whose rows are whole bands of r.
    ///
    /// Row-major X · M = Y is column-major Mᵀ · Xᵀ = Yᵀ, and a row-major (in × r) band is a column-major r × in
    /// matrix, so each band is solved in place with its LU factors and `in` right-hand sides.
    static func removeBat(_ inverse: BatInverse, from slice: WeightRows) {
        let r = inverse.rank, s = inverse.scale
        precondition(slice.rows.lowerBound % r == 0 && slice.rows.count % r == 0 && slice.columns % r == 0)
        let tilesPerBand = slice.columns / r
        for bandStart in stride(from: slice.rows.lowerBound, to: slice.rows.upperBound, by: r) {
            let band = slice.row(bandStart)
            let j = bandStart / r
            for k in 0..<slice.columns {
                let a = k / tilesPerBand
                for c in 0..<r { band[k * r + c] -= s * inverse.blocks[j * r * r + a * r + c] }
            }
            inverse.systems[j].solve(band, columns: slice.columns)
        }
    }
}
