"""GGUF files as other converters write them: Black Forest Labs or diffusers key names, with or
without the `model.diffusion_model.` prefix stable-diffusion.cpp keeps, 1-D tensors as F32, F16
or BF16, tensors in block or alphabetical order, each file type flux-batch writes. Each one is
described by `flux-batch-gguf inspect` and renders through the real CLI; the variants that only
rename or reorder give the very pixels of the file they came from."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from conftest import FAST, check_consistent, pixels, write_prompts
from test_gguf_cli import gguf_cli

PREFIX = "model.diffusion_model."
ROWS = [{"id": "fox", "prompt": "a red fox in the snow"}, {"id": "owl", "prompt": "an owl at night"}]


def rewrite(src, dst, prefix: bool = False, one_d: str = "F32", alphabetical: bool = False):
    """`src` written again with gguf-py's own writer, as another converter would."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), arch="flux")
    tensors = sorted(reader.tensors, key=lambda t: t.name) if alphabetical else list(reader.tensors)
    for t in tensors:
        name = (PREFIX if prefix else "") + t.name
        data = np.array(t.data)
        if len(t.shape) == 1 and one_d != "F32":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            if one_d == "F16":
                writer.add_tensor(name, data.astype(np.float16))
            else:
                kind = gguf.GGMLQuantizationType.BF16
                writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        elif t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory, model_cache):
    """Every shape of file, with the reference render of the file each was made from."""
    from flux_batch.demo import tiny
    from flux_batch.gguf.quantize import quantize_checkpoint

    base, _ = tiny.ensure_built("Q8_0")
    root = tmp_path_factory.mktemp("interop")
    made = {}
    for layout in ("bfl", "diffusers"):
        source = root / f"{layout}.gguf"
        quantize_checkpoint(base / "transformer", source, "Q8_0", layout=layout)
        made[f"{layout}"] = (source, layout)
        for prefix in (False, True):
            for one_d in ("F32", "F16", "BF16"):
                name = f"{layout}{'-prefixed' if prefix else ''}-1d-{one_d}"
                made[name] = (rewrite(source, root / f"{name}.gguf", prefix, one_d), layout)
        made[f"{layout}-alphabetical"] = (
            rewrite(source, root / f"{layout}-a.gguf", alphabetical=True),
            layout,
        )
    for qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16"):
        out = root / f"bfl-{qtype}.gguf"
        quantize_checkpoint(base / "transformer", out, qtype, layout="bfl")
        made[f"bfl-{qtype}"] = (out, "bfl")
    return root, base, made


@pytest.fixture(scope="module")
def rendered(files, cli_server):
    """name -> the pixels each file renders, through the CLI."""
    root, base, made = files
    prompts = write_prompts(root / "p.jsonl", ROWS)
    out = {}
    for name, (path, _) in made.items():
        result = cli_server(
            root,
            "model=flux-dev",
            f"model.base={base}",
            f"model.transformer={path}",
            f"dataset.path={prompts}",
            f"output.dir=run-{name}",
            *FAST,
        )
        assert result.returncode == 0, f"{name}: {result.stdout}"
        check_consistent(root / f"run-{name}")
        out[name] = pixels(root / f"run-{name}")
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_inspect_describes_every_shape(files):
    _, _, made = files
    for name, (path, layout) in made.items():
        info = json.loads(gguf_cli("inspect", path, "--json").stdout)
        assert (info["layout"], info["variant"]) == (layout, "dev"), name
        assert info["prefix"] == (PREFIX if "prefixed" in name else None), name
        assert (info["double_blocks"], info["single_blocks"]) == (2, 2), name  # the tiny model
        text = gguf_cli("inspect", path).stdout
        assert "not a FLUX transformer" not in text and ("names prefixed" in text) == ("prefixed" in name)


def test_renaming_or_reordering_keeps_the_pixels(files, rendered):
    _, _, made = files
    for name in made:
        if name.endswith("-1d-F32") or name.endswith("-alphabetical"):
            reference = rendered[name.split("-")[0]]
            assert all(np.array_equal(rendered[name][k], reference[k]) for k in reference), name
    assert all(np.array_equal(rendered["bfl"][k], rendered["diffusers"][k]) for k in rendered["bfl"])


def test_half_precision_1d_tensors_and_other_types_render_close_to_q8_0(files, rendered):
    reference = rendered["bfl"]
    for name, got in rendered.items():
        worst = min(psnr(got[k], reference[k]) for k in reference)
        floor = 20 if name == "bfl-Q4_0" else 30  # 4-bit weights on a random model move most
        assert worst > floor, f"{name}: {worst:.1f} dB"


def test_a_bf16_file_keeps_the_input_and_output_layers_bf16(files):
    _, _, made = files
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(made["bfl-BF16"][0]).tensors}
    assert types["img_in.weight"] == types["final_layer.linear.weight"] == "BF16"
    assert types["double_blocks.0.img_attn.qkv.weight"] == "BF16"
    assert all(kind == "F32" for name, kind in types.items() if name.endswith(("bias", "scale")))


def test_diffusers_own_reader_refuses_a_file_it_cannot_place_in_one_line(files):
    """The reader used for URLs copies each tensor and cannot place a 1-D BF16 tensor: one
    ModelFileError line, not a traceback."""
    import torch

    from flux_batch.errors import ModelFileError
    from flux_batch.model.load import load_transformer

    _, base, made = files
    path = made["bfl-1d-BF16"][0]
    with pytest.raises(ModelFileError) as refused:
        load_transformer(str(path), str(base), torch.float32, lean=False)
    message = str(refused.value)
    assert message.startswith(f"model.transformer={path}: cannot be loaded as a FLUX transformer")
    assert "\n" not in message


def test_a_file_with_types_diffusers_cannot_run_is_refused_before_loading(files, cli_server, tmp_path):
    _, base, made = files
    reader = gguf.GGUFReader(made["bfl"][0])
    writer = gguf.GGUFWriter(str(tmp_path / "f64.gguf"), arch="flux")
    for t in reader.tensors:  # the biases as F64, which no GGUF layer of diffusers runs
        data = np.array(t.data)
        if len(t.shape) == 1:
            writer.add_tensor(t.name, data.astype(np.float64))
        elif t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(t.name, data)
        else:
            writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    result = cli_server(
        tmp_path,
        "model=flux-dev",
        f"model.base={base}",
        f"model.transformer={tmp_path / 'f64.gguf'}",
        f"dataset.path={prompts}",
        "output.dir=run",
        *FAST,
    )
    assert result.returncode == 2, result.stdout
    assert "it holds F64 tensors, which diffusers' GGUF layers do not run" in result.stdout
    assert "loading transformer" not in result.stdout and "Traceback" not in result.stdout
