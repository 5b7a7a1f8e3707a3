"""Fit the page check of a finished image-distillation run (distillations since the check existed fit it
themselves): the Mahalanobis reference from its training renders, the thresholds from its fold-10 renders.

    python scripts/fit_page_check.py runs/ecgqa/image_encoder_more     -> RUN/page_check.safetensors

Then `scripts/ship_checkpoint.py ... --image-encoder RUN` ships it with the image encoder.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an image-distillation run folder (its renders are still there)")
    parser.add_argument("--n-train", type=int, default=2000, help="training renders in the reference")
    args = parser.parse_args()
    from ecgllm.training.distill_image import fit_page_check

    check = fit_page_check(args.run, n_train=args.n_train)
    print(f"wrote {args.run / 'page_check.safetensors'}: typical up to {check.typical:.1f}, "
          f"refused beyond {check.refuse:.1f}")


if __name__ == "__main__":
    main()
