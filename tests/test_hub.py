"""Hub references (`owner/repo:QUANT`, `owner/repo:file.gguf`) against a stand-in hub on loopback:
downloads land in huggingface_hub's cache and are reused, offline mode works from the cache, and
every failure is one line."""

import llama_cpp  # noqa: F401

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub_server import FakeHub
from rast_gguf.errors import HubError
from rast_gguf.hub import HubRef, looks_like_hub_ref, parse_hub_ref, select_files

QUANTS = {
    "README.md": b"# quants\n",
    "model-Q4_K_M.gguf": b"GGUF q4_k_m " * 1000,
    "model-Q4_K_S.gguf": b"GGUF q4_k_s",
    "model-Q8_0.gguf": b"GGUF q8_0 a",
    "other-Q8_0.gguf": b"GGUF q8_0 b",
    "model-F16-00001-of-00002.gguf": b"GGUF f16 part 1",
    "model-F16-00002-of-00002.gguf": b"GGUF f16 part 2",
    "sub/model-BF16.gguf": b"GGUF bf16",
}


@pytest.fixture(scope="module")
def hub(triple):
    repos = {"test/quants": QUANTS,
             "test/tiny-triple": {f"{role}.gguf": Path(getattr(triple, role)).read_bytes()
                                  for role in ("large", "base", "tuned")}}
    with FakeHub(repos) as fake:
        yield fake


def rast(*args, home: Path, endpoint: str, offline: bool = False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=env)


def one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_parse_hub_ref():
    assert parse_hub_ref("Qwen/Qwen2.5-7B-GGUF:Q4_K_M") == HubRef("Qwen/Qwen2.5-7B-GGUF", "main", "Q4_K_M")
    ref = parse_hub_ref("org/name@v1.0:dir/x.gguf")
    assert ref == HubRef("org/name", "v1.0", "dir/x.gguf") and ref.is_file and str(ref) == "org/name@v1.0:dir/x.gguf"
    for bad in ("Qwen:Q4_K_M", "a/b/c:Q4", "a/b:", "a/b:../x.gguf", "/a/b:Q4", "a/b:Q4 ?"):
        assert not looks_like_hub_ref(bad) or pytest.raises(HubError, parse_hub_ref, bad)
    assert not looks_like_hub_ref("models/large.gguf") and not looks_like_hub_ref("./a/b:Q4")


def test_select_files_by_whole_word_quant_tag():
    files = list(QUANTS)
    pick = lambda spec: select_files(HubRef("t/q", "main", spec), files)  # noqa: E731
    assert pick("q4_k_m") == ["model-Q4_K_M.gguf"]
    assert pick("F16") == ["model-F16-00001-of-00002.gguf", "model-F16-00002-of-00002.gguf"]
    assert pick("BF16") == ["sub/model-BF16.gguf"]
    assert pick("sub/model-BF16.gguf") == ["sub/model-BF16.gguf"]
    with pytest.raises(HubError, match=r"no .gguf file in t/q matches 'Q4_K' \(its .gguf files: model-F16.gguf, "):
        pick("Q4_K")
    with pytest.raises(HubError, match=r"2 .gguf files in t/q match 'Q8_0' \(model-Q8_0.gguf, other-Q8_0.gguf\)"):
        pick("Q8_0")
    with pytest.raises(HubError, match="lacks part"):
        select_files(HubRef("t/q", "main", "F16"), ["model-F16-00001-of-00002.gguf"])


