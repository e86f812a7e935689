package main

// sysFinitModule is finit_module(2); the syscall package lacks it.
const sysFinitModule int = 273
