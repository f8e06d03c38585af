"""Load GPT-2 weights in the Hugging Face layout (Hub or local folder) into a `GPTModel`.

Weights are read with safetensors only, so loading never runs code from the file. Two key layouts
exist: the Hub's `model.safetensors` for the `openai-community/gpt2*` repos has bare keys
(`wte.weight`, `h.0.attn.c_attn.weight`, plus the causal-mask buffers `h.N.attn.bias`), while
`save_pretrained` writes `transformer.`-prefixed keys. GPT-2's `Conv1D` layers store their weights
as `[in, out]`, the transpose of `nn.Linear`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.gpt import GPTConfig, GPTModel

HUB_REPOS = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
WEIGHTS_FILE = "model.safetensors"


LOCAL_CHOICES = (
    "model.weights=random, or a local folder with a Hugging Face GPT-2 (model.weights=/path/to/dir)"
)
OFFLINE_CHOICES = f"{LOCAL_CHOICES}, or HF_HUB_OFFLINE=1 with a copy in the Hugging Face cache"
HUB_CHECK_SECONDS = 3.0  # how long the Hub may take to answer before we call it unreachable


def checkpoint_dir(name_or_path: str | os.PathLike) -> Path:
    """A local folder holding `config.json` and `model.safetensors`, downloading by name if needed.

    A cached copy is used without asking the Hub. Otherwise the Hub gets one quick request first:
    `hf_hub_download` retries an unreachable Hub for most of a minute before it gives up.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if name not in HUB_REPOS:
        raise GPTClassifierError(
            f"weights {name!r} is neither a folder nor a known model: "
            f"use one of {', '.join(HUB_REPOS)}, a local Hugging Face folder, or 'random'"
        )
    from huggingface_hub import constants, hf_hub_download  # here: prediction never needs it
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    def download(*, cached_only: bool) -> Path:
        hf_hub_download(HUB_REPOS[name], "config.json", local_files_only=cached_only)
        return Path(hf_hub_download(HUB_REPOS[name], WEIGHTS_FILE, local_files_only=cached_only)).parent

    try:
        return download(cached_only=True)
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        raise GPTClassifierError(
            f"HF_HUB_OFFLINE is set and {name} is not in the Hugging Face cache: download it once online, "
            f"or use {LOCAL_CHOICES}"
        )
    if not hub_reachable(constants.ENDPOINT):
        raise GPTClassifierError(
            f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) to download {name}: "
            f"to train offline use {OFFLINE_CHOICES}"
        )
    try:  # cached, resumable
        return download(cached_only=False)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise GPTClassifierError(
            f"cannot download {name} from the Hugging Face Hub ({type(err).__name__}): "
            f"to train offline use {OFFLINE_CHOICES}"
        ) from None


def hub_reachable(endpoint: str) -> bool:
    """Whether the Hub answers one request within `HUB_CHECK_SECONDS` (any HTTP status counts)."""
    from huggingface_hub.utils import get_session  # its proxies and headers, as downloads use them

    try:
        get_session().head(endpoint, timeout=HUB_CHECK_SECONDS)
    except Exception:  # any transport error of the HTTP client (requests or httpx, by version)
        return False
    return True


def config_from_hf(config: dict) -> GPTConfig:
    """Map a Hugging Face GPT-2 `config.json` onto our `GPTConfig`."""
    try:
        return GPTConfig(
            vocab_size=config["vocab_size"],
            context_length=config["n_positions"],
            emb_dim=config["n_embd"],
            n_heads=config["n_head"],
            n_layers=config["n_layer"],
            drop_rate=0.0,
            qkv_bias=True,
        )
    except KeyError as err:
        raise GPTClassifierError(f"config.json lacks {err}: is this a GPT-2 checkpoint?") from None


