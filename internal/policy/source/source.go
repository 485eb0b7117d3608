// Package source follows a policy bundle where operators keep it (DESIGN
// §5): a directory (source/dirsource), an OPA bundle server
// (source/httpsource) or a Git repository (source/gitsource), each one
// implementation of [Loader], all passing the one conformance suite in
// source/sourcetest. A [Reloader] turns a Loader into activated engines:
// it loads, prepares (compile and sanity checks), optionally runs the
// bundle's own Rego tests, and only then hands the engine over; a revision
// that fails at any step keeps the last good one deciding.
package source

import (
	"context"
	"errors"

	"github.com/m1-agent/m1/internal/policy"
)

// ErrNotModified is returned by [Loader.Load] when the source tells that
// nothing changed since the tag it was given (an HTTP 304, the same commit).
var ErrNotModified = errors.New("bundle not modified")

// Loader fetches the bundle a source holds now.
//
// Load is given the Tag of the last Result it returned ("" at first or
// after an error). When the source can tell cheaply that nothing changed
// since, it returns ErrNotModified without reading the bundle. Any other
// error (the source unreachable, slow beyond ctx, a bundle that does not
// read, a bad signature) names the source and what failed; the caller
// keeps its last good bundle. Implementations are safe for use by one
// goroutine at a time.
type Loader interface {
	Load(ctx context.Context, tag string) (Result, error)
}

// Result is one bundle fetched from a source.
type Result struct {
	// Bundle is the bundle read, its Revision set: the .manifest revision,
	// else what the source names it by (a Git commit id), else a hash of
	// its files.
	Bundle *policy.Bundle
	// Tag identifies what was fetched, for the next Load (an ETag, a
	// commit id, a revision).
	Tag string
}
