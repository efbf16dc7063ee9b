"""``bench export``: a pretrained encoder as safetensors plus a model card, loadable into smp.

The encoder comes from the pretraining cache (trained now if missing). Load it with
``smp.encoders.get_encoder(ENCODER, weights=None).load_state_dict(load_file(PATH), strict=True)``
or pass it to ``smp.create_model(...).encoder``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench.commands._common import add_run_options, finetune_overrides, parse_params
from bench.core.errors import BenchError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="save a pretrained encoder (safetensors + model card JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", required=True, help="an SSL method (see `bench methods`)")
    p.add_argument("--dataset", default="metaldam", help="dataset whose unlabeled pool is used")
    p.add_argument(
        "--shots", default="1", help="for methods that use labels (pscl): shots of the draw"
    )
    p.add_argument("--draw", type=int, default=0, help="for methods that use labels: the draw id")
    p.add_argument("--out", required=True, help="output folder")
    add_run_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.core.console import console
    from bench.runner import RunSpec, make_env, prepare
    from bench.ssl.base import SSLMethod
    from bench.ssl.cache import CARD_FILE, DECODER_FILE, ENCODER_FILE
    from bench.ssl.engine import pretrain_encoder

    env = make_env(
        args.data_root,
        None,
        args.device,
        args.cache_dir,
        compile=args.compile,
        with_store=False,
        precision=args.precision,
    )
    spec = RunSpec(
        method=args.method,
        dataset=args.dataset,
        split=args.split,
        shots=args.shots,
        draw=args.draw,
        profile=args.profile,
        init=args.init,
        seed=args.seed,
        params=parse_params(args.param),
        finetune=finetune_overrides(args),
    )
    run = prepare(spec, env)
    if not isinstance(run.method, SSLMethod):
        raise BenchError(f"'{args.method}' has no pretraining to export; choose an SSL method")
    result = pretrain_encoder(run.method, run.ctx)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (ENCODER_FILE, DECODER_FILE, CARD_FILE):
        if (result.folder / name).is_file():
            shutil.copyfile(result.folder / name, out / name)
    card = json.loads((out / CARD_FILE).read_text())
    console.print(
        f"exported {args.method} ({run.cfg.encoder}, hash {card['hash']}) to "
        f"{out / ENCODER_FILE} with {out / CARD_FILE}",
        markup=False,
    )
    return 0
