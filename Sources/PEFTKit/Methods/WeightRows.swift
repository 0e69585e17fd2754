/// A horizontal slice of a decoded weight matrix: rows `rows` of a matrix with `columns` columns, stored row-major
/// from `values` (which points at the first row of the slice). Methods work slice by slice so that a tensor of any
/// size streams through a bounded buffer.
struct WeightRows {
    let values: UnsafeMutablePointer<Float>
    let rows: Range<Int>
    let columns: Int

    func row(_ index: Int) -> UnsafeMutablePointer<Float> {
        values + (index - rows.lowerBound) * columns
    }
}
