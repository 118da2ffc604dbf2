import Kernels
import XCTest

/// Fails unless `a` and `b` hold the same floats bit for bit (NaNs included); the failure
/// says how many elements differ, the first index and both values there.
public func assertBitwiseEqual(_ a: [Float], _ b: [Float], _ what: @autoclosure () -> String,
                               file: StaticString = #filePath, line: UInt = #line) {
    guard a.count == b.count else {
        return XCTFail("\(what()): \(a.count) elements against \(b.count)", file: file, line: line)
    }
    var differ = 0, first = -1
    for i in a.indices where a[i].bitPattern != b[i].bitPattern {
        if first < 0 { first = i }
        differ += 1
    }
    guard differ > 0 else { return }
    XCTFail("\(what()): \(differ) of \(a.count) elements differ; the first at [\(first)]: \(a[first]) against \(b[first])",
            file: file, line: line)
}

/// The same for two tensors.
public func assertBitwiseEqual(_ a: Tensor, _ b: Tensor, _ what: @autoclosure () -> String,
                               file: StaticString = #filePath, line: UInt = #line) {
    assertBitwiseEqual(a.array, b.array, what(), file: file, line: line)
}
