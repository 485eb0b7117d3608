# Reads `go test -bench` output (make bench) and prints the speed targets
# that are ratios between benchmarks of the same run, from the medians of
# the runs (-count N runs the sub-benchmarks of one benchmark in turn, so a
# change in the machine's load affects both alike).
# (Go adds "-N" to the names when GOMAXPROCS is N > 1.)
$1 ~ /^BenchmarkCheck\/cache_hit(-[0-9]+)?$/         { hit[++nh] = $3 }
$1 ~ /^BenchmarkCheck\/cache_hit_audited(-[0-9]+)?$/ { audited[++na] = $3 }

function median(v, n,    i, j, t) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && v[j-1] > v[j]; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
	return n % 2 ? v[(n+1)/2] : (v[n/2] + v[n/2+1]) / 2
}

END {
	if (!nh || !na)
		print "auditing on the check path: no cache_hit and cache_hit_audited results to compare"
	else
		printf "auditing on the check path: cache_hit_audited / cache_hit = %.2f (median of %d runs each; target: at most 1.10)\n", median(audited, na) / median(hit, nh), na
}
