import Foundation
import Testing

/// README.md's "Use from Swift" example is ReadmeExample.swift, which this target compiles: the README cannot show
/// code that no longer builds against the API, and running it shows the code does what the README says.
@Suite struct ReadmeExampleTests {
    @Test func readmeShowsTheCompiledExample() throws {
        let readme = try String(contentsOfFile: repositoryRoot + "/README.md", encoding: .utf8)
        let example = try String(contentsOfFile: repositoryRoot + "/Tests/PEFTKitTests/ReadmeExample.swift", encoding: .utf8)
        let code = swiftBlocks(in: try section("Use from Swift", of: readme)).filter { $0.hasPrefix("import PEFTKit\n") }
        #expect(code == [example])
    }

    @Test func theExampleMergesAFixture() throws {
        let scratch = makeScratchFolder()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let example = fixtureCases + "/lora-llama-f32"
        try mergeAdapter(base: example + "/base", adapter: example + "/adapter", output: scratch + "/merged")
        // The merged model has the base's layout: same shards, index and side files.
        let merged = try FileManager.default.contentsOfDirectory(atPath: scratch + "/merged").sorted()
        #expect(merged == (try FileManager.default.contentsOfDirectory(atPath: example + "/base").sorted()))
    }

    /// The text from the `## heading` line to the next `## ` heading.
    private func section(_ heading: String, of markdown: String) throws -> String {
        let lines = markdown.components(separatedBy: "\n")
        let start = try #require(lines.firstIndex(of: "## " + heading), "README.md has no '## \(heading)'")
        let end = lines[(start + 1)...].firstIndex { $0.hasPrefix("## ") } ?? lines.endIndex
        return lines[start..<end].joined(separator: "\n")
    }

    /// The contents of every ```swift fence, each ending in a newline as a source file does.
    private func swiftBlocks(in markdown: String) -> [String] {
        var blocks: [String] = []
        var current: [String]?
        for line in markdown.components(separatedBy: "\n") {
            if current == nil {
                if line == "```swift" { current = [] }
            } else if line == "```" {
                blocks.append(current!.map { $0 + "\n" }.joined())
                current = nil
            } else {
                current!.append(line)
            }
        }
        return blocks
    }
}
