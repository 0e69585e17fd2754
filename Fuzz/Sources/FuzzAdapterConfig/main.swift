import Foundation
import FuzzSupport
import PEFTKit
import SafeTensors

/// `adapter_config.json`: `StrictJSON.parse` then `PEFTConfig.parse`; an accepted config then resolves the
/// per-module parameters of a typical module path (what the loader does for every module).
///
/// Every text StrictJSON accepts is also parsed with Foundation's `JSONSerialization`, and the two trees must have
/// the same shape: the same keys (compared scalar by scalar) and strings, the same number of members and elements.
/// StrictJSON hands the text to json-c after its own grammar check; this catches anything json-c would alter.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    guard let json = try? StrictJSON.parse(bytes, source: "fuzz") else { return 0 }
    // Foundation refuses numbers beyond Double's range, which RFC 8259 leaves to each parser (Python reads inf).
    if let reference = try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed]) {
        if let difference = difference(json, reference, at: "$") { fatalError(difference) }
    } else {
        require(hasInfiniteNumber(json), "StrictJSON accepts a text Foundation refuses")
    }

    guard let config = try? PEFTConfig.parse(json, source: "fuzz") else { return 0 }
    for path in ["model.layers.0.self_attn.q_proj", "lm_head", ""] {
        if let lora = config.method as? LoRA {
            require(lora.rank(for: path) > 0, "rank \(lora.rank(for: path)) for '\(path)'")
            _ = lora.scaling(for: path)
        }
        _ = config.isModuleToSave(path)
    }
    _ = config.json.compactText()
    return 0
}

/// Where two parses of one text differ in shape, or nil.
private func difference(_ value: JSONValue, _ reference: Any, at path: String) -> String? {
    switch value {
    case .object(let members):
        guard let object = reference as? [String: Any] else { return "\(path): object vs \(type(of: reference))" }
        // Keys that differ only by a U+FEFF Foundation drops collide there: nothing to compare this object with.
        guard Set(members.map { withoutFEFF($0.key) }).count == members.count else { return nil }
        guard members.count == object.count else {
            return "\(path): \(members.count) members vs \(object.count)"
        }
        for (key, member) in members {
            let exact = object.first { $0.key.unicodeScalars.elementsEqual(key.unicodeScalars) }
            guard let match = exact ?? object.first(where: { sameText(key, $0.key) }) else {
                return "\(path): key \(Array(key.unicodeScalars)) missing from the reference"
            }
            if let found = difference(member, match.value, at: path + "." + key) { return found }
        }
    case .array(let items):
        guard let array = reference as? [Any] else { return "\(path): array vs \(type(of: reference))" }
        guard items.count == array.count else { return "\(path): \(items.count) elements vs \(array.count)" }
        for (index, (item, other)) in zip(items, array).enumerated() {
            if let found = difference(item, other, at: "\(path)[\(index)]") { return found }
        }
    case .string(let text):
        guard let other = reference as? String else { return "\(path): string vs \(type(of: reference))" }
        guard sameText(text, other) else { return "\(path): strings differ" }
    case .null:
        guard reference is NSNull else { return "\(path): null vs \(type(of: reference))" }
    case .bool, .integer, .number:
        guard !(reference is String || reference is [Any] || reference is [String: Any] || reference is NSNull) else {
            return "\(path): scalar vs \(type(of: reference))"
        }
    }
    return nil
}

private func hasInfiniteNumber(_ value: JSONValue) -> Bool {
    switch value {
    case .number(let number, _): number.isInfinite
    case .array(let items): items.contains(where: hasInfiniteNumber)
    case .object(let members): members.contains { hasInfiniteNumber($0.value) }
    default: false
    }
}

/// Equal scalar by scalar, U+FEFF aside: Foundation decodes each run of a string between escapes as if it were a
/// document that may open with a byte order mark, and drops an unescaped U+FEFF at the start of a string or right
/// after an escape. StrictJSON rightly keeps it.
private func sameText(_ ours: String, _ reference: String) -> Bool {
    withoutFEFF(ours) == withoutFEFF(reference)
}

private func withoutFEFF(_ text: String) -> [Unicode.Scalar] {
    text.unicodeScalars.filter { $0 != "\u{FEFF}" }
}

runLibFuzzer(fuzz)
