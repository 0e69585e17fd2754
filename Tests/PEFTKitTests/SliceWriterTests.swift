import Dispatch
import Foundation
import SafeTensors
import Testing
@testable import PEFTKit

@Suite struct SliceWriterTests {
    /// Slices written while the file is busy wait in the worker's buffers (the worker is not held up), and every one
    /// of them reaches the file, from several workers at once.
    @Test func busyFileDefersSlicesAndLosesNone() throws {
        let folder = makeScratchFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let rows = 12, columns = 1000
        let path = folder + "/out.safetensors"
        let file = SharedOutputFile(try SafeTensorsWriter(path: path, tensors: [TensorSpec(name: "w", dtype: .u8, shape: [rows, columns])]))

        // Someone else holds the file: a worker with room for three slices still finishes two without waiting.
        file.turn.lock()
        let deferred = DispatchSemaphore(value: 0), released = DispatchSemaphore(value: 0), flushed = DispatchSemaphore(value: 0)
        let failures = Failures()
        DispatchQueue.global().async {
            let early = SliceWriter(capacity: 3)
            do {
                for row in 0..<2 {
                    try early.write("w", into: file, at: row * columns, byteCount: columns) {
                        $0.initializeMemory(as: UInt8.self, repeating: UInt8(row + 1))
                    }
                }
                deferred.signal()
                released.wait()
                try early.flush()
            } catch {
                failures.add(error)
            }
            flushed.signal()
        }
        // A worker that wrongly waits for the file never signals; the generous limit only keeps a loaded machine from
        // failing a correct one.
        #expect(deferred.wait(timeout: .now() + 30) == .success, "the worker waited for a busy file with buffers free")
        file.turn.unlock()
        released.signal()
        flushed.wait()

        // The other rows from two workers at once, each with one spare buffer.
        DispatchQueue.concurrentPerform(iterations: 2) { worker in
            let slices = SliceWriter(capacity: 2)
            do {
                for row in stride(from: 2 + worker, to: rows, by: 2) {
                    try slices.write("w", into: file, at: row * columns, byteCount: columns) {
                        $0.initializeMemory(as: UInt8.self, repeating: UInt8(row + 1))
                    }
                }
                try slices.flush()
            } catch {
                failures.add(error)
            }
        }
        #expect(failures.all.isEmpty)
        try file.writer.finish(sync: false)

        let written = try SafeTensorsFile(path: path).view("w")
        let expected = (0..<rows).flatMap { row in [UInt8](repeating: UInt8(row + 1), count: columns) }
        #expect([UInt8](written.bytes) == expected)
    }
}

private final class Failures: @unchecked Sendable {
    // @unchecked: `errors` is only touched under `lock`.
    private let lock = NSLock()
    private var errors: [Error] = []
    func add(_ error: Error) { lock.withLock { errors.append(error) } }
    var all: [Error] { lock.withLock { errors } }
}
