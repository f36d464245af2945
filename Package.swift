// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "thinkv-sim",
    products: [
        .executable(name: "thinkv-sim", targets: ["thinkv-sim"]),
        .library(name: "ThinKVSim", targets: ["ThinKVSim"])
    ],
    targets: [
        // HDF5 through pkg-config; shim.h wraps the macros Swift cannot import.
        .systemLibrary(
            name: "CHDF5",
            path: "Sources/CHDF5",
            pkgConfig: "hdf5",
            providers: [.apt(["libhdf5-dev", "zlib1g-dev", "pkg-config"])]
        ),
        // Cache prefetch hints for the attention kernels (Swift has none of its own).
        .target(name: "CPrefetch", path: "Sources/CPrefetch"),
        // prctl (variadic, so not callable from Swift), for children that must die with their parent.
        .target(name: "CProcess", path: "Sources/CProcess"),
        // HDF5's deflate filter with a bound on what one chunk inflates to (a compression bomb
        // in a chunk that declares a few KB); zlib comes with the HDF5 packages.
        .target(name: "CInflate", path: "Sources/CInflate", linkerSettings: [.linkedLibrary("z")]),
        // What every layer uses and which knows nothing of traces or policies: usage errors and
        // argument parsing, number formats, output files written aside and moved into place,
        // text and CSV files, comma lists, suggestions, the seeded random generator, the machine
        // description, the version. A dependency on the rest of the package is a compile error.
        .target(name: "ThinKVSupport"),
        // Traces: the HDF5 format of docs/trace-format.md (header, layers, tensors read in rows with
        // bounded sizes), the writer, layer selections, thought labels and types, and the recorded
        // attention's cross-check.
        .target(name: "ThinKVTrace", dependencies: ["ThinKVSupport", "CHDF5", "CInflate", "CProcess"]),
        // The simulator's engine: the replay engine (one driver for every policy, `PolicyLayerRun`),
        // the full-cache reference and its kernels, the fidelity metrics, quantizers, synthetic
        // traces, and what a policy is (`CachePolicy`, typed parameters, `PolicySpec`) but no
        // policy. It re-exports ThinKVSupport and ThinKVTrace.
        .target(name: "ThinKVEngine", dependencies: ["ThinKVSupport", "ThinKVTrace", "CPrefetch", "CProcess"]),
        // The policies, one file each, their registry and algebra (compositions), ThinKV's thought
        // classification, policy lists as commands spell them, the memory matcher and the online
        // driver. It re-exports ThinKVEngine.
        .target(name: "ThinKVPolicies", dependencies: ["ThinKVEngine"]),
        // What the commands make of replays: sweeps over configs, reports, figures. It re-exports
        // ThinKVPolicies, so a command or a test imports one module.
        .target(name: "ThinKVSim", dependencies: ["ThinKVPolicies"]),
        // One file per subcommand: each parses its options and calls the library.
        .executableTarget(name: "thinkv-sim", dependencies: ["ThinKVSim"]),
        // Fixture files live in Tests/Fixtures and are found relative to the test sources.
        // Tests use the HDF5 C API directly to build malformed files a writer would refuse to make.
        // zlib lets tests build compressed chunks by hand (compression bombs).
        .systemLibrary(name: "CZlib", path: "Tests/CZlib"),
        .testTarget(
            name: "ThinKVSimTests",
            dependencies: ["ThinKVSim", "ThinKVPolicies", "ThinKVEngine", "ThinKVTrace", "CHDF5", "CZlib"])
    ],
    swiftLanguageModes: [.v5]
)
