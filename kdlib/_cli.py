"""Command line: ``python -m kdlib train CONFIG [key=value ...]`` and ``python -m kdlib eval ...``."""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import logging
import sys
import textwrap

from kdlib import _config as config_mod
from kdlib._env import env_flag
from kdlib._paper import check_config

# The modules that train, score or hash a run load torch (5-25 s on this CPU): they are imported where a
# command needs them, so that --help and a config error answer at once (tests/test_bad_input.py).


def field_docs() -> dict[str, str]:
    """The docstring under each RunConfig field, read from the source (one place for the docs)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(config_mod.RunConfig)))
    body, docs = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) \
                and isinstance(getattr(nxt, "value", None), ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def fields_help() -> str:
    docs = field_docs()
    defaults = config_mod.RunConfig().to_dict()
    lines = ["config fields (set in the YAML file or as key=value; dict items as key.item=value):"]
    for name in defaults:
        lines.append(f"  {name} = {defaults[name]!r}\n      {docs.get(name, '')}")
    lines.append(f"methods: {', '.join(sorted(config_mod.METHODS))}")
    lines.append("aliases (TRL / transformers names): " + ", ".join(
        f"{alias} = {name}" for alias, name in config_mod.ALIASES.items()) + "; 'temperature' is refused as "
        "ambiguous (sample_temperature or loss_temperature)")
    return "\n".join(lines)


def main(argv=None) -> int:
    """The CLI; a config or data error prints one line naming the problem and exits 2 (the traceback too with
    --debug or KDLIB_DEBUG=1)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return _main([a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"])
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        try:
            debug = debug or env_flag("KDLIB_DEBUG", default=False)
        except ValueError as bad:  # a KDLIB_DEBUG that is not a boolean: say so, then the error itself
            print(f"kdlib: error: {bad}", file=sys.stderr)
        if debug:
            raise
        print(f"kdlib: error: {e}", file=sys.stderr)  # --debug or KDLIB_DEBUG=1 shows where it was raised
        return 2


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="kdlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=fields_help())
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train and evaluate one config (cached by config hash)"),
                       ("eval", "score --model DIR on the config's task and splits; without --model, "
                                "print the config's cached result (running it if needed)"),
                       ("show", "print the resolved config and its hash, without running")):
        p = sub.add_parser(name, help=text, epilog=fields_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("config", nargs="?", help="YAML file under configs/ (optional)")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--debug", action="store_true", help="on an error, the traceback as well (or KDLIB_DEBUG=1)")
        if name == "train":
            p.add_argument("--output", help="also export the trained model, its tokenizer and result.json to this "
                                            "new folder (from_pretrained loads it)")
        if name == "eval":
            p.add_argument("--model", help="a save_pretrained directory, smollm2 / smollm2-pruned (kdlib's offline "
                                            "copies), or a hub name, to score as it is")
            p.add_argument("--out", help="folder for predictions-<split>.jsonl and scores.json "
                                         "(default: <model>/eval when --model is a directory)")
    args, extra = parser.parse_known_args(argv)  # overrides may also come after --quiet
    stray = [e for e in extra if "=" not in e]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    config_path, overrides = args.config, list(args.overrides) + extra
    if config_path and "=" in config_path:  # no file, only overrides
        overrides.insert(0, config_path)
        config_path = None
    cfg = config_mod.load_config(config_path, overrides)
    if cfg.profile == "paper":  # an unknown dataset or split fails here, before any download
        check_config(cfg)
    if args.command == "show":
        from kdlib._runcache import run_hash

        print(json.dumps({"hash": run_hash(cfg), **cfg.to_dict(), "resolved": cfg.resolved}, indent=1))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "eval" and args.model:
        from kdlib._scoring import score_model

        print(json.dumps(score_model(cfg, args.model, out_dir=args.out, progress=not args.quiet), indent=1))
        return 0
    from kdlib._experiments import check_export_folder, export_run, run
    from kdlib._runcache import run_dir

    output = getattr(args, "output", None)
    if output:
        check_export_folder(output)  # before any training
    result = run(cfg, progress=not args.quiet)
    keys = ("method", "task", "student", "score", "train_seconds", "teacher_fraction", "hash")
    try:
        model_dir = export_run(cfg, output) if output else run_dir(cfg) / "model"
    except OSError as e:  # the folder went away or filled up after the check: the run itself is safe
        raise ValueError(f"could not write the model to {output} ({e}); the trained run is kept in the cache "
                         f"({run_dir(cfg)}): run the same command with another --output, which trains nothing") \
            from e
    print(json.dumps({k: result.get(k) for k in keys} | {
        k: v for k, v in result.items() if k.startswith("score_")} | {"model": str(model_dir)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
