import ArgumentParser
import Foundation
import GGUF
import PEFTKit
import SafeTensors

/// The process exit status of every peftkit command, and the one place where errors become statuses.
///
/// Scripts branch on these numbers, so they are part of the interface: documented in `peftkit --help` and in the
/// README, and never renumbered.
public enum ExitStatus: Int32, CaseIterable, Sendable, Error {
    /// The command did what was asked and every check passed.
    case success = 0
    /// The command ran, but a check it performs failed (verify found a mismatch, inspect found an inconsistent
    /// adapter). The report says what failed; nothing more is printed. Commands throw this status after reporting.
    case checkFailed = 1
    /// An input file is malformed: safetensors header, shard index, adapter config, legacy checkpoint, corrupted data.
    case invalidInput = 2
    /// Base model and adapter do not fit together (missing module, shape, dtype or fingerprint mismatch).
    case baseMismatch = 3
    /// Something peftkit does not do (yet): a method, variant or option, or a command not in this build.
    case unsupported = 4
    /// The file system failed us: a path that does not exist or cannot be read, a write that failed, an output
    /// that exists already without `--force`.
    case io = 5
    /// A numeric problem: non-finite values in the result, a singular system.
    case numerics = 6
    /// The command line itself is wrong (unknown option, missing argument, invalid value): the usage is printed.
    /// 64 is `EX_USAGE` from sysexits(3), the status swift-argument-parser uses.
    case usage = 64
    /// A bug in peftkit: an error nobody classified. 70 is `EX_SOFTWARE`.
    case internalError = 70

    /// One line per status, for the root command's help and the README.
    static let summary: [(status: ExitStatus, meaning: String)] = [
        (.success, "success"),
        (.checkFailed, "a check failed (verify mismatch, inconsistent adapter)"),
        (.invalidInput, "invalid input file (malformed safetensors, index, config)"),
        (.baseMismatch, "base model and adapter do not match"),
        (.unsupported, "not supported (yet), including commands not in this build"),
        (.io, "I/O error: missing or unreadable path, failed write, output exists"),
        (.numerics, "numeric problem (non-finite values, singular system)"),
        (.usage, "usage error: invalid command line"),
        (.internalError, "internal error (a bug in peftkit)"),
    ]

    /// The status for `error`, whoever threw it.
    public init(for error: any Error) {
        switch error {
        case let status as ExitStatus:
            self = status
        case let error as PEFTKitError:
            self = Self.status(for: error.kind)
        case let error as SafeTensorsError:
            self = Self.status(for: error)
        case let error as GGUFError:
            self = [.io, .fileChanged].contains(error.rule) ? .io : .invalidInput
        case is CommandNotAvailable:
            self = .unsupported
        case is ValidationError:
            self = .usage
        case is CleanExit:
            self = .success
        case is CocoaError, is POSIXError:
            // Foundation's file-system calls (listing a folder, reading a config) throw these.
            self = .io
        default:
            // The argument parser wraps its own errors in internal types; it knows whether they mean help (0) or
            // usage (64). Anything else is an error we forgot to classify.
            switch PeftkitCommand.exitCode(for: error) {
            case .success: self = .success
            case .validationFailure: self = .usage
            default: self = .internalError
            }
        }
    }

    static func status(for kind: PEFTKitError.Kind) -> ExitStatus {
        switch kind {
        case .invalidConfig, .inconsistentAdapter, .legacyCheckpoint, .corrupted: .invalidInput
        case .baseMismatch: .baseMismatch
        case .unsupported: .unsupported
        case .io: .io
        case .numerics: .numerics
        }
    }

    static func status(for error: SafeTensorsError) -> ExitStatus {
        switch error {
        case .io, .fileChanged:
            return .io
        case .noCheckpoint(let path, _) where !FileManager.default.fileExists(atPath: path):
            // A path that does not exist is the file system's answer, not a malformed file: same status as every
            // other missing path.
            return .io
        case .invalidShardSize:
            // Only ever raised while parsing a size the user typed.
            return .usage
        default:
            return .invalidInput
        }
    }
}

/// For a command that parses and validates its arguments but is not in this build (no command throws it today; the
/// status and the help text keep the case).
struct CommandNotAvailable: Error, Sendable {
    let commandName: String

    /// The whole line the runner prints.
    var line: String { "peftkit \(commandName): not available yet in this build" }
}
