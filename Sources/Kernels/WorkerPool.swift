#if canImport(Glibc)
import Glibc
#endif
import CDNNL

/// Work that can be split into disjoint index ranges.
///
/// A class, not a closure: handing a class reference to the workers is a retain, while a
/// closure (even through `withoutActuallyEscaping`) costs a heap allocation per call here.
public protocol RangeTask: AnyObject {
    func run(_ range: Range<Int>)
}

/// Threads for elementwise work that is large enough to split (the optimizer update), so a
/// process that runs several BLAS threads does not do that part on one core. Made once;
/// `run` allocates nothing.
///
/// Only for work whose result does not depend on how it is split (elementwise updates), so
/// results are bitwise identical for any thread count.
public final class WorkerPool: @unchecked Sendable {
    public static let shared = WorkerPool()

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let done = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var workers = 0
    private var generation = 0
    private var pending = 0
    private var job: (any RangeTask)?
    private var jobCount = 0, jobAlign = 1
    private var parts = 1
    /// Threads taking part in the current job (fewer than `parts` for a short job).
    private var active = 1

    /// Threads that take part in `parallelFor`, the caller included.
    public var threads: Int { workers + 1 }

    private init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
        pthread_cond_init(done, nil)
    }

    /// Makes at least `n − 1` workers (they are never stopped; a process uses one count).
    public func setThreads(_ n: Int) {
        pthread_mutex_lock(mutex)
        let want = max(n - 1, 0)
        while workers < want {
            let index = workers + 1
            workers += 1
            let box = Unmanaged.passRetained(WorkerStart(pool: self, index: index))
            var thread = pthread_t()
            pthread_create(&thread, nil, { raw in
                let start = Unmanaged<WorkerStart>.fromOpaque(raw!).takeRetainedValue()
                start.pool.workerLoop(index: start.index)
                return nil
            }, box.toOpaque())
            pthread_detach(thread)
        }
        parts = n
        pthread_mutex_unlock(mutex)
    }

    /// Runs `task` on `threads` disjoint ranges covering `0..<n`, each starting at a multiple
    /// of `align`, the caller taking the first; returns when all are done. Below `minimum`
    /// items the caller does it all (splitting small elementwise work costs more than it saves).
    public func run(_ task: any RangeTask, count n: Int, align: Int = 64, minimum: Int = 1 << 16) {
        let k = min(parts, n / align)
        if k <= 1 || n < minimum { task.run(0..<n); return }
        pthread_mutex_lock(mutex)
        job = task
        jobCount = n
        jobAlign = align
        pending = k - 1
        active = k
        generation += 1
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(mutex)
        task.run(Self.part(0, of: k, n: n, align: align))
        pthread_mutex_lock(mutex)
        while pending > 0 { pthread_cond_wait(done, mutex) }
        job = nil
        pthread_mutex_unlock(mutex)
    }

    @inline(__always) static func part(_ i: Int, of k: Int, n: Int, align: Int) -> Range<Int> {
        let lo = i * (n / align) / k * align
        let hi = i == k - 1 ? n : (i + 1) * (n / align) / k * align
        return lo..<hi
    }

    private func workerLoop(index: Int) {
        // A product started on a worker (one MoE expert per thread) runs on that thread alone.
        sb_omp_set_threads(1)
        var seen = 0
        pthread_mutex_lock(mutex)
        while true {
            while generation == seen { pthread_cond_wait(wake, mutex) }
            seen = generation
            guard let job, index < active else { continue }
            let range = Self.part(index, of: active, n: jobCount, align: jobAlign)
            pthread_mutex_unlock(mutex)
            job.run(range)
            pthread_mutex_lock(mutex)
            pending -= 1
            if pending == 0 { pthread_cond_signal(done) }
        }
    }
}

private final class WorkerStart {
    let pool: WorkerPool
    let index: Int
    init(pool: WorkerPool, index: Int) { self.pool = pool; self.index = index }
}
