import Foundation
import Testing
@testable import SafeTensors

/// Inputs found by the libFuzzer targets (Fuzz/run.sh), minimised and kept as byte literals; the same bytes are in
/// Fuzz/regressions/<target>/ as seeds. Each once crashed, hung, ran out of memory or leaked.
@Suite struct SafeTensorsFuzzRegressionTests {
    /// index: an empty index file. Foundation's `Data(contentsOf:)` leaks its 4 KiB read buffer on every empty file
    /// (LeakSanitizer); `ShardIndex.read` no longer asks it to read one, and still refuses it as invalid JSON.
    @Test func emptyShardIndexIsRefusedAsInvalidJSON() throws {
        let folder = makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/model.safetensors.index.json"
        _ = FileManager.default.createFile(atPath: path, contents: Data())
        do {
            _ = try ShardIndex.read(path: path)
            Issue.record("an empty index was accepted")
        } catch let error as SafeTensorsError {
            #expect(error.rule == "invalidJSON", "\(error.localizedDescription)")
            #expect(error.localizedDescription.contains(path))
        }
    }

    /// config (JSONSerialization cross-check): `{"\u0000":true}`. json-c keeps keys as C strings and cut this one
    /// to "", so distinct keys could merge (the last one winning) past the duplicate check; a key with a NUL is
    /// now refused.
    @Test func nulInAKeyIsRefused() throws {
        let input: [UInt8] = [0x7B, 0x22, 0x5C, 0x75, 0x30, 0x30, 0x30, 0x30, 0x22, 0x3A, 0x74, 0x72, 0x75, 0x65, 0x7D]
        do {
            let value = try StrictJSON.parse(input, source: "regression")
            Issue.record("accepted as \(value)")
        } catch let error as SafeTensorsError {
            #expect(error.rule == "invalidJSON", "\(error.localizedDescription)")
            #expect(error.localizedDescription.contains("NUL"))
        }
        // In a value a NUL is kept: json-c stores strings with their length.
        #expect(try StrictJSON.parse(Array(#"{"a":"x\u0000y"}"#.utf8), source: "regression")
                == .object([("a", .string("x\u{0}y"))]))
    }

    /// The same through a safetensors header: two tensors whose names differ after a NUL were read as one
    /// tensor "a" (the other silently dropped), and `"__metadata__\u0000"` was read as the metadata.
    @Test func tensorNamesWithANulAreRefused() throws {
        let folder = makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let headers = [
            #"{"a\u0000x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"#
                + #""a\u0000y":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
            #"{"__metadata__\u0000":{"format":"pt"},"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
        ]
        for (i, header) in headers.enumerated() {
            let path = writeCraftedFile(at: folder + "/\(i).safetensors", header: header, data: [1, 2])
            do {
                let file = try SafeTensorsFile(path: path)
                Issue.record("accepted with tensors \(file.tensors.map(\.name))")
            } catch let error as SafeTensorsError {
                #expect(error.rule == "invalidJSON", "\(error.localizedDescription)")
            }
        }
    }
}
