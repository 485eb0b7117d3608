//go:build linux || darwin || freebsd || netbsd || openbsd

package sidecar

import "syscall"

// hostStatfs is the statfsFunc of this platform.
func hostStatfs(dir string) (avail, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), uint64(st.Blocks) * uint64(st.Bsize), nil
}
