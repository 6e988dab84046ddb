"""The generation bench's figures: where gatebench's time goes, the side-by-side ratios and
their targets (issue 19), and the printed table.

"UNet-only" is the batched run's own time in the denoising loop (UNet + adapter hooks +
scheduler steps, GenerationStats.unet_s), per image; every ratio divides figures of one run.
"""
from __future__ import annotations

from typing import Any

from bench.targets import Target, judge

TARGETS = (
    Target("batched_over_loop", ">=", 2.0,
           "batched generation images/s over the one-layout-per-call loop's"),
    Target("generation_over_unet", "<=", 1.10,
           "generation wall time per image (encode, adapter load, decode, PNG) over UNet-only"),
    Target("end_to_end_over_unet", "<=", 1.25,
           "generation + scoring wall time per image over UNet-only"),
    Target("diagnostics_over_generation", "<=", 1.03,
           "an adapter batch's sampling with the write diagnostics over the same without them"),
)

# The score stage's StageTimer phases (gatebench/metrics/timing.py) -> the table's rows. Each
# metric's phase is "metric:<name>": FID and KID make a row of their own, every other metric
# (per-image units and bootstrap CIs, AP, any metric added later) joins "bootstrap_ci_ap". A
# phase not named here keeps a row of its own: nothing the library times is folded into "other".
SCORE_ROWS = {"detection": "detection", "clip": "clip", "fid_features": "fid_features",
              "image_health": "image_health", "pixels": "png_io",
              "metric:fid": "fid_kid_math", "metric:kid": "fid_kid_math"}


def score_row(phase: str) -> str:
    return SCORE_ROWS.get(phase, "bootstrap_ci_ap" if phase.startswith("metric:") else phase)


def shares(batched: dict[str, Any]) -> dict[str, float]:
    """Seconds per row of gatebench's total wall time (generation + scoring); "other" is what
    no record covers (recipe hashing, matching, records, the gaps between phases)."""
    g = batched["generation"]
    buckets = {
        "unet_sampling": g["unet_s"], "decode": g["decode_s"], "text_phrase_encoding": g["encode_s"],
        "detection": 0.0, "clip": 0.0, "fid_features": 0.0, "image_health": 0.0,
        "png_io": g["write_wait_s"], "adapter_load": batched["adapter_load_s"],
        "fid_kid_math": 0.0, "bootstrap_ci_ap": 0.0}
    for phase, seconds in batched["score_phases"].items():
        row = score_row(phase)
        buckets[row] = buckets.get(row, 0.0) + seconds
    buckets["other"] = batched["total_s"] - sum(buckets.values())
    return buckets


def summarise(batched: dict[str, Any], loop: dict[str, Any],
              diagnostics: dict[str, Any]) -> dict[str, Any]:
    gen_ips = batched["images"] / batched["generate_s"]
    e2e_ips = batched["images"] / batched["total_s"]
    loop_ips = loop["images"] / loop["generate_s"]
    buckets = shares(batched)
    unet_per_image = batched["generation"]["unet_s"] / batched["images"]
    total_per_image = batched["total_s"] / batched["images"]
    gen_per_image = batched["generate_s"] / batched["images"]
    ratios = {"batched_over_loop": gen_ips / loop_ips,
              "generation_over_unet": gen_per_image / unet_per_image,
              "end_to_end_over_unet": total_per_image / unet_per_image,
              "diagnostics_over_generation": diagnostics["measured_over_plain"]}
    return {
        "gatebench_generation_images_per_s": gen_ips,
        "gatebench_end_to_end_images_per_s": e2e_ips,
        "loop_generation_images_per_s": loop_ips,
        "unet_only_s_per_image": unet_per_image,
        "generation_s_per_image": gen_per_image,
        "end_to_end_s_per_image": total_per_image,
        "speedup_generation": ratios["batched_over_loop"],
        "speedup_end_to_end_vs_loop_generation": e2e_ips / loop_ips,
        "seconds": buckets,
        "shares": {k: v / batched["total_s"] for k, v in buckets.items()},
        "ratios": ratios,
        "overhead_vs_unet": {"total_per_image_over_unet_per_image": ratios["end_to_end_over_unet"],
                             "generation_per_image_over_unet_per_image":
                                 ratios["generation_over_unet"]},
        "targets": judge(ratios, TARGETS),
    }


def print_summary(doc: dict[str, Any]) -> None:
    c, s, loop_phases = doc["config"], doc["summary"], doc["loop"]["phases"]
    print(f"\n== generation bench: {c['size']} on {c['device_name']} ({c['dtype']}), "
          f"{c['height']}x{c['width']}, {c['steps']} steps, CFG {c['guidance_scale']}, "
          f"{c['scheduler']}, batch {c['batch_size']}, threads {c['threads']} ==")
    b, lp = doc["batched"], doc["loop"]
    print(f"{'path':<44}{'images':>8}{'wall s':>10}{'images/s':>11}")
    print(f"{'gatebench batched: generation (+PNG)':<44}{b['images']:>8}{b['generate_s']:>10.2f}"
          f"{s['gatebench_generation_images_per_s']:>11.2f}")
    print(f"{'gatebench batched: generation + scoring':<44}{b['images']:>8}{b['total_s']:>10.2f}"
          f"{s['gatebench_end_to_end_images_per_s']:>11.2f}")
    print(f"{'one-layout-per-call loop: generation (+PNG)':<44}{lp['images']:>8}"
          f"{lp['generate_s']:>10.2f}{s['loop_generation_images_per_s']:>11.2f}")
    print(f"speed-up (generation): {s['speedup_generation']:.2f}x   "
          f"(gatebench end-to-end vs loop generation: "
          f"{s['speedup_end_to_end_vs_loop_generation']:.2f}x)")
    print(f"\n{'gatebench time':<24}{'s':>9}{'share':>8}{'ms/image':>10}")
    for name, sec in s["seconds"].items():
        print(f"{name:<24}{sec:>9.3f}{s['shares'][name]:>8.1%}{1000 * sec / b['images']:>10.2f}")
    print(f"{'total':<24}{b['total_s']:>9.3f}{1:>8.0%}{1000 * b['total_s'] / b['images']:>10.2f}")
    print(f"(PNG writes in background threads: {b['generation']['png_write_s']:.3f} s, overlapped)")
    print(f"\n{'loop time':<24}{'s':>9}{'ms/image':>10}")
    for name, sec in loop_phases.items():
        print(f"{name:<24}{sec:>9.3f}{1000 * sec / lp['images']:>10.2f}")
    print(f"\nUNet-only {1000 * s['unet_only_s_per_image']:.1f} ms/image, generation "
          f"{1000 * s['generation_s_per_image']:.1f} ms/image, end to end "
          f"{1000 * s['end_to_end_s_per_image']:.1f} ms/image (one run, side by side)")
    for t in s["targets"]:
        value = "not computed" if t["value"] is None else f"{t['value']:.2f}x"
        print(f"{'PASS' if t['passed'] else 'FAIL'}  {t['name']:<22} {value:>8}  target "
              f"{t['op']} {t['threshold']:.2f}x  ({t['what']})")
    m = doc["image_match"]
    print(f"same images from both paths: max |diff| {m['max_abs_diff']}/255 over {m['images']} "
          f"images, {m['equal_pixel_share']:.4%} pixels identical")
    for row in doc.get("sweep", []):
        print(f"sweep batch {row['batch_size']:>3}: {row['images_per_s']:.2f} images/s generation, "
              f"UNet {1000 * row['unet_s_per_image']:.1f} ms/image")
