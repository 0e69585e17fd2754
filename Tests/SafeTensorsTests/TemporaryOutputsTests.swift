import Foundation
import Testing
@testable import SafeTensors
#if canImport(Glibc)
import Glibc
#endif

/// A flag one thread sets and another reads.
private final class Flag: @unchecked Sendable {
    // @unchecked: `value` is only touched under `lock`.
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

/// SIGINT arrives while the merge's workers are still writing into the temporary folder: the clean-up must win, or
/// the folder is left behind (the last file created after the listing makes the final rmdir fail).
@Test func removeAllWinsAgainstAWriterStillAddingFiles() throws {
    let parent = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: parent) }
    for attempt in 0..<10 {
        let outputs = TemporaryOutputs()
        let folder = parent + "/.peftkit-tmp-merged-\(attempt)-abc"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        for i in 0..<100 { _ = FileManager.default.createFile(atPath: folder + "/file-\(i)", contents: Data([1])) }
        outputs.register(folder)
        let stop = Flag(), stopped = DispatchSemaphore(value: 0)
        // A worker that reaches its files by path, as the engine's writers do, and keeps creating them.
        Thread {
            var i = 0
            while !stop.isSet {
                let descriptor = open(folder + "/late-\(i)", O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
                if descriptor >= 0 { close(descriptor) }
                i += 1
            }
            stopped.signal()
        }.start()
        usleep(200)
        outputs.removeAll()
        stop.set()
        stopped.wait()
        #expect(outputs.isInterrupted)
        #expect(!FileManager.default.fileExists(atPath: folder), "attempt \(attempt): \(folder) is still there")
        #expect(try FileManager.default.contentsOfDirectory(atPath: parent).isEmpty, "attempt \(attempt)")
        try? FileManager.default.removeItem(atPath: folder)
    }
}

/// Single files are removed too, and a registered path that was never created is no trouble.
@Test func removeAllRemovesFiles() throws {
    let parent = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: parent) }
    let outputs = TemporaryOutputs()
    let file = parent + "/.peftkit-tmp-adapter.safetensors-1-abc"
    _ = FileManager.default.createFile(atPath: file, contents: Data([1, 2, 3]))
    outputs.register(file)
    outputs.register(parent + "/.peftkit-tmp-never-created-1-abc")
    #expect(!outputs.isInterrupted)
    outputs.removeAll()
    #expect(outputs.isInterrupted)
    #expect(try FileManager.default.contentsOfDirectory(atPath: parent).isEmpty)
}

/// Publishing and the interrupt clean-up exclude each other: once `removeAll` has begun nothing is moved into
/// place; once an output is published `removeAll` no longer counts (or touches) it.
@Test func publishAndRemoveAllExcludeEachOther() throws {
    let parent = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: parent) }
    let published = TemporaryOutputs()
    let first = parent + "/.peftkit-tmp-a", firstFinal = parent + "/a"
    #expect(FileManager.default.createFile(atPath: first, contents: Data([1])))
    published.register(first)
    try published.publish(first, as: firstFinal) { #expect(rename(first, firstFinal) == 0) }
    #expect(published.removeAll() == 0)
    #expect(FileManager.default.fileExists(atPath: firstFinal))

    let interrupted = TemporaryOutputs()
    let second = parent + "/.peftkit-tmp-b", secondFinal = parent + "/b"
    #expect(FileManager.default.createFile(atPath: second, contents: Data([1])))
    interrupted.register(second)
    #expect(interrupted.removeAll() == 1)
    var moved = false
    #expect(throws: SafeTensorsError.self) { try interrupted.publish(second, as: secondFinal) { moved = true } }
    #expect(!moved && !FileManager.default.fileExists(atPath: second) && !FileManager.default.fileExists(atPath: secondFinal))
}
