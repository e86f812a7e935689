// build/ holds generated outputs (packages, images, VM kernels, a Debian
// root file system while the Pi image is built). This file makes it a
// module of its own, so that `go test ./...` and friends in the
// repository never descend into it.
module buildoutputs

go 1.26
