#!/usr/bin/env bash
# Prints the proxies' CPU per GB moved by ONE iperf3 stream (the harness
# reports it for 4 streams only), from the raw files of one or more harness
# results folders: median ±spread over the rounds, like the harness's cells.
#
#   bench/tcp1-cpu.sh bench/results/20261129-085520 [more folders...]
set -euo pipefail
(($#)) || { echo "usage: bench/tcp1-cpu.sh RESULTS_DIR..." >&2; exit 1; }
for d in "$@"; do
	clk=$(awk -F'\t' '$1 == "clk_tck" { print $2 }' "$d/raw/meta.tsv")
	# manifest: round test target file proxy_ticks wall other steal status ...
	awk -F'\t' -v clk="${clk:-100}" -v raw="$d/raw" '$2 == "tcp1" && $9 == "ok" && $5 > 0 {
		f = raw "/" $4; bytes = 0; in_sum = 0
		while ((getline line < f) > 0) {
			if (line ~ /"sum_received"/) in_sum = 1
			else if (in_sum && line ~ /"bytes"/) { gsub(/[^0-9.]/, "", line); bytes = line; break }
		}
		close(f)
		if (bytes > 0) print $3, ($5 / clk) * 1e3 / (bytes / 1e9)
	}' "$d/raw/manifest.tsv"
done | sort -k1,1 -k2,2n | awk '
	{ v[$1, ++n[$1]] = $2; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
	END {
		printf "proxy CPU per GB, 1 stream (ms/GB, median ±spread):"
		for (i = 1; i <= k; i++) {
			t = order[i]; c = n[t]
			med = (c % 2) ? v[t, (c + 1) / 2] : (v[t, c / 2] + v[t, c / 2 + 1]) / 2
			printf "%s %s %.0f ±%.0f%% (n=%d)", (i > 1 ? ";" : ""), t, med, (v[t, c] - v[t, 1]) / med * 100, c
		}
		print ""
	}'
