"""The model card (``model.json`` + ``README.md``), checksums, and safe file names inside an artifact folder.

Every file of an artifact is listed with its SHA-256 in ``model.json`` (``files``) and, together with
``model.json`` itself, in ``SHA256SUMS`` (the ``sha256sum -c`` format), so a changed file is refused on load.
Checksums catch accidents and tampering with one file; someone who rewrites the files *and* both lists is not
stopped (that needs a signature, which the artifact does not carry).
"""

from __future__ import annotations

import hashlib
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import AutocompressError

ARTIFACT_FORMAT = "autocompress-export"
ARTIFACT_VERSION = 1
MODEL_JSON, README, SUMS = "model.json", "README.md", "SHA256SUMS"
ONNX_FILE, WEIGHTS_FILE, INDEX_FILE, PLAN_FILE = "model.onnx", "weights.bin", "weights.json", "plan.json"
FORMAT_FILES = {"onnx": (ONNX_FILE,), "torch": (PLAN_FILE, INDEX_FILE, WEIGHTS_FILE)}
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSIONED_PACKAGES = ("torch", "onnx", "onnxruntime", "openvino", "numpy", "optuna", "torch-pruning", "onnxscript")


class ExportError(AutocompressError):
    """An export cannot be done as asked (existing folder, bad pick, unknown format)."""

    exit_code = 2


class ArtifactError(AutocompressError):
    """An artifact folder is missing, malformed or was changed after export."""

    exit_code = 1


def safe_path(root: Path, name: str) -> Path:
    """``root / name`` for a plain file name that stays inside ``root``; anything else raises ArtifactError."""
    if not isinstance(name, str) or not _SAFE.match(name) or ".." in name:
        raise ArtifactError(f"refusing file name {name!r}: artifact files are plain names inside the folder")
    path = (Path(root) / name)
    if path.resolve().parent != Path(root).resolve():
        raise ArtifactError(f"refusing file name {name!r}: it resolves outside {root}")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_table(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": sha256_file(safe_path(root, n)), "bytes": safe_path(root, n).stat().st_size}
            for n in names}


def write_sums(root: Path, names: list[str]) -> None:
    lines = [f"{sha256_file(safe_path(root, n))}  {n}" for n in sorted(names)]
    safe_path(root, SUMS).write_text("\n".join(lines) + "\n")


def read_sums(root: Path) -> dict[str, str]:
    path = Path(root) / SUMS
    if not path.is_file():
        raise ArtifactError(f"{root} holds no {SUMS}: not an autocompress export (or an incomplete one)")
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = re.match(r"^([0-9a-f]{64}) [ *](.+)$", line)
        if not m:
            raise ArtifactError(f"{path}: line {i} is not '<sha256>  <file>'")
        safe_path(root, m.group(2))
        out[m.group(2)] = m.group(1)
    return out


