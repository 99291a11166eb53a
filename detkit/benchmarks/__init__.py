"""Side-by-side benchmarks against torchvision (run through tools/benchmark.py)."""
