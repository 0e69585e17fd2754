/// llama.cpp's names for the tensors of the architectures peftkit converts LoRA adapters for, as its
/// `convert_hf_to_gguf.py` (gguf-py's `tensor_mapping.py`) maps a Hugging Face checkpoint's modules. Each was checked
/// by loading a converted adapter into llama.cpp (fixtures/check_clients.py).
struct GGUFArchitecture: Sendable {
    /// `general.architecture` in the base's GGUF and in the adapter.
    let name: String
    /// The `model_type` values of config.json converted to this architecture.
    let modelTypes: [String]
    /// Whether llama.cpp stores Q and K with their rows permuted per head (convert_hf_to_gguf's `undo_permute`).
    let permutesQK: Bool
    /// A block's modules: the module path inside `model.layers.N.` and the name inside `blk.N.`.
    let blockModules: [(hf: String, gguf: String)]
    /// Why a LoRA on the embedding is refused for this architecture, if it is.
    var embeddingRefusal: String? = nil

    static let llamaBlock: [(hf: String, gguf: String)] = [
        ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
    ]

    static let all: [GGUFArchitecture] = [
        GGUFArchitecture(name: "llama", modelTypes: ["llama", "mistral"], permutesQK: true, blockModules: llamaBlock),
        GGUFArchitecture(name: "qwen2", modelTypes: ["qwen2"], permutesQK: false, blockModules: llamaBlock),
        GGUFArchitecture(name: "qwen3", modelTypes: ["qwen3"], permutesQK: false, blockModules: llamaBlock),
        // Gemma multiplies the embedding by √hidden; llama.cpp scales a token_embd LoRA's change with it, which was
        // not checked against PEFT (and Gemma bases tie their embeddings, where llama.cpp cannot apply it anyway).
        GGUFArchitecture(name: "gemma2", modelTypes: ["gemma2"], permutesQK: false, blockModules: llamaBlock,
                         embeddingRefusal: gemmaEmbedding),
        GGUFArchitecture(name: "gemma3", modelTypes: ["gemma3_text"], permutesQK: false, blockModules: llamaBlock,
                         embeddingRefusal: gemmaEmbedding),
        // Phi-3 keeps q, k, v in one qkv_proj and gate and up in one gate_up_proj; llama.cpp keeps them fused too.
        GGUFArchitecture(name: "phi3", modelTypes: ["phi3"], permutesQK: false, blockModules: [
            ("self_attn.qkv_proj", "attn_qkv"), ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
        ]),
    ]

    static let gemmaEmbedding = "a LoRA on embed_tokens of a Gemma base (llama.cpp scales its change by √hidden "
        + "with the embedding; not checked against PEFT)"

    static func forModelType(_ type: String) -> GGUFArchitecture? { all.first { $0.modelTypes.contains(type) } }

    static let embedding = (hf: "model.embed_tokens", gguf: "token_embd")
    static let head = (hf: "lm_head", gguf: "output")
    static let blockPrefix = (hf: "model.layers.", gguf: "blk.")

    /// llama.cpp's name (without `.weight`) of a module of the Hugging Face model, or nil when it has none here.
    func ggufName(of modulePath: String) -> String? {
        if modulePath == Self.embedding.hf { return Self.embedding.gguf }
        if modulePath == Self.head.hf { return Self.head.gguf }
        guard modulePath.hasPrefix(Self.blockPrefix.hf) else { return nil }
        let rest = modulePath.dropFirst(Self.blockPrefix.hf.count)
        guard let dot = rest.firstIndex(of: "."), let block = Int(rest[..<dot]), String(block) == rest[..<dot] else { return nil }
        let inner = String(rest[rest.index(after: dot)...])
        return blockModules.first { $0.hf == inner }.map { Self.blockPrefix.gguf + "\(block)." + $0.gguf }
    }

    /// The Hugging Face module path of a llama.cpp name (without `.weight`), or nil.
    func modulePath(of ggufName: String) -> String? {
        if ggufName == Self.embedding.gguf { return Self.embedding.hf }
        if ggufName == Self.head.gguf { return Self.head.hf }
        guard ggufName.hasPrefix(Self.blockPrefix.gguf) else { return nil }
        let rest = ggufName.dropFirst(Self.blockPrefix.gguf.count)
        guard let dot = rest.firstIndex(of: "."), let block = Int(rest[..<dot]), String(block) == rest[..<dot] else { return nil }
        let inner = String(rest[rest.index(after: dot)...])
        return blockModules.first { $0.gguf == inner }.map { Self.blockPrefix.hf + "\(block)." + $0.hf }
    }

    /// Whether lora_b of this module carries llama.cpp's Q/K row permutation, with the head count it uses.
    func permutation(of modulePath: String, heads: Int, kvHeads: Int) -> Int? {
        guard permutesQK else { return nil }
        if modulePath.hasSuffix(".self_attn.q_proj") { return heads }
        if modulePath.hasSuffix(".self_attn.k_proj") { return kvHeads }
        return nil
    }
}
