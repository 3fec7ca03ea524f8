"""``python -m training.model_card RUN_DIR [RUN_DIR ...] MODEL_DIR [--scores bench/results/model.json]``: write
MODEL_CARD.md beside an exported model — how it was made (the commands and the data; per training stage, in order:
the run's exact config, steps, wall time, held-out evaluations) and what it scores (given ``--scores``,
``bench/bench_model.py``'s results)."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import yaml

RECIPE = """lisa-make-rooms data/rooms --scenes 200 --frames 50 --val 200 --seed 0
lisa-make-tiny runs/lisa-tiny-rooms-init --shape rooms --corpus data/rooms/corpus.txt --untouched
lisa-train --config training/configs/lisa_tiny_rooms.yaml
lisa-export runs/lisa-tiny-rooms runs/lisa-tiny-rooms-stage1 --tag best --dtype float16
lisa-train --config training/configs/lisa_tiny_rooms_stage2.yaml
lisa-export runs/lisa-tiny-rooms-stage2 runs/lisa-tiny-rooms-stage2-best --tag best --dtype float16
lisa-train --config training/configs/lisa_tiny_rooms_stage3.yaml
lisa-export runs/lisa-tiny-rooms-stage3 lisa_core/models/lisa-tiny-rooms --tag best --dtype float16"""


def run_facts(run: Path) -> dict:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    evals = [r for r in rows if r.get("giou")]
    best = max(evals, key=lambda r: float(r["giou"])) if evals else None
    return {"steps": int(rows[-1]["step"]), "samples": int(rows[-1]["samples"]),
            "wall_s": wall_seconds(rows), "evals": [(int(r["step"]), float(r["giou"])) for r in evals],
            "best": (int(best["step"]), float(best["giou"])) if best else None}


def wall_seconds(rows: list[dict]) -> float:
    """Training time of a run's kept steps. Runs resumed by older lisa-train versions restart "seconds" at each
    resume: each such drop closes a segment whose time is added."""
    total, previous = 0.0, 0.0
    for row in rows:
        seconds = float(row["seconds"])
        if seconds < previous:
            total += previous
        previous = seconds
    return total + previous


def data_facts(dataset_dir: Path) -> tuple[int, int]:
    """(scenes, frames) of the ScanNet-layout training data, counted on disk."""
    scenes = sorted((dataset_dir / "scannet").glob("scene*"))
    return len(scenes), sum(len(list((s / "color").glob("*.jpg"))) for s in scenes)


def size_mb(model_dir: Path) -> float:
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.name != "MODEL_CARD.md") / 1e6


def scores_section(scores: dict) -> str:
    t, c, f, n = scores["teacher_forced"], scores["chat"], scores["follow_up"], scores["no_mask"]
    lines = [
        f"On {scores['held_out_rooms']} held-out rooms (`bench/bench_model.py --rooms {scores['held_out_rooms']} "
        f"--seed {scores['split_seed']}`; no room shared with training):", "",
        "| measure | value |", "|---|---|",
        f"| teacher-forced gIoU / cIoU (`lisa-eval`'s protocol) | {t['giou']:.3f} / {t['ciou']:.3f} |",
        f"| free chat: replies with `[SEG]` and a mask | {c['seg_rate']:.1%} |",
        f"| free chat: the right object named first | {c['named_right']:.1%} |",
        f"| free chat: reply in a taught answer form | {c['readable']:.1%} |",
        f"| free chat gIoU (no mask = 0) | {c['giou']:.3f} |",
        f"| follow-up turn: the right object named | {f['named_right']:.1%} (gIoU {f['giou']:.3f}) |",
        f"| no mask wanted: answered without `[SEG]` | {n['without_seg']:.1%} |",
        f"| no mask wanted: answered right (wall colour / is there a …) | {n['right']:.1%} "
        f"({n['right_wall_colour']:.1%} / {n['right_is_there']:.1%}) |", "",
        "Per class (free chat): " + ", ".join(f"{k} {v['named_right']:.0%} named, gIoU {v['giou']:.2f}"
                                              for k, v in c["per_class"].items()) + ".",
    ]
    return "\n".join(lines)


def stage_section(number: int, run: Path) -> str:
    config = json.loads((run / "train_config.json").read_text())
    facts = run_facts(run)
    best = f"step {facts['best'][0]} (val gIoU {facts['best'][1]:.3f})" if facts["best"] else "the last step"
    return f"""### Stage {number}: `{run}`

From `{config['model']}`: {facts['steps']} optimizer steps, {facts['samples']:,} samples, {facts['wall_s'] / 60:.0f} min
on 2 CPU cores (fp32); exported: {best}.

Validation gIoU during training: {", ".join(f"{s}: {g:.2f}" for s, g in facts['evals'])}.

The run's config (`train_config.json`):

```yaml
{yaml.safe_dump(config, sort_keys=False, width=110).strip()}
```
"""


def write_card(run_dirs, model_dir, scores_path=None) -> Path:
    """``run_dirs``: the training runs that made the model, in order (each from the one before's export)."""
    runs, model = [Path(r) for r in run_dirs], Path(model_dir)
    scores = json.loads(Path(scores_path).read_text()) if scores_path else None
    dataset_dir = json.loads((runs[0] / "train_config.json").read_text())["dataset_dir"]
    scenes, frames = data_facts(Path(dataset_dir))
    stages = "\n".join(stage_section(i, run) for i, run in enumerate(runs, 1))
    card = f"""# lisa-tiny-rooms

A small LISA (the official checkpoint layout: `config.json`, `pytorch_model.bin` in float16, the slow LLaMA
tokenizer with `[SEG]`, its CLIP tower in `clip_vision/`), {size_mb(model):.1f} MB, trained by this project's own
`lisa-train` from a random init on synthetic indoor rooms (`training/data/rooms.py`) written in the ScanNet v2 2D
layout, with the paper's loss weights (1.0·CE + 2.0·BCE + 0.5·DICE). It knows sinks, tables, chairs, beds,
windows, doors, lamps, bookshelves and televisions in rooms like those, asked for by name or by use ("Where can I
wash my hands?"), answers that name the object ("It is the sink [SEG]."), follow-up turns, and questions needing no
mask (the wall's colour, whether a thing is in the room). It knows nothing of the real world. It is the default model
of every entry point; `make embedded-model` remakes it, replacing this directory.

## How it was made

```bash
{RECIPE}
```

Data: {scenes} scenes, {frames:,} rooms (seed 0); validation during training: 200 ReasonSeg-layout rooms
(split seed 1). Re-running the commands remakes an equivalent model (the data, the init and the sample order are
seeded; floating-point reductions on another machine may differ in the last bits).

{stages}
## Scores

{scores_section(scores) if scores else "Not scored yet: run `python bench/bench_model.py`."}
"""
    out = model / "MODEL_CARD.md"
    out.write_text(card)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.model_card", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="the training runs that made it, in order")
    parser.add_argument("model_dir")
    parser.add_argument("--scores", help="bench/results/model.json of this model")
    args = parser.parse_args(argv)
    print(write_card(args.run_dirs, args.model_dir, args.scores))


if __name__ == "__main__":
    main()
