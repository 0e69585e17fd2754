// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "peftkit",
    products: [
        .executable(name: "peftkit", targets: ["peftkit"]),
        .library(name: "PEFTKit", targets: ["PEFTKit"]),
        .library(name: "SafeTensors", targets: ["SafeTensors"]),
        .library(name: "GGUF", targets: ["GGUF"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // C libraries, linked from the system (apt: libopenblas-dev, zlib1g-dev, libjson-c-dev).
        .systemLibrary(name: "CPeftKitOpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPeftKitZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CPeftKitJSONC", pkgConfig: "json-c", providers: [.apt(["libjson-c-dev"])]),
        // Our own C: Linux system calls that Swift's Glibc module does not declare.
        .target(name: "CPeftKitSystem"),

        // The file format only: knows nothing of adapters.
        .target(name: "SafeTensors", dependencies: ["CPeftKitJSONC", "CPeftKitZlib", "CPeftKitSystem"]),
        // llama.cpp's GGUF container only (strict reader, writer, Q8_0): knows nothing of adapters.
        .target(name: "GGUF", dependencies: ["SafeTensors"]),
        // Adapters, their math and the streaming merge engine.
        .target(name: "PEFTKit", dependencies: ["SafeTensors", "GGUF", "CPeftKitOpenBLAS", "CPeftKitZlib", "CPeftKitJSONC", "CPeftKitSystem"]),
        // Argument parsing and presentation; a library so tests can run commands in-process.
        .target(name: "PEFTKitCLI", dependencies: [
            "PEFTKit", "SafeTensors", "GGUF",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "peftkit", dependencies: ["PEFTKitCLI"]),

        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors"]),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF", "SafeTensors"]),
        .testTarget(name: "PEFTKitTests", dependencies: ["PEFTKit", "SafeTensors", "GGUF", "CPeftKitSystem"]),
        .testTarget(name: "PEFTKitCLITests", dependencies: ["PEFTKitCLI", "PEFTKit", "SafeTensors", "GGUF"]),
    ]
)
