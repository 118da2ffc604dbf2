import Errors

/// A problem with input data on disk: what is wrong and in which file.
public struct DataError: SwitchboardError, CustomStringConvertible, Equatable {
    public let path: String
    public let problem: String
    public init(_ path: String, _ problem: String) {
        self.path = path
        self.problem = problem
    }
    public var description: String { "\(path): \(problem)" }
    public var message: String { description }
    public var exitCode: Int32 { 1 }
}
