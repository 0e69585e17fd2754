import PEFTKit
/// The human-readable `inspect` report: a summary, then an aligned table of tensors.
///
/// Every piece of text that came from the file (names, metadata) goes through `TerminalText.escaped`.
enum InspectTextReport {
    /// Above this many tensors the table shows the first `headCount` and the last `tailCount` unless `--all`.
    static let shorteningThreshold = 40
    static let headCount = 20
    static let tailCount = 10
    /// Above this many files the file list is shortened the same way.
    static let fileShorteningThreshold = 8
    /// Metadata values (sometimes a whole training config) and tensor names are cut for the terminal.
    static let metadataValueLimit = 100
    static let nameLimit = 160

    static func render(_ inspection: CheckpointInspection, showAll: Bool) -> String {
        summary(inspection, showAll: showAll) + "\n" + table(inspection, showAll: showAll)
    }

    // MARK: Summary

    static func summary(_ inspection: CheckpointInspection, showAll: Bool) -> String {
        var rows: [(label: String, value: String)] = []
        rows.append(("path", TerminalText.escaped(inspection.path)))
        rows.append(("kind", kindDescription(inspection.kind)))
        rows.append(("format", formatDescription(inspection)))
        if inspection.isSharded {
            let shown = Shortening(count: inspection.files.count, threshold: fileShorteningThreshold,
                                   head: 3, tail: 2, showAll: showAll)
            var lines = inspection.files[shown.headRange].map(fileDescription)
            if shown.omitted > 0 { lines.append("… \(shown.omitted) more files (use --all)") }
            lines += inspection.files[shown.tailRange].map(fileDescription)
            for (i, line) in lines.enumerated() { rows.append((i == 0 ? "files" : "", line)) }
        }
        if let adapter = inspection.adapter { rows += adapterRows(adapter) }
        rows.append(("tensors", NumberFormatting.grouped(inspection.tensors.count)))
        if let adapter = inspection.adapter {
            rows.append(("parameters", countDescription(adapter.parameters) + " in the adapter"
                + (adapter.carried.isEmpty ? "" : ", plus \(countDescription(adapter.carriedParameters)) carried whole")))
        } else {
            rows.append(("parameters", countDescription(inspection.parameterCount)))
        }
        rows.append(("bytes", bytesDescription(inspection.byteCount)))
        let histogram = inspection.dtypeHistogram.map { "\($0.dtype.rawValue): \(NumberFormatting.grouped($0.count))" }
        rows.append(("dtypes", histogram.isEmpty ? "(none)" : histogram.joined(separator: ", ")))
        let metadata = inspection.sharedMetadata.map {
            TerminalText.escaped($0.key, limit: metadataValueLimit) + ": "
                + TerminalText.escaped($0.value, limit: metadataValueLimit)
        }
        if metadata.isEmpty { rows.append(("metadata", "(none)")) }
        for (i, line) in metadata.enumerated() { rows.append((i == 0 ? "metadata" : "", line)) }
        let unshared = inspection.unsharedMetadataKeyCount
        if unshared > 0 {
            rows.append((metadata.isEmpty ? "metadata" : "",
                         "(\(unshared) more key\(unshared == 1 ? "" : "s") differ between files; see --json)"))
        }
        if !inspection.adapterProblems.isEmpty {
            rows.append(("problems", "\(inspection.adapterProblems.count) between the adapter's config and its tensors:"))
            for problem in inspection.adapterProblems { rows.append(("", "- " + TerminalText.escaped(problem))) }
        }
        let width = rows.map(\.label.count).max() ?? 0
        return rows.map { row in
            row.label + String(repeating: " ", count: width - row.label.count) + "  " + row.value + "\n"
        }.joined()
    }

    static func kindDescription(_ kind: CheckpointInspection.Kind) -> String {
        switch kind {
        case .file: "safetensors file"
        case .model: "model folder"
        case .adapter: "adapter"
        }
    }

