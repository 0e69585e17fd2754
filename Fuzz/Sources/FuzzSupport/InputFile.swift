import Glibc  // libFuzzer through swiftc is a Linux affair here

/// The parsers under test that read files get the fuzz input through one file per process, rewritten for every input.
/// It lives in a private folder under `$TMPDIR` (or /tmp), removed when the process exits normally.
public enum InputFile {
    /// The private folder of this process, made on first use.
    public static let folder: String = {
        let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array("\(base)/peftkit-fuzz-\(getpid())-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { fatalError("fuzz harness: cannot make a temporary folder under \(base)") }
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        atexit(removeFolder)
        return path
    }()

    /// The path of this process's input file with `name` (e.g. `input.safetensors`), filled with the `size` bytes at
    /// `data`. The same name always gives the same path.
    public static func write(_ data: UnsafePointer<UInt8>, _ size: Int, name: String) -> String {
        let path = folder + "/" + name
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { fatalError("fuzz harness: cannot open \(path)") }
        var done = 0
        while done < size {
            let n = Glibc.write(fd, data + done, size - done)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { fatalError("fuzz harness: cannot write \(path)") }
            done += n
        }
        close(fd)
        return path
    }
}

/// Removes the folder and the few plain files the harnesses put in it (never anything else).
private func removeFolder() {
    let path = InputFile.folder
    guard let directory = opendir(path) else { return }
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
        }
        if name != "." && name != ".." { unlink(path + "/" + name) }
    }
    closedir(directory)
    rmdir(path)
}
