"""Compile every detkit Triton kernel to a cubin for sm_90 (H100) without a GPU; run as a script.

Triton's interpreter accepts code the real compiler rejects, so CI also lowers each kernel through
ttir -> ttgir -> llir -> ptx -> cubin for the H100 target, with the block sizes and warps the launchers pick
for 7x7 pooling of 256 channels. Prints one line per variant with ptxas's register and spill counts;
`--quick` compiles one variant per constexpr branch instead of the full product.
"""
import itertools
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_sm90.py must run without TRITON_INTERPRET")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from detkit.ops.kernels import nms, roi_align, roi_pool  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def ptxas_usage(ptx: str) -> str:
    """Return 'regs=R spills=S' from ptxas -v, or '' when ptxas cannot be found."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        found = get_ptxas(90)
        binary = getattr(found, "path", found)
    except Exception:
        return ""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as fh:
        fh.write(ptx)
        fh.flush()
        command = [binary, "-v", "--gpu-name=sm_90a", fh.name, "-o", os.devnull]
        done = subprocess.run(command, capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", done.stderr)
    spills = re.search(r"(\d+) bytes spill stores", done.stderr)
    return f"regs={regs.group(1) if regs else '?'} spills={spills.group(1) if spills else '?'}"


def compile_one(fn, types: dict, constexprs: dict, num_warps: int) -> None:
    signature = {**{k: types[k] for k in fn.arg_names if k in types}, **{k: "constexpr" for k in constexprs}}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(src, target=TARGET, options={"num_warps": num_warps})
    shown = {k: v if isinstance(v, (bool, int)) else str(v) for k, v in constexprs.items()}
    print(fn.__name__, shown, f"warps={num_warps}", ptxas_usage(kernel.asm["ptx"]), "ok", flush=True)


def launch_meta(module, feat: str, channels_last: bool, tile: int) -> tuple[dict, int]:
    """Return (constexprs, warps) as the launcher picks them for a 2x256x50x84 map and 7x7 bins."""
    f = torch.empty((2, 256, 50, 84), dtype=DTYPES[feat], device="meta")
    if channels_last:
        f = f.to(memory_format=torch.channels_last)
    meta = module._meta([f], (7, 7), tile) if module is roi_align else module._meta(f, (7, 7))
    warps = meta.pop("num_warps")
    return meta, warps


def main(quick: bool) -> None:
    for box, labels in itertools.product(("fp32", "fp64"), (False, True)):
        compile_one(nms._iou_mask_kernel, {"boxes_ptr": f"*{box}", "labels_ptr": "*i64", "seg_end_ptr": "*i32",
                    "mask_ptr": "*i64", "n": "i32", "n_words": "i32", "iou_threshold": "fp32"},
                    {"HAS_LABELS": labels}, nms.MASK_WARPS)
    for labels in (False, True):
        compile_one(nms._keep_scan_kernel, {"mask_ptr": "*i64", "seg_end_ptr": "*i32", "removed_ptr": "*i64",
                    "keep_ptr": "*i8", "n": "i32", "n_words": "i32"}, {"HAS_LABELS": labels, "CHUNK": nms.SCAN_CHUNK},
                    nms.SCAN_WARPS)
    geometry = {"fp32": "fp32", "fp16": "fp32", "bf16": "fp32", "fp64": "fp64"}
    variants = itertools.product(geometry, (False, True), (False, True), (False, True))
    if quick:
        variants = [("bf16", True, True, False), ("fp32", False, False, True), ("fp64", True, False, False)]
    sizes = {"n_images": "i32", "n_levels": "i32", "C": "i32", "sampling_ratio": "i32"}
    for feat, levels, aligned, c_fast in variants:
        geo = geometry[feat]
        common = {"rois_ptr": f"*{geo}", "levels_ptr": "*i64" if levels else f"*{geo}", "geom_ptr": "*i64",
                  "scale_ptr": f"*{geo}", **{f"f{i}": f"*{feat}" for i in range(5)}, **sizes}
        meta, warps = launch_meta(roi_align, feat, c_fast, roi_align.TILE)
        flags = {"ALIGNED": aligned, "HAS_LEVELS": levels}
        compile_one(roi_align._roi_align_fwd_kernel, {"out_ptr": f"*{feat}", **common}, {**meta, **flags}, warps)
        if aligned and not quick:
            continue
        grads = {"grad_ptr": f"*{feat}", "g_sr": "i64", "g_sc": "i64", "g_sh": "i64", "g_sw": "i64",
                 "dbox_ptr": f"*{geo}", **{f"d{i}": f"*{geo}" for i in range(5)}, **common}
        for feature_grad, box_grad in ((True, True),) if quick else ((True, False), (True, True), (False, True)):
            tile = roi_align.BOX_GRAD_TILE if box_grad else roi_align.TILE
            meta, warps = launch_meta(roi_align, feat, c_fast, tile)
            compile_one(roi_align._roi_align_bwd_kernel, grads,
                        {**meta, **flags, "FEATURE_GRAD": feature_grad, "BOX_GRAD": box_grad}, warps)
    pool_variants = [("fp16", False), ("fp32", True)] if quick else itertools.product(geometry, (False, True))
    strides = {"s_n": "i64", "s_c": "i64", "s_h": "i64", "s_w": "i64"}
    for feat, c_fast in pool_variants:
        geo = geometry[feat]
        meta, warps = launch_meta(roi_pool, feat, c_fast, roi_pool.TILE)
        compile_one(roi_pool._roi_pool_fwd_kernel, {"out_ptr": f"*{feat}", "argmax_ptr": "*i32", "rois_ptr": f"*{geo}",
                    "f_ptr": f"*{feat}", "n_images": "i32", "C": "i32", "H": "i32", "W": "i32", "scale_ptr": f"*{geo}",
                    **strides}, meta, warps)
        compile_one(roi_pool._roi_pool_bwd_kernel, {"grad_ptr": f"*{feat}", "g_sr": "i64", "g_sc": "i64", "g_sh": "i64",
                    "g_sw": "i64", "argmax_ptr": "*i32", "rois_ptr": f"*{geo}", "d_ptr": f"*{geo}", "C": "i32",
                    "W": "i32", **strides}, meta, warps)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
