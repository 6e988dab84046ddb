"""Loaded base models: prompt and phrase encoding, UNet kwargs, latents <-> images, schedulers.

One class per kind, all behind the :class:`BaseModel` interface:

* ``sd``     CLIPTokenizer + CLIPTextModel, AutoencoderKL, UNet2DConditionModel;
* ``sdxl``   two CLIP encoders, prompt = concat of penultimate hidden states, pooled =
             text_encoder_2's ``text_embeds``, ``added_cond_kwargs`` text_embeds + time_ids;
* ``kolors`` ChatGLM (diffusers.pipelines.kolors), as ``KolorsPipeline.encode_prompt``;
* ``pixel``  no VAE: the UNet works on RGB pixels in [-1, 1].

Phrase vectors (the adapter's ``text_dim`` inputs) follow the user's code (restated in
tests/reference_user.py): names tokenized together by the base model's own tokenizer (padding to
the longest, max_length 32, truncation), run through the base text encoder, the last hidden state
mean-pooled over the attention mask (float32); an empty (or blank) name gives a zero vector.
``phrase_encoding`` records the exact recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from gatebench.errors import ModelFileError, ProtocolError
from gatebench.models.files import ModelFolder, read_json

PHRASE_BATCH = 64


@dataclass(frozen=True)
class PromptEmbeddings:
    hidden: torch.Tensor                 # (B, L, cross_attention_dim) encoder_hidden_states
    pooled: torch.Tensor | None = None   # (B, P) for sdxl/kolors, else None

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def cat(self, other: "PromptEmbeddings") -> "PromptEmbeddings":
        """Batch concatenation (e.g. [uncond, cond] for classifier-free guidance)."""
        if (self.pooled is None) != (other.pooled is None):
            raise ValueError("expected both PromptEmbeddings to have pooled embeddings or neither")
        pooled = (None if self.pooled is None or other.pooled is None
                  else torch.cat([self.pooled, other.pooled]))
        return PromptEmbeddings(torch.cat([self.hidden, other.hidden]), pooled)

    def index(self, idx: torch.Tensor | Sequence[int] | slice | int) -> "PromptEmbeddings":
        """Select rows: a tensor or list of indices (repeats allowed), a slice or one int."""
        if isinstance(idx, int):
            idx = [idx]
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.hidden.device)
        return PromptEmbeddings(self.hidden[idx], None if self.pooled is None else self.pooled[idx])

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "PromptEmbeddings":
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return PromptEmbeddings(self.hidden.to(device=device, dtype=dtype), pooled)


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) x (B, L) -> (B, H) float32 mean over the positions where mask is 1."""
    mask = mask.to(hidden.device, torch.float32).unsqueeze(-1)
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class BaseModel:
    """A frozen base diffusion model loaded from a local folder (see load_base_model)."""

    kind = "sd"
    phrase_encoder_name = "text_encoder"
    phrase_tokenizer_name = "tokenizer"

    def __init__(self, folder: ModelFolder, parts: dict[str, Any], device: torch.device,
                 dtype: torch.dtype) -> None:
        self.path: Path = folder.path
        self.folder = folder
        self.device = device
        self.dtype = dtype
        # diffusers / transformers modules, typed Any: their `config` attributes are registered at
        # run time (diffusers' register_to_config), which a type checker cannot see
        self.unet: Any = parts["unet"]
        self.vae: Any = parts.get("vae")          # None: a pixel-space model
        self.text_encoder: Any = parts["text_encoder"]
        self.tokenizer: Any = parts["tokenizer"]
        self._identity: dict | None = None
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        f = self.vae_scale_factor
        self.default_size: tuple[int, int] = (size[0] * f, size[1] * f)

    # --- description -------------------------------------------------------------------------
    @property
    def phrase_encoder(self) -> Any:
        """The transformers text model the phrases go through (Any: see the attributes above)."""
        return getattr(self, self.phrase_encoder_name)

    @property
    def phrase_dim(self) -> int:
        return int(self.phrase_encoder.config.hidden_size)

    @property
    def phrase_encoding(self) -> str:
        encoder = type(self.phrase_encoder).__name__
        tokenizer = type(getattr(self, self.phrase_tokenizer_name)).__name__
        return (f"{self.kind}: each phrase -> {self.phrase_tokenizer_name} "
                f"({tokenizer}, max_length=32, padding=longest, truncation) -> "
                f"{self.phrase_encoder_name} ({encoder}) last_hidden_state, mean over the attention "
                f"mask (BOS/EOS included); empty phrase -> zero vector; dim {self.phrase_dim}")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    def identity(self) -> dict:
        """{"kind", "path", "weights": {relative file: sha256}} over weight and tokenizer files."""
        if self._identity is None:
            from gatebench.files import file_sha256

            files = [f for c in self.folder.components.values() for f in c.weights]
            files += list(self.folder.tokenizer_files)
            weights = {f.relative_to(self.path).as_posix(): file_sha256(f) for f in files}
            self._identity = {"kind": self.kind, "path": str(self.path),
                              "negative_prompt": self.negative_prompt,
                              "weights": dict(sorted(weights.items()))}
        return {**self._identity, "weights": dict(self._identity["weights"])}

    # --- text ----------------------------------------------------------------------------------
    def _tokenize(self, tokenizer, texts: list[str], max_length: int, padding: str = "max_length"):
        return tokenizer(texts, padding=padding, max_length=max_length, truncation=True,
                         return_tensors="pt")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """As StableDiffusionPipeline.encode_prompt (no clip_skip): last hidden state, 77 tokens."""
        tokens = self._tokenize(self.tokenizer, list(prompts), self.tokenizer.model_max_length)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return PromptEmbeddings(hidden.to(self.dtype))

    @property
    def negative_prompt(self) -> str:
        """What CFG's unconditional half is conditioned on, as this kind's pipeline does it."""
        return "encoded ''"

    def encode_negative(self) -> PromptEmbeddings:
        return self.encode_prompts([""])

    def _phrase_hidden(self, phrases: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, H) last hidden states and the (B, L) attention mask for non-empty phrases."""
        tokenizer = getattr(self, self.phrase_tokenizer_name)
        # Padding to the longest (the user's code) is the cheapest; the vectors do not depend on
        # the padding (tests/test_parity_phrases.py): CLIP attends causally and pads on the right.
        tokens = self._tokenize(tokenizer, phrases, max_length, padding="longest")
        out = self.phrase_encoder(tokens.input_ids.to(self.device))
        return out.last_hidden_state, tokens.attention_mask

    @torch.no_grad()
    def encode_phrases(self, phrases: list[str], max_length: int = 32) -> torch.Tensor:
        """(n, phrase_dim) float32: masked mean of the last hidden state; "" -> zeros."""
        out = torch.zeros(len(phrases), self.phrase_dim, dtype=torch.float32, device=self.device)
        keep = [i for i, p in enumerate(phrases) if isinstance(p, str) and p.strip()]
        for start in range(0, len(keep), PHRASE_BATCH):
            rows = keep[start:start + PHRASE_BATCH]
            hidden, mask = self._phrase_hidden([phrases[i] for i in rows], max_length)
            out[torch.tensor(rows, device=self.device)] = _masked_mean(hidden, mask)
        return out

    def unet_kwargs(self, emb: PromptEmbeddings, height: int, width: int) -> dict:
        return {}

    # --- images ----------------------------------------------------------------------------------
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.vae_scale_factor
        if height <= 0 or width <= 0 or height % f or width % f:
            raise ProtocolError(f"expected an image size divisible by {f} for this {self.kind} model, "
                                f"got {height}x{width}")
        channels = self.vae.config.latent_channels if self.vae is not None else self.unet.config.out_channels
        return (int(channels), height // f, width // f)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, 3, H, W) float images in [0, 1]."""
        vae = self.vae
        config = vae.config
        latents = latents.to(self.device, next(vae.parameters()).dtype) / config.scaling_factor
        if getattr(config, "shift_factor", None) is not None:
            latents = latents + config.shift_factor
        images = vae.decode(latents).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> latents (posterior mean x scaling factor)."""
        vae = self.vae
        x = images01.to(self.device, next(vae.parameters()).dtype) * 2 - 1
        latents = vae.encode(x).latent_dist.mean
        if getattr(vae.config, "shift_factor", None) is not None:
            latents = latents - vae.config.shift_factor
        return (latents * vae.config.scaling_factor).to(self.dtype)

    def make_scheduler(self, name: str | None = None):
        """A diffusers scheduler from the folder's scheduler config (``name``: a class name)."""
        import diffusers
        from diffusers import SchedulerMixin

        config = dict(self.folder.scheduler_config)
        name = name or config.get("_class_name")
        try:
            cls = getattr(diffusers, name) if isinstance(name, str) and name.endswith("Scheduler") else None
        except Exception:   # noqa: BLE001 - a lazy import can fail in many ways: it is just unknown
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
            raise ProtocolError(f"expected a diffusers scheduler class name such as DDIMScheduler or "
                                f"EulerDiscreteScheduler, got {name!r}")
        return cls.from_config(config)


