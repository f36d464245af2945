// The engine and the layers below it are part of this module's interface: its users and every
// file here see them without an import of their own.
@_exported import ThinKVEngine
