import Errors
import Foundation
import Storage

/// TensorBoard's event file, so `tensorboard --logdir <output>` shows every run: TFRecords
/// (length, masked CRC-32C of the length, data, masked CRC-32C of the data) of `Event`
/// protobufs, each a wall time, a step and a summary of scalar values.
///
/// Each `write` is one `write(2)` of whole records, so a run killed mid-write leaves a file
/// whose last record is cut short: TensorBoard reads up to the last whole one. A resumed run
/// starts a new file in the same folder; TensorBoard joins the files of a folder by step, and
/// the new file's first event (`restart`) tells it to drop what the run logged past its
/// checkpoint before it was stopped, as the resumed run logs those steps again.
public final class EventFile {
    public let path: String
    private let fd: Int32
    /// The end of the last whole record written.
    private var end: off_t = 0

    /// Creates `events.out.tfevents.<seconds>.<host>` in `folder` (with `.1`, `.2`, … when a
    /// file of that second exists already) and writes the file-version record.
    public init(folder: String) throws {
        let wallTime = Date().timeIntervalSince1970
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
        let base = "\(folder)/events.out.tfevents.\(Int(wallTime)).\(host)"
        var path = base, n = 0, fd: Int32 = -1
        while true {
            fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if fd >= 0 || errno != EEXIST || n >= 1000 { break }
            n += 1
            path = "\(base).\(n)"
        }
        guard fd >= 0 else { throw DiskError(path, "cannot create the TensorBoard event file (\(systemMessage()))") }
        self.path = path
        self.fd = fd
        var event = Protobuf()
        event.double(1, wallTime)
        event.string(3, "brain.Event:2")
        try append(event.bytes)
    }

    deinit { Glibc.close(fd) }

    /// Writes one event at `step` with a scalar for each (tag, value).
    public func write(step: Int, scalars: [(String, Double)]) throws {
        let wallTime = Date().timeIntervalSince1970
        guard !scalars.isEmpty else { return }
        var summary = Protobuf()
        for (tag, value) in scalars {
            var v = Protobuf()
            v.string(1, tag)
            v.float(2, Float(value))
            summary.message(1, v)
        }
        var event = Protobuf()
        event.double(1, wallTime)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.message(5, summary)
        try append(event.bytes)
    }

    /// Marks a restart (a `SessionLog` START event at `step`): TensorBoard drops every event
    /// of the folder's earlier files from `step` on.
    public func restart(at step: Int) throws {
        var start = Protobuf()
        start.varint(1, 1)                   // SessionLog.status = START
        var event = Protobuf()
        event.double(1, Date().timeIntervalSince1970)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.message(7, start)              // Event.session_log
        try append(event.bytes)
    }

    /// The keys of a metrics record that place it (kind, step, epoch) rather than measure.
    public static let positionKeys: Set<String> = ["kind", "step", "epoch"]

    /// The scalars of one metrics record: every number under `<kind>/<key>` (arrays as
    /// `<kind>/<key>/<index>`), the step and epoch aside.
    public static func scalars(_ fields: [(String, JSONValue)]) -> (step: Int, scalars: [(String, Double)])? {
        guard case .string(let kind)? = fields.first(where: { $0.0 == "kind" })?.1,
              case .int(let step)? = fields.first(where: { $0.0 == "step" })?.1 else { return nil }
        var out: [(String, Double)] = []
        func add(_ tag: String, _ value: JSONValue) {
            switch value {
            case .int(let v): out.append((tag, Double(v)))
            case .double(let v): out.append((tag, v))
            case .array(let items): for (i, item) in items.enumerated() { add("\(tag)/\(i)", item) }
            case .object(let members): for (k, item) in members { add("\(tag)/\(k)", item) }
            case .string, .bool: break
            }
        }
        for (key, value) in fields where !Self.positionKeys.contains(key) { add("\(kind)/\(key)", value) }
        return (step, out)
    }

    /// Writes one TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C.
    private func append(_ data: [UInt8]) throws {
        let length = UInt64(data.count).littleEndianBytes
        let bytes = length + CRC32C.masked(length).littleEndianBytes + data + CRC32C.masked(data).littleEndianBytes
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            // A short write (a full disk) would leave a cut record that ends TensorBoard's
            // reading of every later one: cut the file back to its last whole record.
            let message = systemMessage()
            _ = ftruncate(fd, end)
            _ = lseek(fd, end, SEEK_SET)
            throw DiskError(path, "cannot write (\(message))")
        }
        end += off_t(bytes.count)
    }
}

/// Protocol-buffer wire format, the few field kinds an `Event` needs.
struct Protobuf {
    private(set) var bytes: [UInt8] = []

    mutating func varint(_ field: Int, _ value: UInt64) {
        key(field, 0)
        raw(value)
    }
    mutating func double(_ field: Int, _ value: Double) {
        key(field, 1)
        bytes += value.bitPattern.littleEndianBytes
    }
    mutating func float(_ field: Int, _ value: Float) {
        key(field, 5)
        bytes += value.bitPattern.littleEndianBytes
    }
    mutating func string(_ field: Int, _ value: String) { lengthDelimited(field, Array(value.utf8)) }
    mutating func message(_ field: Int, _ value: Protobuf) { lengthDelimited(field, value.bytes) }

    private mutating func lengthDelimited(_ field: Int, _ payload: [UInt8]) {
        key(field, 2)
        raw(UInt64(payload.count))
        bytes += payload
    }
    private mutating func key(_ field: Int, _ wireType: UInt64) { raw(UInt64(field) << 3 | wireType) }
    private mutating func raw(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }
}

/// CRC-32C (Castagnoli), as TFRecord frames use it, and its mask.
enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    static func checksum(_ data: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in data { c = table[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    /// TFRecord's mask: rotate right by 15, add a constant (a CRC over data holding CRCs
    /// is weak otherwise).
    static func masked(_ data: [UInt8]) -> UInt32 {
        let c = checksum(data)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }
}

extension FixedWidthInteger {
    var littleEndianBytes: [UInt8] { withUnsafeBytes(of: littleEndian) { Array($0) } }
}
