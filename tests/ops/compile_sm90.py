"""Compile every detkit Triton kernel to a cubin for sm_90 (H100) without a GPU; run as a script.

Triton's interpreter accepts code the real compiler rejects, so CI also lowers each kernel through
ttir -> ttgir -> llir -> ptx -> cubin for the H100 target. Prints one line per kernel variant;
`--quick` compiles one variant per constexpr branch instead of the full product.
"""
import itertools
import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_sm90.py must run without TRITON_INTERPRET")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from detkit.ops.kernels import nms, roi_align, roi_pool  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def compile_one(fn, types: dict, constexprs: dict, num_warps: int = 4) -> None:
    signature = {**types, **{k: "constexpr" for k in constexprs}}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    triton.compile(src, target=TARGET, options={"num_warps": num_warps})
    print(fn.__name__, {k: (str(v) if not isinstance(v, (bool, int)) else v) for k, v in constexprs.items()}, "ok")


def main(quick: bool) -> None:
    for box, labels in itertools.product(("fp32", "fp64"), (False, True)):
        compile_one(nms._iou_mask_kernel, {"boxes_ptr": f"*{box}", "labels_ptr": "*i64", "seg_end_ptr": "*i32",
                    "mask_ptr": "*i64", "n": "i32", "n_words": "i32", "iou_threshold": "fp32"}, {"HAS_LABELS": labels})
    for labels in (False, True):
        compile_one(nms._keep_scan_kernel, {"mask_ptr": "*i64", "seg_end_ptr": "*i32", "removed_ptr": "*i64",
                    "keep_ptr": "*i8", "n": "i32", "n_words": "i32"}, {"HAS_LABELS": labels, "CHUNK": nms.SCAN_CHUNK}, 8)
    feats = {"fp32": "fp32", "fp16": "fp32", "bf16": "fp32", "fp64": "fp64"}
    variants = itertools.product(feats.items(), (False, True), (False, True), (False, True))
    if quick:
        variants = [(("bf16", "fp32"), True, True, False), (("fp32", "fp32"), False, False, True), (("fp64", "fp64"), True, False, False)]
    for (feat, geo), levels, aligned, c_fast in variants:
        acc = tl.float64 if feat == "fp64" else tl.float32
        meta = {"PH": 7, "PW": 7, "ALIGNED": aligned, "HAS_LEVELS": levels, "C_FAST": c_fast, "ACC": acc,
                "BLOCK_P": 64, "BLOCK_C": 32}
        fptrs = {f"f{i}": f"*{feat}" for i in range(5)}
        common = {"rois_ptr": f"*{geo}", "levels_ptr": "*i64" if levels else f"*{geo}", **fptrs, "geom_ptr": "*i64",
                  "scale_ptr": f"*{geo}"}
        sizes = {"n_images": "i32", "n_levels": "i32", "C": "i32", "sampling_ratio": "i32"}
        compile_one(roi_align._roi_align_fwd_kernel, {"out_ptr": f"*{feat}", **common, **sizes}, meta)
        if aligned and not quick:
            continue
        for feature_grad, box_grad in ((True, True),) if quick else ((True, False), (True, True), (False, True)):
            dptrs = {f"d{i}": f"*{geo}" for i in range(5)}
            types = {"grad_ptr": f"*{feat}", "g_sr": "i64", "g_sc": "i64", "g_sh": "i64", "g_sw": "i64", **common,
                     **dptrs, "dbox_ptr": f"*{geo}", **sizes}
            types = {k: types[k] for k in roi_align._roi_align_bwd_kernel.arg_names if k in types}
            compile_one(roi_align._roi_align_bwd_kernel, types, {**meta, "FEATURE_GRAD": feature_grad, "BOX_GRAD": box_grad})
    pool_variants = [(("fp16", "fp32"), False), (("fp32", "fp32"), True)] if quick else itertools.product(feats.items(), (False, True))
    for (feat, geo), c_fast in pool_variants:
        acc = tl.float64 if feat == "fp64" else tl.float32
        meta = {"PH": 7, "PW": 7, "C_FAST": c_fast, "ACC": acc, "BLOCK_P": 64, "BLOCK_C": 32}
        strides = {"s_n": "i64", "s_c": "i64", "s_h": "i64", "s_w": "i64"}
        compile_one(roi_pool._roi_pool_fwd_kernel, {"out_ptr": f"*{feat}", "argmax_ptr": "*i32", "rois_ptr": f"*{geo}",
                    "f_ptr": f"*{feat}", "n_images": "i32", "C": "i32", "H": "i32", "W": "i32", **strides,
                    "scale_ptr": f"*{geo}"}, meta)
        compile_one(roi_pool._roi_pool_bwd_kernel, {"grad_ptr": f"*{feat}", "g_sr": "i64", "g_sc": "i64", "g_sh": "i64",
                    "g_sw": "i64", "argmax_ptr": "*i32", "rois_ptr": f"*{geo}", "d_ptr": f"*{geo}", "C": "i32",
                    "W": "i32", **strides}, meta)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
