#if canImport(Glibc)
import Glibc

/// Turns a SIGBUS from reading a mapped file that shrank into an error instead of a crash.
///
/// Reading a page of a mapping past the file's new end raises SIGBUS. The handler maps a page of zeros over the
/// faulting address and counts the fault; the read then completes (with zeros) and `SafeTensorsFile.checkUnchanged()`,
/// which readers call after each piece they read, reports the file as changed. Any other SIGBUS gets the default
/// action. Installing a signal handler is a process-wide decision, so it is the application's to make (the peftkit
/// command installs it at start-up); without it, a shrinking file still kills the process.
public enum BusErrorGuard {
    /// Whether a fault was absorbed at an address in `range` (a file's mapping).
    static func faulted(in range: Range<UInt>) -> Bool {
        guard installed else { return false }
        for i in 0..<min(faultCount, capacity) where range.contains(faultAddresses[i]) { return true }
        return false
    }

    /// Drops the faults recorded in `range`, when its mapping goes away (another mapping may reuse the addresses).
    static func forget(_ range: Range<UInt>) {
        guard installed else { return }
        for i in 0..<capacity where range.contains(faultAddresses[i]) { faultAddresses[i] = 0 }
    }

    /// Installs the handler (idempotent).
    public static func install() {
        guard !installed else { return }
        installed = true
        pageSize = sysconf(Int32(_SC_PAGESIZE))
        faultAddresses = UnsafeMutablePointer<UInt>.allocate(capacity: capacity)
        faultAddresses.initialize(repeating: 0, count: capacity)
        var action = sigaction()
        action.__sigaction_handler.sa_sigaction = { _, info, _ in
            let address = UInt(bitPattern: info?.pointee._sifields._sigfault.si_addr)
            let size = BusErrorGuard.pageSize
            let page = address / UInt(size) * UInt(size)
            let mapped = mmap(UnsafeMutableRawPointer(bitPattern: page), size, PROT_READ,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
            if address == 0 || mapped == MAP_FAILED {
                // Not a fault we can absorb: let the default action happen.
                signal(SIGBUS, SIG_DFL)
                return
            }
            BusErrorGuard.faultAddresses[BusErrorGuard.faultCount % BusErrorGuard.capacity] = address
            BusErrorGuard.faultCount += 1
        }
        action.sa_flags = SA_SIGINFO
        sigemptyset(&action.sa_mask)
        sigaction(SIGBUS, &action, nil)
    }

    // Written only by `install` (once, at start-up) and by the handler; read by readers' checks.
    nonisolated(unsafe) private static var installed = false
    nonisolated(unsafe) fileprivate static var pageSize = 4096
    nonisolated(unsafe) fileprivate static var faultCount: Int = 0
    /// The last faulting addresses, a ring written by the handler (no allocation happens in the handler).
    nonisolated(unsafe) fileprivate static var faultAddresses = UnsafeMutablePointer<UInt>(bitPattern: 8)!
    fileprivate static let capacity = 64
}
#endif
