//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package sidecar

import "errors"

// hostStatfs does not measure free space on this platform.
func hostStatfs(string) (avail, total uint64, err error) { return 0, 0, errors.ErrUnsupported }
