"""Model files from the Hugging Face hub: `owner/repo:QUANT`, `owner/repo:file.gguf` (a path in
the repo) and `owner/repo@revision:...` resolve to local files in huggingface_hub's own cache; a
bare `owner/repo` (or `owner/repo@revision`) names a safetensors checkpoint repo, which is
downloaded and converted once to GGUF (rast_gguf.checkpoints, keyed by repo + commit + type).

`resolve_model_ref(ref)` returns an existing local path unchanged; a hub reference is looked up
(the repo's file list), downloaded with `hf_hub_download` (so files already in the cache are
reused, and HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE and tokens work as in every HF tool) and its
cached path returned. A quant tag picks the one .gguf whose name holds the tag as a whole word
(case-insensitive: `Q4_K_M` in `qwen2.5-7b-q4_k_m.gguf`, not `Q4_K` in it); a split model
(`-00001-of-00003.gguf`) downloads every part and returns the first, which llama.cpp loads. With
no network (or offline mode) the file list comes from the cache. Every failure is one HubError line.
Which kind a bare repo is, is read from its file list: config.json and *.safetensors make a
checkpoint; .gguf files only make a GGUF repo, for which the error asks for a quant tag.
A local folder with config.json and *.safetensors is converted the same way (keyed by its files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rast_gguf.errors import HubError

_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?"
                  r"(?::(?P<spec>[\w./ +-]+))?$")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_USAGE = ("use a local file or checkpoint folder, owner/repo:QUANT (e.g. Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M), "
          "owner/repo:file.gguf, or owner/repo for a safetensors checkpoint")
# Files of a checkpoint repo the converter reads (weights, configs, tokenizer); top-level only.
_CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".model")


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str
    spec: str = ""  # a quant tag or a .gguf path in the repo; "" for a checkpoint repo

    @property
    def is_file(self) -> bool:
        return self.spec.lower().endswith(".gguf")

    @property
    def is_checkpoint(self) -> bool:
        return not self.spec

    def __str__(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"{self.repo}{rev}" + (f":{self.spec}" if self.spec else "")


def looks_like_hub_ref(ref: str) -> bool:
    """Not a local path: `owner/repo:...` or a bare `owner/repo[@rev]` (a name ending in .gguf is a path)."""
    if ref.startswith(("/", ".", "~")) or Path(ref).exists():
        return False
    return ":" in ref or (not ref.lower().endswith(".gguf") and _REF.match(ref) is not None)


def parse_hub_ref(ref: str) -> HubRef:
    match = _REF.match(ref)
    spec = (match and match["spec"]) or ""
    if not match or ".." in match["repo"] or spec.startswith("/") or ".." in spec.split("/") \
            or (ref.endswith(":") and not spec):
        raise HubError(f"{ref!r} is neither an existing file nor a hub reference; {_USAGE}")
    return HubRef(match["repo"], match["revision"] or "main", spec)


def resolve_model_ref(ref: str | Path, convert_type: str | None = None) -> Path:
    """A local GGUF path for a model argument: the path itself, the cached download of a hub reference,
    or the cached conversion (to `convert_type`, default q8_0) of a checkpoint folder or checkpoint repo."""
    from rast_gguf.checkpoints import DEFAULT_CONVERT_TYPE, cached_conversion, is_checkpoint_dir

    text = str(ref)
    if is_checkpoint_dir(text):
        return cached_conversion(Path(text), convert_type or DEFAULT_CONVERT_TYPE)
    if not looks_like_hub_ref(text):
        return Path(ref)
    return pull(parse_hub_ref(text), convert_type)[0]


def pull(hub_ref: HubRef | str, convert_type: str | None = None) -> list[Path]:
    """Download (or find in the cache) the file(s) of a reference; the first is the model to load. A checkpoint
    repo is downloaded and converted to `convert_type` (default q8_0) once; its GGUF is the one file."""
    hub_ref = parse_hub_ref(hub_ref) if isinstance(hub_ref, str) else hub_ref
    commit, files = repo_files(hub_ref)
    if hub_ref.is_checkpoint:
        return [_converted_checkpoint(hub_ref, commit, files, convert_type)]
    return [_download(hub_ref, name) for name in select_files(hub_ref, files)]


def _converted_checkpoint(hub_ref: HubRef, commit: str, files: list[str], convert_type: str | None) -> Path:
    from rast_gguf.checkpoints import DEFAULT_CONVERT_TYPE, cached_conversion

    if "config.json" not in files or not any(f.endswith(".safetensors") and "/" not in f for f in files):
        ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
        if ggufs:
            raise HubError(f"{hub_ref.repo} holds GGUF files, not a safetensors checkpoint; name one with "
                           f"{hub_ref.repo}:QUANT or {hub_ref.repo}:FILE.gguf (its .gguf files: {', '.join(ggufs)})")
        raise HubError(f"{hub_ref.repo} has neither .gguf files nor a safetensors checkpoint (config.json + "
                       f"*.safetensors); {_USAGE}")
    needed = [f for f in files if "/" not in f and f.endswith(_CHECKPOINT_SUFFIXES)]

    def download() -> Path:
        # by the revision as given, so huggingface_hub records it (offline runs find it), then checked
        # against the commit the cache key names
        snapshot = [_download(hub_ref, name) for name in needed][0].parent
        if _COMMIT.match(commit) and snapshot.name != commit:
            raise HubError(f"{hub_ref} moved to another commit while downloading; run the command again")
        return snapshot

    return cached_conversion(download, convert_type or DEFAULT_CONVERT_TYPE, identity=f"hub:{hub_ref.repo}@{commit}",
                             label=hub_ref.repo.replace("/", "--"))


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE)


def _cached_files(hub_ref: HubRef) -> tuple[str, list[str]] | None:
    """(commit, files) of the cached snapshot of the reference's revision, or None."""
    from huggingface_hub import constants

    storage = Path(constants.HF_HUB_CACHE) / ("models--" + hub_ref.repo.replace("/", "--"))
    commit = hub_ref.revision
    if not _COMMIT.match(commit):
        ref_file = storage / "refs" / commit
        if not ref_file.is_file():
            return None
        commit = ref_file.read_text().strip()
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    return commit, sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def repo_files(hub_ref: HubRef) -> tuple[str, list[str]]:
    """(commit, every file path in the repo) from the hub, or from the cache when it cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    why = "offline mode (HF_HUB_OFFLINE) is on"
    if not _offline():
        try:
            info = HfApi().model_info(hub_ref.repo, revision=hub_ref.revision)
            return info.sha or hub_ref.revision, [s.rfilename for s in info.siblings or []]
        except GatedRepoError:
            raise HubError(f"{hub_ref.repo} is gated: accept its terms on the hub and log in "
                           "(`hf auth login` or HF_TOKEN)") from None
        except RepositoryNotFoundError:
            raise HubError(f"no local file {hub_ref} and no model repo {hub_ref.repo} on {_endpoint()} (if the repo "
                           "is private, log in with `hf auth login` or set HF_TOKEN)") from None
        except RevisionNotFoundError:
            raise HubError(f"{hub_ref.repo} has no revision {hub_ref.revision!r}") from None
        except Exception as e:  # no network, a proxy, a server error: try the cache
            why = f"cannot reach {_endpoint()}: {type(e).__name__}"
    cached = _cached_files(hub_ref)
    if cached is None:
        raise HubError(f"{hub_ref} is not in the hub cache and {why}; connect to the network (or fix HF_ENDPOINT) "
                       "and run `rast pull` once")
    return cached


def select_files(hub_ref: HubRef, files: list[str]) -> list[str]:
    """The repo files a reference names: one .gguf, or every part of a split one (first part first)."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    if hub_ref.is_file:
        if hub_ref.spec not in files:
            listing = ", ".join(ggufs) if ggufs else "none"
            raise HubError(f"no file {hub_ref.spec} in {hub_ref.repo}@{hub_ref.revision}; its .gguf files: {listing}")
        return _with_split_parts(hub_ref.spec, files)
    word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(hub_ref.spec)}(?![A-Za-z0-9_])", re.IGNORECASE)
    models = sorted({_SPLIT.sub(".gguf", f) for f in ggufs if word.search(Path(f).name)})
    if not models:
        listing = ", ".join(sorted({_SPLIT.sub(".gguf", f) for f in ggufs})) or "none"
        raise HubError(f"no .gguf file in {hub_ref.repo} matches {hub_ref.spec!r} (its .gguf files: {listing}); "
                       f"give a quant tag from one of these names, or the file name ({hub_ref.repo}:FILE.gguf)")
    if len(models) > 1:
        raise HubError(f"{len(models)} .gguf files in {hub_ref.repo} match {hub_ref.spec!r} ({', '.join(models)}); "
                       f"give the file name instead ({hub_ref.repo}:FILE.gguf)")
    parts = sorted(f for f in ggufs if _SPLIT.sub(".gguf", f) == models[0])
    return _with_split_parts(parts[0], files)


def _with_split_parts(name: str, files: list[str]) -> list[str]:
    match = _SPLIT.search(name)
    if not match:
        return [name]
    stem, count = name[:match.start()], int(match[2])
    parts = [f"{stem}-{i:05d}-of-{match[2]}.gguf" for i in range(1, count + 1)]
    missing = [p for p in parts if p not in files]
    if missing:
        raise HubError(f"split model {name} lacks part(s) {', '.join(missing)} in its repo")
    return parts


def _download(hub_ref: HubRef, name: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(hub_ref.repo, name, revision=hub_ref.revision))  # records refs/<revision>
    except LocalEntryNotFoundError:
        raise HubError(f"{hub_ref.repo}/{name} is not in the hub cache and {_endpoint()} cannot be reached "
                       "(or offline mode is on); connect to the network and run `rast pull` once") from None
    except EntryNotFoundError:
        raise HubError(f"no file {name} in {hub_ref.repo}@{hub_ref.revision}") from None
    except OSError as e:
        raise HubError(f"downloading {hub_ref.repo}/{name} failed: {str(e).splitlines()[0]}; "
                       "run the command again to resume") from None
