#!/usr/bin/env bash
# Copies what bench/gpu/check.sh reads (dsb2018's dh360 group: 82 images, 3.9 MB) into a
# git-ignored shared/ inside the checkout. The device tool sends the checkout and a shared/
# folder in it, never the ../shared beside it; the check's command then links ../shared to it:
#
#   bench/gpu/stage_data.sh ../shared        # here, once
#   run(command="bash bench/gpu/check.sh", carry=[".whl"])   # check.sh links ../shared to it
set -eu
cd "$(dirname "$0")/../.."
SRC=${1:?usage: bench/gpu/stage_data.sh PATH_TO_SHARED}
grep -qx '/shared/' .git/info/exclude 2>/dev/null || echo '/shared/' >> .git/info/exclude
python3 - "$SRC/datasets/dsb2018" shared/datasets/dsb2018 <<'PY'
import csv, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
rows = list(csv.reader(open(os.path.join(src, "index.csv"))))
group = rows[0].index("group")
keep = [rows[0]] + [r for r in rows[1:] if r[group] == "dh360"]
ids = {r[0] for r in keep[1:]}
for sub in ("images", "labels"):
  os.makedirs(os.path.join(dst, sub), exist_ok=True)
  for name in os.listdir(os.path.join(src, sub)):
    if name.split(".")[0] in ids:
      shutil.copy(os.path.join(src, sub, name), os.path.join(dst, sub, name))
with open(os.path.join(dst, "index.csv"), "w", newline="") as f:
  csv.writer(f).writerows(keep)
print(f"{len(ids)} dh360 images -> {dst}")
PY
