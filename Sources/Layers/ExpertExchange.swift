import Kernels

/// Expert parallelism: each rank runs some of the experts, and a layer's tokens travel to the
/// rank that runs their expert and back. A multi-rank trainer provides this; the collectives
/// are the same on every rank whatever the routing (a fixed-size all-to-all of counts, then
/// all-to-alls of rows in which any segment may be empty), so no routing can hang the job.
public protocol ExpertExchange: AnyObject {
    var ranks: Int { get }
    /// The rank that runs expert `expert` on this rank's tokens.
    func runner(of expert: Int) -> Int
    /// `perRank` integers to every rank, the same from every rank.
    func allToAll(_ send: UnsafePointer<Int32>, _ receive: UnsafeMutablePointer<Int32>, perRank: Int)
    /// `sendCounts[r]` floats from `send + sendOffsets[r]` to rank r; `receiveCounts[q]` floats
    /// from rank q into `receive + receiveOffsets[q]`.
    func allToAll(_ send: UnsafePointer<Float>, _ sendCounts: UnsafePointer<Int32>, _ sendOffsets: UnsafePointer<Int32>,
                  _ receive: UnsafeMutablePointer<Float>, _ receiveCounts: UnsafePointer<Int32>,
                  _ receiveOffsets: UnsafePointer<Int32>)
}

/// The buffers of one MoE layer's exchange, sized when the exchange is attached.
final class ExchangeBuffers {
    let exchange: any ExpertExchange
    let ranks: Int
    let experts: Int
    /// [P·E]: rows this rank sends to rank r for expert e / rows rank q sends here for e.
    let sendRows: UnsafeMutablePointer<Int32>
    let receiveRows: UnsafeMutablePointer<Int32>
    /// [P]: floats and float offsets per rank, for the all-to-alls of rows.
    let sendCounts: UnsafeMutablePointer<Int32>, sendOffsets: UnsafeMutablePointer<Int32>
    let receiveCounts: UnsafeMutablePointer<Int32>, receiveOffsets: UnsafeMutablePointer<Int32>
    /// Received rows in source-rank order, before they are grouped by expert (and outgoing
    /// rows after).
    let staging: Tensor
    /// [E] rows placed so far per expert while regrouping.
    let filled: UnsafeMutablePointer<Int>

    init(_ exchange: any ExpertExchange, experts e: Int, rows: Int, width d: Int) {
        self.exchange = exchange
        ranks = exchange.ranks
        experts = e
        let p = ranks
        sendRows = .allocate(capacity: p * e)
        receiveRows = .allocate(capacity: p * e)
        sendCounts = .allocate(capacity: p)
        sendOffsets = .allocate(capacity: p)
        receiveCounts = .allocate(capacity: p)
        receiveOffsets = .allocate(capacity: p)
        staging = Tensor(shape: [rows, d])
        filled = .allocate(capacity: e)
    }

    deinit {
        for b in [sendRows, receiveRows, sendCounts, sendOffsets, receiveCounts, receiveOffsets] { b.deallocate() }
        filled.deallocate()
    }

    /// Float counts and offsets from the row counts (each rank's segment holds its experts in
    /// ascending order, so rows to or from a rank are contiguous).
    func setCounts(width d: Int) {
        var sent: Int32 = 0, received: Int32 = 0
        for r in 0..<ranks {
            var s: Int32 = 0, q: Int32 = 0
            for i in 0..<experts { s += sendRows[r * experts + i]; q += receiveRows[r * experts + i] }
            sendOffsets[r] = sent * Int32(d)
            sendCounts[r] = s * Int32(d)
            receiveOffsets[r] = received * Int32(d)
            receiveCounts[r] = q * Int32(d)
            sent += s
            received += q
        }
    }

    /// Copies rows between the source-rank order of `staging` and the expert order of
    /// `rows` (`toExperts`: staging → rows, else rows → staging); expert e's rows from rank q
    /// follow those from ranks below q. Sets `start` when regrouping forward.
    func regroup(_ rows: UnsafeMutablePointer<Float>, start: UnsafeMutablePointer<Int>, width d: Int,
                 toExperts: Bool, settingStart: Bool) {
        let e = experts
        if settingStart {
            start[0] = 0
            for i in 0..<e {
                var n = 0
                for q in 0..<ranks { n += Int(receiveRows[q * e + i]) }
                start[i + 1] = start[i] + n
            }
        }
        for i in 0..<e { filled[i] = 0 }
        var source = 0
        for q in 0..<ranks {
            for i in 0..<e {
                let n = Int(receiveRows[q * e + i])
                guard n > 0 else { continue }
                let at = rows + (start[i] + filled[i]) * d, staged = staging.data + source * d
                if toExperts { at.update(from: staged, count: n * d) } else { staged.update(from: at, count: n * d) }
                filled[i] += n
                source += n
            }
        }
    }
}
