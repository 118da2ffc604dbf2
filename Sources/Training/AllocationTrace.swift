import Foundation

/// Test hook: `SWITCHBOARD_COUNT_ALLOCATIONS=1` preloads the allocation counter into `train`
/// (`LaunchEnvironment`) and makes each rank count the heap allocations its training steps
/// make on the main thread, from the third step of the run on (the first steps size what is
/// sized lazily), and print them to stderr at the end as `rank R: N heap allocations in
/// training steps A…B (and M inside the libraries' calls)`. Unset, or without the counter, it costs a nil check per step.
struct AllocationTrace {
    typealias Count = @convention(c) () -> UInt64
    let read: Count
    /// Those made inside libraries' calls (`libraryCall`).
    let readLibraries: Count?
    var counted: UInt64 = 0, inLibraries: UInt64 = 0
    var steps = 0, first = 0

    /// The trace, when the variable is set and the counter is loaded.
    static func open() -> AllocationTrace? {
        guard getenv("SWITCHBOARD_COUNT_ALLOCATIONS") != nil,
              let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sb_thread_allocations") else { return nil }
        let libraries = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sb_thread_library_allocations")
        return AllocationTrace(read: unsafeBitCast(symbol, to: Count.self), readLibraries: libraries.map { unsafeBitCast($0, to: Count.self) })
    }

    /// Counts what `body` (training step `step` of this run, from 0) allocates, from its
    /// third step on.
    mutating func step<T>(_ index: Int, at step: Int, _ body: () throws -> T) rethrows -> T {
        guard index >= 2 else { return try body() }
        if steps == 0 { first = step + 1 }
        let before = read(), librariesBefore = readLibraries?() ?? 0
        let result = try body()
        counted += read() - before
        inLibraries += (readLibraries?() ?? 0) - librariesBefore
        steps += 1
        return result
    }

    func report(rank: Int) {
        guard steps > 0 else { return }
        FileHandle.standardError.write(("rank \(rank): \(counted) heap allocations in training steps \(first)…\(first + steps - 1) "
                                        + "(and \(inLibraries) inside the libraries' calls)\n").data(using: .utf8)!)
    }
}