def test_pull_downloads_into_the_hf_cache_and_reuses_it(hub, tmp_path):
    home = tmp_path / "hf"
    proc = rast("pull", "test/quants:Q4_K_M", "test/quants:F16", home=home, endpoint=hub.endpoint)
    assert proc.returncode == 0, proc.stderr
    paths = [Path(p) for p in proc.stdout.split()]
    snapshot = home / "hub" / "models--test--quants" / "snapshots" / hub.commits["test/quants"]
    assert paths == [snapshot / "model-Q4_K_M.gguf", snapshot / "model-F16-00001-of-00002.gguf",
                     snapshot / "model-F16-00002-of-00002.gguf"]
    assert [p.read_bytes() for p in paths] == [QUANTS[p.name] for p in paths]
    gets = len(hub.file_gets())
    assert gets >= 3

    again = rast("pull", "test/quants:Q4_K_M", home=home, endpoint=hub.endpoint)
    assert again.returncode == 0 and Path(again.stdout.strip()) == paths[0]
    assert len(hub.file_gets()) == gets  # nothing downloaded again

    n_requests = len(hub.requests)
    offline = rast("pull", "test/quants:q4_k_m", "test/quants:model-F16-00001-of-00002.gguf", home=home,
                   endpoint=hub.endpoint, offline=True)
    assert offline.returncode == 0, offline.stderr
    assert [Path(p) for p in offline.stdout.split()] == paths
    assert len(hub.requests) == n_requests  # offline: the hub was not asked

    closed = rast("pull", "test/quants:Q4_K_M", home=home, endpoint="http://127.0.0.1:9")
    assert closed.returncode == 0 and Path(closed.stdout.strip()) == paths[0]  # no network: from the cache


def test_every_command_takes_hub_references(hub, triple, tmp_path):
    home = tmp_path / "hf"
    refs = ["-m", "test/tiny-triple:large.gguf", "--base", "test/tiny-triple:base.gguf",
            "--tuned", "test/tiny-triple:tuned.gguf"]
    check = rast("check", *refs, home=home, endpoint=hub.endpoint)
    assert check.returncode == 0, check.stderr
    assert "verdict: compatible" in check.stdout and "models--test--tiny-triple" in check.stdout
    gen = ["generate", "-p", "Once upon a time", "-n", "12", "--temp", "0", "-c", "128", "-t", "1"]
    by_ref = rast(*gen, *refs, home=home, endpoint=hub.endpoint)
    by_path = rast(*gen, "-m", triple.large, "--base", triple.base, "--tuned", triple.tuned, home=home,
                   endpoint=hub.endpoint)
    assert by_ref.returncode == 0 and by_ref.stdout == by_path.stdout and len(by_ref.stdout) > 1


@pytest.mark.parametrize("ref, message", [
    ("Qwen:Q4_K_M", "'Qwen:Q4_K_M' is neither an existing file nor a hub reference; use a local file or checkpoint folder, owner/repo:QUANT"),
    ("test/quants:", "'test/quants:' is neither an existing file nor a hub reference"),
    ("test/missing:Q4_K_M", "no model repo test/missing on http://127.0.0.1:"),
    ("test/quants:nope.gguf", "no file nope.gguf in test/quants@main; its .gguf files: model-F16-00001-of-00002.gguf"),
    ("test/quants:IQ2_XS", "no .gguf file in test/quants matches 'IQ2_XS'"),
    ("test/quants@v9:Q4_K_M", "test/quants has no revision 'v9'"),
])
def test_bad_references_give_one_line(hub, tmp_path, ref, message):
    line = one_error_line(rast("check", "-m", ref, home=tmp_path / "hf", endpoint=hub.endpoint))
    assert message in line, line


def test_no_network_and_nothing_cached_gives_one_line(tmp_path):
    line = one_error_line(rast("pull", "test/quants:Q4_K_M", home=tmp_path / "hf", endpoint="http://127.0.0.1:9"))
    assert "test/quants:Q4_K_M is not in the hub cache and cannot reach http://127.0.0.1:9" in line, line
    line = one_error_line(rast("generate", "-p", "x", "-m", "test/quants:file.gguf", home=tmp_path / "hf",
                               endpoint="http://127.0.0.1:9", offline=True))
    assert "is not in the hub cache and offline mode (HF_HUB_OFFLINE) is on" in line, line
