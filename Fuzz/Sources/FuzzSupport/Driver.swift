import Glibc

/// The type of `LLVMFuzzerTestOneInput`.
public typealias FuzzTarget = @convention(c) (UnsafePointer<UInt8>, Int) -> CInt

@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ target: FuzzTarget
) -> CInt

/// Runs libFuzzer's driver on the command line's arguments and exits with its status.
///
/// SwiftPM renames an executable's entry point to `<module>_main` and links with `--defsym main=<module>_main`, which
/// takes the place of libFuzzer's own `main`. So each target's `main.swift` keeps top-level code that calls this, and
/// libFuzzer starts from there exactly as its `main` would have started it.
public func runLibFuzzer(_ target: FuzzTarget) -> Never {
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, target))
}

/// Stops the process when a property the parsers promise does not hold (libFuzzer records the input as a crash).
/// Unlike `precondition`, the message survives `-O`.
public func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                    file: StaticString = #file, line: UInt = #line) {
    if !condition() { fatalError(message(), file: file, line: line) }
}
