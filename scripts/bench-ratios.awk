# Reads `go test -bench` output (make bench) and prints the speed targets
# that are ratios between benchmarks of the same run.
/^BenchmarkCheck\/cache_hit-/         { hit = $3 }
/^BenchmarkCheck\/cache_hit_audited-/ { audited = $3 }
END {
	if (hit && audited)
		printf "auditing on the check path: cache_hit_audited / cache_hit = %.2f (target: at most 1.10)\n", audited / hit
}
