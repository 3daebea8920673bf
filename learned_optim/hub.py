"""Weights on disk and on the Hugging Face Hub: ``config.json`` + ``model.safetensors``.

Follows the huggingface_hub mixin convention: a folder holds ``config.json`` (format version,
architecture, every constant of the rule, provenance) and ``model.safetensors`` (the tensors).
Loading is strict (exactly the expected tensors, shapes, finite values) and never unpickles.

Name resolution in ``from_pretrained(name_or_path, revision=None)``, first match wins:
  1. an existing local directory;
  2. a name shipped with the package (``pretrained/<name>/``; see ``list_shipped()``);
  3. a Hub repo id ``"org/name"``, fetched with ``huggingface_hub.hf_hub_download`` (its cache,
     ``revision``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` apply as usual).

This module also gives ``CoordinatewiseLSTM`` its Hub-mixin style methods (``save_pretrained``,
``push_to_hub``, classmethod ``from_pretrained``), so the network module does not depend on it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .common.files import atomic_write_bytes, atomic_write_text
from .network import FORMAT_VERSION, WEIGHT_NAMES, CoordinatewiseLSTM, LSTMOptimizerConfig

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "DEFAULT_WEIGHTS",
    "WeightsError",
    "WeightsNotFoundError",
    "list_shipped",
    "shipped_dir",
    "resolve",
    "save_pretrained",
    "from_pretrained",
    "push_to_hub",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARCHITECTURE = "CoordinatewiseLSTM"

# The weights `LearnedOptimizer(params)` uses when `weights=None`.
DEFAULT_WEIGHTS = "lstm-h4-v2-cautious-size"

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class WeightsError(ValueError):
    """A weights folder exists but its files are missing, corrupt or inconsistent."""


class WeightsNotFoundError(FileNotFoundError):
    """A weights name that is not a local folder, not shipped and not on the (cached) Hub."""


def shipped_dir() -> Path:
    """The folder of weights shipped with the package (inside the wheel, or in a checkout)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "pretrained", here.parent / "pretrained"):
        if cand.is_dir():
            return cand
    return here / "pretrained"


def list_shipped() -> list[str]:
    """Names of the weights shipped with the package."""
    root = shipped_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file())


def _hub_download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - huggingface-hub is a dependency
        raise WeightsNotFoundError(f"huggingface_hub is needed to load {repo_id!r} from the Hub") from e
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=offline,
                )
            )
        except Exception as e:  # every Hub failure becomes one readable error, not an HTTP trace
            from huggingface_hub import constants

            where = cache_dir or constants.HF_HUB_CACHE
            mode = "offline (HF_HUB_OFFLINE=1), so only the cache was searched" if offline else "online"
            rev = f" at revision {revision!r}" if revision else ""
            raise WeightsNotFoundError(
                f"could not get {filename!r} of Hub repo {repo_id!r}{rev}: {type(e).__name__}. "
                f"Looked in the Hub cache {where} ({mode}). Check the repo id and revision, "
                f"download it while online, or pass a local directory."
            ) from None
    return Path(paths[0]).parent


def resolve(name_or_path: str | os.PathLike | None, revision: str | None = None) -> Path:
    """The local folder that holds the weights called ``name_or_path`` (see module docstring)."""
    if name_or_path is None:
        name_or_path = DEFAULT_WEIGHTS
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"weights must be None, a shipped name, a directory or a Hub repo id (str or path), "
            f"got {type(name_or_path).__name__}"
        )
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"revision must be a str (branch, tag or commit) or None, got {revision!r}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise WeightsError(
            f"weights path {str(path)!r} is a file; pass the directory that holds {CONFIG_NAME} "
            f"and {WEIGHTS_NAME}"
        )
    name = os.fspath(name_or_path)
    shipped = list_shipped()
    if name in shipped:
        return shipped_dir() / name
    if _REPO_ID.match(name):
        return _hub_download(name, revision)
    raise WeightsNotFoundError(
        f"weights {name!r} not found: it is not a local directory ({path.resolve()} does not exist), "
        f"not a shipped name (shipped: {', '.join(shipped) or 'none'}), and not a Hub repo id "
        f"of the form 'org/name'."
    )


