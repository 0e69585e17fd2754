import Foundation
import GGUF
import SafeTensors
import Testing
@testable import PEFTKit

let ggufFixtures = repositoryRoot + "/fixtures/gguf"

func ggufFixtureCaseNames() -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: ggufFixtures)) ?? [])
        .filter { FileManager.default.fileExists(atPath: "\(ggufFixtures)/\($0)/manifest.json") }.sorted()
}

@Suite struct GGUFFormatTests {
    /// numpy: np.arange(8).reshape(2, 2, 2, 1).swapaxes(1, 2).reshape(8) == [0, 2, 1, 3, 4, 6, 5, 7].
    @Test func permutesRowsAsLlamaCppDoes() {
        let rows = (0..<8).map(Float.init)
        let permuted = GGUFFormat.permuteRows(rows, rows: 8, columns: 1, heads: 2, inverse: false)
        #expect(permuted == [0, 2, 1, 3, 4, 6, 5, 7])
        #expect(GGUFFormat.permuteRows(permuted, rows: 8, columns: 1, heads: 2, inverse: true) == rows)
        // Rows of two columns move whole; one head of 8 rows: [0 4 1 5 2 6 3 7].
        let wide = (0..<16).map(Float.init)
        let one = GGUFFormat.permuteRows(wide, rows: 8, columns: 2, heads: 1, inverse: false)
        #expect(one.enumerated().filter { $0.offset % 2 == 0 }.map { $0.element / 2 } == [0, 4, 1, 5, 2, 6, 3, 7])
    }

    /// llama.cpp scales a pair by alpha / r (1 when alpha is 0); the fold factor makes that PEFT's scaling.
    @Test func scalesAndFoldFactors() {
        #expect(GGUFFormat.llamaScale(alpha: 16, rank: 8) == 2)
        #expect(GGUFFormat.llamaScale(alpha: 0, rank: 8) == 1)
        #expect(GGUFFormat.foldFactor(scaling: 2, alpha: 16, rank: 8) == 1)
        // rank_pattern with a plain alpha: alpha / r is still right for r = 4.
        #expect(GGUFFormat.foldFactor(scaling: 4, alpha: 16, rank: 4) == 1)
        // alpha_pattern 32 on a module of r 8 where alpha is 16: twice llama.cpp's scale.
        #expect(GGUFFormat.foldFactor(scaling: 4, alpha: 16, rank: 8) == 2)
        // rsLoRA, alpha 16, r 8: scaling 16 / √8; the written alpha Float(scaling · 8) gives back the same float.
        let rs = 16 / 8.0.squareRoot()
        #expect(GGUFFormat.foldFactor(scaling: rs, alpha: Float(rs * 8), rank: 8) == 1)
        // rsLoRA module of r 4 beside r 8 ones: 16/2 = 8 against 45.25/4 = 11.31: 1/√2.
        #expect(abs(GGUFFormat.foldFactor(scaling: 8, alpha: Float(rs * 8), rank: 4) - 0.5.squareRoot()) < 1e-6)
    }

    @Test func namesPerArchitecture() throws {
        let llama = try #require(GGUFArchitecture.forModelType("mistral"))
        #expect(llama.name == "llama" && llama.permutesQK)
        #expect(llama.ggufName(of: "model.layers.12.self_attn.o_proj") == "blk.12.attn_output")
        #expect(llama.ggufName(of: "model.embed_tokens") == "token_embd")
        #expect(llama.ggufName(of: "lm_head") == "output")
        #expect(llama.ggufName(of: "model.layers.01.self_attn.q_proj") == nil)
        #expect(llama.modulePath(of: "blk.3.ffn_up") == "model.layers.3.mlp.up_proj")
        let phi3 = try #require(GGUFArchitecture.forModelType("phi3"))
        #expect(phi3.ggufName(of: "model.layers.0.mlp.gate_up_proj") == "blk.0.ffn_up")
        #expect(phi3.modulePath(of: "blk.0.attn_qkv") == "model.layers.0.self_attn.qkv_proj")
        #expect(phi3.ggufName(of: "model.layers.0.self_attn.q_proj") == nil)
        #expect(GGUFArchitecture.forModelType("gpt2") == nil)
        // transformers' Gemma3ForCausalLM config says gemma3_text; llama.cpp's architecture is gemma3.
        #expect(GGUFArchitecture.forModelType("gemma3_text")?.name == "gemma3")
        #expect(GGUFArchitecture.forModelType("gemma2")?.embeddingRefusal != nil)
        #expect(llama.embeddingRefusal == nil)
    }

