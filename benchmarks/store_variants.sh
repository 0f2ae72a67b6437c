#!/usr/bin/env bash
# The demo's retrieval (pretrain multimodal) and FC probe (finetune fc, the former `linear`) for each embed.store_dtype,
# against float16. Needs `dvc repro embed` (the float16 cache) first; the other forms are re-encoded from it
# (benchmarks/cache_size.py --recode; no LM run). Everything goes to data/tmp/. ~5-10 min per form on 2 cores.
#   bash benchmarks/store_variants.sh [float16,bfloat16,int8] [epochs]   # epochs: override pretrain.epochs
set -euo pipefail
stores=${1:-float16,bfloat16,int8}
epochs=${2:-}
out=data/tmp
mkdir -p "$out"
[ -f "$out/text-int8/text.h5" ] || python benchmarks/cache_size.py --skip-clip --recode "${stores//float16,/}" --out "$out" | grep "^# wrote" || true
for s in ${stores//,/ }; do
  d=$out/store-$s
  mkdir -p "$d"
  python - "$s" "$d/params.yaml" "$epochs" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
p["embed"]["store_dtype"] = sys.argv[1]
if sys.argv[3]:  # a shorter schedule (the shared machine): same for every form
    p["pretrain"]["epochs"] = int(sys.argv[3])
    p["pretrain"]["optim"]["warmup_epochs"] = min(p["pretrain"]["optim"]["warmup_epochs"], int(sys.argv[3]) / 4)
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY
  cache=data/cache/text.h5
  [ "$s" = float16 ] || cache=$out/text-$s/text.h5
  cxrpipe pretrain --params "$d/params.yaml" --variant multimodal --prepared data/prepared --text-cache "$cache" \
    --out "$d/model" --metrics "$d/pretrain-multimodal.json" --plots "$d/plots"
  cxrpipe finetune --params "$d/params.yaml" --encoder "$d/model" --protocol fc --prepared data/prepared \
    --out "$d/multimodal-linear.json" --predictions "$d/predictions" --plots "$d/plots"
done
python - "$stores" <<'PY'
import json, sys
rows = {}
for s in sys.argv[1].split(","):
    d = f"data/tmp/store-{s}"
    rows[s] = (json.load(open(f"{d}/pretrain-multimodal.json")), json.load(open(f"{d}/multimodal-linear.json")))
print(json.dumps({s: {"pretrain": a, "linear": b} for s, (a, b) in rows.items()}, indent=1)[:20000])
PY
