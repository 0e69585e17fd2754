import Testing
@testable import PEFTKit

@Suite struct ContentHashTests {
    private static let pattern = (0..<3077).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }

    private func hash(_ bytes: [UInt8]) -> UInt64 { bytes.withUnsafeBytes { ContentHash.of($0) } }

    /// Vectors from the spec's definition, computed by the corpus generator's Python version of it
    /// (`content_hash` in Tests/Corpus/generate.py), so a Swift that strays from the spec fails here.
    @Test func matchesTheSpecVectors() {
        #expect(hash([]) == 0xEA3E_1499_E73B_8DB6)
        #expect(hash(Array("peftkit".utf8)) == 0x00B1_AE33_F5F9_8A72)
        #expect(hash(Self.pattern) == 0x37B2_D957_3F72_FCDD)
        var flipped = Self.pattern
        flipped[2000] ^= 1
        #expect(hash(flipped) == 0xDDF7_6487_5783_5639)
    }

    /// A tensor is hashed slice by slice as it is written: any cut of the bytes into pieces gives the same hash.
    @Test func piecesHashLikeTheWhole() {
        let whole = hash(Self.pattern)
        for cut in [[1], [63, 64, 65], [7, 1000, 1001, 2048], Array(stride(from: 5, to: 3077, by: 5))] {
            var hash = ContentHash()
            Self.pattern.withUnsafeBytes { bytes in
                var start = 0
                for end in cut + [bytes.count] {
                    hash.update(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                    start = end
                }
            }
            #expect(hash.finalize() == whole, "cut at \(cut)")
        }
    }

    /// The changes the hash is there to notice: any one bit, two stripes or blocks swapped, bytes appended as 0.
    @Test func noticesFlipsMovesAndPadding() {
        let original = hash(Self.pattern)
        var seen: Set<UInt64> = [original]
        for bit in stride(from: 0, to: Self.pattern.count * 8, by: 97) {
            var changed = Self.pattern
            changed[bit / 8] ^= 1 << (bit % 8)
            #expect(seen.insert(hash(changed)).inserted, "bit \(bit)")
        }
        let zeros = [UInt8](repeating: 0, count: 2048)
        var stripesSwapped = zeros, blocksSwapped = zeros
        stripesSwapped[0] = 1       // a byte in stripe 0, against the same byte of stripe 1
        blocksSwapped[64] = 1       // a byte in block 0, against the same byte of block 1 (16 stripes on)
        var otherStripe = zeros, otherBlock = zeros
        otherStripe[64] = 1
        otherBlock[1024 + 64] = 1
        #expect(hash(stripesSwapped) != hash(otherStripe))
        #expect(hash(blocksSwapped) != hash(otherBlock))
        #expect(hash(Self.pattern) != hash(Self.pattern + [0]))
        #expect(hash(zeros) != hash(zeros + [0]))
    }
}
