#!/usr/bin/env bash
# The real-tissue recipe on CoNSeP Train (docs/real-tissue.md), step by step with wall times.
# Usage: benchmarks/real_tissue.sh WORK_DIR [STEP...]   steps: prepare train synth eval study (default: all)
# Each step is the README's command with the consep-cpu / consep presets; reruns resume or reuse
# finished work (train --resume, synthesize resumes itself, benchmark reuses finished runs).
# Two-core CPU: the two models train at once with one thread each, S1 and S2 are synthesized at
# once, and the studies run as two processes (addition + real-vs-synthetic, replacement).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
NASDM="${NASDM:-$REPO/.venv/bin/nasdm-aug}"
DATA="${DATA:-$REPO/../shared/data/consep/Train}"
WORK="${1:?usage: real_tissue.sh WORK_DIR [STEP...]}"; shift
STEPS="${*:-prepare train synth eval study}"
mkdir -p "$WORK"; cd "$WORK"
TIMES="$WORK/times.txt"
one() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$@"; }
stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$TIMES"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }

if has prepare; then
  stamp "prepare start"
  "$NASDM" prepare --format consep "$DATA" consep.h5 --magnification 20 --patch-size 64 --stride 32 --quiet
  stamp "prepare end"
fi
if has train; then
  stamp "train start"
  for k in mask patch; do
    resume=""; [[ -f runs/$k/config.json ]] && resume="--resume"
    one "$NASDM" train $k --store consep.h5 --split Train --preset consep-cpu --out runs/$k --device cpu --no-progress $resume > train_$k.log 2>&1 &
  done
  wait; stamp "train end"
fi
SYN=(--sampler dpmpp_2m --steps 15 --guidance 1.5 --guidance-interval 0,5.42 --device cpu)  # the README's, and the consep preset's sampling
if has synth; then
  stamp "synth start"
  one "$NASDM" synthesize --model runs/mask --model runs/patch --masks consep.h5 --split R2 --out s2.h5 "${SYN[@]}" --preview 16 > synth_s2.log 2>&1 &
  one "$NASDM" synthesize --model runs/mask --model runs/patch --masks consep.h5 --split R1 --out s1.h5 "${SYN[@]}" --preview 16 > synth_s1.log 2>&1 &
  wait; stamp "synth end"
fi
if has eval; then
  stamp "eval start"
  one "$NASDM" evaluate --real consep.h5:R2 --synthetic s2.h5 --out eval-s2 --overwrite > eval_s2.log 2>&1 &
  one "$NASDM" evaluate --real consep.h5:R2 --synthetic consep.h5:R1 --out eval-r1 --overwrite > eval_r1.log 2>&1 &
  wait; stamp "eval end"
fi
if has study; then
  stamp "study start"
  ( one "$NASDM" benchmark --preset consep --store consep.h5 --bank S1=s1.h5 --bank S2=s2.h5 --study addition --out study-addition ${STUDY_OPTS:-}
    one "$NASDM" benchmark --preset consep --store consep.h5 --bank S1=s1.h5 --bank S2=s2.h5 --study real-vs-synthetic --out study-rvs ${STUDY_OPTS:-} ) > study_a.log 2>&1 &
  one "$NASDM" benchmark --preset consep --store consep.h5 --bank S1=s1.h5 --bank S2=s2.h5 --study replacement --runs 2 --out study-replacement ${STUDY_OPTS:-} > study_b.log 2>&1 &
  wait; stamp "study end"
fi
