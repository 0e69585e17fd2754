import Foundation
import SafeTensors

/// `adapter_config.json`, parsed strictly. Every field is kept verbatim in `json` (known or not) so that writing the
/// config back loses nothing; the fields peftkit uses are checked for type and range.
public struct PEFTConfig: Sendable {
    public let json: JSONValue
    public let method: AdapterMethod
    public let variant: AdapterVariant
    /// `r`: the default rank (LoRA) or block size (Bone/MiSS).
    public let rank: Int
    /// `lora_alpha` (LoRA only).
    public let alpha: Double?
    public let useRSLoRA: Bool
    /// `rank_pattern` and `alpha_pattern` in the order written: the first matching key wins, as in PEFT.
    public let rankPattern: [(key: String, value: Int)]
    public let alphaPattern: [(key: String, value: Double)]
    public let fanInFanOut: Bool
    public let loraBias: Bool
    /// `bias`: "none", "all" or "lora_only" (biases trained alongside are saved with the adapter).
    public let bias: String
    public let modulesToSave: [String]
    /// `target_modules` as written: a list of names, or one regular expression.
    public let targetModules: JSONValue?
    /// MiSS `mini_r`.
    public let miniRank: Int?
    public let baseModelNameOrPath: String?

    /// Options that change what a merge must compute and that peftkit does not implement yet.
    static let unsupportedOptions: [(key: String, what: String)] = [
        ("use_dora", "DoRA (use_dora)"),
        ("target_parameters", "LoRA on parameters (target_parameters)"),
        ("layer_replication", "layer replication"),
        ("trainable_token_indices", "trainable tokens"),
        ("alora_invocation_tokens", "activated LoRA (alora_invocation_tokens)"),
        ("arrow_config", "Arrow routing"),
        ("use_qalora", "QA-LoRA"),
    ]

    /// Parses and checks a config. Every problem found is reported at once.
    public static func parse(_ json: JSONValue, source: String) throws -> PEFTConfig {
        var problems: [String] = []
        guard case .object = json else {
            throw PEFTKitError(.invalidConfig, file: source, "adapter config is \(json.typeName), not a JSON object")
        }
        guard let peftType = json["peft_type"]?.stringValue else {
            throw PEFTKitError(.invalidConfig, file: source, "missing or non-string field 'peft_type'")
        }
        guard let method = AdapterMethod.allCases.first(where: { $0.peftType == peftType }) else {
            throw PEFTKitError(.unsupported, file: source,
                               "not supported yet: peft_type '\(peftType)' (peftkit handles LORA, BONE and MISS)")
        }
        for option in unsupportedOptions where isSet(json[option.key]) {
            throw PEFTKitError(.unsupported, file: source, "not supported yet: \(option.what)")
        }

        let rank = positiveInteger(json, "r", required: true, &problems) ?? 1
        var alpha: Double?
        var variant = AdapterVariant.standard
        var miniRank: Int?
        switch method {
        case .lora:
            alpha = number(json, "lora_alpha", required: true, &problems)
        case .bone, .miss:
            switch json["init_weights"] {
            case nil, .null?, .bool?: break
            case .string("bat")?: variant = .bat
            case .string("mini")? where method == .miss: variant = .mini
            case let other?:
                problems.append("field 'init_weights' is \(describe(other)); expected true, false, \"bat\""
                    + (method == .miss ? " or \"mini\"" : ""))
            }
            if variant == .mini { miniRank = positiveInteger(json, "mini_r", required: true, &problems) }
        }

        var rankPattern: [(key: String, value: Int)] = []
        var alphaPattern: [(key: String, value: Double)] = []
        if method == .lora {
            for (key, value) in patternEntries(json, "rank_pattern", &problems) {
                guard let r = value.integerValue, r > 0, let rank = Int(exactly: r) else {
                    problems.append("rank_pattern['\(key)'] is \(describe(value)); expected a positive integer")
                    continue
                }
                rankPattern.append((key, rank))
            }
            for (key, value) in patternEntries(json, "alpha_pattern", &problems) {
                guard let a = value.doubleValue, a.isFinite else {
                    problems.append("alpha_pattern['\(key)'] is \(describe(value)); expected a number")
                    continue
                }
                alphaPattern.append((key, a))
            }
            for key in rankPattern.map(\.key) + alphaPattern.map(\.key) where (try? NSRegularExpression(pattern: key)) == nil {
                problems.append("pattern key '\(key)' is not a valid regular expression")
            }
        }

        let modulesToSave: [String]
        switch json["modules_to_save"] {
        case nil, .null?: modulesToSave = []
        case .array(let items)? where items.allSatisfy({ $0.stringValue != nil }):
            modulesToSave = items.compactMap(\.stringValue)
        case let other?:
            problems.append("field 'modules_to_save' is \(describe(other)); expected a list of module names or null")
            modulesToSave = []
        }
        let bias = json["bias"]?.stringValue ?? "none"
        if !["none", "all", "lora_only"].contains(bias) {
            problems.append("field 'bias' is \(describe(json["bias"] ?? .null)); expected \"none\", \"all\" or \"lora_only\"")
        }
        let baseModel: String?
        switch json["base_model_name_or_path"] {
        case .string(let name)?: baseModel = name
        case nil, .null?: baseModel = nil
        case let other?:
            problems.append("field 'base_model_name_or_path' is \(describe(other)); expected a string or null")
            baseModel = nil
        }

        let config = PEFTConfig(
            json: json, method: method, variant: variant, rank: rank, alpha: alpha,
            useRSLoRA: flag(json, "use_rslora", &problems), rankPattern: rankPattern, alphaPattern: alphaPattern,
            fanInFanOut: flag(json, "fan_in_fan_out", &problems), loraBias: flag(json, "lora_bias", &problems),
            bias: bias, modulesToSave: modulesToSave, targetModules: json["target_modules"], miniRank: miniRank,
            baseModelNameOrPath: baseModel)
        guard problems.isEmpty else {
            throw PEFTKitError(.invalidConfig, file: source, "\(problems.count) problem(s) in the adapter config",
                               details: problems)
        }
        return config
    }

