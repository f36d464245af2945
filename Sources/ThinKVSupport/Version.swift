/// The tool's version, written into the traces it generates (`generator` attribute).
public enum ThinKVSimVersion {
    public static let current = "0.1.0"
}
