//go:build !amd64 && !arm64

package main

// sysFinitModule is unknown here: the test VMs are x86-64 (arm64 works
// too); loading a module fails with ENOSYS.
const sysFinitModule int = -1
