import PEFTKit

/// Merges the adapter at `adapter` into the model at `base`, writing the merged model to `output`.
func mergeAdapter(base: String, adapter: String, output: String) throws {
    let loaded = try AdapterLoader.load(adapter)
    print("adapter: \(loaded.modules.count) modules")

    let summary = try MergeEngine.run(MergeRequest(base: base, adapters: [adapter], output: output))
    print("wrote \(summary.output): \(summary.transformed) tensors merged, \(summary.files.count) files")
}
