// The policies, the engine and the layers below them are part of this module's interface:
// `import ThinKVSim` gives a command or a test everything.
@_exported import ThinKVPolicies