class _AddedCond(BaseModel):
    """SDXL-style UNets: ``added_cond_kwargs`` with pooled text_embeds and size time_ids."""

    force_zeros_default = False     # the pipeline constructor's default for the model_index key

    @property
    def negative_prompt(self) -> str:
        index = read_json(self.path / "model_index.json", "the model index")
        zeros = bool(index.get("force_zeros_for_empty_prompt", self.force_zeros_default))
        return "zeros (force_zeros_for_empty_prompt)" if zeros else "encoded ''"

    def encode_negative(self) -> PromptEmbeddings:
        """As the pipelines: with ``force_zeros_for_empty_prompt`` (SDXL's default) the empty
        negative prompt is all-zero embeddings, hidden and pooled, not the encoding of ''."""
        emb = self.encode_prompts([""])
        if self.negative_prompt.startswith("zeros"):
            pooled = None if emb.pooled is None else torch.zeros_like(emb.pooled)
            return PromptEmbeddings(torch.zeros_like(emb.hidden), pooled)
        return emb

    def unet_kwargs(self, emb: PromptEmbeddings, height: int, width: int) -> dict:
        if emb.pooled is None:
            raise ValueError(f"expected pooled prompt embeddings for a {self.kind} model, got None")
        # original size, crop top-left (0, 0), target size: as the pipelines' _get_add_time_ids
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=emb.pooled.dtype,
                                device=emb.pooled.device).repeat(len(emb), 1)
        return {"added_cond_kwargs": {"text_embeds": emb.pooled, "time_ids": time_ids}}