    /// Method, modules, ranks and scalings, carried tensors, base identity and fit.
    static func adapterRows(_ adapter: AdapterReport) -> [(label: String, value: String)] {
        var rows: [(label: String, value: String)] = []
        rows.append(("method", "\(adapter.peftType) (\(adapter.variant)), \(adapter.format.description)"))
        rows.append(("modules", "\(adapter.moduleCount) adapted: \(adapter.targets.map { TerminalText.escaped($0) }.joined(separator: ", "))"))
        let ranks = adapter.ranks.map { "r=\($0.rank) (\($0.modules) module\($0.modules == 1 ? "" : "s"))" }
        let miniRank = adapter.settings.first { $0.key == "mini_r" }?.value.integerValue
        rows.append(("rank", ranks.joined(separator: ", ") + (miniRank.map { ", mini_r=\($0)" } ?? "")))
        if !adapter.scalings.isEmpty {
            let rsLoRA = adapter.settings.first { $0.key == "use_rslora" }?.value.boolValue ?? false
            let rule = rsLoRA ? "alpha/√r (rsLoRA)" : "alpha/r"
            let scalings = adapter.scalings.map {
                "alpha \(short($0.alpha)) → \(short($0.scaling)) (\($0.modules) module\($0.modules == 1 ? "" : "s"))"
            }
            rows.append(("scaling", rule + ": " + scalings.joined(separator: ", ")))
        }
        if !adapter.carried.isEmpty {
            rows.append(("carried", "\(adapter.carried.count) tensor\(adapter.carried.count == 1 ? "" : "s") replace base tensors whole, "
                + "\(countDescription(adapter.carriedParameters)) parameters, \(NumberFormatting.bytes(adapter.carriedBytes)):"))
            for carried in adapter.carried {
                rows.append(("", "\(TerminalText.escaped(carried.baseName)) (\(carried.reason))"))
            }
        }
        rows.append(("base model", adapter.baseModel.map { "\"\(TerminalText.escaped($0))\" (as recorded by the trainer)" } ?? "(not recorded)"))
        rows.append(("fingerprint", adapter.fingerprint.map { TerminalText.escaped($0) }
            ?? "none (a merge cannot check that it is the base the adapter was made for)"))
        if let base = adapter.base {
            rows.append(("base", "\(TerminalText.escaped(base.path)): \(countDescription(base.parameters)) parameters; "
                + "the adapter is \(String(format: "%.3g", base.sharePercent)) % of it"))
            // Spelled as PEFT's print_trainable_parameters() prints it, so the two can be compared by eye.
            rows.append(("PEFT counts", "trainable params: \(NumberFormatting.grouped(base.peftTrainable)) || all params: "
                + "\(NumberFormatting.grouped(base.peftAll)) || trainable%: \(String(format: "%.4f", base.peftTrainablePercent))"))
            if base.problems.isEmpty {
                rows.append(("fit", "all \(adapter.moduleCount) modules fit the base"))
            } else {
                rows.append(("fit", "\(base.problems.count) problem\(base.problems.count == 1 ? "" : "s") with this base:"))
                for problem in base.problems { rows.append(("", "- " + TerminalText.escaped(problem))) }
            }
        }
        return rows
    }

    private static func short(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(format: "%.6g", value)
    }

    static func formatDescription(_ inspection: CheckpointInspection) -> String {
        if let index = inspection.index {
            return "sharded, \(inspection.files.count) files + index (\(TerminalText.escaped(index.name)))"
        }
        return "safetensors, 1 file" + (inspection.kind == .file ? "" : " (\(TerminalText.escaped(inspection.files[0].name)))")
    }

    static func fileDescription(_ file: CheckpointInspection.File) -> String {
        let tensors = file.tensorCount == 1 ? "1 tensor" : "\(NumberFormatting.grouped(file.tensorCount)) tensors"
        return "\(TerminalText.escaped(file.name))  \(tensors), \(NumberFormatting.bytes(file.size))"
    }

    /// `1,100,048,384 (1.10 B)`.
    static func countDescription(_ count: Int) -> String {
        NumberFormatting.grouped(count) + (NumberFormatting.shortCount(count).map { " (\($0))" } ?? "")
    }

    /// `2,200,096,768 (2.05 GiB)`.
    static func bytesDescription(_ count: Int) -> String {
        NumberFormatting.grouped(count) + (count >= 1024 ? " (\(NumberFormatting.bytes(count)))" : "")
    }

    // MARK: Table

    static func table(_ inspection: CheckpointInspection, showAll: Bool) -> String {
        var columns: [TextTable.Column] = [
            .init(title: "NAME", alignment: .left),
            .init(title: "DTYPE", alignment: .left),
            .init(title: "SHAPE", alignment: .left),
            .init(title: "SIZE", alignment: .right),
        ]
        if inspection.includesStatistics {
            columns += ["MIN", "MAX", "MEAN", "STD", "NAN", "INF"].map { .init(title: $0, alignment: .right) }
        }
        var table = TextTable(columns)
        let tensors = inspection.tensors
        let shown = Shortening(count: tensors.count, threshold: shorteningThreshold,
                               head: headCount, tail: tailCount, showAll: showAll)
        for tensor in tensors[shown.headRange] { table.append(cells(tensor, statistics: inspection.includesStatistics)) }
        if shown.omitted > 0 {
            table.appendNote("… \(NumberFormatting.grouped(shown.omitted)) more tensors (use --all)")
        }
        for tensor in tensors[shown.tailRange] { table.append(cells(tensor, statistics: inspection.includesStatistics)) }
        return table.rendered()
    }

    static func cells(_ tensor: CheckpointInspection.Tensor, statistics: Bool) -> [String] {
        var cells = [
            TerminalText.escaped(tensor.name, limit: nameLimit),
            tensor.dtype.rawValue,
            NumberFormatting.shape(tensor.shape),
            NumberFormatting.bytes(tensor.byteCount),
        ]
        guard statistics else { return cells }
        guard let stats = tensor.statistics else { return cells + Array(repeating: "-", count: 6) }
        let value: (Double?) -> String = { $0.map(NumberFormatting.statistic) ?? "-" }
        cells += [
            value(stats.minimum.map(Double.init)), value(stats.maximum.map(Double.init)),
            value(stats.mean), value(stats.standardDeviation),
            NumberFormatting.grouped(stats.nanCount), NumberFormatting.grouped(stats.infinityCount),
        ]
        return cells
    }
}
