"""Sum Nsight Compute's per-kernel gpu__time_duration (CSV from `ncu --csv --metrics gpu__time_duration.sum`)."""
import collections
import csv
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]
ki, vi = hdr.index("Kernel Name"), hdr.index("Metric Value")
agg = collections.defaultdict(list)
for r in rows[1:]:
    agg[r[ki][:60]].append(float(r[vi].replace(",", "")))
total = 0.0
for k, v in sorted(agg.items(), key=lambda kv: -sum(kv[1])):
    total += sum(v)
    print(f"{sum(v) / 1e3:9.1f} us  n={len(v):3d}  {k}")
print(f"total {total / 1e3:.1f} us")
