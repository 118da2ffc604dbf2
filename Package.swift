// swift-tools-version:6.0
import PackageDescription

// Release code is compiled with -Ounchecked: the hot loops index raw buffers whose bounds
// are established once at workspace creation, and the checks cost measurable time there.
let fast: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

// Linux (x86-64, Debian) is what is built and tested: OpenMPI, OpenBLAS, oneDNN and HDF5 from Debian's
// packages, /proc, transparent huge pages, glibc's allocator for the allocation counter.
let package = Package(
    name: "switchboard",
    products: [
        .executable(name: "switchboard", targets: ["switchboard"]),
        // Preloaded by `switchboard bench` to count heap allocations; never linked into it.
        .library(name: "SwitchboardAllocCounter", type: .dynamic, targets: ["CAllocCounter"]),
    ],
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
        // Counts heap allocations per thread by interposing malloc: linked into the tests, and
        // preloaded by `switchboard bench` as the SwitchboardAllocCounter library.
        .target(name: "CAllocCounter"),
        // Names the rank and step when a rank dies of a fatal signal; notes SIGTERM/SIGINT as a request to stop.
        .target(name: "CSignals"),
        // HDF5's Fletcher32 checksum, vectorized (AVX2 when the CPU has it), for checkpoints.
        .target(name: "CChecksum", cSettings: [.unsafeFlags(["-O3"])]),
        // Loops Swift compiles poorly (vector square root; no AVX in a baseline x86-64 build),
        // each path chosen by instruction set at run time: AdamW, GELU, the experts' x·Wᵀ.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]),
        // oneDNN (Debian's libdnnl-dev, OpenMP build): prepared matmul primitives for fp32 and
        // bf16 products, and the fp32 → bf16 rounding of their inputs.
        .target(name: "CDNNL", cSettings: [.unsafeFlags(["-O3"])],
                linkerSettings: [.linkedLibrary("dnnl"), .linkedLibrary("gomp")]),

        // Every Swift target lists each module it imports; each imports only modules above it here.
        // The one error protocol every domain error adopts (exit code and one-line message).
        .target(name: "Errors"),
        .target(name: "Kernels", dependencies: ["CBLAS", "CDNNL", "CKernels"], swiftSettings: fast),
        .target(name: "Cluster", dependencies: ["CMPI", "CSignals", "Errors", "Kernels"], swiftSettings: fast),
        .target(name: "Layers", dependencies: ["Kernels"], swiftSettings: fast),
        .target(name: "Storage", dependencies: ["CChecksum", "CHDF5", "CZlib", "Errors", "Kernels"], swiftSettings: fast),
        .target(
            name: "Training",
            dependencies: ["Cluster", "Errors", "Kernels", "Layers", "Storage", "TOMLKit"],
            swiftSettings: fast),
        .executableTarget(
            name: "switchboard",
            dependencies: [
                "Cluster", "Errors", "Kernels", "Layers", "Storage", "Training",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: fast),

        .target(name: "TestSupport", dependencies: ["Kernels"], path: "Tests/TestSupport"),
        .testTarget(name: "KernelsTests", dependencies: ["CDNNL", "CKernels", "Kernels"]),
        .testTarget(name: "ClusterTests", dependencies: ["Cluster"]),
        .testTarget(name: "LayersTests", dependencies: ["Kernels", "Layers", "TestSupport"]),
        .testTarget(name: "TrainingTests",
                    dependencies: ["CAllocCounter", "Cluster", "Kernels", "Layers", "Storage", "TestSupport", "Training"]),
        .testTarget(name: "CLITests", dependencies: ["Kernels", "TestSupport"]),
    ]
)
