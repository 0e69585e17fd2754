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

/// One worker's encoded slices on their way into `SharedOutputFile`s. A slice is written at once when its file is
/// free; otherwise it waits in one of a few buffers while the worker computes the next, and the worker waits for
/// the file only when all its buffers are full.
final class SliceWriter {
    private let capacity: Int
    private var spare: [UnsafeMutableRawBufferPointer] = []
    private var pending: [(file: SharedOutputFile, name: String, offset: Int, bytes: UnsafeMutableRawBufferPointer,
                           buffer: UnsafeMutableRawBufferPointer)] = []

    init(capacity: Int) { self.capacity = capacity }

    deinit {
        for buffer in spare + pending.map(\.buffer) { buffer.deallocate() }
    }

    /// Lets `fill` produce `byteCount` bytes of tensor `name` in a buffer, then writes them into `file` at `offset`,
    /// now or later (at the latest by `flush()`).
    func write(_ name: String, into file: SharedOutputFile, at offset: Int, byteCount: Int,
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
        pending.append((file, name, offset, bytes, buffer))
        if pending.count >= capacity {
            try flush()
        } else if file.turn.try() {
            defer { file.turn.unlock() }
            try writePending(to: file)
        }
    }

    /// Writes every pending slice, waiting for each file's turn.
    func flush() throws {
        while let file = pending.first?.file {
            try file.turn.withLock { try writePending(to: file) }
        }
    }

    /// Writes the pending slices of `file`, whose turn the caller holds.
    private func writePending(to file: SharedOutputFile) throws {
        while let index = pending.firstIndex(where: { $0.file === file }) {
            let slice = pending[index]
            try file.writer.write(slice.name, chunk: UnsafeRawBufferPointer(slice.bytes), at: slice.offset)
            spare.append(pending.remove(at: index).buffer)
        }
    }
}
