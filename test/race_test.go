//go:build race

package test

// raceEnabled builds the m1-authz binary under test with -race too.
const raceEnabled = true