    /// Written to disk and read back: the same tensors, bit for bit, for an adapter llama.cpp's converter gets right.
    @Test(arguments: ["llama-plain", "qwen2-plain", "phi3-plain", "llama-embed-head"])
    func roundTripsThroughAFile(_ name: String) throws {
        let folder = "\(ggufFixtures)/\(name)"
        let base = "\(ggufFixtures)/bases/" + name.split(separator: "-")[0]
        let adapter = try AdapterLoader.load(folder + "/adapter")
        let work = NSTemporaryDirectory() + "gguf-format-\(getpid())-\(name)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        try GGUFFormat.write(adapter, to: work + "/a.gguf", options: AdapterWriteOptions(base: base))
        #expect(try AdapterLoader.recognise(work + "/a.gguf") == GGUFFormat.self)
        #expect(throws: PEFTKitError.self) { try AdapterLoader.load(work + "/a.gguf") }  // no base: refused
        let back = try AdapterLoader.load(work + "/a.gguf", base: base)
        #expect(back.modules.map(\.path) == adapter.modules.map(\.path))
        for (m, n) in zip(adapter.modules, back.modules) {
            #expect(m.scaling == n.scaling, "\(m.path)")
            for role in m.tensors.keys {
                let x = try #require(m.tensors[role]), y = try #require(n.tensors[role])
                #expect(x.shape == y.shape && x.dtype == y.dtype, "\(m.path) \(role)")
                #expect(try x.withBytes { Array($0) } == y.withBytes { Array($0) }, "\(m.path) \(role)")
            }
        }
        // An existing output is refused without force, and nothing is left behind.
        #expect(throws: PEFTKitError.self) {
            try GGUFFormat.write(adapter, to: work + "/a.gguf", options: AdapterWriteOptions(base: base))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: work) == ["a.gguf"])
    }

    @Test func refusesWhatLlamaCppCannotExpress() throws {
        let adapter = try AdapterLoader.load("\(ggufFixtures)/llama-plain/adapter")
        let base = try GGUFFormat.Base(path: "\(ggufFixtures)/bases/qwen2")
        // A tied-embedding base: no output tensor, and token_embd would reach the output projection too.
        #expect(base.tiedEmbeddings)
        let embed = try AdapterLoader.load("\(ggufFixtures)/llama-embed-head/adapter")
        do {
            _ = try GGUFFormat.serialize(embed, base: base, outputType: "f32", path: "x.gguf")
            Issue.record("an lm_head LoRA on a tied base was written")
        } catch let error as PEFTKitError {
            #expect(error.kind == .unsupported || error.kind == .baseMismatch)
            #expect(error.details.contains { $0.contains("tied embeddings") } || error.message.contains("tied embeddings"))
        }
        #expect(throws: PEFTKitError.self) {
            try GGUFFormat.write(adapter, to: "/nonexistent/x.gguf", options: AdapterWriteOptions(base: nil))
        }
    }

    @Test(arguments: ggufFixtureCaseNames())
    func everyGGUFFixtureVerifies(_ name: String) throws {
        let checks = try FixtureVerifier.verify(caseFolder: "\(ggufFixtures)/\(name)")
        #expect(checks.count >= 2)
        for check in checks {
            #expect(check.passed, "\(name): \(check.check) \(check.measure) \(check.unit) > \(check.tolerance) at \(check.worst ?? "-")")
        }
    }
}
