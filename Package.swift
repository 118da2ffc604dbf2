// swift-tools-version:6.0
import PackageDescription

// Release code is compiled with -Ounchecked: the hot loops index raw buffers whose bounds
// are established once at workspace creation, and the checks cost measurable time there.
let fast: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

let package = Package(
    name: "switchboard",
    platforms: [.macOS(.v13)],
    products: [.executable(name: "switchboard", targets: ["switchboard"])],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // C shims: the only modules that include C headers.
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // Counts heap allocations per thread; linked only into tests and the bench check.
        .target(name: "CAllocCounter"),
        // Names the rank and step when a rank dies of a fatal signal; notes SIGTERM/SIGINT as a request to stop.
        .target(name: "CSignals"),
        // HDF5's Fletcher32 checksum, vectorized (AVX2 when the CPU has it), for checkpoints.
        .target(name: "CChecksum", cSettings: [.unsafeFlags(["-O3"])]),
        // Loops Swift compiles poorly (vector square root; no AVX in a baseline x86-64 build),
        // each path chosen by instruction set at run time: AdamW, GELU, the experts' x·Wᵀ.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]),

        .target(name: "Kernels", dependencies: ["CBLAS", "CKernels"], swiftSettings: fast),
        .target(name: "Cluster", dependencies: ["CMPI", "Kernels"], swiftSettings: fast),
        .target(name: "Layers", dependencies: ["Kernels"], swiftSettings: fast),
        .target(name: "Storage", dependencies: ["CHDF5", "CZlib", "CChecksum", "Kernels"], swiftSettings: fast),
        .target(
            name: "Training",
            dependencies: ["Kernels", "Cluster", "Layers", "Storage", "CSignals", "CKernels", "TOMLKit"],
            swiftSettings: fast),
        .executableTarget(
            name: "switchboard",
            dependencies: [
                "Training", "CAllocCounter",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: fast),

        .target(name: "TestSupport", dependencies: ["Kernels"], path: "Tests/TestSupport"),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels"]),
        .testTarget(name: "ClusterTests", dependencies: ["Cluster"]),
        .testTarget(name: "LayersTests", dependencies: ["Layers", "Kernels"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Storage", "Cluster", "Kernels", "Layers", "CAllocCounter", "TestSupport"]),
        .testTarget(name: "CLITests", dependencies: ["TestSupport"]),
    ]
)