class SDXLModel(_AddedCond):
    kind = "sdxl"
    force_zeros_default = True
    phrase_encoder_name = "text_encoder_2"
    phrase_tokenizer_name = "tokenizer_2"

    def __init__(self, folder, parts, device, dtype) -> None:
        self.text_encoder_2 = parts["text_encoder_2"]
        self.tokenizer_2 = parts["tokenizer_2"]
        super().__init__(folder, parts, device, dtype)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """As StableDiffusionXLPipeline.encode_prompt: penultimate states of both, concatenated."""
        hidden, pooled = [], None
        pairs = ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2))
        for tokenizer, encoder in pairs:
            ids = self._tokenize(tokenizer, list(prompts), tokenizer.model_max_length).input_ids
            out = encoder(ids.to(self.device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:
                pooled = out[0]          # text_encoder_2's projected text_embeds
            hidden.append(out.hidden_states[-2])
        assert pooled is not None, "text_encoder_2 (CLIPTextModelWithProjection) gives text_embeds"
        return PromptEmbeddings(torch.cat(hidden, dim=-1).to(self.dtype), pooled.to(self.dtype))


class KolorsModel(_AddedCond):
    kind = "kolors"
    max_sequence_length = 256

    def _glm(self, texts: list[str], max_length: int, hidden_states: bool,
             padding: str = "max_length"):
        tokens = self._tokenize(self.tokenizer, texts, max_length, padding).to(self.device)
        out = self.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                position_ids=tokens["position_ids"], output_hidden_states=hidden_states)
        return out, tokens["attention_mask"]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """As KolorsPipeline.encode_prompt: hidden_states[-2] (seq-first -> batch-first), pooled
        = hidden_states[-1] at the last position; 256 tokens, left-padded."""
        out, _ = self._glm(list(prompts), self.max_sequence_length, True)
        hidden = out.hidden_states[-2].permute(1, 0, 2)
        pooled = out.hidden_states[-1][-1, :, :]
        return PromptEmbeddings(hidden.to(self.dtype), pooled.to(self.dtype))

    def _phrase_hidden(self, phrases: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        out, mask = self._glm(phrases, max_length, False, padding="longest")
        return out.last_hidden_state.permute(1, 0, 2), mask    # ChatGLM is (seq, batch, hidden)

    @property
    def phrase_encoding(self) -> str:
        return (f"kolors: each phrase -> tokenizer (ChatGLMTokenizer, left padding, [gMASK] sop prefix, "
                f"max_length=32, padding=longest, truncation) -> text_encoder (ChatGLMModel) with the "
                f"tokenizer's attention_mask and position_ids (padding-invariant: equals encoding the "
                f"phrase alone, unpadded) -> last_hidden_state (after the final RMSNorm) permuted to "
                f"(batch, seq, hidden), mean over the attention mask (prefix tokens included); empty "
                f"phrase -> zero vector; dim {self.phrase_dim}")


class PixelModel(BaseModel):
    """A UNet on RGB pixels in [-1, 1], no VAE (the embedded shapes world).

    ``"gatebench_coord_channels": true`` in model_index.json means the UNet takes two extra input
    channels, x and y ramps in [-1, 1] (CoordConv), appended here by a forward pre-hook so that
    samplers and trainers call it like any UNet. The world uses them so that image tokens know
    where they are, which a box adapter needs in order to place objects.
    """

    kind = "pixel"

    def __init__(self, folder, parts, device, dtype) -> None:
        super().__init__(folder, parts, device, dtype)
        index = read_json(folder.path / "model_index.json", "the model index")
        self.coord_channels = bool(index.get("gatebench_coord_channels", False))
        if self.coord_channels:
            expected = self.unet.config.out_channels + 2
            if self.unet.config.in_channels != expected:
                raise ModelFileError(f"expected a UNet with {expected} input channels for "
                                     f"gatebench_coord_channels, got {self.unet.config.in_channels}",
                                     path=folder.path / "unet" / "config.json")
            self.unet.register_forward_pre_hook(add_coord_channels, with_kwargs=True)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01.to(self.device, self.dtype) * 2 - 1)


MODEL_CLASSES = {cls.kind: cls for cls in (BaseModel, SDXLModel, KolorsModel, PixelModel)}


def coord_grid(batch: int, height: int, width: int, device, dtype) -> torch.Tensor:
    """(B, 2, H, W): x and y pixel-centre coordinates in [-1, 1]."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)


def add_coord_channels(module: Any, args: tuple, kwargs: dict):
    """The forward pre-hook on a coord-channel UNet (``module``: a diffusers UNet, Any as above)."""
    sample = args[0] if args else kwargs["sample"]
    if sample.shape[1] == module.config.in_channels:   # already has them
        return None
    b, _, h, w = sample.shape
    sample = torch.cat([sample, coord_grid(b, h, w, sample.device, sample.dtype)], dim=1)
    if args:
        return (sample, *args[1:]), kwargs
    return args, {**kwargs, "sample": sample}
