// swift-tools-version:6.0
// libFuzzer targets for peftkit's parsers. Not part of the root package (no unsafe flags there): the sanitizer flags
// are given on the command line by run.sh. See README.md.
import PackageDescription

let fuzzTargets = [
    "FuzzHeader", "FuzzSafeTensorsFile", "FuzzShardIndex", "FuzzAdapterConfig", "FuzzLegacyBin", "FuzzPickle",
    "FuzzPeftkitFile", "FuzzMLXAdapter", "FuzzGGUF", "FuzzUnmergeRecord",
]

let package = Package(
    name: "peftkit-fuzz",
    dependencies: [
        .package(name: "peftkit", path: ".."),
    ],
    targets: [
        .target(name: "FuzzSupport"),
    ] + fuzzTargets.map { name in
        .executableTarget(name: name, dependencies: [
            "FuzzSupport",
            .product(name: "SafeTensors", package: "peftkit"),
            .product(name: "PEFTKit", package: "peftkit"),
            .product(name: "GGUF", package: "peftkit"),
        ])
    }
)
