import Foundation
import SafeTensors

/// One output file shared by the workers, written one call at a time.
///
/// Two threads writing one file queue on its lock in the kernel, and the waiting is not free: on tmpfs, 2.2 GB in
/// 512 KiB `pwrite`s cost 1.05 CPU-seconds from one thread and 1.66 from two (measured here). Taking turns in user
/// space lets a worker that finds the file busy go on computing instead (see `SliceWriter`).
final class SharedOutputFile: @unchecked Sendable {
    // @unchecked: `turn` is a lock; the writer is thread-safe.
    let writer: SafeTensorsWriter
    let turn = NSLock()

    init(_ writer: SafeTensorsWriter) { self.writer = writer }

    /// Writes bytes that live elsewhere (a mapped input), waiting for the file's turn.
    func write(_ name: String, chunk: UnsafeRawBufferPointer, at offset: Int) throws {
        try turn.withLock { try writer.write(name, chunk: chunk, at: offset) }
    }
}

/// One worker's encoded slices on their way into a `SharedOutputFile`. A slice is written at once when the file is
/// free; otherwise it waits in one of a few buffers while the worker computes the next, and the worker waits for
/// the file only when all its buffers are full.
final class SliceWriter {
    private let file: SharedOutputFile
    private let capacity: Int
    private var spare: [UnsafeMutableRawBufferPointer] = []
    private var pending: [(name: String, offset: Int, bytes: UnsafeMutableRawBufferPointer, buffer: UnsafeMutableRawBufferPointer)] = []

    init(_ file: SharedOutputFile, capacity: Int) {
        self.file = file
        self.capacity = capacity
    }

    deinit {
        for buffer in spare + pending.map(\.buffer) { buffer.deallocate() }
    }

    /// Lets `fill` produce `byteCount` bytes of tensor `name` in a buffer, then writes them at `offset` now or later
    /// (at the latest by `flush()`).
    func write(_ name: String, at offset: Int, byteCount: Int,
               fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        var buffer = spare.popLast() ?? .allocate(byteCount: max(byteCount, 1), alignment: 64)
        if buffer.count < byteCount {
            buffer.deallocate()
            buffer = .allocate(byteCount: byteCount, alignment: 64)
        }
        let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<byteCount])
        do {
            try fill(bytes)
        } catch {
            spare.append(buffer)
            throw error
        }
        pending.append((name, offset, bytes, buffer))
        if pending.count >= capacity {
            try flush()
        } else if file.turn.try() {
            defer { file.turn.unlock() }
            try writePending()
        }
    }

    /// Writes every pending slice, waiting for the file's turn.
    func flush() throws {
        guard !pending.isEmpty else { return }
        try file.turn.withLock { try writePending() }
    }

    private func writePending() throws {
        while let slice = pending.first {
            try file.writer.write(slice.name, chunk: UnsafeRawBufferPointer(slice.bytes), at: slice.offset)
            spare.append(pending.removeFirst().buffer)
        }
    }
}
