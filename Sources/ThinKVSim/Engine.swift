// The engine and the layers below it are part of this module's interface: `import ThinKVSim`
// gives a command or a test everything.
@_exported import ThinKVEngine
