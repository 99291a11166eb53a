"""Fill a config's proposal stores (data.train.proposals / data.test.proposals) and print their recall.

    python tools/propose.py CONFIG [--split train|test|all] [--workers N] [--mode fast|quality]
                            [--from-rpn WEIGHTS] [--rebuild] [KEY=VALUE ...]
    torchrun --nproc-per-node N [--nnodes M ...] tools/propose.py CONFIG ...   # one store, many processes

Selective search (proposals.*) or a trained Faster R-CNN's RPN (--from-rpn) runs over the images missing from
each store, so a stopped run resumes and a finished one costs nothing. Writes <store>/<image_id>.npy, meta.json
and, when the split has ground truth, recall.json. Under torchrun the ranks share the missing images (each rank
still runs --workers processes, by default the cores of its machine divided among its ranks) and rank 0 prints the
recall once every image is stored; several runs may fill one store on a shared folder at once. --rebuild deletes
a store's own files first (needed for a store whose meta.json was deleted or damaged).
"""
import argparse
import signal
import sys

from detkit.cli import add_common_args, config_parser, run
from detkit.config import load_config


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    import torch  # heavy imports after argument parsing

    from detkit.data.proposals import RECALL_FILE, ProposalStore, available_workers, format_recall_table
    from detkit.engine import distributed
    from detkit.edge import ensure_proposals
    from detkit.errors import DetkitError

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"proposals.workers={args.workers}")
    if args.mode is not None:
        overrides.append(f"proposals.mode={args.mode}")
    if args.from_rpn is not None:
        overrides += ["proposals.method=rpn", f"proposals.rpn_weights={args.from_rpn}"]
    cfg = load_config(args.config, overrides)
    if "proposals.workers" not in cfg.user_keys:
        cfg.proposals.workers = available_workers()  # the cores of this rank
    splits = ["train", "test"] if args.split == "all" else [args.split]
    unset = [s for s in splits if not getattr(cfg.data, s).proposals]
    if len(unset) == len(splits):
        keys = " / ".join(f"data.{s}.proposals" for s in splits)
        raise DetkitError(f"{args.config} sets no proposal store ({keys}); add one, e.g. "
                          f"data.{splits[-1]}.proposals=outputs/proposals/{splits[-1]}")
    cuda = cfg.proposals.method == "rpn" and (cfg.device == "cuda" or (cfg.device == "auto"
                                                                          and torch.cuda.is_available()))
    distributed.init_from_env(torch.device("cuda" if cuda else "cpu"))  # gloo for selective search
    main_process = distributed.is_main_process()
    signal.signal(signal.SIGTERM, _stop)
    if args.rebuild:  # every store first: train and test may share one folder
        if main_process:
            for split in splits:
                if split not in unset:
                    removed = ProposalStore(getattr(cfg.data, split).proposals).clear()
                    print(f"--rebuild: {removed} file(s) of {getattr(cfg.data, split).proposals} deleted")
        distributed.barrier()
    for split in splits:
        if split in unset:
            if main_process:
                print(f"data.{split}.proposals is not set: {split} split skipped")
            continue
        try:
            store = ensure_proposals(cfg, split, progress=not args.no_progress)
        except KeyboardInterrupt:
            store = getattr(cfg.data, split).proposals
            if main_process:
                print(f"propose.py: stopped; the finished images of the {split} split stay in {store}, run the "
                      f"same command again to finish", file=sys.stderr)
            return 130
        if not main_process:
            continue
        recall = store / RECALL_FILE
        if recall.is_file():
            import json

            print(format_recall_table(json.loads(recall.read_text()), title=f"{split}: {store}"))
        else:
            print(f"{split}: {store} (no ground truth, no recall)")
    return 0


if __name__ == "__main__":
    parser = config_parser("propose.py", __doc__,
                           config_help="YAML config whose data.<split>.proposals names the store",
                           overrides_help="dotted config overrides, e.g. proposals.top_k=1000")
    parser.add_argument("--split", choices=["train", "test", "all"], default="all", help="which split (default all)")
    parser.add_argument("--workers", type=int,
                        help="processes for selective search per rank (proposals.workers; default: the cores of "
                             "this machine divided among its ranks, and never more)")
    parser.add_argument("--mode", choices=["fast", "quality"], help="selective search setting (proposals.mode)")
    parser.add_argument("--from-rpn", metavar="WEIGHTS", help="proposals from a trained Faster R-CNN's RPN")
    parser.add_argument("--rebuild", action="store_true",
                        help="delete the stores' own files (proposals, meta.json, recall.json) and fill them again")
    add_common_args(parser, progress=True)
    run(main, parser)
