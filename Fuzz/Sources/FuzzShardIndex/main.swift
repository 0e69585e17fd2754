import FuzzSupport
import SafeTensors

/// `model.safetensors.index.json` through `ShardIndex.read(path:)`; an index that is accepted is written back and
/// must read back equal.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let path = InputFile.write(data, size, name: "model.safetensors.index.json")
    guard let index = try? ShardIndex.read(path: path) else { return 0 }
    for shard in index.shardNames {
        require(ShardIndex.isPlainFileName(shard), "shard name '\(shard)' is not plain")
    }
    let text = Array(index.serialized().utf8)
    let again = text.withUnsafeBufferPointer {
        InputFile.write($0.baseAddress!, $0.count, name: "rewritten.index.json")
    }
    guard let reread = try? ShardIndex.read(path: again) else {
        fatalError("an accepted index does not read back after writing")
    }
    // serialized() sorts both maps by key, as transformers does.
    let sorted = ShardIndex(weightMap: index.weightMap.sorted { $0.tensor < $1.tensor },
                            metadata: index.metadata.sorted { $0.key < $1.key })
    require(reread == sorted, "an accepted index reads back different after writing")
    return 0
}

runLibFuzzer(fuzz)
