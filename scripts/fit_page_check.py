"""Fit the page check of a finished image-distillation run (distillations since the check existed fit it
themselves): the Mahalanobis reference from its training renders, the thresholds from renders of PTB-XL fold 9
records of ECG-QA train patients (never rendered for the encoder's training; no valid or test record).

    python scripts/fit_page_check.py runs/ecgqa/image_encoder_more --teacher runs/ecgqa/shipped_q600 \
        --signals cache/ptbxl100 --ptbxl ../shared/data/ptbxl          -> RUN/page_check.safetensors

With ``--view-shift N`` the run's image encoder is first set to read every picture as the mean of the page and
four copies moved by N pixels (`ImageEncoderConfig.view_shift`), and the check is fitted on what it then reads.

Then `scripts/ship_checkpoint.py ... --image-encoder RUN` ships it with the image encoder.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an image-distillation run folder (its renders are still there)")
    parser.add_argument("--teacher", type=Path, help="the run's teacher, for its signal normalisation (default: the "
                        "one the run recorded, relative to the folder you run from)")
    parser.add_argument("--signals", required=True, help="prepared PTB-XL cache (`ecgllm data prepare`)")
    parser.add_argument("--ptbxl", required=True, help="PTB-XL labels folder")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--view-shift", type=int, help="set the encoder to read pictures as the mean of the page and "
                        "four copies moved by this many pixels (0: the page alone) before fitting")
    args = parser.parse_args()
    from ecgllm.training.distill_image import fit_page_check_of_run

    check = fit_page_check_of_run(args.run, args.teacher, args.signals, args.ptbxl, args.workers,
                                  args.view_shift)
    print(f"wrote {args.run / 'page_check.safetensors'}: typical up to {check.typical:.1f}, "
          f"refused beyond {check.refuse:.1f}")


if __name__ == "__main__":
    main()