def versions() -> dict[str, str]:
    out = {"autocompress": __version__, "python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, Any]:
    import os

    return {"system": platform.system(), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count()}


# --- README ------------------------------------------------------------------------------------------------

def _f(v: Any, fmt: str = ".4f", none: str = "n/a") -> str:
    return none if v is None else format(v, fmt)


def render_readme(card: dict[str, Any]) -> str:
    """Human-readable card: what was exported, how it runs, what was measured."""
    src, m, low = card.get("source", {}), card.get("metrics") or {}, card.get("lowering", {})
    lines = [f"# {card.get('name', 'autocompress export')}", "",
             f"Exported by autocompress {card['versions']['autocompress']} on {card['created']}.", ""]
    if src.get("study"):
        how = f"pick `{src['pick']}` (best by {src.get('by', 'accuracy')})" if src.get("pick") else "chosen by number"
        lines += [f"Study `{src['study']}`, trial {src.get('trial')} ({how}). Task `{card['task']['spec']}`.", ""]
    lines += [f"Plan: {card.get('plan_summary', '')}", "",
              f"Fine-tune: {card['finetune']['mode']} ({card['finetune']['steps']} distillation steps, batch "
              f"{card['finetune']['batch_size']}, lr {card['finetune']['lr']}).", "",
              "## Files", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    for name, f in card["files"].items():
        lines.append(f"| `{name}` | {f['bytes']} | `{f['sha256'][:16]}…` |")
    lines += ["", f"## How it runs ({low.get('backend', 'onnxruntime')})", "",
              f"- int8 kernels (QDQ, calibrated): {', '.join(low.get('int8', [])) or 'none'}",
              f"- int4 weight-only (MatMulNBits): {', '.join(low.get('int4', [])) or 'none'}",
              f"- float32: {', '.join(low.get('float', [])) or 'none'}"]
    for k, v in (low.get("notes") or {}).items():
        lines.append(f"  - `{k}`: {v}")
    if "search_kernels_match" in low:
        lines.append("- the same kernels the search scored this trial with: "
                     + ("yes" if low["search_kernels_match"] else "**no**"))
    if card.get("skipped"):
        lines.append("- parts of the plan not applied: " + "; ".join(f"{k}: {v}" for k, v in card["skipped"].items()))
    if m:
        acc, lat, size = m["accuracy"], m["latency"], m["size"]
        name = card.get("metric", {}).get("name", "accuracy")  # the task's metric, stored under "accuracy"
        lines += ["", "## Measured", "", "| | teacher (fp32) | export | search-time (trial) |", "|---|---:|---:|---:|",
                  f"| test {name} (torch) | {_f(acc['teacher_test'])} | {_f(acc['torch_test'])} | "
                  f"{_f(src.get('search', {}).get('test_accuracy'))} |",
                  f"| test {name} (ONNX Runtime) | | {_f(acc['onnx_test'])} | |",
                  f"| validation {name} | {_f(acc['teacher_val'])} | {_f(acc['torch_val'])} | "
                  f"{_f(src.get('search', {}).get('accuracy'))} |",
                  f"| latency ms (ONNX Runtime, {lat['threads']} thread(s), batch {lat['batch_size']}) | "
                  f"{_f(lat['teacher_ms'])} | {_f(lat['export_ms'])} | {_f(lat.get('predicted_ms'))} |",
                  f"| size objective bytes | {size['teacher_bytes']} | {size['objective_bytes']} | "
                  f"{_f(src.get('search', {}).get('size_bytes'), '.0f')} |",
                  f"| `weights.bin` bytes | | {_f(size.get('weights_bin_bytes'), 'd')} | |",
                  f"| ONNX file bytes | {size['teacher_onnx_bytes']} | {_f(size.get('onnx_bytes'), 'd')} | |",
                  "",
                  f"Speedup over the fp32 teacher: **{_f(lat['speedup'], '.2f')}x** (median of {lat['rounds']} "
                  f"rounds; export round medians {', '.join(_f(x) for x in lat['export_rounds_ms'])} ms). "
                  f"Measured vs predicted (search-time) latency: {_f(lat.get('vs_predicted'), '+.1%')}.",
                  f"Size on disk vs the teacher's float32 weights: {_f(size.get('weights_bin_ratio'), '.1f')}x smaller "
                  f"(`weights.bin`), ONNX file {_f(size.get('onnx_ratio'), '.1f')}x smaller than the teacher's ONNX.",
                  f"ONNX vs PyTorch artifact: arg-max agreement {_f(acc['onnx_torch_agreement'])} on the test split.",
                  ]
    lines += ["", "## Load", "", "```python", "import autocompress",
              f"model = autocompress.load({card.get('name', 'DIR')!r})            # checksums verified; a torch.nn.Module",
              f"onnx = autocompress.load({card.get('name', 'DIR')!r}, runtime='onnx')  # ONNX Runtime session as a module",
              "```", "", "Re-measure: `autocompress verify DIR`.", "",
              "Library versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()), ""]
    return "\n".join(lines)


__all__ = ["ExportError", "ArtifactError", "safe_path", "sha256_file", "file_table", "write_sums", "read_sums",
           "versions", "render_readme", "ARTIFACT_FORMAT", "ARTIFACT_VERSION"]
