//go:build !unix

package admin

func cpuSeconds() (float64, bool) { return 0, false }
