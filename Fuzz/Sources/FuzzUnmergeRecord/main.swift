import FuzzSupport
@testable import PEFTKit

/// A merged folder's `peftkit-unmerge.record` through `UnmergeRecord.read`: the safetensors reader, then the record's
/// own rules (names, dtypes and shapes, entries counting up from 0, finite positive norms). What it accepts must
/// write back and read back the same.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let path = InputFile.write(data, size, name: UnmergeRecord.fileName)
    let folder = String(path.dropLast(UnmergeRecord.fileName.count + 1))
    guard let record = try? UnmergeRecord.read(folder: folder) else { return 0 }
    for (tensor, stack) in record.stacks {
        require(!stack.entries.isEmpty, "'\(tensor)': an empty stack was accepted")
        for entry in stack.entries {
            if let dora = entry.dora {
                require(dora.norms.count == dora.magnitude.count && dora.norms.allSatisfy { $0.isFinite && $0 > 0 },
                        "'\(tensor)': norms accepted that a DoRA unmerge cannot divide by")
            }
        }
    }
    do {
        try record.write(to: path)
        let again = try UnmergeRecord.read(folder: folder)
        require(again.stacks == record.stacks, "the record did not read back as written")
    } catch {
        require(false, "writing back an accepted record failed: \(error)")
    }
    return 0
}

runLibFuzzer(fuzz)
