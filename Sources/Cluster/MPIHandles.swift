import CMPI
import Errors

/// An MPI communicator handle (never a raw pointer in public API).
public struct CommHandle: @unchecked Sendable {
    let raw: MPI_Comm
    public static var world: CommHandle { CommHandle(raw: sb_comm_world()) }
}

/// An MPI datatype handle.
public struct DataType: @unchecked Sendable {
    let raw: MPI_Datatype
    public static var float: DataType { DataType(raw: sb_type_float()) }
    public static var double: DataType { DataType(raw: sb_type_double()) }
    public static var byte: DataType { DataType(raw: sb_type_byte()) }
    public static var int64: DataType { DataType(raw: sb_type_int64()) }
}

/// An MPI reduction operation handle.
public struct ReduceOp: @unchecked Sendable {
    let raw: MPI_Op
    public static var sum: ReduceOp { ReduceOp(raw: sb_op_sum()) }
}

/// A failed MPI call, with the call's name and MPI's own message.
public struct MPIError: SwitchboardError, CustomStringConvertible {
    public let call: String
    public let code: Int32
    public var message: String { description }
    public var exitCode: Int32 { 1 }
    public var description: String {
        var buf = [CChar](repeating: 0, count: 512)
        var len: Int32 = 0
        MPI_Error_string(code, &buf, &len)
        return failedCall(call, buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
    }
}

@inline(__always) func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
    if code != sb_success() { throw MPIError(call: call(), code: code) }
}
