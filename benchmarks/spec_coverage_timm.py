"""Permutation specs on timm's CNNs: coverage, exactness, refusals and spec seconds.

The same measurement as ``spec_coverage.py`` (its :func:`measure_model`: spec traced and
verified, coverage, relative L2 error of the logits after a random permutation of every
group on a copy with randomized per-channel quantities), on a fixed list of timm CNNs
(:data:`MODELS`, chosen once across the families researchers merge: ResNet, ResNeXt,
SE/ECA/GC/SK attention, ResNeSt, NF-ResNets, NFNets, NF-RegNets, RegNet, EfficientNet
v1/v2, MixNet, MobileNet v2/v3/v4 and NAS nets, ConvNeXt v1/v2, DPN, HRNet, Res2Net,
DenseNet, VGG, GhostNet, FastViT, PoolFormer, BiT ResNetV2, CSP/Dark nets, DLA, ReXNet,
RepVGG/MobileOne, VoVNet, HGNet, InceptionNeXt). Random initialization, ``num_classes=10``,
a ``2 x 3 x 64 x 64`` input, or timm's ``min_input_size`` where that is larger (the next
size of :data:`SIZES` where the model cannot run on it). Models over
:data:`MAX_PARAMETERS` (at ``num_classes=10``) are listed as skipped.

A row is ``exact`` (relative error at most 1e-4), ``refused`` (``permutation_spec`` raised
a clear error) or ``wrong`` (neither: a silently wrong spec, which must never happen).
Rows below 0.95 coverage carry the reasons the spec reports for what it left unpermuted.

Runs in chunks (``--models``) and keeps what earlier runs measured; ``--column before``
stores the rows as the "before" column (the code before a change), the default ``after``
as the current one; the summary covers both.

    python benchmarks/spec_coverage_timm.py [--models nf_resnet26 ...] [--column before]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from spec_coverage import measure_model

from workbench.graph.verify import DEFAULT_RTOL

RESULTS = Path(__file__).resolve().parent / "results" / "spec_coverage_timm.json"
MAX_PARAMETERS = 60_000_000
SIZES = (64, 96, 128, 160, 224)
MODELS = {
    "resnet": [
        "resnet18", "resnet50", "resnet50d", "resnet26t", "resnet50_gn", "resnetblur18",
        "resnext26ts", "resnext50_32x4d",
    ],
    "attention": [
        "seresnet50", "seresnext26d_32x4d", "ecaresnet26t", "ecaresnet50d", "gcresnet50t",
        "skresnet18", "skresnext50_32x4d", "resnest14d", "resnest26d",
    ],
    "normalizer-free": [
        "nf_resnet26", "nf_regnet_b0", "nf_regnet_b1", "nf_ecaresnet26", "nf_seresnet26",
        "nfnet_l0", "eca_nfnet_l0",
    ],
    "regnet": ["regnetx_002", "regnetx_004", "regnety_002", "regnety_008", "regnetz_b16",
               "regnetz_c16"],
    "efficientnet": [
        "efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t",
        "gc_efficientnetv2_rw_t", "tf_efficientnetv2_b0", "tf_efficientnet_b0",
        "efficientnet_es", "mixnet_s", "tinynet_a",
    ],
    "mobilenet": [
        "mobilenetv2_100", "mobilenetv3_small_100", "mobilenetv3_large_100",
        "mobilenetv4_conv_small", "mobilenetv4_conv_medium", "lcnet_050", "mnasnet_100",
        "fbnetc_100", "spnasnet_100", "semnasnet_100", "hardcorenas_a",
    ],
    "convnext": [
        "convnext_atto", "convnext_femto", "convnext_nano", "convnextv2_atto",
        "convnextv2_femto", "convnextv2_nano", "inception_next_tiny",
    ],
    "multi-branch": [
        "dpn48b", "dpn68b", "hrnet_w18_small", "hrnet_w18_small_v2", "res2net50_26w_4s",
        "res2net50_14w_8s", "densenet121", "densenetblur121d", "dla34", "selecsls42b",
        "ese_vovnet19b_dw",
    ],
    "plain": ["vgg11_bn", "repvgg_a2", "mobileone_s0", "gernet_s", "hgnetv2_b0",
              "rexnet_100", "ghostnet_100", "ghostnetv2_100", "repghostnet_100"],
    "metaformer": ["fastvit_t8", "fastvit_s12", "fastvit_sa12", "poolformer_s12",
                   "poolformerv2_s12"],
    "bit": ["resnetv2_50x1_bit", "resnetv2_50", "resnetv2_50d_gn"],
    "csp": ["cspresnet50", "cspdarknet53", "darknet53"],
}  # fmt: skip
FAMILY = {name: family for family, names in MODELS.items() for name in names}


def build(name: str) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=10).eval()


def input_sizes(model: torch.nn.Module) -> list[int]:
    """The sizes to try, smallest first: 64 px, or timm's minimum where it is larger."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    least = max(SIZES[0], (cfg.get("min_input_size") or (3, 0, 0))[-1])
    return [least] + [s for s in SIZES if s > least]


