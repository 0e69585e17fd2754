import Foundation

/// The one error type of the PEFTKit module.
///
/// A `kind` for callers that branch on the failure, plus the context every message must carry: the file, the
/// tensor or module (where there is one) and what is wrong, in words a user can act on.
public struct PEFTKitError: LocalizedError, Equatable, Sendable {
    public enum Kind: String, Sendable {
        /// A method, variant or option peftkit does not implement (yet).
        case unsupported
        /// `adapter_config.json` or a peftkit file's metadata is malformed.
        case invalidConfig
        /// The adapter's tensors disagree with each other or with its config.
        case inconsistentAdapter
        /// A legacy PyTorch `.bin` checkpoint is malformed or asks for something outside the allow-list.
        case legacyCheckpoint
        /// The base model does not fit the adapter (missing module, shape, dtype or fingerprint mismatch).
        case baseMismatch
        /// A numeric problem: non-finite values, a singular system.
        case numerics
        /// Reading or writing the file system failed.
        case io
        /// A corrupted file: checksum mismatch, truncated data.
        case corrupted
    }

    /// A way past the refusal that the caller can ask for, when there is one. Kept apart from `message` so each
    /// front end names its own switch: the CLI a flag, an app its `force` or `allowNonFinite` argument.
    public enum Remedy: Sendable {
        /// The output exists; writing again with replacing allowed (`force: true`) replaces it.
        case replaceExisting
        /// Non-finite values were found; allowing them (`allowNonFinite: true`) writes the result anyway.
        case allowNonFinite
    }

    public var kind: Kind
    /// The file involved, as the user named it (or as found inside a folder the user named).
    public var file: String?
    /// The tensor or module involved, if any.
    public var tensor: String?
    public var message: String
    /// Every problem found, one line each, when a check reports more than one.
    public var details: [String]
    /// What would get past this refusal. `message` leaves it out: `errorDescription` adds it in API-neutral words,
    /// the CLI as its flag.
    public var remedy: Remedy?

    public init(_ kind: Kind, file: String? = nil, tensor: String? = nil, _ message: String, details: [String] = [],
                remedy: Remedy? = nil) {
        self.kind = kind
        self.file = file
        self.tensor = tensor
        self.message = message
        self.details = details
        self.remedy = remedy
    }

    public var errorDescription: String? {
        var parts: [String] = []
        if let file { parts.append(file) }
        if let tensor { parts.append("'\(tensor)'") }
        switch remedy {
        case .replaceExisting: parts.append(message + " (replacing it must be asked for)")
        case .allowNonFinite: parts.append(message + " (non-finite values must be allowed to write it anyway)")
        case nil: parts.append(message)
        }
        return parts.joined(separator: ": ") + details.map { "\n  - " + $0 }.joined()
    }
}
