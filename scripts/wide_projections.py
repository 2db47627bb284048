"""Print the projected idle-request latency of wide steps (P = 2, 4, 7; P = 4 with CFG halves) on NVLink and PCIe,
against one GPU, from a named cost assumption (default h100-trt). Usage: python scripts/wide_projections.py [NAME]"""

from __future__ import annotations

import sys

from svdpipe.sim.costs import ASSUMPTIONS
from svdpipe.wide.costs import LINKS, SVD_XT, project

CONFIGS = (("P=2", 2, False), ("P=4", 4, False), ("P=7", 7, False), ("P=4 + CFG halves", 4, True))


def main(name: str = "h100-trt") -> None:
    assumed = ASSUMPTIONS[name]
    c = assumed.costs
    print(f"costs: {assumed.note}")
    for link in LINKS.values():
        print(f"link: {link.note}")
    print(f"shape: {SVD_XT.frames} frames, latent {SVD_XT.height}x{SVD_XT.width}, {SVD_XT.item_bytes}-byte activations")
    print(
        f"{'config':<18}{'link':<8}{'GPUs':>5}{'compute ms':>11}{'bytes/rank MB':>14}{'comm ms':>9}{'step ms':>9}"
        f"{'step x':>8}{'latency s':>10}{'x':>7}{'split decode s':>15}{'x':>7}"
    )
    for link in LINKS.values():
        for label, parts, halves in CONFIGS:
            p = project(
                label, parts, halves, link, c.step_s, assumed.steps, c.encode_s,
                c.decode_frame_s * assumed.frames, c.mux_s, c.hop_s,
            )  # fmt: skip
            s = p.step
            print(
                f"{label:<18}{link.name:<8}{s.gpus:>5}{s.compute_s * 1e3:>11.1f}{s.bytes_per_rank / 1e6:>14.1f}"
                f"{(s.transfer_s + s.latency_s) * 1e3:>9.1f}{s.total_s * 1e3:>9.1f}{p.step_ratio:>8.3f}"
                f"{p.latency_s:>10.2f}{p.latency_ratio:>7.3f}{p.latency_split_decode_s:>15.2f}"
                f"{p.latency_split_decode_ratio:>7.3f}"
            )
    print(f"one GPU: step {c.step_s * 1e3:.0f} ms, idle latency {p.one_gpu_latency_s:.2f} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
