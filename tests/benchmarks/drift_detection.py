"""Detection delay and false alarms: our sketches (PSI, binned KS) vs raw-sample KS.

Run: .venv/bin/python tests/benchmarks/drift_detection.py [--repeats 5]  (~100 s, 2 cores)

For each scikit-learn bundled data set (breast_cancer, wine, digits), half the rows
(stratified) are the reference; the stream draws windows of ``--window`` rows with
replacement from the other half. After ``--before`` windows a real shift starts:

- ``class``: the stream switches to a single class (prior shift, real data);
- ``mean+0.5sd``: the most variable feature moves by half a standard deviation;
- ``scale1.5``: that feature's spread around its mean grows by half.

Detectors, all on the same windows: PSI >= 0.25 on any feature (sketch), binned KS
(sketch; statistic >= 0.1 and Bonferroni p < 0.05), and scipy's raw two-sample KS per
feature with Bonferroni (alpha 0.05 over features, the alibi-detect default). Constant
reference features are skipped by the raw test. Printed: false-alarm rate over the
windows before the shift, and mean delay (windows until the first alarm after it; a
miss counts as ``--after``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.model_selection import train_test_split

from shared.drift import DriftThresholds, FeatureThresholds, WindowAccumulator, build_profile
from shared.drift.thresholds import evaluate

ALPHA = 0.05
PSI_ONLY = DriftThresholds(defaults=FeatureThresholds(alert_on=["psi"]))
KS_ONLY = DriftThresholds(defaults=FeatureThresholds(alert_on=["ks"]))


def shifted(pool, y, kind, rng, *, n, column):
    if kind == "class":
        target = np.bincount(y).argmin()
        rows = pool[y == target]
        return rows[rng.integers(0, len(rows), n)]
    x = pool[rng.integers(0, len(pool), n)].copy()
    mean, std = pool[:, column].mean(), pool[:, column].std()
    if kind == "mean+0.5sd":
        x[:, column] += 0.5 * std
    else:
        x[:, column] = mean + 1.5 * (x[:, column] - mean)
    return x


def raw_ks_alarm(reference, window, informative):
    n = int(informative.sum())
    pvalues = [
        stats.ks_2samp(reference[:, j], window[:, j], method="asymp").pvalue
        for j in np.flatnonzero(informative)
    ]
    return min(pvalues) < ALPHA / n


def run(x, y, kind, args, seed):
    rng = np.random.default_rng(seed)
    ref, pool, _, y_pool = train_test_split(x, y, test_size=0.5, random_state=seed, stratify=y)
    profile = build_profile(ref.astype(np.float64))
    informative = ref.std(axis=0) > 0
    column = int(np.argmax(ref.std(axis=0)))
    alarms: dict[str, list[bool]] = {
        "PSI (sketch)": [],
        "binned KS (sketch)": [],
        "raw KS (scipy)": [],
    }
    for step in range(args.before + args.after):
        if step < args.before:
            window = pool[rng.integers(0, len(pool), args.window)]
        else:
            window = shifted(pool, y_pool, kind, rng, n=args.window, column=column)
        accumulator = WindowAccumulator(profile)
        accumulator.add(window.astype(np.float64))
        sketch = accumulator.snapshot()
        alarms["PSI (sketch)"].append(evaluate(profile, sketch, PSI_ONLY).data_drift)
        alarms["binned KS (sketch)"].append(evaluate(profile, sketch, KS_ONLY).data_drift)
        alarms["raw KS (scipy)"].append(raw_ks_alarm(ref, window, informative))
    results = {}
    for detector, flags in alarms.items():
        before, after = flags[: args.before], flags[args.before :]
        delay = next((i + 1 for i, f in enumerate(after) if f), args.after)
        results[detector] = (float(np.mean(before)), delay, any(after))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--before", type=int, default=20)
    parser.add_argument("--after", type=int, default=5)
    args = parser.parse_args()
    datasets = {
        "breast_cancer": load_breast_cancer(return_X_y=True),
        "wine": load_wine(return_X_y=True),
        "digits": load_digits(return_X_y=True),
    }
    started = time.perf_counter()
    print(
        f"window {args.window} rows, {args.before} windows before the shift, "
        f"{args.after} after, {args.repeats} repeats"
    )
    header = ("data set", "shift", "detector", "false alarms", "mean delay", "detected")
    print("{:<14} {:<11} {:<19} {:>12} {:>10} {:>9}".format(*header))
    for name, (x, y) in datasets.items():
        for kind in ("class", "mean+0.5sd", "scale1.5"):
            runs = [run(x, y, kind, args, seed) for seed in range(args.repeats)]
            for detector in runs[0]:
                false_alarm = np.mean([r[detector][0] for r in runs])
                delay = np.mean([r[detector][1] for r in runs])
                detected = np.mean([r[detector][2] for r in runs])
                print(
                    f"{name:<14} {kind:<11} {detector:<19} {false_alarm:>12.3f} "
                    f"{delay:>10.2f} {detected:>9.0%}"
                )
    print(f"took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
