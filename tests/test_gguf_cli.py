"""`flux-batch-gguf quantize` and `inspect` on the tiny model, through the installed script:
key layouts, tensor types, source formats, rendering the result, and bad input."""

from __future__ import annotations

import json
import subprocess
import weakref
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import pixels, run_script
from flux_batch import families
from flux_batch.gguf.checkpoint import open_checkpoint, plan
from flux_batch.gguf.file import write_gguf
from flux_batch.gguf.quantize import quantize_checkpoint

flux_keys = families.get("flux1").keys  # FLUX.1's GGUF key table

KEEP = ("x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out")


def gguf_cli(*args, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    result = run_script("flux-batch-gguf", *args, cwd=cwd)  # forked from the warm test server
    if check and result.returncode != 0:
        raise AssertionError(f"flux-batch-gguf {args} exited {result.returncode}:\n{result.stderr}")
    return result


def tiny_folder(model_cache: Path) -> Path:
    return model_cache / "tiny-v1" / "transformer"


def tiny_weights(model_cache: Path) -> dict[str, torch.Tensor]:
    return load_file(tiny_folder(model_cache) / "diffusion_pytorch_model.safetensors")


def read(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def values(tensor: gguf.ReaderTensor) -> np.ndarray:
    """A tensor of the reference reader, dequantized, in torch's (rows, columns) order."""
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(
        tuple(int(d) for d in reversed(tensor.shape))
    )


def test_diffusers_layout_keeps_names_shapes_and_the_type_policy(model_cache, tmp_path):
    out = tmp_path / "tiny-Q8_0.gguf"
    result = gguf_cli("quantize", tiny_folder(model_cache), out, "--type", "q8_0", "--layout", "diffusers")
    assert f"{out}: Q8_0, diffusers layout, 112 tensors (F16 10, F32 62, Q8_0 40)" in result.stdout
    weights = tiny_weights(model_cache)
    tensors = read(out)
    assert set(tensors) == set(weights)
    for name, t in tensors.items():
        shape = tuple(weights[name].shape)
        assert tuple(int(d) for d in reversed(t.shape)) == shape, name
        want = "F32" if len(shape) == 1 else "F16" if name.startswith(KEEP) else "Q8_0"
        assert t.tensor_type.name == want, name
        error = np.abs(values(t) - weights[name].float().numpy()).max()
        assert error <= (np.abs(weights[name].float().numpy()).max() / 127 if want == "Q8_0" else 1e-3), name
    fields = gguf.GGUFReader(out)
    assert fields.get_field("general.architecture").contents() == "flux"
    assert fields.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert fields.get_field("general.quantization_version").contents() == gguf.GGML_QUANT_VERSION


def test_bfl_layout_fuses_and_swaps_like_diffusers_expects(model_cache, tmp_path):
    out = tmp_path / "tiny-F32.gguf"
    gguf_cli("quantize", model_cache / "tiny-v1", out, "--type", "F32")  # a pipeline folder works too
    tensors = read(out)
    assert "double_blocks.1.img_attn.qkv.weight" in tensors and "single_blocks.1.linear1.weight" in tensors
    assert not any(n.startswith("transformer_blocks.") for n in tensors)
    bfl = {name: torch.from_numpy(values(t).copy()) for name, t in tensors.items()}
    weights = tiny_weights(model_cache)
    linear1 = bfl.pop("single_blocks.0.linear1.weight")
    d = "single_transformer_blocks.0."
    assert torch.equal(
        linear1,
        torch.cat(
            [
                weights[d + p]
                for p in ("attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight", "proj_mlp.weight")
            ]
        ),
    )
    shift, scale = bfl["final_layer.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(torch.cat([scale, shift]), weights["norm_out.linear.weight"])
    qkv = bfl["double_blocks.1.txt_attn.qkv.bias"]
    d = "transformer_blocks.1.attn."
    assert torch.equal(qkv, torch.cat([weights[d + f"add_{x}_proj.bias"] for x in "qkv"]))


def test_every_source_format_gives_the_same_file(model_cache, tmp_path):
    weights = tiny_weights(model_cache)
    bfl = {t.name: t.load().contiguous() for t in plan(open_checkpoint(tiny_folder(model_cache)), "bfl")}
    save_file(bfl, tmp_path / "bfl.safetensors")
    prefixed = {flux_keys.BFL_PREFIX + k: v for k, v in bfl.items()}
    prefixed["first_stage_model.decoder.conv_in.weight"] = torch.ones(4, 4)  # a full checkpoint's VAE
    save_file(prefixed, tmp_path / "full.safetensors")
    sharded = tmp_path / "sharded"
    FluxTransformer2DModel = families.get("flux1").transformer_class()

    model = FluxTransformer2DModel.from_pretrained(tiny_folder(model_cache))
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert weights.keys() == model.state_dict().keys()

    files = {}
    for label, src in {
        "folder": tiny_folder(model_cache),
        "bfl": tmp_path / "bfl.safetensors",
        "prefixed": tmp_path / "full.safetensors",
        "sharded": sharded,
    }.items():
        for layout in ("bfl", "diffusers"):
            out = tmp_path / f"{label}-{layout}.gguf"
            if label == "prefixed":  # one source through the script, the rest in process
                gguf_cli("quantize", src, out, "--type", "Q4_1", "--layout", layout, "--name", "tiny")
            else:
                quantize_checkpoint(src, out, "Q4_1", layout, "tiny")
            files[label, layout] = out.read_bytes()
    for layout in ("bfl", "diffusers"):
        assert len({files[label, layout] for label in ("folder", "bfl", "prefixed", "sharded")}) == 1


def test_quantize_inspect_render_end_to_end(cli, model_cache, tmp_path):
    out = tmp_path / "mine.gguf"
    gguf_cli("quantize", tiny_folder(model_cache), out, "--type", "Q8_0", "--layout", "diffusers")
    text = gguf_cli("inspect", out).stdout
    assert "architecture  flux, diffusers key layout" in text
    assert (
        "model         FLUX.1 dev (guidance_in present), 2 double + 2 single blocks, hidden size 32" in text
    )
    assert "parameters    135.30 K (135,296) in 112 tensors" in text
    assert "file type     MOSTLY_Q8_0, quantization version 2" in text
    assert any(line.split()[:2] == ["Q8_0", "40"] for line in text.splitlines())

    info = json.loads(gguf_cli("inspect", out, "--json").stdout)
    assert (
        info["layout"],
        info["variant"],
        info["double_blocks"],
        info["single_blocks"],
        info["hidden_size"],
    ) == ("diffusers", "dev", 2, 2, 32)
    assert info["parameters"] == sum(t.numel() for t in tiny_weights(model_cache).values())
    assert info["file_size"] == out.stat().st_size
    assert info["types"]["Q8_0"] == {"tensors": 40, "values": 104448, "bytes": 104448 // 32 * 34}

    # the same tensor data as the embedded model's own Q8_0 file: the same pixels
    mine = cli(f"model.transformer={out}", "limit=2", "output.dir=mine")
    assert "rendered 2" in mine.stdout
    cli("limit=2", "output.dir=embedded")
    got, want = pixels(cli.cwd / "mine"), pixels(cli.cwd / "embedded")
    assert got.keys() == want.keys() and len(got) == 2
    assert all(np.array_equal(got[k], want[k]) for k in got)


def test_memory_reported_is_what_diffusers_allocates(model_cache, tmp_path):
    from diffusers import GGUFQuantizationConfig

    FluxTransformer2DModel = families.get("flux1").transformer_class()

    out = tmp_path / "q5.gguf"
    gguf_cli("quantize", tiny_folder(model_cache), out, "--type", "Q5_0", "--layout", "diffusers")
    info = json.loads(gguf_cli("inspect", out, "--json").stdout)
    for dtype in (torch.float32, torch.bfloat16):
        model = FluxTransformer2DModel.from_single_file(
            str(out),
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            config=str(model_cache / "tiny-v1"),
            subfolder="transformer",
            dtype=dtype,
        )
        allocated = sum(p.numel() * p.element_size() for p in model.parameters())
        assert info["loaded_bytes"][str(dtype).removeprefix("torch.")] == allocated


def test_writing_holds_one_tensor_at_a_time(tmp_path):
    from flux_batch.gguf.checkpoint import PlannedTensor

    alive = weakref.WeakSet()
    most = []

    def loader(i):
        def load():
            most.append(len(alive))
            tensor = torch.full((64, 64), float(i))
            alive.add(tensor)
            return tensor

        return load

    planned = [
        PlannedTensor(f"transformer_blocks.{i}.ff.net.2.weight", (64, 64), loader(i)) for i in range(6)
    ]
    stats = write_gguf(tmp_path / "s.gguf", planned, "Q8_0")
    assert most == [0] * 6  # every earlier tensor was freed before the next was read
    assert stats.types == {"Q8_0": [6, 6 * 64 * 64 // 32 * 34]}
    tensors = gguf.GGUFReader(tmp_path / "s.gguf").tensors
    assert [round(float(values(t)[0, 0]), 2) for t in tensors] == [0, 1, 2, 3, 4, 5]


def test_inspect_refuses_files_that_are_not_complete_gguf(model_cache, tmp_path):
    good = model_cache / "tiny-v1" / "transformer-Q8_0.gguf"
    data = good.read_bytes()
    cases = {
        "notes.gguf": (b"hello", "not a GGUF file (it does not start with the GGUF magic bytes)"),
        "header.gguf": (data[:100], "truncated GGUF file (100 bytes end inside its header)"),
        "tensors.gguf": (
            data[:-1000],
            f"truncated GGUF file ({len(data) - 1000:,} bytes; its tensors need {len(data):,})",
        ),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        result = gguf_cli("inspect", tmp_path / name, check=False)
        assert result.returncode == 2
        assert result.stderr == f"flux-batch-gguf: error: {tmp_path / name}: {message}\n"
    result = gguf_cli("inspect", tmp_path / "absent.gguf", check=False)
    assert result.stderr == f"flux-batch-gguf: error: {tmp_path / 'absent.gguf'}: no such file\n"


def test_render_refuses_a_truncated_transformer(cli, model_cache, tmp_path):
    data = (model_cache / "tiny-v1" / "transformer-Q8_0.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    result = cli(f"model.transformer={cut}", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"flux-batch: error: model.transformer={cut}: truncated GGUF file "
        f"({len(data) // 2:,} bytes; its tensors need {len(data):,})"
    )
    assert not list(cli.cwd.glob("outputs/*/run.json"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-folder", "o.gguf"], "missing-folder: no such file or folder"),
        (["weights.ckpt", "o.gguf"], "weights.ckpt: only .safetensors files and diffusers folders are read"),
        (
            ["odd.safetensors", "o.gguf"],
            "odd.safetensors: unexpected tensor 'extra.weight' for a FLUX "
            "transformer with 2 double and 2 single blocks",
        ),
        (["junk.safetensors", "o.gguf"], "junk.safetensors: not a readable safetensors file"),
        (["SRC", "o.bin"], "o.bin: the output must end in .gguf"),
        (["SRC", "exists.gguf"], "exists.gguf: already exists (pass --force to overwrite)"),
    ],
)
def test_quantize_bad_input_is_one_line_and_writes_nothing(model_cache, tmp_path, args, message):
    (tmp_path / "weights.ckpt").write_bytes(b"\x80\x04pickle")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (tmp_path / "exists.gguf").write_bytes(b"keep me")
    odd = dict(tiny_weights(model_cache))
    odd["extra.weight"] = torch.ones(2)
    save_file(odd, tmp_path / "odd.safetensors")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [str(tiny_folder(model_cache)) if a == "SRC" else a for a in args]
    result = gguf_cli("quantize", *args, "--type", "Q8_0", check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"flux-batch-gguf: error: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "exists.gguf").read_bytes() == b"keep me"


def test_unknown_type_is_refused_naming_the_choices(tmp_path):
    result = gguf_cli("quantize", tmp_path, tmp_path / "o.gguf", "--type", "Q6_K", check=False)
    assert result.returncode == 2
    assert "invalid choice: 'Q6_K'" in result.stderr
    assert "'Q8_0', 'Q5_0', 'Q5_1', 'Q4_0', 'Q4_1', 'BF16', 'F16', 'F32'" in result.stderr


def test_a_bfl_file_of_any_width_renders(cli, model_cache, tmp_path):
    """quantize's default layout, at the tiny model's width (32, not FLUX.1's 3072): the
    mapped loader splits the fused tensors itself, so it renders as the diffusers layout does."""
    out = tmp_path / "tiny-bfl.gguf"
    gguf_cli("quantize", tiny_folder(model_cache), out, "--type", "Q8_0")  # BFL names, hidden size 32
    result = cli(
        f"model.transformer={out}",
        "limit=1",
        "sampler.steps=2",
        "sampler.width=32",
        "sampler.height=32",
        "runtime.progress=false",
        "output.dir=bfl",
    )
    assert "rendered 1, skipped 0 already done, failed 0" in result.stdout
