"""Safetensors checkpoints where models are expected: a local folder or a hub repo (`owner/repo[@rev]`,
against the stand-in hub on loopback) is converted once into the cache, reused by later runs (nothing
converted, nothing downloaded), and converted again when the checkpoint changes."""

import llama_cpp  # noqa: F401

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from hf_fixtures import Case, cached_checkpoint
from hub_server import FakeHub
from rast_convert import convert_hf_to_gguf
from rast_gguf import checkpoints
from rast_gguf.hub import HubRef, looks_like_hub_ref, parse_hub_ref, resolve_model_ref

LARGE = Case(arch="qwen2", n_embd=128, n_layer=3, n_ff=256, n_pad=8, dtype="bf16", seed=41)
BASE = Case(arch="qwen2", n_embd=64, n_layer=2, n_ff=128, n_pad=8, dtype="bf16", seed=42)
TUNED = Case(arch="qwen2", n_embd=64, n_layer=2, n_ff=128, n_pad=8, dtype="bf16", seed=43)


def rast(*args, env_extra: dict):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RAST_"))}
    env.update(HF_HUB_DISABLE_TELEMETRY="1", **env_extra)
    return subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env)


def tensors(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(str(path)).tensors}


@pytest.fixture
def converted(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RAST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "converted"


def test_references_to_checkpoint_repos_are_told_from_paths_and_gguf_refs():
    assert parse_hub_ref("Qwen/Qwen2.5-1.5B") == HubRef("Qwen/Qwen2.5-1.5B", "main", "")
    assert parse_hub_ref("org/model@v2").is_checkpoint and parse_hub_ref("org/model@v2").revision == "v2"
    assert not parse_hub_ref("org/model-GGUF:Q8_0").is_checkpoint
    assert looks_like_hub_ref("org/model") and looks_like_hub_ref("org/model@abc")
    assert not looks_like_hub_ref("models/large.gguf") and not looks_like_hub_ref("./org/model")


def test_local_folder_is_converted_once_and_again_when_it_changes(tmp_path_factory, tmp_path, converted):
    folder = shutil.copytree(cached_checkpoint(BASE, tmp_path_factory).path, tmp_path / "Small-Base")
    start = checkpoints.n_conversions
    first = resolve_model_ref(folder)
    assert first.parent == converted and first.name.startswith("Small-Base-") and first.name.endswith("-q8_0.gguf")
    assert checkpoints.n_conversions == start + 1
    # the very bytes the converter writes when asked directly
    direct = convert_hf_to_gguf(folder, tmp_path / "direct.gguf", out_type="q8_0", progress=False)
    assert first.read_bytes() == direct.read_bytes()

    written_at = first.stat().st_mtime_ns
    assert resolve_model_ref(str(folder)) == first
    assert checkpoints.n_conversions == start + 1 and first.stat().st_mtime_ns == written_at
    assert [p.name for p in converted.iterdir()] == [first.name]  # no temporary file left behind

    as_f16 = resolve_model_ref(folder, "f16")
    assert as_f16 != first and as_f16.name.endswith("-f16.gguf") and checkpoints.n_conversions == start + 2

    config = folder / "generation_config.json"
    config.write_text(config.read_text() + "\n")  # any change to the checkpoint's files
    changed = resolve_model_ref(folder)
    assert changed != first and checkpoints.n_conversions == start + 3
    assert resolve_model_ref(folder) == changed and checkpoints.n_conversions == start + 3


def test_cli_takes_checkpoint_folders_for_every_model(tmp_path_factory, tmp_path):
    folders = {role: shutil.copytree(cached_checkpoint(case, tmp_path_factory).path, tmp_path / role)
               for role, case in (("large", LARGE), ("base", BASE), ("tuned", TUNED))}
    env = {"RAST_CACHE": str(tmp_path / "cache")}
    gen = ["generate", "-p", "The lighthouse keeper", "-n", "8", "--temp", "0", "-c", "128", "-t", "2"]
    models = ["-m", folders["large"], "--base", folders["base"], "--tuned", folders["tuned"]]
    first = rast(*gen, *models, env_extra=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("converting ") == 3
    again = rast(*gen, *models, env_extra=env)
    assert again.returncode == 0 and "converting" not in again.stderr and again.stdout == first.stdout
    cached = {p.name.split("-")[0]: p for p in (tmp_path / "cache" / "converted").iterdir()}
    by_path = rast(*gen, "-m", cached["large"], "--base", cached["base"], "--tuned", cached["tuned"], env_extra=env)
    assert by_path.returncode == 0 and by_path.stdout == first.stdout


@pytest.fixture
def hub(tmp_path_factory):
    files = {p.name: p.read_bytes() for p in cached_checkpoint(BASE, tmp_path_factory).path.iterdir()}
    with FakeHub({"test/small-ckpt": files, "test/small-GGUF": {"small-Q8_0.gguf": b"GGUF..."}}) as fake:
        yield fake


def test_hub_checkpoint_is_downloaded_and_converted_once(hub, tmp_path, tmp_path_factory):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint, "RAST_CACHE": str(tmp_path / "cache")}
    first = rast("pull", "test/small-ckpt", env_extra=env)
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path.parent == tmp_path / "cache" / "converted" and path.name.startswith("test--small-ckpt-")
    assert "converting test/small-ckpt" in first.stderr.replace("--", "/")
    local = convert_hf_to_gguf(cached_checkpoint(BASE, tmp_path_factory).path, tmp_path / "local.gguf",
                               out_type="q8_0", progress=False)
    assert tensors(path) == tensors(local)  # same weights as converting the folder itself
    n_gets = len(hub.file_gets())
    assert n_gets >= 4

    again = rast("pull", "test/small-ckpt", env_extra=env)
    assert again.returncode == 0 and Path(again.stdout.strip()) == path and "converting" not in again.stderr
    assert len(hub.file_gets()) == n_gets  # nothing downloaded again
    offline = rast("pull", "test/small-ckpt", env_extra={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0 and Path(offline.stdout.strip()) == path
    pinned = rast("check", "-m", f"test/small-ckpt@{hub.commits['test/small-ckpt']}", env_extra=env)
    assert str(path) in pinned.stdout and "converting" not in pinned.stderr

    as_f16 = rast("pull", "test/small-ckpt", "--convert-type", "f16", env_extra=env)
    assert as_f16.returncode == 0 and "converting" in as_f16.stderr and as_f16.stdout.strip().endswith("-f16.gguf")

    # a new commit on the hub: converted again
    hub.repos["test/small-ckpt"]["generation_config.json"] += b"\n"
    hub.commits["test/small-ckpt"] = hashlib.sha1(b"second commit").hexdigest()
    changed = rast("pull", "test/small-ckpt", env_extra=env)
    assert changed.returncode == 0, changed.stderr
    assert "converting" in changed.stderr and Path(changed.stdout.strip()) != path


def test_gguf_repo_without_a_quant_is_one_line(hub, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.endpoint, "RAST_CACHE": str(tmp_path / "cache")}
    proc = rast("pull", "test/small-GGUF", env_extra=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "test/small-GGUF holds GGUF files, not a safetensors checkpoint" in lines[0]
    assert "test/small-GGUF:QUANT" in lines[0] and "small-Q8_0.gguf" in lines[0]