    // MARK: Per-module parameters

    /// PEFT's pattern rule (`get_pattern_key`): the first key `k` for which `(.*\.)?(k)$` matches the whole module path
    /// from its start.
    public static func patternKey(_ keys: [String], matching modulePath: String) -> String? {
        for key in keys {
            guard let regex = try? NSRegularExpression(pattern: "^(.*\\.)?(\(key))$") else { continue }
            let range = NSRange(modulePath.startIndex..., in: modulePath)
            if regex.firstMatch(in: modulePath, options: [.anchored], range: range) != nil { return key }
        }
        return nil
    }

    /// The module's rank after `rank_pattern`.
    public func rank(for modulePath: String) -> Int {
        guard let key = Self.patternKey(rankPattern.map(\.key), matching: modulePath) else { return rank }
        return rankPattern.first { $0.key == key }!.value
    }

    /// The module's alpha after `alpha_pattern`.
    public func alpha(for modulePath: String) -> Double? {
        guard let key = Self.patternKey(alphaPattern.map(\.key), matching: modulePath) else { return alpha }
        return alphaPattern.first { $0.key == key }!.value
    }

    /// LoRA's scaling: alpha / r, or alpha / √r with rsLoRA (computed in Double, as Python does).
    public func scaling(for modulePath: String) -> Double {
        guard method == .lora, let alpha = alpha(for: modulePath) else { return 1 }
        let r = Double(rank(for: modulePath))
        return useRSLoRA ? alpha / r.squareRoot() : alpha / r
    }

    /// Whether a module belongs to `modules_to_save` (PEFT: the module name ends with one of the entries).
    public func isModuleToSave(_ modulePath: String) -> Bool {
        modulesToSave.contains { modulePath == $0 || modulePath.hasSuffix("." + $0) }
    }

    // MARK: Field helpers

    private static func isSet(_ value: JSONValue?) -> Bool {
        switch value {
        case nil, .null?, .bool(false)?: false
        case .array(let items)?: !items.isEmpty
        case .object(let members)?: !members.isEmpty
        case .string(let text)?: !text.isEmpty
        default: true
        }
    }

    private static func positiveInteger(_ json: JSONValue, _ key: String, required: Bool,
                                        _ problems: inout [String]) -> Int? {
        guard let value = json[key], value != .null else {
            if required { problems.append("missing required field '\(key)'") }
            return nil
        }
        guard case .integer(let n) = value, n > 0, n <= Int64(Int32.max) else {
            problems.append("field '\(key)' is \(describe(value)); expected a positive integer")
            return nil
        }
        return Int(n)
    }

    private static func number(_ json: JSONValue, _ key: String, required: Bool, _ problems: inout [String]) -> Double? {
        guard let value = json[key], value != .null else {
            if required { problems.append("missing required field '\(key)'") }
            return nil
        }
        guard let number = value.doubleValue, number.isFinite else {
            problems.append("field '\(key)' is \(describe(value)); expected a number")
            return nil
        }
        return number
    }

    private static func flag(_ json: JSONValue, _ key: String, _ problems: inout [String]) -> Bool {
        switch json[key] {
        case nil, .null?: return false
        case .bool(let b)?: return b
        case let other?:
            problems.append("field '\(key)' is \(describe(other)); expected true or false")
            return false
        }
    }

    private static func patternEntries(_ json: JSONValue, _ key: String,
                                       _ problems: inout [String]) -> [(key: String, value: JSONValue)] {
        switch json[key] {
        case nil, .null?: return []
        case .object(let members)?: return members
        case let other?:
            problems.append("field '\(key)' is \(describe(other)); expected an object")
            return []
        }
    }

    static func describe(_ value: JSONValue) -> String {
        switch value {
        case .string(let s): "the string \"\(s)\""
        case .integer(let i): "\(i)"
        case .number(_, let literal): literal
        case .bool(let b): "\(b)"
        default: value.typeName
        }
    }
}
