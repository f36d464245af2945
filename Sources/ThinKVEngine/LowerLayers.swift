// The lower layers' types (UsageError, Format, OutputFile, CSV, SeededRandom, TraceReader,
// TraceHeader, ...) are part of this module's interface: its users and every file here see them
// without an import of their own.
@_exported import ThinKVSupport
@_exported import ThinKVTrace
