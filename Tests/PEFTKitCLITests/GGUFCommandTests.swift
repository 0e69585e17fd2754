import Foundation
import GGUF
import SafeTensors
import Testing
@testable import PEFTKitCLI

private let ggufRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path + "/fixtures/gguf"

@Suite struct GGUFCommandTests {
    @Test func convertNeedsBaseAndAKnownOutputType() async throws {
        let adapter = ggufRoot + "/llama-plain/adapter", base = ggufRoot + "/bases/llama"
        let work = makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: work) }
        #expect(await peftkit("convert", adapter, "--to", "gguf", "-o", work + "/a.gguf").status == 64)
        #expect(await peftkit("convert", adapter, "--to", "gguf", "--base", base, "-o", work + "/a.gguf",
                              "--outtype", "q4_0").status == 64)
        #expect(await peftkit("convert", adapter, "--to", "peft", "-o", work + "/p", "--outtype", "f16").status == 64)
        // A GGUF input is recognised by its magic, whatever its name, and needs --base too.
        let renamed = work + "/adapter.safetensors"
        try FileManager.default.copyItem(atPath: ggufRoot + "/llama-plain/llama.cpp.gguf", toPath: renamed)
        #expect(await peftkit("convert", renamed, "--to", "peft", "-o", work + "/p").status == 64)
        let run = await peftkit("convert", renamed, "--to", "peft", "--base", base, "-o", work + "/p")
        #expect(run.status == 0, "\(run.standardError)")
        #expect(FileManager.default.fileExists(atPath: work + "/p/adapter_config.json"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: work).sorted() == ["adapter.safetensors", "p"])
    }

    @Test func writesF16AndQ8_0AsAsked() async throws {
        let adapter = ggufRoot + "/llama-plain/adapter", base = ggufRoot + "/bases/llama"
        let work = makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: work) }
        for (type, expected) in [("f16", Set(["F16"])), ("q8_0", Set(["Q8_0", "F16"]))] {
            let path = work + "/\(type).gguf"
            let run = await peftkit("convert", adapter, "--to", "gguf", "--base", base, "-o", path, "--outtype", type)
            #expect(run.status == 0, "\(run.standardError)")
            let file = try GGUFFile(path: path)
            #expect(Set(file.tensors.map(\.type.name)) == expected)
            // lora_a of ffn_down: rows of 64 inputs (two Q8_0 blocks); lora_b: rows of r = 8 values, F16.
            #expect(file.tensor("blk.0.ffn_down.weight.lora_a")?.type == (type == "q8_0" ? .q8_0 : .f16))
            #expect(file.tensor("blk.0.ffn_down.weight.lora_b")?.type == .f16)
        }
    }

    /// Merging llama.cpp's GGUF of an adapter gives the same weights as merging the PEFT adapter itself.
    @Test func mergesAGGUFAdapter() async throws {
        let base = ggufRoot + "/bases/llama"
        let work = makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let fromGGUF = await peftkit("merge", base, ggufRoot + "/llama-plain/llama.cpp.gguf", "--output", work + "/g")
        #expect(fromGGUF.status == 0, "\(fromGGUF.standardError)")
        #expect(await peftkit("merge", base, ggufRoot + "/llama-plain/adapter", "--output", work + "/p").status == 0)
        let g = try SafeTensorsFile(path: work + "/g/model.safetensors"), p = try SafeTensorsFile(path: work + "/p/model.safetensors")
        #expect(g.tensors.map(\.name) == p.tensors.map(\.name))
        for info in p.tensors {
            #expect(try Array(g.view(info.name).bytes) == Array(p.view(info).bytes), "\(info.name)")
        }
        // And the adapter did change the (zero) base.
        let q = try p.view("model.layers.0.self_attn.q_proj.weight")
        #expect(q.bytes.contains { $0 != 0 })
    }
}
