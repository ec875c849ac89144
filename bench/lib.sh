# Shared by the bench scripts.

# per_second prints every "<value> <unit>/s" metric of `go test -bench` output, one line each.
per_second() {
  awk '/^Benchmark/ {for (i = 1; i < NF; i++) if ($(i+1) ~ /\/s$/) printf "  %-40s %8.0f %s\n", $1, $i, $(i+1)}'
}
