import SafeTensors

/// Summary statistics of one tensor's values, for `inspect --stats`.
///
/// Min, max, mean and standard deviation are over the finite values only, so one NaN does not hide the rest;
/// NaN and ±Inf are counted separately. The deviation is the population one (divide by n, as numpy's default).
struct TensorStatistics: Equatable, Sendable {
    var finiteCount = 0
    var nanCount = 0
    var infinityCount = 0
    /// Nil when the tensor holds no finite value.
    var minimum: Float?
    var maximum: Float?
    var mean: Double?
    var standardDeviation: Double?

    /// Elements decoded per chunk: 4 MiB of Float32, so a 500-million-element embedding never becomes a 2 GB array.
    static let chunkElements = 1 << 20

    /// Decodes the tensor chunk by chunk and accumulates; nil when `Codec` cannot decode its dtype.
    ///
    /// Each chunk is summarised exactly (two passes over the small buffer, in Double) and the chunk summaries are
    /// combined with the pairwise update of Chan, Golub and LeVeque: stable like Welford's method without paying
    /// a division per element.
    static func compute(_ view: TensorView, chunkElements: Int = chunkElements) -> TensorStatistics? {
        compute(view.bytes, dtype: view.info.dtype, count: view.info.elementCount, chunkElements: chunkElements)
    }

    /// The same over raw little-endian bytes holding `count` elements of `dtype`.
    static func compute(_ bytes: UnsafeRawBufferPointer, dtype: DType, count: Int,
                        chunkElements: Int = chunkElements) -> TensorStatistics? {
        guard Codec.canDecode(dtype) else { return nil }
        let elementBytes = dtype.bitWidth / 8
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(1, min(count, chunkElements)))
        defer { buffer.deallocate() }

        var statistics = TensorStatistics()
        var moments = Moments()
        var start = 0
        while start < count {
            let n = min(chunkElements, count - start)
            let source = UnsafeRawBufferPointer(rebasing: bytes[(start * elementBytes)..<((start + n) * elementBytes)])
            let chunk = UnsafeMutableBufferPointer(rebasing: buffer[0..<n])
            Codec.decode(source, as: dtype, into: chunk)
            moments.combine(statistics.accumulate(UnsafeBufferPointer(chunk)))
            start += n
        }
        if moments.count > 0 {
            statistics.mean = moments.mean
            statistics.standardDeviation = (moments.sumOfSquaredDeviations / Double(moments.count)).squareRoot()
        }
        return statistics
    }

    /// Counts, min and max of one chunk, and its moments (count, mean, sum of squared deviations from that mean).
    private mutating func accumulate(_ values: UnsafeBufferPointer<Float>) -> Moments {
        var finite = 0
        var sum = 0.0
        var low = Float.infinity
        var high = -Float.infinity
        for value in values {
            if value.isFinite {
                finite += 1
                sum += Double(value)
                low = min(low, value)
                high = max(high, value)
            } else if value.isNaN {
                nanCount += 1
            } else {
                infinityCount += 1
            }
        }
        guard finite > 0 else { return Moments() }
        finiteCount += finite
        minimum = min(minimum ?? low, low)
        maximum = max(maximum ?? high, high)
        let mean = sum / Double(finite)
        var squares = 0.0
        for value in values where value.isFinite {
            let deviation = Double(value) - mean
            squares += deviation * deviation
        }
        return Moments(count: finite, mean: mean, sumOfSquaredDeviations: squares)
    }

    /// Count, mean and sum of squared deviations of a set of values; two sets combine without revisiting them.
    private struct Moments {
        var count = 0
        var mean = 0.0
        var sumOfSquaredDeviations = 0.0

        mutating func combine(_ other: Moments) {
            guard other.count > 0 else { return }
            guard count > 0 else {
                self = other
                return
            }
            let total = Double(count + other.count)
            let delta = other.mean - mean
            mean += delta * Double(other.count) / total
            sumOfSquaredDeviations += other.sumOfSquaredDeviations
                + delta * delta * Double(count) * Double(other.count) / total
            count += other.count
        }
    }
}
