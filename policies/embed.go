// Package policies holds M1's default OPA bundle, embedded in the binaries.
//
// The bundle is the standard OPA layout: authz.rego (package m1.authz, whose
// rule decision is read at the default M1_POLICY_PATH m1/authz/decision),
// its unit tests in authz_test.rego, and the tool registry in
// m1/tools/data.json (data.m1.tools). It has no .manifest, so its revision
// is the hash of its files. M1_POLICY_DIR replaces it with a bundle on disk.
package policies

import (
	"embed"
	"io/fs"
)

//go:embed *.rego m1
var bundle embed.FS

// FS returns the default bundle, rooted at the bundle root, for
// policy.LoadFS. It is read-only and safe for concurrent use.
func FS() fs.FS { return bundle }
