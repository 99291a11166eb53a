"""Benchmarks, one sub-command each; a sub-command's module is imported only when it is chosen.

    python tools/benchmark.py ops [--warmup 5] [--reps 30] [--only PREFIX] [--json PATH]
    python tools/benchmark.py bccd [--root BCCD] [--iters 300] [--sides torchvision,detkit] [KEY=VALUE ...]
    python tools/benchmark.py infer CONFIG [--weights W] [--images PATH ...] [--limit 72] [--rounds 2] [KEY=VALUE ...]
    python tools/benchmark.py train-gpu [--root BCCD] [--iters 1500] [--batch 8] [--smoke] [--json PATH]
    python tools/benchmark.py elastic [--out DIR] [--iters 6] [--kill-after 2]
"""
import argparse
import importlib
import sys

from detkit.cli import add_common_args, run

# sub-command -> (module with add_arguments(parser) and main(args), one-line help)
COMMANDS = {
    "ops": ("detkit.ops.benchmark", "detkit's Triton NMS / RoI kernels vs torchvision.ops on a CUDA device"),
    "bccd": ("detkit.benchmarks.bccd", "detkit vs torchvision Faster R-CNN on BCCD, same recipe, one process"),
    "infer": ("detkit.benchmarks.infer", "a trained detector vs its torchvision twin (same weights): inference img/s"),
    "train-gpu": ("detkit.benchmarks.train_gpu", "detkit vs torchvision R50-FPN trained on BCCD on a GPU, one process "
                  "(--smoke: a few iterations on the CPU)"),
    "elastic": ("detkit.benchmarks.elastic", "a worker killed under torchrun --max-restarts 1: the run resumes by "
                "itself to the weights of an uninterrupted one"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Return the parser; only the chosen sub-command's module is imported to add its flags."""
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_common_args(command)
        if name == chosen:
            importlib.import_module(module).add_arguments(command)
    return parser


def main(args: argparse.Namespace) -> int:
    return importlib.import_module(COMMANDS[args.command][0]).main(args)


if __name__ == "__main__":
    run(main, build_parser(sys.argv[1:]))
