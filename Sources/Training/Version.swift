/// The program version, recorded in run folders (and, later, checkpoints).
public enum Switchboard {
    public static let version = "0.1.0"
}
