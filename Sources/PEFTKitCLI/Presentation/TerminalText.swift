/// Makes untrusted text (tensor names, metadata, paths inside messages) safe to show on a terminal.
///
/// A tensor name comes from a stranger's file: an escape sequence in it could recolour, move the cursor or retitle
/// the terminal, a newline could forge extra report lines, and a bidirectional override could make one name look
/// like another. Those characters are shown as `\u{…}` instead; everything else, non-ASCII letters included, is
/// shown as is. JSON output does not need this: its encoder escapes control characters itself.
enum TerminalText {
    /// `text` with control and bidirectional-formatting characters escaped, cut after `limit` characters (with `…`).
    static func escaped(_ text: String, limit: Int? = nil) -> String {
        var out = ""
        var kept = 0
        for scalar in text.unicodeScalars {
            if let limit, kept == limit {
                out += "…"
                break
            }
            if needsEscape(scalar) {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
            kept += 1
        }
        return out
    }

    /// C0 and C1 controls, DEL, and the Unicode bidirectional embeddings, overrides and isolates.
    static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00..<0x20, 0x7F..<0xA0: true
        case 0x200E, 0x200F, 0x061C: true  // LRM, RLM, ALM
        case 0x202A...0x202E, 0x2066...0x2069: true  // embeddings, overrides, isolates
        case 0x2028, 0x2029: true  // line and paragraph separators
        default: false
        }
    }
}
