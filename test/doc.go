// Package test holds M1's end-to-end tests. They build the real m1-authz
// binary once, start it on 127.0.0.1:0 with each test's own flags and
// environment, and speak to it as Envoy and an operator would: ext_authz
// Check calls over gRPC with the CheckRequest fixtures of
// testdata/checkrequests, gRPC health and reflection, and the admin HTTP
// port.
//
// Run them with `go test -race -count=1 ./test/`; under -race the binary
// is built with the race detector too, and a race in it fails the test that
// started it.
package test
