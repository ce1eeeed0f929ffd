"""Command line: python -m workbench {pipeline,train,sample,eval,preferences,export,features,data,results} ...

Bad input gives one line on stderr and exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

from workbench.cli import OneLineParser, one_line


def argtype(words: str):
    """argparse names a value's type by its __name__ in an error: make it words."""
    def name(fn):
        fn.__name__ = words
        return fn
    return name


@argtype("whole number >= 1")
def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def int_list(words: str, lowest: int | None = None):
    """A parser of comma-separated integers (at least one, none below `lowest`), named `words` in errors."""
    @argtype(words)
    def parse(text: str) -> list[int]:
        values = [int(x) for x in text.split(",") if x.strip()]
        if not values or (lowest is not None and min(values) < lowest):
            raise ValueError(text)
        return values
    return parse


DEVICE = "auto (the GPU where one is present, else the CPU), cpu, cuda, cuda:N or mps"
counts = int_list("comma-separated list of whole numbers >= 1", lowest=1)
seeds = int_list("comma-separated list of integer seeds")


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m workbench", description="SwiftVideo workbench")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a method from a YAML config")
    t.add_argument("config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-4")
    t.add_argument("--out", help="run folder (default: the config's `out`)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")

    s = sub.add_parser("sample", help="sample test clips from a checkpoint: mp4 files + contact sheet")
    s.add_argument("checkpoint", help="run folder, checkpoint folder, or shipped model folder")
    s.add_argument("--steps", type=count, default=25)
    s.add_argument("--num", type=count, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="a new or empty folder")
    s.add_argument("--force", action="store_true", help="replace an earlier sample output in --out (files you added "
                                                        "there are kept)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--device", default="auto", help=DEVICE)

    v = sub.add_parser("eval", help="sample the test (or validation) split at several step counts and seeds; write a "
                                    "metrics table, per-clip results and the diversity across seeds")
    v.add_argument("models", nargs="+", metavar="MODEL", help="run folders, checkpoint folders or shipped model folders")
    v.add_argument("--steps", type=counts, default="1,2,4,8,25", help="comma-separated step counts (each model samples with its own sampler)")
    v.add_argument("--num", type=count, default=64, help="clips of the split per (model, steps, seed)")
    v.add_argument("--split", default="test", choices=["test", "validation"],
                   help="validation (data.validation_size clips) for choosing settings; test only for the tables shown")
    v.add_argument("--seeds", type=seeds, default="0,1,2", help="comma-separated noise seeds")
    v.add_argument("--names", help="comma-separated row names (default: each config's name)")
    v.add_argument("--out", required=True, help="a new or empty folder")
    v.add_argument("--force", action="store_true", help="replace an earlier eval output in --out (files you added "
                                                        "there are kept)")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.test_size=1024")
    v.add_argument("--fvd-extractor", default="toy", help="'toy' (adds the column FVD (toy-ae)), 'toy-ae', a toy net "
                                                          ".safetensors, or an I3D TorchScript file")
    v.add_argument("--frame-features", default="toy", help="VBench frame features: 'toy' or a local DINOv2 folder")
    v.add_argument("--vbench", default="auto", choices=["auto", "builtin"], help="auto: the vbench package if installed")
    v.add_argument("--cache", default="runs/eval-cache", help="cache folder for reference features and samples ('' = off)")
    v.add_argument("--batch-size", type=count, default=32)
    v.add_argument("--device", default="auto", help=DEVICE + " (the models and the evaluation networks)")

    pr = sub.add_parser("paired", help="paired differences of (method, steps) pairs in an eval output, with "
                                       "bootstrap intervals over its clips")
    pr.add_argument("eval_dir", help="an eval output folder (clips.csv, features.npz, diversity.csv)")
    pr.add_argument("--pair", nargs=2, action="append", required=True, metavar=("A", "B"),
                    help="METHOD:STEPS METHOD:STEPS, e.g. --pair swiftvideo:4 osv:4 (repeat for more); shows a - b")
    pr.add_argument("--metrics", help="comma-separated metric columns (default: every one the folder holds)")
    pr.add_argument("--boot", type=count, default=1000, help="bootstrap resamples of the clips")
    pr.add_argument("--level", type=float, default=0.95, help="the interval's coverage, in (0, 1)")

    f = sub.add_parser("features", help="the toy FVD networks and the toy DINOv2 feature net")
    fsub = f.add_subparsers(dest="features_cmd", required=True)
    ft = fsub.add_parser("train", help="train a toy feature net on synthetic clips (fvd: toy_fvd.safetensors, "
                                       "ae: toy_fvd_ae.safetensors, the second FVD net; dino: a Dinov2Model folder)")
    ft.add_argument("--kind", default="fvd", choices=["fvd", "ae", "dino"])
    ft.add_argument("--out", help="default: experiments/toy/fvd, experiments/toy/fvd_ae or experiments/toy/dino")
    ft.add_argument("--steps", type=count, help="default: 1000 (fvd), 1500 (ae), 3000 (dino)")
    ft.add_argument("--batch", type=count, help="default: 48 (fvd), 32 (ae), 64 (dino)")
    ft.add_argument("--seed", type=int, default=0)

    q = sub.add_parser("preferences", help="build TA preference pairs: more-step sample wins over fewer-step")
    q.add_argument("model", help="run, checkpoint or model folder (the aligned model)")
    q.add_argument("--out", required=True)
    q.add_argument("--num", type=count, default=512, help="pairs (train clips 0..num-1)")
    q.add_argument("--win-steps", type=count, default=8)
    q.add_argument("--lose-steps", type=count, default=4)
    q.add_argument("--winners", default="sampled", choices=["sampled", "real"], help="real: real clips win (Fig. 6)")
    q.add_argument("--seed", type=int, default=0, help="noise seed")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--device", default="auto", help=DEVICE)
    q.add_argument("--batch-size", type=count, default=32, help="pairs sampled at once (a process's share: batches)")

    pl = sub.add_parser("pipeline", help="teacher -> CCD -> CCD+DA -> TA rounds -> evaluation, skipping finished stages")
    pl.add_argument("config", help="a pipeline YAML, e.g. experiments/toy/swiftvideo.yaml")
    pl.add_argument("--out", help="pipeline folder (default: the config's `out`)")
    pl.add_argument("--check", action="store_true", help="check every stage's config and the files and folders it "
                    "names, then stop (exit 2 naming what is missing); trains nothing")
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. eval.num=16")
    pl.add_argument("--device", default="auto", help=DEVICE + " (preference pairs, evaluation, sheets)")

    x = sub.add_parser("export", help="write a run's EMA weights as a shippable model folder, or (--diffusers) as a "
                                      "stock diffusers WanImageToVideoPipeline folder")
    x.add_argument("run", help="run folder or checkpoint folder (--diffusers: also a model folder)")
    where = x.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="the workbench's model folder")
    where.add_argument("--diffusers", metavar="DIR", help="a WanImageToVideoPipeline folder (Wan-scale models only)")
    x.add_argument("--steps", type=count, default=4, help="--diffusers: the step count the scheduler is set for "
                                                          "and export.json's call names")
    x.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    x.add_argument("--force", action="store_true", help="replace the folder if it is an earlier export (holds "
                                                        "export.json)")

    tw = sub.add_parser("tiny-wan", help="tiny random Wan-scale model folders (transformer, VAE, UMT5, CLIP, DINOv2) "
                        "and toy mp4 clips at their size: experiments/tiny-wan's inputs")
    tw.add_argument("--out", default="models/tiny-wan", help="a new or empty folder")
    tw.add_argument("--clips", type=count, default=48, help="toy clips written as mp4 + CSV under <out>/clips")
    tw.add_argument("--force", action="store_true", help="replace an earlier tiny-wan output in --out")

    tc = sub.add_parser("tiny-cogvideox", help="tiny random CogVideoX-scale model folders (transformer, VAE, T5, "
                        "scheduler config, DINOv2) and toy mp4 clips at their size: experiments/tiny-cogvideox's inputs")
    tc.add_argument("--out", default="models/tiny-cogvideox", help="a new or empty folder")
    tc.add_argument("--clips", type=count, default=48, help="toy clips written as mp4 + CSV under <out>/clips")
    tc.add_argument("--force", action="store_true", help="replace an earlier tiny-cogvideox output in --out")

    wc = sub.add_parser("wan-convert", help="a Wan2.1 transformer in the original layout -> a diffusers folder "
                                            "(experiments/wan's model.transformer_path)")
    wc.add_argument("checkpoint", help="the original-layout .safetensors (e.g. Wan2.1-Fun-1.3B-InP's "
                                       "diffusion_pytorch_model.safetensors)")
    wc.add_argument("--out", required=True, help="a new or empty folder")
    wc.add_argument("--preset", default="wan2.1-fun-1.3b-inp", help="the architecture (workbench.models.wan.PRESETS)")
    wc.add_argument("--force", action="store_true", help="replace an earlier wan-convert output in --out")

    d = sub.add_parser("data", help="data tools: export toy clips; cache the frozen encoders' outputs")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    e = dsub.add_parser("export", help="export toy clips as mp4 files + an OpenVid-1M style CSV")
    e.add_argument("--out", required=True, help="a new or empty folder")
    e.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    e.add_argument("--num", type=count, default=64)
    e.add_argument("--seed", type=int, default=0, help="first clip seed")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.toy.size=32")
    c = dsub.add_parser("cache", help="encode a config's clips once (VAE latents, text and CLIP image tokens); "
                                      "data.cache=DIR trains from them")
    c.add_argument("config", help="YAML config (its data and model sections choose the clips and encoders)")
    c.add_argument("--out", required=True, help="a new or empty folder")
    c.add_argument("--force", action="store_true", help="replace an earlier cache in --out")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.train_size=512")
    c.add_argument("--device", default="auto", help=DEVICE + " (the encoders)")

    r = sub.add_parser("results", help="render experiments/toy/RESULTS.md: its template's tables from the shipped CSVs")
    r.add_argument("--template", default="experiments/toy/RESULTS.template.md")
    r.add_argument("--out", default="experiments/toy/RESULTS.md")
    r.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out is not what it renders")

    st = sub.add_parser("study", help="blind user study: build a frozen study set; export its votes")
    stsub = st.add_subparsers(dest="study_cmd", required=True)
    sb = stsub.add_parser("build", help="every model's video on the same first frames and noise, under hash names")
    sb.add_argument("--models", nargs="+", default=["teacher@8", "ccd@4", "da@4", "swiftvideo@4"],
                    metavar="FOLDER@STEPS", help="model folders at step counts (a shipped toy model by name)")
    sb.add_argument("--items", type=count, default=10, help="test clips (first frames) to compare")
    sb.add_argument("--seed", type=int, default=0, help="noise seed")
    sb.add_argument("--attention-checks", type=float, default=0.1, help="extra share of attention-check items")
    sb.add_argument("--out", required=True, help="study folder (must not exist)")
    sb.add_argument("--device", default="auto", help=DEVICE)
    sb.add_argument("--batch-size", type=count, default=16, help="clips sampled at once (a process's share: batches)")
    se = stsub.add_parser("export", help="write every vote of a votes database as CSV")
    se.add_argument("db", help="votes database (a file, a folder holding votes.sqlite, or a postgresql:// URL)")
    se.add_argument("--out", required=True, help="CSV file (must not exist)")
    se.add_argument("--force", action="store_true", help="replace an earlier export (never the database)")

    args = p.parse_args(argv)
    from safetensors import SafetensorError
    try:
        return _run(args)
    except (ValueError, KeyError, OSError, FloatingPointError, SafetensorError) as e:  # bad input, or a file
        print(f"error: {one_line(e)}", file=sys.stderr)                                  # system that refuses
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: where things stand (train says where to resume from), not a traceback
        print(f"interrupted: {one_line(e) or 'stopped by Ctrl-C; nothing was written half-way'}", file=sys.stderr)
        return 130


