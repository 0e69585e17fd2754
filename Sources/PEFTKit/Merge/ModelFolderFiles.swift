import Foundation
import SafeTensors

/// What a merged model folder holds besides the weights: the shard index, and the base's other files (config,
/// tokenizer …) so that the output loads as a model, with config.json kept consistent with the output.
enum ModelFolderFiles {
    static func indexName(_ plan: MergePlan) -> String {
        plan.base.indexFileName ?? "model.safetensors.index.json"
    }

    static func writeIndex(_ plan: MergePlan, into folder: OutputFolder) throws {
        var metadata = plan.base.indexFileName.flatMap {
            try? ShardIndex.read(path: (plan.base.folder as NSString).appendingPathComponent($0)).metadata
        } ?? []
        let total = plan.outputBytes
        metadata.removeAll { $0.key == "total_size" }
        metadata.append(("total_size", .integer(Int64(total))))
        let weightMap = plan.files.flatMap { file in file.tensors.map { (tensor: $0.name, shard: file.name) } }
        let text = ShardIndex(weightMap: weightMap, metadata: metadata).serialized()
        try writeFile(text, to: folder.path(of: indexName(plan)))
    }

    /// Files that are not weights (config, tokenizer, generation config …) are copied so the output loads as a model.
    static func copySideFiles(_ plan: MergePlan, into folder: OutputFolder, notes: inout [String]) throws {
        let base = plan.base
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: base.path, isDirectory: &isFolder), isFolder.boolValue else { return }
        // The unmerge record is the run's own (UnmergeRecord): never the base's copied.
        let weightFiles = Set(base.files.map { ($0.path as NSString).lastPathComponent } + [base.indexFileName].compactMap { $0 }
                              + [UnmergeRecord.fileName])
        let otherWeightSuffixes = [".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".safetensors", ".safetensors.index.json"]
        for name in try FileManager.default.contentsOfDirectory(atPath: base.folder).sorted() where !weightFiles.contains(name) {
            let path = (base.folder as NSString).appendingPathComponent(name)
            var entryIsFolder: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &entryIsFolder), entryIsFolder.boolValue {
                notes.append("folder \(name) of the base was not copied")
                continue
            }
            if otherWeightSuffixes.contains(where: { name.hasSuffix($0) }) {
                notes.append("\(name) holds unmerged weights in another format and was not copied")
                continue
            }
            if name == "config.json" && !plan.configChanges.isEmpty {
                guard case .object(var members) = try AdapterLoader.readJSON(path) else { continue }
                for (key, value) in plan.configChanges {
                    if let index = members.firstIndex(where: { $0.key == key }) { members[index].value = value }
                    else { members.append((key, value)) }
                }
                try writeFile(JSONValue.object(members).prettyText(indent: 2) + "\n", to: folder.path(of: name))
                continue
            }
            do {
                try FileManager.default.copyItem(atPath: path, toPath: folder.path(of: name))
            } catch {
                throw PEFTKitError(.io, file: path, "cannot copy into the output: \(error.localizedDescription)")
            }
        }
    }

    static func writeFile(_ text: String, to path: String) throws {
        do {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        } catch {
            throw PEFTKitError(.io, file: path, "cannot write: \(error.localizedDescription)")
        }
    }
}
