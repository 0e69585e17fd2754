import Foundation
import Testing
@testable import PEFTKit
import CPeftKitSystem
#if canImport(Glibc)
import Glibc
#endif

/// A pid no process has: above Linux's largest pid_max (2^22).
private let deadPID: Int32 = 99_999_999

@Suite struct StaleTemporaryTests {
    /// What a killed merge into `merged` leaves is removed by the next merge into `merged`; what live processes are
    /// writing, and what belongs to other outputs, is left alone.
    @Test func onlyDeadRunsOfTheSameOutputAreCleared() throws {
        let parent = makeScratchFolder()
        defer { try? FileManager.default.removeItem(atPath: parent) }
        let me = getpid()
        let stale = [
            ".peftkit-tmp-merged-\(deadPID)-1a2b3c",
            ".peftkit-tmp-merged-\(deadPID)-1a2b3c-removing",  // a SIGINT clean-up that was killed half-way
        ]
        let kept = [
            // An old output moved aside by a --force that was killed half-way: the user's data, never removed.
            ".peftkit-old-merged-\(deadPID)-1a2b3c",
            ".peftkit-tmp-merged-\(deadPID)-1a2b3c-old",
            ".peftkit-tmp-merged-\(me)-4d5e6f",  // a live process (this one) writing `merged`
            ".peftkit-tmp-merged-\(getppid())-4d5e6f",  // another live process writing `merged`
            // Live processes writing other outputs whose names start with "merged-": not ours to touch, whatever
            // number follows the name.
            ".peftkit-tmp-merged-7-\(me)-4d5e6f",
            ".peftkit-tmp-merged-\(deadPID)-\(me)-4d5e6f",
            ".peftkit-tmp-merged-v2-\(deadPID)-1a2b3c",
            ".peftkit-tmp-mergedx-\(deadPID)-1a2b3c",
            "merged-\(deadPID)-1a2b3c",
            ".peftkit-tmp-merged-\(deadPID)-notahexnumber",
        ]
        for name in stale + kept {
            try FileManager.default.createDirectory(atPath: parent + "/" + name, withIntermediateDirectories: false)
        }
        OutputFolder.removeStaleTemporaries(in: parent, for: "merged")
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: parent))
        #expect(left == Set(kept), "removed: \(Set(stale + kept).subtracting(left).sorted()), kept: \(left.intersection(stale).sorted())")
    }
}

/// The C shim behind `OutputFolder.publish`'s one-step swap of an old output for the new one.
@Suite struct RenameExchangeTests {
    @Test func swapsTwoPathsOrReportsThatItCannot() throws {
        let parent = makeScratchFolder()
        defer { try? FileManager.default.removeItem(atPath: parent) }
        let first = parent + "/first", second = parent + "/second"
        try "one".write(toFile: first, atomically: false, encoding: .utf8)
        try "two".write(toFile: second, atomically: false, encoding: .utf8)
        let status = peftkit_rename_exchange(first, second)
        let code = errno
        let contents = (try String(contentsOfFile: first, encoding: .utf8), try String(contentsOfFile: second, encoding: .utf8))
        if status == 0 {
            #expect(contents == ("two", "one"))
        } else {
            // A kernel or file system without RENAME_EXCHANGE: the caller falls back, so nothing may have moved.
            #expect(status == -1 && [EINVAL, ENOSYS].contains(code))
            #expect(contents == ("one", "two"))
        }
    }

    @Test func aMissingPathIsAnError() {
        let parent = makeScratchFolder()
        defer { try? FileManager.default.removeItem(atPath: parent) }
        #expect(peftkit_rename_exchange(parent + "/absent", parent) == -1)
        #expect([ENOENT, ENOSYS].contains(errno))
    }
}