def _run(args) -> int:
    from workbench.methods import load_config
    if args.cmd == "train":
        from workbench.train import train
        cfg = load_config(args.config, args.set)
        out = train(cfg, args.out, resume=args.resume)
        print(f"run folder: {out}")
    elif args.cmd == "sample":
        from workbench.files import check_output_folder
        from workbench.generate import write_samples
        from workbench.runs import load_model
        check_output_folder(args.out, "sample", args.force)  # before the model loads
        model = load_model(args.checkpoint, args.set, device=args.device)
        files = write_samples(model, args.out, args.steps, args.num, args.seed, force=args.force)
        print(f"wrote {len(files)} clips and contact_sheet.png to {args.out}")
    elif args.cmd == "eval":
        from workbench.eval.report import EvalSpec, evaluate
        from workbench.plots import evaluation_figures
        spec = EvalSpec(args.fvd_extractor, args.frame_features, args.vbench, args.cache, device=args.device)
        evaluate(args.models, args.steps, args.num, args.seeds, args.out, args.batch_size,
                 names=args.names.split(",") if args.names else None, spec=spec, overrides=args.set,
                 force=args.force, draw=evaluation_figures, split=args.split)
        print((Path(args.out) / "table.md").read_text())
    elif args.cmd == "paired":
        from workbench.eval.paired import paired_differences, paired_markdown
        print(paired_markdown(paired_differences(args.eval_dir, args.pair, args.metrics.split(",") if args.metrics
                                                 else None, args.boot, args.level)))
    elif args.cmd == "features" and args.features_cmd == "train" and args.kind == "fvd":
        from workbench.eval.feature_nets import train_toy_fvd_net
        out = train_toy_fvd_net(args.out or "experiments/toy/fvd", args.steps or 1000, args.batch or 48, seed=args.seed)
        print(f"toy FVD net: {out}")
    elif args.cmd == "features" and args.features_cmd == "train" and args.kind == "ae":
        from workbench.eval.toy_ae import train_toy_video_ae
        out = train_toy_video_ae(args.out or "experiments/toy/fvd_ae", args.steps or 1500, args.batch or 32,
                                 seed=args.seed)
        print(f"toy video autoencoder (FVD toy-ae): {out}")
    elif args.cmd == "features" and args.features_cmd == "train":
        from workbench.models.dino import train_toy_dino
        out = train_toy_dino(args.out or "experiments/toy/dino", args.steps or 3000, args.batch or 64, seed=args.seed)
        print(f"toy DINOv2 feature net: {out}")
    elif args.cmd == "preferences":
        from workbench.preferences import build_preferences
        out = build_preferences(args.model, args.out, args.num, args.win_steps, args.lose_steps, args.winners,
                                args.seed, batch_size=args.batch_size, overrides=args.set, device=args.device)
        print(f"preference pairs: {out}")
    elif args.cmd == "pipeline":
        from workbench.pipeline import load_pipeline, missing_inputs, run_pipeline
        cfg = load_pipeline(args.config, args.set)
        if args.check:
            missing = missing_inputs(cfg)
            for path, where in missing.items():
                print(f"missing: {path} ({'; '.join(where)})", file=sys.stderr)
            print(f"{args.config}: {len(cfg.stages)} stages, every config checked; "
                  + (f"{len(missing)} inputs missing" if missing else "every input present"))
            return 2 if missing else 0
        out = run_pipeline(cfg, args.out, device=args.device)
        print(f"pipeline folder: {out}")
    elif args.cmd == "export" and args.diffusers:
        import json
        from workbench.export_diffusers import export_diffusers
        out = export_diffusers(args.run, args.diffusers, args.dtype, args.steps, force=args.force)
        pipeline = json.loads((Path(out) / "model_index.json").read_text())["_class_name"]
        print(f"diffusers pipeline folder: {out} (load: {pipeline}.from_pretrained; call: {out}/export.json)")
    elif args.cmd == "export":
        from workbench.export import export_model
        print(f"model folder: {export_model(args.run, args.out, args.dtype, force=args.force)}")
    elif args.cmd == "data" and args.data_cmd == "cache":
        from workbench.data.cache import COMMAND, write_cache
        from workbench.files import check_output_folder
        from workbench.models import build_backbone
        cfg = load_config(args.config, args.set)
        check_output_folder(args.out, COMMAND, args.force)   # before the encoders load
        out = write_cache(cfg, build_backbone(cfg.model)[1], args.out, force=args.force, device=args.device)
        print(f"cache folder: {out} (train from it with --set data.cache={out})")
    elif args.cmd == "wan-convert":
        from workbench.models.convert import convert_wan_transformer
        print(f"diffusers transformer folder: {convert_wan_transformer(args.checkpoint, args.out, args.preset, args.force)}")
    elif args.cmd == "tiny-wan":
        from workbench.config import ToySpec
        from workbench.data.export import export_toy
        from workbench.files import output_folder
        from workbench.models import tiny_wan
        with output_folder(args.out, "tiny-wan", args.force) as tmp:
            tiny_wan.save_tiny_wan(tmp)
            tiny_wan.save_dino(tmp / "dinov2")
            export_toy(tmp / "clips", args.clips, spec=ToySpec(size=tiny_wan.CLIP_SIZE, frames=tiny_wan.CLIP_FRAMES))
        print(f"tiny Wan-scale folders and {args.clips} clips: {args.out}")
    elif args.cmd == "tiny-cogvideox":
        from workbench.config import ToySpec
        from workbench.data.export import export_toy
        from workbench.files import output_folder
        from workbench.models import tiny_cogvideox, tiny_wan
        with output_folder(args.out, "tiny-cogvideox", args.force) as tmp:
            tiny_cogvideox.save_tiny_cogvideox(tmp)
            tiny_wan.save_dino(tmp / "dinov2")
            export_toy(tmp / "clips", args.clips,
                       spec=ToySpec(size=tiny_cogvideox.CLIP_SIZE, frames=tiny_cogvideox.CLIP_FRAMES))
        print(f"tiny CogVideoX-scale folders and {args.clips} clips: {args.out}")
    elif args.cmd == "data" and args.data_cmd == "export":
        from workbench.data.export import export_toy
        cfg = load_config(None, args.set)
        csv = export_toy(args.out, args.num, args.seed, cfg.data.toy, force=args.force)
        print(f"wrote {args.num} clips and {csv}")
    elif args.cmd == "results":
        from workbench.eval import results_doc
        if not args.check:
            print(f"wrote {results_doc.write(args.template, args.out)}")
        elif stale := results_doc.first_difference(args.template, args.out):
            print(f"stale: {stale}; run python -m workbench results", file=sys.stderr)
            return 1
    elif args.cmd == "study":
        from workbench import study
        if args.study_cmd == "build":
            out = study.build_study(args.models, args.items, args.seed, args.out, args.attention_checks,
                                    batch_size=args.batch_size, device=args.device)
            print(f"study folder: {out}")
        else:
            print(f"wrote {study.export_votes(args.db, args.out, force=args.force)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
