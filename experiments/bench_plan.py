"""How long segopt plan's fingerprint and machine probe take, per data set, on this machine.

    python -m experiments.bench_plan --overwrite

The targets (issue: at most 30 s for CamVid's 367 training masks, at most 60 s for the probe on
2 cores) are figures to read here, not timed unit tests. Each data config is planned as
``python -m segopt.plan`` would plan it; nothing is written but the results.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from experiments.common import result_files, write_results
from segopt.commands.from_config import build_from_config
from segopt.commands.outputs import add_overwrite_flag, refuse_to_overwrite
from segopt.commands.plan import probe_for
from segopt.commands.planning.fingerprint import fingerprint
from segopt.commands.planning.probe import probe_machine
from segopt.core.precision import cpu_name

DATA = {
    "CamVid": ["configs/data/camvid.yaml"],
    "membranes": ["configs/data/membrane.yaml", "configs/data/membrane_by_slice.yaml"],
    "magnetic tiles": ["configs/data/magnetic_tiles.yaml"],
}


#: The batch the probe timed every size at before it timed each at the run's batch.
SMALL_BATCH = 4


def measure(configs: list[str]) -> dict[str, object]:
    datamodule = build_from_config([a for c in configs for a in ("--config", c)]).datamodule
    start = time.perf_counter()
    fp = fingerprint(datamodule.source, datamodule.ignore_index)
    fp_s = time.perf_counter() - start
    probe = probe_for(fp)
    sizes = list(dict.fromkeys(t.size for t in probe.timings))
    at_4 = {(t.backbone, t.size): t for t in probe_machine(sizes, fp.channels, fp.num_classes, batch=SMALL_BATCH).timings}
    steps = [{"backbone": t.backbone, "size": list(t.size), "batch": t.batch, "train_ms_per_image": round(t.train_s_per_image * 1e3, 1),
              f"train_ms_per_image_at_{SMALL_BATCH}": round(at_4[t.backbone, t.size].train_s_per_image * 1e3, 1)}
             for t in probe.timings]  # fmt: skip
    return {"configs": configs, "training_masks": fp.images["train"], "fingerprint_s": round(fp_s, 1),
            "probe_s": probe.seconds, "probed": len(probe.timings), "steps": steps}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/plan_speed"), help="writes OUT.json and OUT.md")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    refuse_to_overwrite(result_files(args.out), args.overwrite)
    rows = [{"data": name, **measure(configs)} for name, configs in DATA.items()]
    hardware = {"cpu": cpu_name(), "cores": os.cpu_count()}
    lines = [
        "# segopt plan: fingerprint and probe time",
        "",
        "`python -m experiments.bench_plan --overwrite`",
        "",
        f"Hardware: {hardware['cpu']}, {hardware['cores']} cores, no other job running. The fingerprint decodes every "
        "training and validation pair through the data check and every training mask again for the widths; the probe "
        "times training steps (after a warm-up) and an evaluation pass of each candidate network at two sizes, "
        "each at the batch a CPU run trains it at.",
        "",
        "| data | training masks | fingerprint (s) | probe (s) | network/size pairs probed |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['data']} | {r['training_masks']} | {r['fingerprint_s']} | {r['probe_s']} | {r['probed']} |" for r in rows]
    lines += [
        "",
        f"Per-image training step in the probe, at the run's batch and at {SMALL_BATCH} (a second probe, same sizes): on a CPU "
        "the time per image is not constant in the batch, so a probe at another batch mispredicts the epochs a budget buys.",
        "",
        f"| data | network | size | run's batch | ms per image | ms per image at {SMALL_BATCH} | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['data']} | {t['backbone']} | {t['size'][0]}x{t['size'][1]} | {t['batch']} | {t['train_ms_per_image']} | "
              f"{t[f'train_ms_per_image_at_{SMALL_BATCH}']} | {t['train_ms_per_image'] / t[f'train_ms_per_image_at_{SMALL_BATCH}']:.2f} |"
              for r in rows for t in r["steps"]]  # fmt: skip
    write_results(args.out, {"hardware": hardware, "rows": rows}, lines)


if __name__ == "__main__":
    main()
