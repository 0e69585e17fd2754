import ArgumentParser
import Foundation
import PEFTKit

/// `peftkit diff A B [--json] [--plot FILE.svg]`: what changed between two checkpoints of one architecture.
struct DiffCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Compare two checkpoints of the same architecture, tensor by tensor.",
        discussion: """
            Streams both checkpoints one tensor at a time through the mapped files. For each tensor: whether it \
            changed, max |B - A|, the relative change ||B - A|| / ||A|| (Frobenius norms) and the largest distance \
            in representable values (ulps). Then a summary per layer and module kind, parsed from names like \
            model.layers.N.self_attn.q_proj.weight (layer N, kind q_proj). Tensors only one side has, or with \
            another dtype or shape, are reported from the headers without reading their data.

            --plot writes an SVG heat map: a row per layer, a column per module kind, the colour the relative \
            change on a log scale; hovering a cell shows its tensors and numbers.

            Exit status 0 when the comparison ran (whether or not anything changed).

            Examples:
              peftkit diff ./base ./merged
              peftkit diff ./base ./merged --plot changes.svg
              peftkit diff ./merged-peft ./merged-peftkit --json > diff.json
            """
    )

    @Argument(help: ArgumentHelp("The first checkpoint: a folder or a .safetensors file.", valueName: "a"))
    var a: String

    @Argument(help: ArgumentHelp("The second checkpoint, compared with the first.", valueName: "b"))
    var b: String

    @Option(help: ArgumentHelp("Write an SVG heat map of the relative change per layer and module kind.", valueName: "file.svg"))
    var plot: String?

    @OptionGroup var report: JSONOutputOption

    init() {}

    func validate() throws {
        if let plot, plot.isEmpty { throw ValidationError("--plot needs a file name.") }
    }

    func run() async throws {
        let diff = try CheckpointDiffer.diff(a, b)
        if let plot {
            do {
                try Data(DiffPlot.svg(diff).utf8).write(to: URL(fileURLWithPath: plot))
            } catch {
                throw PEFTKitError(.io, file: plot, "cannot write the plot: \(error.localizedDescription)")
            }
        }
        Console.current.output(report.json ? DiffReport.json(diff) : DiffReport.text(diff))
    }
}