def _hf_key(gpt_key: str) -> tuple[str, slice | None, bool]:
    """The HF key holding one of our parameters, which third of `c_attn` it is, and if transposed."""
    parts = gpt_key.split(".")
    if parts[0] == "tok_emb":
        return "wte.weight", None, False
    if parts[0] == "pos_emb":
        return "wpe.weight", None, False
    if parts[0] == "final_norm":
        return f"ln_f.{parts[1]}", None, False
    if parts[0] == "out_head":
        return "wte.weight", None, False  # GPT-2 ties the output head to the token embedding
    block, rest, kind = parts[1], ".".join(parts[2:-1]), parts[-1]
    transposed = kind == "weight"
    if rest in ("att.W_query", "att.W_key", "att.W_value"):
        third = ("att.W_query", "att.W_key", "att.W_value").index(rest)
        return f"h.{block}.attn.c_attn.{kind}", slice(third, third + 1), transposed
    names = {
        "att.out_proj": "attn.c_proj",
        "ff.layers.0": "mlp.c_fc",
        "ff.layers.2": "mlp.c_proj",
        "norm1": "ln_1",
        "norm2": "ln_2",
    }
    return f"h.{block}.{names[rest]}.{kind}", None, transposed and rest.startswith(("att", "ff"))


def convert_hf_state_dict(hf_state: dict[str, Tensor], model: GPTModel, source: str) -> dict[str, Tensor]:
    """Our state dict from HF tensors in either key layout; errors name the missing or odd key."""
    hf_state = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    state = {}
    for key, target in model.state_dict().items():
        hf_key, third, transposed = _hf_key(key)
        if hf_key not in hf_state:
            raise GPTClassifierError(f"{source}: missing key {hf_key!r} (needed for {key})")
        tensor = hf_state[hf_key]
        if third is not None:
            tensor = tensor.chunk(3, dim=-1)[third.start]
        if transposed:
            tensor = tensor.t()
        if key == "pos_emb.weight" and tensor.shape[0] > target.shape[0]:
            tensor = tensor[: target.shape[0]]  # a shorter context keeps the first positions
        if tensor.shape != target.shape:
            raise GPTClassifierError(
                f"{source}: key {hf_key!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(target.shape)} for {key}"
            )
        state[key] = tensor.to(target.dtype).contiguous()
    return state


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file, or one clear error if it is missing or not safetensors."""
    if not path.is_file():
        raise GPTClassifierError(f"{path} not found: a weights folder needs config.json and {WEIGHTS_FILE}")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise GPTClassifierError(
            f"{path} is not a readable safetensors file ({err}): re-download or re-save it with "
            "save_pretrained(..., safe_serialization=True)"
        ) from None


def load_pretrained(name_or_path: str | os.PathLike, cfg: GPTConfig | None = None) -> GPTModel:
    """A `GPTModel` with GPT-2 weights from the Hub (by name) or a local Hugging Face folder.

    The architecture comes from the checkpoint's `config.json`, or from `cfg` when given (to set
    dropout, the causal mask or a shorter context); the weights must then fit it, key by key.
    """
    folder = checkpoint_dir(name_or_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise GPTClassifierError(
            f"{config_file} not found: a weights folder needs config.json and {WEIGHTS_FILE}"
        )
    cfg = cfg or config_from_hf(json.loads(config_file.read_text()))
    with torch.device("meta"):
        model = GPTModel(cfg)
    weights_file = folder / WEIGHTS_FILE
    state = convert_hf_state_dict(read_safetensors(weights_file), model, str(weights_file))
    model.load_state_dict(state, assign=True)
    return model


def build_backbone(model: dict) -> GPTModel:
    """A `GPTModel` from a model config: `weights` is `pretrained` (by `name`), `random`, or a folder."""
    cfg = GPTConfig(**{k: v for k, v in model.items() if k not in ("name", "weights")})
    weights = str(model.get("weights", "random"))
    if weights == "random":
        return GPTModel(cfg)
    return load_pretrained(model["name"] if weights == "pretrained" else weights, cfg)
