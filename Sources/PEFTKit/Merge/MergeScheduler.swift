import Foundation

/// Hands out the output tensors, in order within each file, until all are done or a worker fails. A worker whose
/// file has no tensors left moves to the file with the fewest workers, then the most bytes left.
final class MergeScheduler: @unchecked Sendable {
    // @unchecked: every property is only touched under `lock`.
    private let lock = NSLock()
    private let tensorBytes: [[Int]]
    private var nextTensor: [Int]
    private var bytesLeft: [Int]
    private var unfinished: [Int]
    private var workers: [Int]
    private var failure: Error?

    init(_ tensorBytes: [[Int]]) {
        self.tensorBytes = tensorBytes
        nextTensor = tensorBytes.map { _ in 0 }
        bytesLeft = tensorBytes.map { $0.reduce(0, +) }
        unfinished = tensorBytes.map(\.count)
        workers = tensorBytes.map { _ in 0 }
    }

    var error: Error? { lock.withLock { failure } }

    /// The next (file, task) for a worker that was on file `current`.
    func next(after current: Int?) -> (file: Int, tensor: Int)? {
        lock.withLock {
            guard failure == nil else { return nil }
            let file: Int
            if let current, nextTensor[current] < tensorBytes[current].count {
                file = current
            } else {
                if let current { workers[current] -= 1 }
                guard let other = tensorBytes.indices.filter({ nextTensor[$0] < tensorBytes[$0].count })
                    .min(by: { (workers[$0], -bytesLeft[$0]) < (workers[$1], -bytesLeft[$1]) }) else { return nil }
                file = other
                workers[file] += 1
            }
            let tensor = nextTensor[file]
            nextTensor[file] += 1
            bytesLeft[file] -= tensorBytes[file][tensor]
            return (file, tensor)
        }
    }

    /// Records a finished tensor; true when it was its file's last.
    func finished(file: Int) -> Bool {
        lock.withLock {
            unfinished[file] -= 1
            return unfinished[file] == 0
        }
    }

    func fail(_ error: Error) { lock.withLock { if failure == nil { failure = error } } }
}