def _read_config(path: Path) -> tuple[LSTMOptimizerConfig, dict[str, Any]]:
    if not path.is_file():
        raise WeightsError(f"{path}: missing; a weights folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a JSON object at the top level")
    for key in ("format_version", "architecture", "config"):
        if key not in raw:
            raise WeightsError(f"{path}: missing field {key!r}")
    version = raw["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise WeightsError(f"{path}: format_version must be an int, got {version!r}")
    if version > FORMAT_VERSION:
        raise WeightsError(
            f"{path}: format_version {version} is newer than this learned-optim understands "
            f"({FORMAT_VERSION}); upgrade learned-optim (pip install -U learned-optim)"
        )
    if version < 1:
        raise WeightsError(f"{path}: format_version must be >= 1, got {version}")
    if raw["architecture"] != ARCHITECTURE:
        raise WeightsError(f"{path}: architecture {raw['architecture']!r} is not {ARCHITECTURE!r}")
    if not isinstance(raw["config"], dict):
        raise WeightsError(f"{path}: field 'config' must be an object")
    try:
        config = LSTMOptimizerConfig.from_dict(raw["config"])
    except KeyError as e:
        raise WeightsError(f"{path}: config is missing field(s) {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: invalid config: {e}") from None
    if config.format_version > version:
        raise WeightsError(f"{path}: the config uses format version {config.format_version} fields "
                           f"(sign_equivariant / context_features / cautious_scale / cautious_rescale) but declares "
                           f"format_version {version}; set format_version to {config.format_version}")
    provenance = raw.get("provenance", {})
    if not isinstance(provenance, dict):
        raise WeightsError(f"{path}: field 'provenance' must be an object")
    return config, provenance


def load_directory(directory: str | os.PathLike) -> CoordinatewiseLSTM:
    """Load and validate a weights folder (strict; never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config, provenance = _read_config(directory / CONFIG_NAME)
    wpath = directory / WEIGHTS_NAME
    if not wpath.is_file():
        raise WeightsError(f"{wpath}: missing; a weights folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{wpath}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    net = CoordinatewiseLSTM(config, provenance=provenance)
    expected = net.expected_shapes()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise WeightsError(f"{wpath}: tensors missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise WeightsError(
                f"{wpath}: tensor {name!r} has shape {tuple(t.shape)}, but config.json "
                f"(hidden_size={config.hidden_size}, {config.num_features} features) needs {shape}"
            )
        if not t.is_floating_point():
            raise WeightsError(f"{wpath}: tensor {name!r} has dtype {t.dtype}, expected a float dtype")
        if not torch.isfinite(t).all():
            raise WeightsError(f"{wpath}: tensor {name!r} has non-finite values (NaN or inf)")
    with torch.no_grad():
        for name in expected:
            getattr(net, name).copy_(tensors[name].to(torch.float32))
    return net


def from_pretrained(
    name_or_path: str | os.PathLike | None = None, revision: str | None = None
) -> CoordinatewiseLSTM:
    """Load a ``CoordinatewiseLSTM`` by shipped name, local directory or Hub repo id.

    ``None`` gives the package default (``DEFAULT_WEIGHTS``). Raises ``WeightsNotFoundError``
    when the name resolves nowhere and ``WeightsError`` when the files are bad.
    """
    return load_directory(resolve(name_or_path, revision))


def config_json(network: CoordinatewiseLSTM) -> dict[str, Any]:
    return {
        # the oldest version that holds this config, so version-1 weights stay readable by every release
        "format_version": network.config.format_version,
        "architecture": ARCHITECTURE,
        "config": network.config.to_dict(),
        "provenance": network.provenance,
    }


def save_pretrained(
    network: CoordinatewiseLSTM, save_directory: str | os.PathLike, *, model_card: str | None = None
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (and ``README.md`` if ``model_card``).

    Each file is written atomically (``common.files``: temp file, fsync, rename), so a crash never
    leaves a half-written file behind.
    """
    from safetensors.torch import save

    if not isinstance(network, CoordinatewiseLSTM):
        raise TypeError(f"network must be a CoordinatewiseLSTM, got {type(network).__name__}")
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: getattr(network, k).detach().to("cpu", torch.float32).contiguous() for k in WEIGHT_NAMES}
    for k, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"refusing to save: network tensor {k!r} has non-finite values")
    atomic_write_bytes(out / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write_text(out / CONFIG_NAME, json.dumps(config_json(network), indent=2, sort_keys=True) + "\n")
    if model_card is not None:
        atomic_write_text(out / "README.md", model_card)
    return out


def push_to_hub(
    network: CoordinatewiseLSTM,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload learned optimizer weights",
    model_card: str | None = None,
) -> str:
    """Create (if needed) the Hub repo ``repo_id`` and upload the weights folder to it.

    Returns the commit URL. Needs network access and a token (``huggingface-cli login``).
    """
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(network, tmp, model_card=model_card)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                 repo_type="model")
    return str(getattr(info, "commit_url", info))


# ----------------------------------------------------------------------------- methods
# Hub-mixin style conveniences on the network class (huggingface_hub's ModelHubMixin API):
# ``net.save_pretrained(dir)``, ``net.push_to_hub(repo_id)``, ``CoordinatewiseLSTM.from_pretrained(name)``.
# They are the functions above, attached to the class when this module is imported
# (``learned_optim/__init__`` imports it), so ``network`` never imports ``hub``.


def _from_pretrained_classmethod(cls: type, name_or_path: str | os.PathLike | None = None,
                                 revision: str | None = None) -> CoordinatewiseLSTM:
    """Load by shipped name, local directory or Hub repo id (see ``hub.from_pretrained``)."""
    return from_pretrained(name_or_path, revision=revision)


CoordinatewiseLSTM.save_pretrained = save_pretrained
CoordinatewiseLSTM.push_to_hub = push_to_hub
CoordinatewiseLSTM.from_pretrained = classmethod(_from_pretrained_classmethod)
