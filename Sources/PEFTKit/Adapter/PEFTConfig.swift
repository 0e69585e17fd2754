import Foundation
import SafeTensors

/// `adapter_config.json`, parsed strictly. Every field is kept verbatim in `json` (known or not) so that writing the
/// config back loses nothing; the fields peftkit uses are checked for type and range: the ones every method shares
/// here, each method's own by the method (`AdapterMethod.init(config:source:problems:)`).
public struct PEFTConfig: Sendable {
    public let json: JSONValue
    /// `peft_type` as written.
    public let peftType: String
    /// The method, configured by this file.
    public let method: any AdapterMethod
    /// `bias`: "none", "all" or "lora_only" (biases trained alongside are saved with the adapter).
    public let bias: String
    public let modulesToSave: [String]
    /// `target_modules` as written: a list of names, or one regular expression.
    public let targetModules: JSONValue?
    public let baseModelNameOrPath: String?

    /// Parses and checks a config. Every problem found is reported at once.
    /// - Throws: `PEFTKitError` `.invalidConfig` for a malformed config (with every problem as a detail line),
    ///   `.unsupported` for a `peft_type` or option peftkit cannot apply exactly.
    public static func parse(_ json: JSONValue, source: String) throws -> PEFTConfig {
        var problems: [String] = []
        guard case .object = json else {
            throw PEFTKitError(.invalidConfig, file: source, "adapter config is \(json.typeName), not a JSON object")
        }
        guard let peftType = json["peft_type"]?.stringValue else {
            throw PEFTKitError(.invalidConfig, file: source, "missing or non-string field 'peft_type'")
        }
        guard let methodType = MethodRegistry.method(peftType: peftType) else {
            throw PEFTKitError(.unsupported, file: source,
                               "not supported yet: peft_type '\(peftType)' (peftkit handles \(listing(MethodRegistry.peftTypes)))")
        }
        let method = try methodType.init(config: json, source: source, problems: &problems)

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
        if bias != "lora_only" && bias.hasSuffix("_only") {
            // PEFT's other methods name their own variant (VeRA's "vera_only", BOFT's "boft_only"); none is checked here.
            throw PEFTKitError(.unsupported, file: source,
                               "not supported yet: bias '\(bias)' (biases trained with a \(peftType) adapter); peftkit "
                               + "handles \"none\", \"all\" and \"lora_only\"")
        }
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
        guard problems.isEmpty else {
            throw PEFTKitError(.invalidConfig, file: source, "\(problems.count) problem(s) in the adapter config",
                               details: problems)
        }
        return PEFTConfig(json: json, peftType: peftType, method: method, bias: bias, modulesToSave: modulesToSave,
                          targetModules: json["target_modules"], baseModelNameOrPath: baseModel)
    }

    /// "A, B and C".
    static func listing(_ items: [String]) -> String {
        items.count < 2 ? items.joined() : items.dropLast().joined(separator: ", ") + " and " + items.last!
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

    /// Whether a module belongs to `modules_to_save` (PEFT: the module name ends with one of the entries).
    public func isModuleToSave(_ modulePath: String) -> Bool {
        modulesToSave.contains { modulePath == $0 || modulePath.hasSuffix("." + $0) }
    }

    // MARK: Field helpers, for the methods' own fields

    static func isSet(_ value: JSONValue?) -> Bool {
        switch value {
        case nil, .null?, .bool(false)?: false
        case .array(let items)?: !items.isEmpty
        case .object(let members)?: !members.isEmpty
        case .string(let text)?: !text.isEmpty
        default: true
        }
    }

    static func positiveInteger(_ json: JSONValue, _ key: String, required: Bool,
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

    static func number(_ json: JSONValue, _ key: String, required: Bool, _ problems: inout [String]) -> Double? {
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

    static func flag(_ json: JSONValue, _ key: String, _ problems: inout [String]) -> Bool {
        switch json[key] {
        case nil, .null?: return false
        case .bool(let b)?: return b
        case let other?:
            problems.append("field '\(key)' is \(describe(other)); expected true or false")
            return false
        }
    }

    static func patternEntries(_ json: JSONValue, _ key: String,
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