def reasons(report: list[str]) -> list[str]:
    """The spec's reasons for what it left unpermuted, most channels first (the model's
    own layer names taken out, so that one reason is counted once)."""
    channels: collections.Counter[str] = collections.Counter()
    for line in report:
        if "reaches the model's output" in line:
            continue
        _, _, why = line.partition(": ")
        match = re.search(r"\((\d+) channels\)$", why)
        why = re.sub(r"\(\d+ channels\)$", "", why).strip()
        why = re.sub(r"[\w.]+\.(\w+):", r"\1:", why)  # "stages.0.norm: X" -> "norm: X"
        channels[why] += int(match.group(1)) if match else 0
    return [f"{why} ({n} channels)" for why, n in channels.most_common(3)]


def measure(name: str) -> dict:
    model = build(name)
    parameters = sum(p.numel() for p in model.parameters())
    row: dict = {"family": FAMILY[name], "parameters": parameters}
    if parameters > MAX_PARAMETERS:
        return {**row, "status": "skipped", "why": f"{parameters / 1e6:.0f}M parameters"}
    started = time.perf_counter()
    for size in input_sizes(model):
        try:
            found = measure_model(name, model, size)
        except ValueError as error:
            if "cannot run on the example input" in str(error):
                continue  # too small for the model: the next size
            found = {"error": f"ValueError: {error}"}
        except Exception as error:  # a refusal: GraphTraceError, TypeError, ...
            found = {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
        break
    else:
        found = {"error": f"runs on none of the sizes {SIZES}"}
    row["seconds"] = time.perf_counter() - started
    if "error" in found:
        return {**row, "status": "refused", "why": found["error"], "coverage": 0.0}
    exact = found["relative_error"] <= DEFAULT_RTOL
    row.update(
        status="exact" if exact else "wrong",
        input=found["input"],
        coverage=found["coverage"],
        relative_error=found["relative_error"],
        dtype=found["dtype"],
        groups=found["groups"],
        blocked_groups=found["blocked_groups"],
        spec_seconds=found["spec_seconds"],
        failed_verification=len(found["failed_verification"]),
    )
    if found["coverage"] < 0.95:
        row["why"] = reasons(found["frozen"])
    return row


def summary(rows: dict[str, dict], column: str) -> dict:
    measured = {m: r[column] for m, r in rows.items() if column in r}
    counted = {m: r for m, r in measured.items() if r["status"] != "skipped"}
    if not counted:
        return {}
    return {
        "models": len(counted),
        "mean_coverage": statistics.mean(r["coverage"] for r in counted.values()),
        "at_zero": sorted(m for m, r in counted.items() if r["coverage"] == 0.0),
        "below_0.95": {
            m: round(r["coverage"], 3) for m, r in counted.items() if r["coverage"] < 0.95
        },
        "exact": sum(r["status"] == "exact" for r in counted.values()),
        "refused": sorted(m for m, r in counted.items() if r["status"] == "refused"),
        "wrong": sorted(m for m, r in counted.items() if r["status"] == "wrong"),
        "skipped": {m: r["why"] for m, r in measured.items() if r["status"] == "skipped"},
        "spec_seconds_max": max(r.get("spec_seconds", 0.0) for r in counted.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(FAMILY), choices=list(FAMILY))
    parser.add_argument("--column", choices=("before", "after"), default="after")
    args = parser.parse_args()
    for name in args.models:
        found = measure(name)
        print(f"{name}: {found['status']} {found.get('coverage', '')}", file=sys.stderr, flush=True)
        text = write({name: found}, args.column)  # after every model: a long run keeps what it did
    print(text)


def write(found: dict[str, dict], column: str) -> str:
    """Store ``found`` (model -> row) as ``column`` in the results, with what earlier runs
    measured and the summary of both columns, and return the JSON written."""
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    rows = {m: r for m, r in old.get("models", {}).items() if m in FAMILY}
    for name, row in found.items():
        rows.setdefault(name, {})[column] = row
    result = {
        "benchmark": "spec_coverage_timm",
        "timm": timm.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "max_parameters": MAX_PARAMETERS,
        "summary": {c: summary(rows, c) for c in ("before", "after")},
        "models": {m: rows[m] for m in FAMILY if m in rows},
    }
    text = json.dumps(result, indent=1)
    RESULTS.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
