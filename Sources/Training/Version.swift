/// The program version, recorded in run folders, checkpoint manifests and model files.
public enum Switchboard {
    public static let version = "0.1.0"
}
