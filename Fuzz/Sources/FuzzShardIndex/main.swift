import FuzzSupport
import SafeTensors

/// `model.safetensors.index.json` through `ShardIndex.read(path:)`; an index that is accepted is written back and
/// must read back equal.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let path = InputFile.write(data, size, name: "model.safetensors.index.json")
    guard let index = try? ShardIndex.read(path: path) else { return 0 }
    for shard in index.shardNames { precondition(ShardIndex.isPlainFileName(shard)) }
    let text = Array(index.serialized().utf8)
    let again = text.withUnsafeBufferPointer { InputFile.write($0.baseAddress!, $0.count, name: "rewritten.index.json") }
    let reread = try? ShardIndex.read(path: again)
    precondition(reread != nil, "an accepted index does not read back after writing")
    return 0
}

runLibFuzzer(fuzz)
