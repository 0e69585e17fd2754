import Foundation
import SafeTensors

/// The one error type of the GGUF module: a rule per check of the format, the file, the tensor or key where there is
/// one, and what is wrong in words.
public struct GGUFError: LocalizedError, Equatable, Sendable {
    /// Every rule the reader and writer enforce, as a stable identifier for tests and JSON.
    public enum Rule: String, Sendable {
        case fileTooSmall, notGGUF, unsupportedVersion, bigEndian
        case countTooLarge, stringTooLong, invalidUTF8, emptyName, duplicateKey, unknownValueType, nestedArray
        case invalidBool, invalidAlignment
        case duplicateTensor, nameTooLong, invalidDimensions, unknownTensorType, partialBlock, sizeOverflow
        case misalignedOffset, dataOverlap, dataHole, dataPastEnd, trailingBytes, truncated
        case fileChanged, io
        case writerInvalid
    }

    public let rule: Rule
    public let file: String
    /// The tensor or key involved, if any (untrusted text, shown escaped).
    public let subject: String?
    public let detail: String

    public init(_ rule: Rule, file: String, subject: String? = nil, _ detail: String) {
        self.rule = rule
        self.file = file
        self.subject = subject
        self.detail = detail
    }

    public var errorDescription: String? {
        "\(file): " + (subject.map { "'\(Self.quoted($0))': " } ?? "") + detail
    }

    /// Names and keys are untrusted text: control characters escaped, very long names cut.
    public static func quoted(_ text: String) -> String { SafeTensorsError.quoted(text) }
}
