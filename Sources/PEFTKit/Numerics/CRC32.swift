import CPeftKitZlib

/// CRC-32 (the IEEE polynomial of zlib, gzip and ZIP), the one implementation behind the peftkit format's tensor
/// checks, the base fingerprint and the legacy ZIP reader's entry checks.
enum CRC32 {
    /// zlib's `crc32` takes a 32-bit length, so longer buffers are fed in pieces of this size.
    static let chunkSize = 1 << 30

    /// The CRC-32 of `bytes`, continuing from `crc` (0 starts afresh), so a large tensor can be checked piece by piece.
    static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        var value = uLong(crc)
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: Bytef.self) else { return crc }
        var start = 0
        while start < bytes.count {
            let length = min(bytes.count - start, chunkSize)
            value = crc32(value, base + start, uInt(length))
            start += length
        }
        return UInt32(truncatingIfNeeded: value)
    }

    static func checksum(_ text: String) -> UInt32 {
        var copy = text
        return copy.withUTF8 { checksum(UnsafeRawBufferPointer($0)) }
    }

    /// The CRC of a stored tensor's bytes.
    static func checksum(of tensor: StoredTensor) throws -> UInt32 {
        try tensor.withBytes { checksum($0) }
    }

    /// Eight lowercase hexadecimal digits, the only spelling the format writes and accepts.
    static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16, uppercase: false)
        return String(repeating: "0", count: 8 - digits.count) + digits
    }

    /// Parses exactly eight lowercase hexadecimal digits.
    static func parseHex(_ text: String) -> UInt32? {
        guard text.utf8.count == 8,
              text.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else { return nil }
        return UInt32(text, radix: 16)
    }
}
